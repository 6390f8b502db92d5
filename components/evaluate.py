"""Evaluation step: the candidate, the champion and strong baselines on one temporal split, then the promotion gate.

Protocol (all recommenders, same run, same split from `components.splits`):
- Main ranking: each test user's last interaction is ranked against the whole warm catalogue (items table minus
  the held-out cold-test and cold-validation items), excluding the items the user saw before (train + validation
  rows); HR@K, NDCG@K, MRR, catalogue coverage@K, 95% bootstrap intervals over users, and the same per group of each
  declared fairness attribute (`dataset.fairness_groups`; bucketed numbers by their bands).
- Cold start: each `cold_test` user's last cold-item interaction is ranked among the cold items only (never in
  training, so a model reaches them through their text), against `new-item-popularity`: for a user whose target
  happened at time t, a cold item scores its number of interactions by other users strictly before t. The target
  event itself and anything later are never counted. `random` is the exact expectation of a random ranking.
  A model with `set_item_events` (the two-tower model) is handed the same cold-item events: it adds its new-item
  prior to its text-based score of items it has no trained ID for, from that item's events by other users strictly
  before the target (`components.new_item_prior`: fitted at training time on the cold-validation items, the
  next-newest items, held out of training too, never the report's). The report gives the candidate's paired gain
  over new-item-popularity, and the same two on every interaction with the held-out items, each at its own time
  (the items' whole early life; the intervals resample whole users).
- Cold-start users (when the data set declares user attributes): each test user's target ranked over the warm
  catalogue from the declared profile alone (no history), against most-popular and popularity-as-of (interactions
  by other users strictly before the target), with the paired gain over the stronger of the two.
- Size: above `evaluate.max_users` test (and cold-start) users a seeded sample of that many is ranked, the
  intervals are over the sample and the report gives its size; ranking holds at most `MAX_SCORE_CELLS` scores
  at once, so a large catalogue is ranked exactly in small user batches.
- Gate: the candidate is promoted when its `evaluate.gate_metric` beats the champion's by more than
  `evaluate.gate_min_improvement` (relative). The champion is the registry's model re-evaluated on this split, or
  before the first promotion the strongest baseline.
"""

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.baselines import configured_baselines, skipped_baselines, user_frame
from components.config import Config
from components.dataset import group_labels
from components.evaluation_report import write_report
from components.evaluation_types import EvalData, Evaluation, EvaluationError, ModelResult
from components.kfp_support import step
from components.metrics import (
    bootstrap,
    coverage,
    expected_rank,
    group_breakdown,
    group_ratio,
    paired_difference,
    per_user_metrics,
    rank_targets,
    sample_users,
)
from components.model import item_event_counts
from components.recommender import Recommender
from components.registry import read_champion
from components.schemas import read_tables
from components.served_mix import mix_report, served_mix
from components.splits import Split, cold_task, configured_split, histories
from components.trust_report import trust_analysis

log = logging.getLogger(__name__)
CANDIDATE, CHAMPION, BASELINE, REFERENCE = "candidate", "champion", "baseline", "reference"
ABLATION = "ablation"
MODEL_ROW = "(the model)"  # the ablation table's row of the evaluated model


# ----------------------------------------------------------------------------------------------- data


def eval_data(split: Split, items: pd.DataFrame, users: pd.DataFrame,
              stage: Literal["validation", "test"] = "test") -> EvalData:
    """The main and cold-start ranking tasks of one stage of `split` (contract C2): what the evaluate step ranks
    (test), what training stops early on and what the compression gate compares (validation)."""
    catalogue = np.setdiff1d(items["item_id"].to_numpy(dtype=np.int64), split.held_out_items)
    rows = (split.validation if stage == "validation" else split.test).sort_values("user_id").reset_index(drop=True)
    hist = histories(split, stage)
    empty = np.empty(0, dtype=np.int64)
    main_users = user_frame(rows["user_id"].to_numpy(), users)
    main_users["as_of"] = rows["event_timestamp"].to_numpy()  # the request time: popularity counts stop there
    events = pd.concat([split.train, split.validation, split.test, split.cold_interactions,
                        split.cold_validation_interactions])[["user_id", "item_id", "event_timestamp"]]
    return EvalData(
        split=split,
        items=items,
        catalogue=catalogue,
        users=main_users,
        histories=[hist.get(int(u), empty) for u in rows["user_id"]],
        targets=rows["item_id"].to_numpy(dtype=np.int64),
        **cold_fields(split, users, stage),
        stage=stage,
        item_events=events.sort_values("event_timestamp", kind="stable").reset_index(drop=True),
    )


