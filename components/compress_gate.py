"""Measurement and gate of the compression variants: ONNX Runtime latency (interleaved runs, median), validation
NDCG@10 through the evaluator's ranking, paired differences against fp32, the int8 size/latency targets per
network, and the gate that keeps the fastest variant within the tolerance of fp32."""

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.compress_export import CompressError, session, text_tokens
from components.compress_variants import REFERENCE, Variant
from components.config import Config
from components.evaluate import eval_data, evaluate_main, sample_task
from components.evaluation_types import EvalData, ModelResult
from components.metrics import paired_difference
from components.recommender import TowerRecommender
from components.splits import configured_split

METRIC = "ndcg@10"
LATENCY_BATCHES = (1, 32)
SIZE_TARGET, LATENCY_TARGET = 0.35, 0.7  # int8 file <= 35% of fp32; int8/fp32 latency at batch 32 <= 0.7


class OnnxRecommender(TowerRecommender):
    """Contract C3 over an ONNX user tower and an item table; inputs prepared exactly like `prepare`'s (the trained
    model's tower inputs: its item ids and profile encoder)."""

    def __init__(self, name: str, tower: str | Path, item_ids: np.ndarray, item_embeddings: np.ndarray,
                 prepare: TowerRecommender, batch_size: int = 256) -> None:
        self.session = session(tower)
        super().__init__(name, self._encode, item_ids, item_embeddings, prepare.profile_encoder,
                         prepare.max_seq_len, batch_size)

    def _encode(self, history: np.ndarray, profile: np.ndarray) -> np.ndarray:
        return self.session.run(["user_embedding"], {"history": history, "profile": profile})[0]


def validation_task(config: Config, tables: dict[str, pd.DataFrame]) -> EvalData:
    """The validation stage of the split of contract C2 (same seed and cold items as training and evaluation), on
    the seeded sample of `train.validation_max_users` users that training validated on (all when fewer)."""
    split = configured_split(tables["interactions"], config)
    if split.validation.empty:
        raise CompressError("the split has no validation rows: every user has fewer than 3 interactions")
    return sample_task(eval_data(split, tables["items"], tables["users"], "validation"),
                       config.train.validation_max_users, config.train.seed)


def validation_ndcg(recommender: Any, task: EvalData, config: Config) -> ModelResult:
    """NDCG@10 (with bootstrap interval and per-user values) through the evaluator's ranking."""
    ks = sorted(set(config.evaluate.ks) | {10})
    return evaluate_main(recommender, recommender.name, "candidate", task, config, groups=False, ks=ks)


def measure_latency(cases: dict[str, tuple[str | Path, dict[str, dict[str, np.ndarray]]]], repeats: int,
                    warmup: int = 3) -> dict[str, dict[int, float]]:
    """Median milliseconds per (case, batch size), all in this process: runs are interleaved round-robin across
    cases so that background load hits every variant alike. `cases`: name -> (onnx path, {batch: feeds})."""
    sessions = {name: session(path) for name, (path, _) in cases.items()}
    times: dict[str, dict[int, list[float]]] = {name: {b: [] for b in feeds} for name, (_, feeds) in cases.items()}
    for r in range(warmup + repeats):
        for name, (_, feeds) in cases.items():
            for b, feed in feeds.items():
                start = time.perf_counter()
                sessions[name].run(None, feed)
                if r >= warmup:
                    times[name][b].append(1000 * (time.perf_counter() - start))
    return {name: {b: float(np.median(v)) for b, v in per.items()} for name, per in times.items()}


def choose_variant(measurements: dict[str, dict[str, float]], tolerance: float, latency_key: str = "gate_latency_ms",
                   metric: str = METRIC, reference: str = REFERENCE,
                   min_text_cosine: float | None = None) -> tuple[str, str]:
    """The gate: the fastest variant whose `metric` is within `tolerance` (relative) of the reference (and, with
    `min_text_cosine`, whose text encoder's mean cosine to the reference's is at least that), else the reference.
    Returns (variant, reason)."""
    if reference not in measurements:
        raise CompressError(f"the gate needs the {reference!r} reference variant; got {sorted(measurements)}")
    ref = float(measurements[reference][metric])
    floor = ref * (1 - tolerance)
    passing = {name: m for name, m in measurements.items() if float(m[metric]) >= floor and (
        min_text_cosine is None or name == reference or float(m.get("text_cosine_mean", 1.0)) >= min_text_cosine)}
    best = min(passing, key=lambda name: (float(passing[name][latency_key]), name != reference))
    dropped = sorted(set(measurements) - set(passing))
    rule = f"{metric} >= {floor:.4f} ({reference} {ref:.4f} - {tolerance:.1%})"
    if min_text_cosine is not None:
        rule += f" and a text encoder with mean cosine >= {min_text_cosine} to {reference}'s on the checked items"
    if best == reference:
        reason = f"{reference} kept: no variant with {rule} is faster by {latency_key}"
    else:
        reason = (f"{best}: fastest by {latency_key} ({float(measurements[best][latency_key]):.2f} ms vs {reference} "
                  f"{float(measurements[reference][latency_key]):.2f} ms) among variants with {rule}")
    if dropped:
        reason += "; out of tolerance: " + ", ".join(
            f"{n} ({float(measurements[n][metric]):.4f}"
            + (f", cosine {float(measurements[n]['text_cosine_mean']):.4f}" if min_text_cosine is not None else "")
            + ")" for n in dropped)
    return best, reason


