"""Benchmark: train the two-tower model on MovieLens-100K on this machine (CPU, frozen MiniLM, cached texts).

Measures training time and throughput (next-item targets per second), then scores the model with the evaluation
step's own protocol (components.evaluate: warm-catalogue ranking of the temporal leave-last-out test targets;
cold-start items ranked among the held-out cold items) next to every baseline of the evaluate step (most-popular,
item-kNN, EASE, ALS, SASRec-CE, each tuned on validation; their fitting time too), with the paired 95% CI of the
model's NDCG@10 difference to each, and new-item popularity on the cold items.
Writes artifacts/benchmarks/training.json and prints Markdown rows for the README.

    .venv/bin/python -m benchmarks.bench_training [--config FILE] [--set KEY=VALUE ...]
"""

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_training")


def _canonical(config) -> Path:
    from components.ingest import ingest

    folder = Path(config.paths.data_dir) / "canonical"
    if not (folder / "interactions.parquet").is_file():
        log.info("ingesting MovieLens-100K into %s", folder)
        ingest(config, folder)
    return folder


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=None, help="model directory (default <artifacts_dir>/benchmarks/model)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from components.baselines import configured_baselines
    from components.config import load_config
    from components.evaluate import NewItemPopularity, evaluate_cold, evaluate_main, prepare
    from components.metrics import paired_difference
    from components.model import load_recommender
    from components.schemas import read_tables
    from components.train import examples_from_tables, train_model

    config = load_config(args.config, args.overrides)
    bench_dir = Path(config.paths.artifacts_dir) / "benchmarks"
    model_dir = Path(args.out) if args.out else bench_dir / "model"
    canonical = _canonical(config)
    tables = read_tables(canonical)
    examples_dir = bench_dir / "examples"
    examples_dir.mkdir(parents=True, exist_ok=True)
    examples = examples_from_tables(tables, config.features.last_n_items, config.dataset)
    examples.to_parquet(examples_dir / "examples.parquet")

    started = time.perf_counter()
    metrics = train_model(config, canonical, examples_dir, model_dir, progress=False)
    wall = time.perf_counter() - started
    history = json.loads((model_dir / "history.json").read_text())
    epoch_seconds = sum(h["epoch_seconds"] for h in history)
    positions = sum(h["positions"] for h in history)

    data = prepare(config, tables)
    model = load_recommender(model_dir)
    ours = evaluate_main(model, "two-tower", "candidate", data, config)
    ours_cold = evaluate_cold(model, "two-tower", "candidate", data, config)
    pop_cold = evaluate_cold(NewItemPopularity(data.split.cold_interactions), "new-item-popularity", "baseline",
                             data, config)
    started = time.perf_counter()
    baselines = configured_baselines(data.split, tables["users"], data.catalogue, config)
    baseline_seconds = time.perf_counter() - started
    scored = {name: evaluate_main(rec, name, "baseline", data, config) for name, rec in baselines.items()}
    ease = scored["ease"]
    table = {}
    for name, r in scored.items():
        diff = paired_difference(ours.per_user["ndcg@10"], r.per_user["ndcg@10"], config.evaluate.bootstrap_samples,
                                 config.train.seed)
        table[name] = {"ndcg@10": r.summary["ndcg@10"].as_dict(), "hr@10": r.summary["hr@10"].as_dict(),
                       "params": r.params, "model_ndcg@10_ratio": round(ours.value("ndcg@10") /
                                                                        max(r.value("ndcg@10"), 1e-12), 3),
                       "model_minus_baseline_ndcg@10": diff.as_dict()}
    strongest = max(scored, key=lambda name: scored[name].value("ndcg@10"))
    result = {
        "benchmark": "two-tower training on MovieLens-100K (CPU, frozen all-MiniLM-L6-v2, cached text embeddings)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {config.train.num_threads}",
        "config": {"model": config.dump()["model"], "train": config.dump()["train"]},
        "train_wall_seconds": round(wall, 1),
        "epochs": len(history),
        "best_epoch": int(max(history, key=lambda h: h["val_ndcg@10"])["epoch"]),
        "epoch_seconds_mean": round(epoch_seconds / max(1, len(history)), 2),
        "targets_per_second": round(positions / max(epoch_seconds, 1e-9), 1),
        "windows_per_second": round(sum(h["samples"] for h in history) / max(epoch_seconds, 1e-9), 1),
        "val_ndcg@10": round(metrics["val_ndcg@10"], 4),
        "test_ndcg@10": round(ours.value("ndcg@10"), 4),
        "test_hr@10": round(ours.value("hr@10"), 4),
        "ease_test_ndcg@10": round(ease.value("ndcg@10"), 4),
        "ease_lambda": baselines["ease"].params.get("lambda"),
        "ndcg_ratio_vs_ease": round(ours.value("ndcg@10") / max(ease.value("ndcg@10"), 1e-12), 3),
        "test_ndcg@10_ci": ours.summary["ndcg@10"].as_dict(),
        "test_hr@10_ci": ours.summary["hr@10"].as_dict(),
        "baselines": table,
        "baselines_fit_seconds": round(baseline_seconds, 1),
        "strongest_baseline": strongest,
        "ndcg_ratio_vs_strongest": table[strongest]["model_ndcg@10_ratio"],
        "cold_hr@10": round(ours_cold.value("hr@10"), 4),
        "cold_hr@10_new_item_popularity": round(pop_cold.value("hr@10"), 4),
        "cold_users": int(len(data.cold_targets)),
        "within_15_minutes": bool(wall <= 15 * 60),
    }
    bench_dir.mkdir(parents=True, exist_ok=True)
    (bench_dir / "training.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print("| benchmark | wall | epochs | targets/s | val NDCG@10 | test NDCG@10 | EASE NDCG@10 | ratio "
          "| cold HR@10 (new-item pop.) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| two-tower training, ML-100K, CPU | {wall / 60:.1f} min | {len(history)} | "
          f"{result['targets_per_second']:.0f} | {result['val_ndcg@10']:.4f} | {result['test_ndcg@10']:.4f} | "
          f"{result['ease_test_ndcg@10']:.4f} | {result['ndcg_ratio_vs_ease']:.2f}x | "
          f"{result['cold_hr@10']:.3f} ({result['cold_hr@10_new_item_popularity']:.3f}) |")
    print()
    print("| recommender | NDCG@10 (95% CI) | HR@10 (95% CI) | model / it (NDCG@10) | paired CI of the difference |")
    print("|---|---|---|---|---|")
    n, h = result["test_ndcg@10_ci"], result["test_hr@10_ci"]
    print(f"| two-tower | {n['value']:.4f} ({n['low']:.4f}-{n['high']:.4f}) | {h['value']:.4f} "
          f"({h['low']:.4f}-{h['high']:.4f}) | - | - |")
    for name, row in table.items():
        n, h, d = row["ndcg@10"], row["hr@10"], row["model_minus_baseline_ndcg@10"]
        params = ", ".join(f"{k}={v:g}" for k, v in row["params"].items())
        label = f"{name} ({params})" if params else name
        print(f"| {label} | {n['value']:.4f} ({n['low']:.4f}-{n['high']:.4f}) | {h['value']:.4f} "
              f"({h['low']:.4f}-{h['high']:.4f}) | {row['model_ndcg@10_ratio']:.2f}x | "
              f"{d['low']:+.4f}..{d['high']:+.4f} |")
    return result


if __name__ == "__main__":
    main()