def cold_fields(split: Split, users: pd.DataFrame, stage: Literal["validation", "test"],
                every_event: bool = False) -> dict[str, Any]:
    """EvalData's cold-start fields for `stage` (`splits.cold_task`: each user's last held-out-item interaction, or
    with `every_event` each of them)."""
    cold = cold_task(split, stage, every_event)
    cold_users = user_frame(cold.targets["user_id"].to_numpy(), users)
    cold_users["as_of"] = cold.targets["event_timestamp"].to_numpy()  # the request time: counts stop there
    return {"cold_users": cold_users, "cold_histories": cold.histories, "cold_exclude": cold.exclude,
            "cold_targets": cold.targets["item_id"].to_numpy(dtype=np.int64), "cold_items": cold.items,
            "cold_interactions": split.cold_interactions if stage == "test" else split.cold_validation_interactions}


def every_event_cold(data: EvalData, users: pd.DataFrame, max_users: int | None, seed: int) -> EvalData:
    """`data` with its cold-start task ranking every interaction on the held-out items, each at its own time (a
    seeded sample of `max_users` users, all their interactions, when set): the new items' whole early life, and
    more targets than one per user, so a narrower interval (evaluate_cold resamples whole users)."""
    fields = cold_fields(data.split, users, "validation" if data.stage == "validation" else "test", every_event=True)
    return sample_task(replace(data, **fields, cold_users_total=None), None, seed, cold_max_users=max_users)


def sample_task(data: EvalData, max_users: int | None, seed: int, cold_max_users: int | None = None) -> EvalData:
    """`data` with its main and cold-start users each cut to a seeded uniform sample of `max_users` (all when
    None or fewer; `cold_max_users`, when given, for the cold-start users), a cold-start user keeping all of their
    targets; `users_total` and `cold_users_total` keep how many there were."""
    main = sample_users(len(data.users), max_users, seed)
    cold_user_ids = data.cold_users["user_id"].to_numpy()
    distinct = pd.unique(cold_user_ids)
    kept = sample_users(len(distinct), max_users if cold_max_users is None else cold_max_users, seed)
    cold = None if kept is None else np.flatnonzero(np.isin(cold_user_ids, distinct[kept]))
    if main is None and cold is None:
        return data
    out = replace(data, users_total=len(data.users) if main is not None else data.users_total,
                  cold_users_total=len(distinct) if cold is not None else data.cold_users_total)
    if main is not None:
        out = replace(out, users=data.users.iloc[main].reset_index(drop=True),
                      histories=[data.histories[i] for i in main], targets=data.targets[main])
    if cold is not None:
        out = replace(out, cold_users=data.cold_users.iloc[cold].reset_index(drop=True),
                      cold_histories=[data.cold_histories[i] for i in cold],
                      cold_exclude=[data.cold_exclude[i] for i in cold], cold_targets=data.cold_targets[cold])
    log.info("ranking a seeded sample of %d of %d %s users (%d of %d cold-start users)", len(out.users),
             out.users_total or len(out.users), data.stage, len(pd.unique(out.cold_users["user_id"])),
             out.cold_users_total or len(distinct))
    return out


def prepare(config: Config, tables: dict[str, pd.DataFrame]) -> EvalData:
    """Split the interactions (contract C2) and build the test and cold-start tasks (on a seeded sample of
    `evaluate.max_users` users when set)."""
    split = configured_split(tables["interactions"], config)
    if split.test.empty:
        raise EvaluationError("no test rows: every user has fewer than 3 interactions on non-cold items")
    data = eval_data(split, tables["items"], tables["users"], "test")
    return sample_task(data, config.evaluate.max_users, config.train.seed)


class PointInTimePopularity:
    """An item's number of interactions by other users strictly before the user's `as_of`, among `events`: over
    the new items' events the cold-start baseline (new-item-popularity), over every event of the split the
    profile-only users' (popularity-as-of)."""

    def __init__(self, events: pd.DataFrame, name: str) -> None:
        self.events = events[["user_id", "item_id", "event_timestamp"]].reset_index(drop=True)
        self.name = name

    def score(self, users: pd.DataFrame, histories: list[np.ndarray], catalogue: np.ndarray) -> np.ndarray:
        if "as_of" not in users:
            raise EvaluationError(f"{self.name} needs the users' `as_of` timestamps")
        return item_event_counts(self.events, users, catalogue)


NEW_ITEM_POPULARITY = "new-item-popularity"


class NewItemPopularity(PointInTimePopularity):
    """Cold-start baseline: a new item's number of interactions by other users strictly before the user's `as_of`."""

    def __init__(self, cold_interactions: pd.DataFrame) -> None:
        super().__init__(cold_interactions, NEW_ITEM_POPULARITY)


class Constant:
    """Scores every item the same: with ties resolved in expectation this is exactly a random ranking."""

    name = "random"

    def score(self, users: pd.DataFrame, histories: list[np.ndarray], catalogue: np.ndarray) -> np.ndarray:
        return np.zeros((len(users), len(catalogue)), dtype=np.float32)


