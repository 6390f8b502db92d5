"""Ranking-quality benchmark: most-popular, item-kNN, EASE, ALS, SASRec-CE (optionally a trained model), one split.

Runs the real evaluation step (temporal leave-last-out, full-catalogue ranking, bootstrap CIs, cold start) on the
canonical tables; the candidate is a trained model directory, or EASE when none is given.

    python -m benchmarks.bench_baselines [--canonical data/canonical] [--model MODEL_DIR]

Writes artifacts/benchmarks/baselines.json (+ the report under artifacts/benchmarks/baselines_report/) and prints
Markdown table rows for the README.
"""

import argparse
import json
import logging
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

from components.config import load_config
from components.evaluate import baseline_candidate, run_evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canonical", type=Path, default=Path("data/canonical"))
    parser.add_argument("--model", type=Path, default=None, help="trained model directory (default: EASE)")
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_config(args.config)
    out = Path(config.paths.artifacts_dir) / "benchmarks"
    started = time.perf_counter()
    if args.model is None:
        ev = run_evaluation(config, args.canonical, out / "baselines_report",
                            candidate=baseline_candidate(config, args.canonical, "baseline:ease"))
    else:
        ev = run_evaluation(config, args.canonical, out / "baselines_report", model_dir=args.model)
    seconds = time.perf_counter() - started
    rows = []
    for r in ev.results + ev.cold:
        if args.model is None and r.role == "candidate":
            continue  # the candidate is EASE itself
        task = "cold start" if r in ev.cold else "test"
        rows.append({"task": task, "recommender": r.key, "model": r.name, "params": r.params,
                     **{k: v.as_dict() for k, v in r.summary.items()}, **r.coverage})
    payload = {"created_at": datetime.now(UTC).isoformat(), "machine": platform.platform(), "seconds": seconds,
               "canonical": str(args.canonical), "info": ev.info, "rows": rows, "decision": ev.decision}
    out.mkdir(parents=True, exist_ok=True)
    (out / "baselines.json").write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    print("| task | recommender | params | NDCG@10 (95% CI) | HR@10 (95% CI) | MRR | coverage@10 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        params = ", ".join(f"{k}={v:g}" for k, v in row["params"].items()) or "-"
        n, h = row["ndcg@10"], row["hr@10"]
        cov = f"{row['coverage@10']:.3f}" if "coverage@10" in row else "-"
        print(f"| {row['task']} | {row['recommender']} | {params} | {n['value']:.4f} ({n['low']:.4f}-{n['high']:.4f}) "
              f"| {h['value']:.4f} ({h['low']:.4f}-{h['high']:.4f}) | {row['mrr']['value']:.4f} | {cov} |")


if __name__ == "__main__":
    main()