def latency_cases(variants: dict[str, Variant], task: EvalData, prepare: Any, tokenizer: Any,
                  texts: list[str]) -> dict[str, tuple[Path, dict]]:
    """Each variant's user tower and text encoder fed real inputs at each batch size of LATENCY_BATCHES."""
    hist, prof = prepare.tower_inputs(task.users, task.histories)
    order = np.argsort([-len(h) for h in task.histories], kind="stable")  # real users, full histories first
    tower_feeds = {b: {"history": hist[order[:b]], "profile": prof[order[:b]]} for b in LATENCY_BATCHES}
    text_feeds = {b: text_tokens(tokenizer, texts[:b]) for b in LATENCY_BATCHES}
    cases = {}
    for name, v in variants.items():
        cases[f"{name}/user_tower"] = (v.user_tower, tower_feeds)
        cases[f"{name}/text_encoder"] = (v.text_encoder, text_feeds)
    return cases


def measure(config: Config, variants: dict[str, Variant], task: EvalData, prepare: Any, tokenizer: Any,
            texts: list[str], item_ids: np.ndarray) -> dict[str, dict[str, Any]]:
    """Sizes, latencies (batch 1 and 32) and validation NDCG@10 of every variant, plus the int8 attribution."""
    lat = measure_latency(latency_cases(variants, task, prepare, tokenizer, texts), config.compress.latency_repeats)
    results, per_user = {}, {}
    for name, v in variants.items():
        res = validation_ndcg(OnnxRecommender(name, v.user_tower, item_ids, v.item_embeddings, prepare), task, config)
        per_user[name] = res.per_user[METRIC]
        m = {
            METRIC: res.summary[METRIC].value, f"{METRIC}_low": res.summary[METRIC].low,
            f"{METRIC}_high": res.summary[METRIC].high, "hr@10": res.summary["hr@10"].value,
            "user_tower_bytes": v.user_tower.stat().st_size, "text_encoder_bytes": v.text_encoder.stat().st_size,
            **{f"user_tower_b{b}_ms": lat[f"{name}/user_tower"][b] for b in LATENCY_BATCHES},
            **{f"text_encoder_b{b}_ms": lat[f"{name}/text_encoder"][b] for b in LATENCY_BATCHES},
        }
        m["latency_b32_ms"] = m["user_tower_b32_ms"] + m["text_encoder_b32_ms"]
        m["gate_latency_ms"] = {"bundle": m["latency_b32_ms"], "user_tower": m["user_tower_b32_ms"],
                                "text_encoder": m["text_encoder_b32_ms"]}[config.compress.gate_latency]
        for key, value in v.info.items():
            if isinstance(value, int | float):
                m[key] = value
        if "held_out_cosine" in v.info:
            m["distill_history"] = v.info["history"]
        results[name] = m
    for name in variants:
        if name != REFERENCE:
            d = paired_difference(per_user[name], per_user[REFERENCE], config.evaluate.bootstrap_samples,
                                  config.train.seed)
            results[name][f"{METRIC}_diff_low"], results[name][f"{METRIC}_diff_high"] = d.low, d.high
    if "int8" in variants:
        v, fp32 = variants["int8"], variants[REFERENCE]
        tower = OnnxRecommender("int8-tower", v.dir / "parts" / "user_tower_only.onnx", item_ids, fp32.item_embeddings,
                                prepare)
        results["int8"][f"{METRIC}_tower_only"] = validation_ndcg(tower, task, config).summary[METRIC].value
        if (text_only := v.dir / "parts" / "user_tower_text_only.onnx").is_file():  # the catalogue re-encoded
            text = OnnxRecommender("int8-text", text_only, item_ids, v.item_embeddings, prepare)
            results["int8"][f"{METRIC}_text_only"] = validation_ndcg(text, task, config).summary[METRIC].value
    return results


def targets_check(results: dict[str, dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """The int8 targets per network: file <= 35% of fp32, batch-32 latency ratio <= 0.7, NDCG@10 within tolerance."""
    if "int8" not in results:
        return {}
    q, f = results["int8"], results[REFERENCE]
    ref = f[METRIC]
    out = {}
    for part, ndcg in (("user_tower", q[f"{METRIC}_tower_only"]), ("text_encoder", q.get(f"{METRIC}_text_only"))):
        size = q[f"{part}_bytes"] / f[f"{part}_bytes"]
        speed = q[f"{part}_b32_ms"] / f[f"{part}_b32_ms"]
        out[part] = {"size_ratio": size, "size_ok": size <= SIZE_TARGET, "latency_ratio_b32": speed,
                     "latency_ok": speed <= LATENCY_TARGET}
        if ndcg is None:  # the catalogue was encoded once: the text encoder is judged on the sample's cosine
            out[part].update(text_cosine_mean=q["text_cosine_mean"], ndcg_ok=None)
        else:
            drop = (ref - ndcg) / ref if ref else 0.0
            out[part].update(ndcg_relative_drop=drop, ndcg_ok=drop <= tolerance)
    drop = (ref - q[METRIC]) / ref if ref else 0.0
    out["int8_bundle"] = {"ndcg_relative_drop": drop, "ndcg_ok": drop <= tolerance}
    return out