def ensure_items(recommender: Recommender, items: pd.DataFrame) -> None:
    """Let a model that embeds items from text (optional `add_items(items)`) cover every catalogue item."""
    add = getattr(recommender, "add_items", None)
    known = getattr(recommender, "item_ids", None)
    if add is None or known is None:
        return
    missing = items[~items["item_id"].isin(np.asarray(known))]
    if len(missing):
        log.info("%s: embedding %d items it was not trained on from their text", recommender.name, len(missing))
        add(missing)


# ----------------------------------------------------------------------------------------------- tasks


def evaluate_task(
    recommender: Recommender,
    key: str,
    role: str,
    users: pd.DataFrame,
    hist: list[np.ndarray],
    targets: np.ndarray,
    catalogue: np.ndarray,
    config: Config,
    exclude: list[np.ndarray] | None = None,
    groups: bool = True,
    ks: list[int] | None = None,
    intervals: bool = True,
    clusters: np.ndarray | None = None,
) -> ModelResult:
    """Rank every target, then metrics at `ks` (default `evaluate.ks`) with bootstrap intervals (point values only
    without `intervals`; resampling `clusters` of targets when given), coverage and (optionally) the group
    breakdown."""
    cfg = config.evaluate
    ks = sorted(ks or cfg.ks)
    samples = cfg.bootstrap_samples if intervals else 0
    ranks, top = rank_targets(recommender, users, hist, targets, catalogue, max(ks), exclude=exclude)
    per_user = per_user_metrics(ranks, ks)
    summary = bootstrap(per_user, samples, config.train.seed, clusters=clusters)
    cov = {f"coverage@{k}": coverage(top[:, :k], catalogue) for k in ks}
    breakdown = pd.DataFrame()
    if groups:
        schema = config.dataset
        attrs = {name: np.asarray(group_labels(users[name], schema.user_attributes[name]), dtype=object)
                 for name in schema.fairness_groups if name in users}
        breakdown = group_breakdown(per_user, attrs, samples, config.train.seed)
    params = dict(getattr(recommender, "params", {}) or {})
    return ModelResult(key, recommender.name, role, summary, cov, per_user, expected_rank(ranks), breakdown, params,
                       clusters)


def evaluate_main(recommender: Recommender, key: str, role: str, data: EvalData, config: Config,
                  **options: Any) -> ModelResult:
    """The main ranking of `data`'s stage; `options` go to `evaluate_task` (groups, ks, intervals)."""
    log.info("evaluating %s (%s) on %d %s users x %d items", key, recommender.name, len(data.users), data.stage,
             len(data.catalogue))
    share = getattr(recommender, "set_item_events", None)
    if share is not None and data.item_events is not None:  # point-in-time item popularity (the model's prior)
        share(data.item_events)
    return evaluate_task(recommender, key, role, data.users, data.histories, data.targets, data.catalogue, config,
                         **options)


def evaluate_cold(recommender: Recommender, key: str, role: str, data: EvalData, config: Config,
                  **options: Any) -> ModelResult:
    """The cold-start ranking of `data`'s stage (no group breakdown; intervals resample users, whole when a user has
    several targets); `options` go to `evaluate_task`."""
    share = getattr(recommender, "set_item_events", None)
    if share is not None:  # the same new-item interactions the new-item-popularity baseline counts (point in time)
        share(data.cold_interactions)
    return evaluate_task(recommender, key, role, data.cold_users, data.cold_histories, data.cold_targets,
                         data.cold_items, config, exclude=data.cold_exclude, groups=False,
                         clusters=data.cold_users["user_id"].to_numpy(), **options)


def profile_only_task(data: EvalData) -> EvalData:
    """The main task as new users meet it: each test user's target ranked over the warm catalogue from the user's
    declared profile alone (no history, so nothing excluded), at the target's time."""
    empty = np.empty(0, dtype=np.int64)
    return replace(data, histories=[empty] * len(data.users))


def evaluate_profile_only(recommender: Recommender, key: str, role: str, data: EvalData, config: Config,
                          **options: Any) -> ModelResult:
    """`profile_only_task` of `data` (no group breakdown); `options` go to `evaluate_task`."""
    return evaluate_main(recommender, key, role, profile_only_task(data), config, groups=False, **options)


def profile_only_results(candidate: Recommender, baselines: dict[str, Recommender], data: EvalData,
                         config: Config) -> tuple[list[ModelResult], dict[str, Any]]:
    """Cold-start users from their declared profile alone: the candidate, most-popular and popularity-as-of
    (interactions by other users before the target's time), and the candidate's paired gain over the stronger
    of the two at each K (HR and NDCG)."""
    metric = config.evaluate.gate_metric if config.evaluate.gate_metric.startswith(("hr", "ndcg")) else \
        f"ndcg@{min(config.evaluate.ks)}"
    results = [evaluate_profile_only(candidate, CANDIDATE, CANDIDATE, data, config)]
    popular = [rec for name, rec in baselines.items() if name == "most-popular"]
    if data.item_events is not None:
        popular.append(PointInTimePopularity(data.item_events, "popularity-as-of"))
    results += [evaluate_profile_only(rec, rec.name, BASELINE, data, config) for rec in popular]
    if len(results) == 1:
        return results, {}
    best = max(results[1:], key=lambda r: r.value(metric))
    samples, seed = config.evaluate.bootstrap_samples, config.train.seed
    gains = {name: paired_difference(results[0].per_user[name], best.per_user[name], samples, seed).as_dict()
             for name in results[0].per_user if name.startswith(("hr@", "ndcg@"))}
    return results, {"strongest_baseline": best.key, "chosen_by": metric, "users": int(len(data.users)),
                     "candidate_minus_baseline": gains}


def cold_gain(cold: list[ModelResult], config: Config) -> dict[str, Any]:
    """The candidate's paired gain over new-item-popularity on the cold-start task at each K (HR and NDCG); empty
    without a cold-start task."""
    candidate = next((r for r in cold if r.key == CANDIDATE), None)
    popularity = next((r for r in cold if r.key == NEW_ITEM_POPULARITY), None)
    if candidate is None or popularity is None:
        return {}
    samples, seed = config.evaluate.bootstrap_samples, config.train.seed
    names = [f"{m}@{k}" for k in sorted(config.evaluate.ks) for m in ("hr", "ndcg")]
    clusters = candidate.clusters
    return {"baseline": NEW_ITEM_POPULARITY, "targets": int(len(candidate.per_user[names[0]])),
            "users": int(len(np.unique(clusters))) if clusters is not None else int(len(candidate.per_user[names[0]])),
            "candidate_minus_baseline": {name: paired_difference(candidate.per_user[name], popularity.per_user[name],
                                                                 samples, seed, clusters=clusters).as_dict()
                                         for name in names}}


def every_event_results(recommender: Recommender, data: EvalData, users: pd.DataFrame,
                        config: Config) -> dict[str, Any]:
    """The candidate and new-item-popularity on every interaction with the held-out items (`every_event_cold`):
    HR and NDCG at each K with intervals over users and the candidate's paired gain; empty without cold items."""
    events = every_event_cold(data, users, config.evaluate.max_users, config.train.seed)
    if not len(events.cold_targets):
        return {}
    results = [evaluate_cold(recommender, CANDIDATE, CANDIDATE, events, config),
               evaluate_cold(NewItemPopularity(events.cold_interactions), NEW_ITEM_POPULARITY, BASELINE, events,
                             config)]
    gain = cold_gain(results, config)
    names = list(gain["candidate_minus_baseline"])
    return {**gain, "spread": target_spread(events.cold_targets),
            "candidate": {name: results[0].summary[name].as_dict() for name in names},
            "baseline_value": {name: results[1].summary[name].as_dict() for name in names}}


def served_mix_results(recommender: Recommender, data: EvalData, users: pd.DataFrame, config: Config
                       ) -> dict[str, Any]:
    """The report's served mix (`components.served_mix`) on `data`'s stage, new-item targets of a seeded sample of
    `evaluate.max_users` users: where new items stand against trained ones in one list; {} without a mix."""
    every = every_event_cold(data, users, config.evaluate.max_users, config.train.seed)
    mix = served_mix(data, every)
    return {} if mix is None else mix_report(recommender, mix, config)


def text_only_cold(recommender: Recommender, data: EvalData, config: Config) -> ModelResult | None:
    """The cold-start task scored without the new-item popularity prior (a model with `set_item_events` handed no
    events: its new items rank by their text and metadata alone); None for other recommenders."""
    share = getattr(recommender, "set_item_events", None)
    if share is None or not len(data.cold_targets):
        return None
    share(data.cold_interactions.iloc[:0])
    return evaluate_task(recommender, "text-only", CANDIDATE, data.cold_users, data.cold_histories,
                         data.cold_targets, data.cold_items, config, exclude=data.cold_exclude, groups=False,
                         clusters=data.cold_users["user_id"].to_numpy())


def train_minutes(model_dir: str | Path | None) -> float | None:
    """Training wall time of a model directory (its metrics.json), None when it does not say."""
    path = Path(model_dir) / "metrics.json" if model_dir is not None else None
    if path is None or not path.is_file():
        return None
    seconds = json.loads(path.read_text(encoding="utf-8")).get("train_seconds")
    return None if seconds is None else round(float(seconds) / 60, 1)


def ablation_results(candidate_recommender: Recommender, candidate: ModelResult, candidate_cold: ModelResult | None,
                     variants: dict[str, Recommender], data: EvalData, config: Config,
                     minutes: dict[str, float | None] | None = None,
                     validation: EvalData | None = None) -> list[dict[str, Any]]:
    """The model (row MODEL_ROW) and each variant (an ablation of it: another model directory trained on the same
    data) on the same split and users: the gate metric and cold-start HR@K with their intervals, each variant's
    paired against the model's (variant minus model), the cold start from text alone (no popularity prior; a
    variant's also paired against the model's and as a ratio to it) and, where `minutes` has it, the training
    time. With `validation` (the split's validation stage) each row also carries the same three figures there
    (`validation`), the ones to choose a variant by (`ablation_choice`); the report's test figures only confirm."""
    candidate_text = text_only_cold(candidate_recommender, data, config)
    model = (candidate, candidate_cold, candidate_text)
    rows = [_ablation_row(MODEL_ROW, candidate_recommender.name, model, None, config, minutes)]
    for name, recommender in variants.items():
        ensure_items(recommender, data.items)
        main = evaluate_main(recommender, name, ABLATION, data, config, groups=False)
        cold = evaluate_cold(recommender, name, ABLATION, data, config) if candidate_cold is not None else None
        text = text_only_cold(recommender, data, config)
        rows.append(_ablation_row(name, recommender.name, (main, cold, text), model, config, minutes))
    if validation is not None:
        for row, recommender in zip(rows, [candidate_recommender, *variants.values()], strict=True):
            row["validation"] = _validation_figures(recommender, row["variant"], validation, config)
    return rows


def _validation_figures(recommender: Recommender, name: str, validation: EvalData, config: Config
                        ) -> dict[str, dict[str, float]]:
    """A variant's gate metric, cold-start HR@K and cold start from text alone on the validation stage."""
    metric, cold_metric = config.evaluate.gate_metric, f"hr@{min(config.evaluate.ks)}"
    main = evaluate_main(recommender, name, ABLATION, validation, config, groups=False)
    out = {"metric": main.summary[metric].as_dict() if metric in main.summary else {"value": main.value(metric)}}
    if len(validation.cold_targets):
        out["cold"] = evaluate_cold(recommender, name, ABLATION, validation, config).summary[cold_metric].as_dict()
        text = text_only_cold(recommender, validation, config)
        if text is not None:
            out["cold_text_only"] = text.summary[cold_metric].as_dict()
    return out


def target_spread(targets: np.ndarray) -> dict[str, float]:
    """How many targets over how many items, and the share of the most frequent one: a cold-start HR@K whose
    targets sit mostly on one item says where that item ranks rather than how new items rank."""
    if not len(targets):
        return {"targets": 0, "items": 0, "top_item_share": 0.0}
    counts = np.unique(np.asarray(targets), return_counts=True)[1]
    return {"targets": int(len(targets)), "items": int(len(counts)),
            "top_item_share": float(counts.max() / len(targets))}


def ablation_choice(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Which row validation picks, per figure (the highest value; the earlier row on a tie): what to choose a
    variant (template, encoder, tuning) by, never the report's test figures."""
    choice = {}
    for key in ("metric", "cold", "cold_text_only"):
        scored = [(row["validation"][key]["value"], -i, row["variant"]) for i, row in enumerate(rows)
                  if key in row.get("validation", {})]
        if scored:
            choice[key] = max(scored)[2]
    return choice


_Results = tuple[ModelResult, ModelResult | None, ModelResult | None]  # main, cold start, cold start from text alone


def _ablation_row(name: str, model_name: str, results: _Results, against: _Results | None, config: Config,
                  minutes: dict[str, float | None] | None) -> dict[str, Any]:
    main, cold, text = results
    metric, cold_metric = config.evaluate.gate_metric, f"hr@{min(config.evaluate.ks)}"
    samples, seed = config.evaluate.bootstrap_samples, config.train.seed

    def paired(mine: ModelResult, theirs: ModelResult, key: str) -> dict[str, float]:
        return paired_difference(mine.per_user[key], theirs.per_user[key], samples, seed,
                                 clusters=mine.clusters).as_dict()

    row: dict[str, Any] = {"variant": name, "model": model_name, "metric": metric,
                           "value": main.summary[metric].as_dict() if metric in main.summary else
                           {"value": main.value(metric)}}
    if against is not None and metric in main.per_user:
        row["minus_candidate"] = paired(main, against[0], metric)
    if cold is not None:
        row.update(cold_metric=cold_metric, cold=cold.summary[cold_metric].as_dict())
        if against is not None and against[1] is not None:
            row["cold_minus_candidate"] = paired(cold, against[1], cold_metric)
    if text is not None:
        row["cold_text_only"] = text.summary[cold_metric].as_dict()
        if against is not None and against[2] is not None:
            row["cold_text_only_minus_candidate"] = paired(text, against[2], cold_metric)
            if against[2].value(cold_metric) > 0:
                row["cold_text_only_ratio"] = text.value(cold_metric) / against[2].value(cold_metric)
    if (minutes or {}).get(name) is not None:
        row["train_minutes"] = minutes[name]
    return row


# ----------------------------------------------------------------------------------------------- gate


def check_gate_metric(config: Config) -> str:
    metric = config.evaluate.gate_metric
    allowed = {f"{m}@{k}" for m in ("hr", "ndcg", "coverage") for k in config.evaluate.ks} | {"mrr"}
    if metric not in allowed:
        raise EvaluationError(f"evaluate.gate_metric={metric!r} is not computed; choose one of {sorted(allowed)}")
    return metric


def gate(candidate: ModelResult, champion: ModelResult | None, config: Config,
         champion_info: dict[str, Any]) -> dict[str, Any]:
    """The promotion decision {"promote", "candidate", "champion", "reason", ...}."""
    metric = check_gate_metric(config)
    need = config.evaluate.gate_min_improvement
    cand = candidate.value(metric)
    champ = champion.value(metric) if champion is not None else champion_info.get("metrics", {}).get(metric)
    decision: dict[str, Any] = {
        "gate_metric": metric,
        "min_improvement": need,
        "candidate": {"name": candidate.name, "metrics": _flat(candidate)},
        "champion": {**champion_info, **({"name": champion.name, "metrics": _flat(champion)} if champion else {})},
    }
    if champ is None:
        decision.update(promote=True, reason=f"no champion {metric} to compare with: first model is promoted")
        return decision
    threshold = champ * (1 + need) if champ >= 0 else champ * (1 - need)
    promote = bool(cand > threshold)
    rel = (cand - champ) / abs(champ) if champ else float("inf")
    text = (f"candidate {metric} {cand:.4f} vs champion ({decision['champion'].get('name', '?')}) {champ:.4f}: "
            f"{rel:+.1%} relative; required > {need:+.1%}")
    if champion is not None and champion.per_user.get(metric) is not None and metric in candidate.per_user:
        diff = paired_difference(candidate.per_user[metric], champion.per_user[metric],
                                 config.evaluate.bootstrap_samples, config.train.seed)
        decision["difference"] = diff.as_dict()
        text += f" (paired 95% CI of the difference [{diff.low:+.4f}, {diff.high:+.4f}])"
    decision.update(promote=promote, reason=f"{text} -> {'promote' if promote else 'keep the champion'}")
    return decision


def _flat(result: ModelResult) -> dict[str, float]:
    out = {name: est.value for name, est in result.summary.items()}
    out.update(result.coverage)
    return out


# ----------------------------------------------------------------------------------------------- the step


def _load_candidate(model_dir: str | Path | None, candidate: Recommender | None) -> Recommender:
    if candidate is not None:
        return candidate
    if model_dir is None:
        raise EvaluationError("give a model directory (or a candidate recommender) to evaluate")
    if not Path(model_dir).is_dir():
        raise EvaluationError(f"model directory {model_dir} does not exist")
    from components.model import load_recommender

    return load_recommender(model_dir)


BASELINE_PREFIX = "baseline:"


def ablation_dirs(specs: list[str]) -> dict[str, Path]:
    """NAME=DIR arguments as {name: model directory}; a malformed or repeated name is an EvaluationError."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise EvaluationError(f"--ablation {spec!r}: expected NAME=DIR (a trained model directory)")
        if name.strip() in out or name.strip() == MODEL_ROW:
            raise EvaluationError(f"--ablation {name.strip()!r} is given twice or names the model's own row")
        out[name.strip()] = Path(folder.strip())
    return out


def _tuning_metric(config: Config) -> str:
    """What the baselines are tuned on: the gate metric, unless it is a coverage (then NDCG@10)."""
    metric = config.evaluate.gate_metric
    return metric if not metric.startswith("coverage") else "ndcg@10"


def baseline_candidate(config: Config, canonical_dir: str | Path, spec: str) -> Recommender:
    """`baseline:ease` (or item-knn, most-popular, als, sasrec-ce): that baseline, tuned and fitted on this split, as
    a candidate."""
    name = spec.removeprefix(BASELINE_PREFIX)
    tables = read_tables(canonical_dir)
    data = prepare(config, tables)
    models = configured_baselines(data.split, tables["users"], data.catalogue, config, _tuning_metric(config),
                                  only=name)
    if name not in models:
        skipped = skipped_baselines(data.split, config)
        if name in skipped:
            raise EvaluationError(f"baseline {name!r} is not fitted at this size: {skipped[name]}")
        raise EvaluationError(f"unknown baseline {name!r}; choose one of {sorted(models)}")
    return models[name]


def _champion(config: Config, model_dir: str | Path | None) -> tuple[Recommender | None, dict[str, Any]]:
    """The registry's champion as a loaded recommender (or None) and what the decision should say about it."""
    current = read_champion(config.paths.artifacts_dir)
    if current is None:
        return None, {}
    info = {"source": "registry", "version": current.version, "model_dir": current.model_dir,
            "metrics": current.metrics}
    if model_dir is not None and Path(current.model_dir).resolve() == Path(model_dir).resolve():
        info["same_as_candidate"] = True
    try:
        from components.model import load_recommender

        return load_recommender(current.model_dir), info
    except Exception as err:  # noqa: BLE001 - any load failure falls back to the stored metrics, and says so
        log.warning("champion %s at %s cannot be loaded (%s); comparing with its stored metrics", current.version,
                    current.model_dir, err)
        info["load_error"] = str(err)
        return None, info


def run_evaluation(
    config: Config,
    canonical_dir: str | Path,
    out_dir: str | Path,
    model_dir: str | Path | None = None,
    candidate: Recommender | None = None,
    ablations: dict[str, str | Path | Recommender] | None = None,
) -> Evaluation:
    """Evaluate the candidate (a model directory, or a given recommender), the champion and the baselines; write
    report.html, report.md, metrics.json, decision.json and plots/ to `out_dir`; return the evaluation.

    `ablations`: name -> a variant of the candidate (a model directory or a recommender) reported beside it, each
    paired against it on the same users (the report's ablation table)."""
    check_gate_metric(config)
    if not Path(canonical_dir).is_dir():
        raise EvaluationError(f"canonical tables folder {canonical_dir} does not exist")
    for name, variant in (ablations or {}).items():  # a missing model folder fails here, before any work
        if isinstance(variant, str | Path) and not Path(variant).is_dir():
            raise EvaluationError(f"ablation {name!r}: model directory {variant} does not exist")
    variants = {name: _load_candidate(v, None) if isinstance(v, str | Path) else v
                for name, v in (ablations or {}).items()}
    tables = read_tables(canonical_dir)
    data = prepare(config, tables)
    log.info("split: %s", data.split.summary())
    cand_rec = _load_candidate(model_dir, candidate)
    ensure_items(cand_rec, data.items)
    baselines = configured_baselines(data.split, tables["users"], data.catalogue, config, _tuning_metric(config))
    results = [evaluate_main(cand_rec, CANDIDATE, CANDIDATE, data, config)]
    results += [evaluate_main(rec, name, BASELINE, data, config) for name, rec in baselines.items()]
    champ_rec, champ_info = _champion(config, model_dir)
    champion: ModelResult | None = None
    if champ_rec is not None:
        ensure_items(champ_rec, data.items)
        champion = evaluate_main(champ_rec, CHAMPION, CHAMPION, data, config)
        results.insert(1, champion)
    elif config.evaluate.gate_metric not in champ_info.get("metrics", {}):
        # no usable registry champion: the strongest baseline on this split holds the title
        metric = config.evaluate.gate_metric
        champion = max((r for r in results if r.role == BASELINE), key=lambda r: r.value(metric))
        champ_info = {**champ_info, "source": "best baseline", "key": champion.key}
    decision = gate(results[0], champion, config, champ_info)
    if champ_info.get("same_as_candidate"):
        decision.update(promote=False, reason="the candidate is the current champion: nothing to promote")
    log.info("gate: %s", decision["reason"])

    cold: list[ModelResult] = []
    if len(data.cold_targets):
        cold.append(evaluate_cold(cand_rec, CANDIDATE, CANDIDATE, data, config))
        if champ_rec is not None:
            cold.append(evaluate_cold(champ_rec, CHAMPION, CHAMPION, data, config))
        cold.append(evaluate_cold(NewItemPopularity(data.split.cold_interactions), NEW_ITEM_POPULARITY,
                                  BASELINE, data, config))
        cold.append(evaluate_cold(Constant(), "random", REFERENCE, data, config))
    cold_every_event = every_event_results(cand_rec, data, tables["users"], config) if len(data.cold_targets) else {}
    validation = eval_data(data.split, tables["items"], tables["users"], "validation")
    ablation, validation_info = [], {}
    if variants:
        minutes = {MODEL_ROW: train_minutes(model_dir),
                   **{name: train_minutes(v) for name, v in (ablations or {}).items() if isinstance(v, str | Path)}}
        ablation_validation = sample_task(validation, config.evaluate.max_users, config.train.seed)
        ablation = ablation_results(cand_rec, results[0], cold[0] if cold else None, variants, data, config, minutes,
                                    ablation_validation)
        validation_info = {"validation_users": int(len(ablation_validation.users)),
                           "validation_cold_targets": target_spread(ablation_validation.cold_targets)}
    profile_only, profile_gain = ([], {}) if not config.dataset.user_attributes else \
        profile_only_results(cand_rec, baselines, data, config)
    metric = config.evaluate.gate_metric
    info = {
        "split": data.split.summary(),
        "catalogue_items": int(len(data.catalogue)),
        "test_users": int(len(data.users)),
        "test_users_total": int(data.users_total if data.users_total is not None else len(data.users)),
        "cold_users": int(len(data.cold_targets)),
        "cold_targets": target_spread(data.cold_targets),
        "cold_gain": cold_gain(cold, config),
        "cold_every_event": cold_every_event,
        "ks": sorted(config.evaluate.ks),
        "bootstrap_samples": config.evaluate.bootstrap_samples,
        "seed": config.train.seed,
        "model_dir": str(model_dir) if model_dir else None,
        "champion_key": champion.key if champion is not None else None,
        "group_ratio": {attr: group_ratio(results[0].groups, attr, metric) for attr in config.dataset.fairness_groups},
        "baseline_tuning": {name: getattr(rec, "tuning", []) for name, rec in baselines.items()},
        "baselines_skipped": skipped_baselines(data.split, config),
        "profile_only": profile_gain,
        "ablation": ablation,
        "ablation_choice": ablation_choice(ablation),
        "ablation_validation": validation_info,
    }
    info["served_mix"] = served_mix_results(cand_rec, data, tables["users"], config)  # trained + new in one list
    info["trust"] = trust_analysis(cand_rec, data, validation, tables["users"], config,  # exposure, diversity, fairness
                                   lambda rec: evaluate_main(rec, f"{CANDIDATE}+fairness", CANDIDATE, data, config),
                                   Path(out_dir) / "plots", before=results[0])
    evaluation = Evaluation(results, cold, decision, info, profile_only)
    write_report(evaluation, Path(out_dir), metric)
    return evaluation


def kfp_metrics(evaluation: Evaluation) -> dict[str, float]:
    """Flat numbers for a KFP Metrics artifact: the candidate's own names, others prefixed by their key."""
    out: dict[str, float] = {}
    for r in evaluation.results:
        prefix = "" if r.role == CANDIDATE else f"{r.key}_"
        out.update({f"{prefix}{k}": float(v) for k, v in _flat(r).items()})
    for r in evaluation.cold:
        out.update({f"cold_{r.key}_{k}": float(v) for k, v in _flat(r).items() if not k.startswith("coverage")})
    for r in evaluation.profile_only:
        out.update({f"profile_only_{r.key}_{k}": float(v) for k, v in _flat(r).items() if not k.startswith("coverage")})
    every = evaluation.info.get("cold_every_event") or {}
    for name, d in every.get("candidate_minus_baseline", {}).items():
        out[f"cold_every_event_candidate_{name}"] = float(every["candidate"][name]["value"])
        out[f"cold_every_event_gain_{name}"] = float(d["value"])
    for row in (evaluation.info.get("served_mix") or {}).get("rows", []):
        name = row["setting"].replace(" ", "_")
        out[f"served_mix_{name}_expected_hr@10"] = float(row["expected_hr@10"])
        out[f"served_mix_{name}_warm_ndcg@10"] = float(row["warm_ndcg@10"]["value"])
        out[f"served_mix_{name}_new_in_warm_top"] = float(row["new_in_warm_top"])
    out["promote"] = float(evaluation.decision["promote"])
    return {k: v for k, v in out.items() if np.isfinite(v)}


def read_decision(path: str | Path) -> dict[str, Any]:
    """The gate decision from a decision.json file or the folder holding it."""
    path = Path(path)
    path = path / "decision.json" if path.is_dir() else path
    if not path.is_file():
        raise EvaluationError(f"no gate decision at {path}")
    return json.loads(path.read_text(encoding="utf-8"))


@step
def evaluate_op(
    config: str,
    canonical: Input[Dataset],
    model: Input[Model],
    report: Output[HTML],
    metrics: Output[Metrics],
    decision: Output[Artifact],
) -> bool:
    """KFP: evaluate the trained model against the champion and baselines; returns whether to promote it.

    `decision` is a folder: decision.json, report.md, metrics.json, plots/; `report` is the HTML report.
    """
    import shutil
    from pathlib import Path

    from components.config import config_from_text
    from components.evaluate import kfp_metrics, run_evaluation

    evaluation = run_evaluation(config_from_text(config), canonical.path, decision.path, model_dir=model.path)
    shutil.copyfile(Path(decision.path) / "report.html", report.path)
    for key, value in kfp_metrics(evaluation).items():
        metrics.log_metric(key, value)
    decision.metadata["promote"] = evaluation.decision["promote"]
    decision.metadata["reason"] = evaluation.decision["reason"]
    return bool(evaluation.decision["promote"])
