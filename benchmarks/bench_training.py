"""Benchmark: the two-tower model against every baseline of the evaluate step, in one run, on one data set.

Trains the model (CPU, frozen text encoder, cached texts) and any ablation variants (`--variant`), measures
training time and throughput, then scores them with the evaluation step's own protocol (components.evaluate:
warm-catalogue ranking of the temporal leave-last-out test targets; cold-start items ranked among the held-out
cold items, beside new-item popularity: each user's last and every interaction) next to every baseline
(most-popular, item-kNN, EASE, ALS, SASRec-CE, each tuned on validation; their fitting time too), with the paired
95% CI of each model's NDCG@10 difference to each baseline. Writes artifacts/benchmarks/training[_<data set>].json
and a PNG of NDCG@10 with CIs, and prints Markdown rows for the README.

    .venv/bin/python -m benchmarks.bench_training [--config FILE] [--set KEY=VALUE ...]
        [--variant NAME:KEY=VALUE,KEY=VALUE ...]   e.g. --variant id-only:model.item_representation=id_only
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
        log.info("ingesting %s into %s", config.dataset.name, folder)
        ingest(config, folder)
    return folder


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'name:key=value,key=value' -> (name, ['key=value', ...])."""
    name, _, overrides = text.partition(":")
    if not name or not overrides or any("=" not in o for o in overrides.split(",")):
        raise SystemExit(f"--variant {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
    return name, overrides.split(",")


def _plot(rows: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    values = [rows[n]["ndcg@10"]["value"] for n in names]
    low = [v - rows[n]["ndcg@10"]["low"] for n, v in zip(names, values, strict=True)]
    high = [rows[n]["ndcg@10"]["high"] - v for n, v in zip(names, values, strict=True)]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
    colors = ["tab:orange" if rows[n]["kind"] == "model" else "tab:blue" for n in names]
    ax.barh(names, values, xerr=[low, high], color=colors, capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel("NDCG@10 (95% bootstrap CI)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--variant", dest="variants", action="append", default=[],
                        help="an ablation trained and scored in the same run: NAME:KEY=VALUE[,KEY=VALUE...]")
    parser.add_argument("--out", default=None, help="model directory (default <artifacts_dir>/benchmarks/model)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from components.baselines import configured_baselines
    from components.config import load_config
    from components.evaluate import (
        NewItemPopularity,
        evaluate_cold,
        evaluate_main,
        every_event_results,
        prepare,
        profile_only_results,
        served_mix_results,
    )
    from components.metrics import paired_difference
    from components.model import load_recommender
    from components.schemas import read_tables
    from components.train import train_model
    from components.train_data import examples_from_tables

    config = load_config(args.config, args.overrides)
    variants = [("two-tower", [])] + [parse_variant(v) for v in args.variants]
    bench_dir = Path(config.paths.artifacts_dir) / "benchmarks"
    model_root = Path(args.out) if args.out else bench_dir / "model"
    canonical = _canonical(config)
    tables = read_tables(canonical)
    examples_dir = bench_dir / "examples"
    examples_dir.mkdir(parents=True, exist_ok=True)
    examples = examples_from_tables(tables, config.features.last_n_items, config.dataset)
    examples.to_parquet(examples_dir / "examples.parquet")
    data = prepare(config, tables)

    models: dict[str, dict] = {}
    for name, overrides in variants:
        variant_config = load_config(args.config, [*args.overrides, *overrides])
        model_dir = model_root if name == "two-tower" else model_root.parent / f"model-{name}"
        started = time.perf_counter()
        metrics = train_model(variant_config, canonical, examples_dir, model_dir, progress=False)
        wall = time.perf_counter() - started
        history = json.loads((model_dir / "history.json").read_text())
        epoch_seconds = sum(h["epoch_seconds"] for h in history)
        model = load_recommender(model_dir)
        models[name] = {
            "overrides": overrides, "wall": wall, "history": history, "metrics": metrics,
            "targets_per_second": sum(h["positions"] for h in history) / max(epoch_seconds, 1e-9),
            "model": model,
            "main": evaluate_main(model, name, "candidate", data, config),
            "cold": evaluate_cold(model, name, "candidate", data, config),
        }
        log.info("%s: test NDCG@10 %.4f, %.1f min", name, models[name]["main"].value("ndcg@10"), wall / 60)
    pop_cold = evaluate_cold(NewItemPopularity(data.split.cold_interactions), "new-item-popularity", "baseline",
                             data, config)
    started = time.perf_counter()
    baselines = configured_baselines(data.split, tables["users"], data.catalogue, config)
    baseline_seconds = time.perf_counter() - started
    scored = {name: evaluate_main(rec, name, "baseline", data, config) for name, rec in baselines.items()}
    ours = models["two-tower"]["main"]

    def versus(result, other) -> dict:
        diff = paired_difference(result.per_user["ndcg@10"], other.per_user["ndcg@10"],
                                 config.evaluate.bootstrap_samples, config.train.seed)
        return {"ratio": round(result.value("ndcg@10") / max(other.value("ndcg@10"), 1e-12), 3),
                "difference": diff.as_dict()}

    table: dict[str, dict] = {}
    for name, entry in models.items():
        r, cold = entry["main"], entry["cold"]
        best_epoch = max(entry["history"], key=lambda h: h["val_ndcg@10"])["epoch"]
        table[name] = {"kind": "model", "overrides": entry["overrides"], "ndcg@10": r.summary["ndcg@10"].as_dict(),
                       "hr@10": r.summary["hr@10"].as_dict(), "params": r.params,
                       "train_wall_seconds": round(entry["wall"], 1), "epochs": len(entry["history"]),
                       "best_epoch": int(best_epoch), "targets_per_second": round(entry["targets_per_second"], 1),
                       "val_ndcg@10": round(entry["metrics"]["val_ndcg@10"], 4),
                       "cold_hr@10": cold.summary["hr@10"].as_dict(), "cold_ndcg@10": cold.summary["ndcg@10"].as_dict(),
                       "cold_hr@10_minus_new_item_popularity": paired_difference(
                           cold.per_user["hr@10"], pop_cold.per_user["hr@10"], config.evaluate.bootstrap_samples,
                           config.train.seed).as_dict(),
                       "cold_every_event": every_event_results(entry["model"], data, tables["users"], config),
                       "served_mix": served_mix_results(entry["model"], data, tables["users"], config),
                       "versus": {b: versus(r, scored[b]) for b in scored}}
        if config.dataset.user_attributes:  # cold-start users: the test targets ranked from the profile alone
            profile_only, gain = profile_only_results(entry["model"], baselines, data, config)
            table[name]["profile_only"] = {**{r.key: {"hr@10": r.summary["hr@10"].as_dict(),
                                                      "ndcg@10": r.summary["ndcg@10"].as_dict()}
                                              for r in profile_only}, "gain": gain}
        if name != "two-tower":
            table[name]["versus"]["two-tower"] = versus(r, ours)
    for name, r in scored.items():
        table[name] = {"kind": "baseline", "ndcg@10": r.summary["ndcg@10"].as_dict(),
                       "hr@10": r.summary["hr@10"].as_dict(), "params": r.params,
                       "model_minus_baseline_ndcg@10": versus(ours, r)["difference"],
                       "model_ndcg@10_ratio": versus(ours, r)["ratio"]}
    strongest = max(scored, key=lambda name: scored[name].value("ndcg@10"))
    main_entry = table["two-tower"]
    result = {
        "benchmark": f"two-tower against every baseline on {config.dataset.name} (CPU, frozen text encoder)",
        "dataset": config.dataset.name,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {config.train.num_threads}",
        "config": {"model": config.dump()["model"], "train": config.dump()["train"]},
        "test_users": int(len(data.targets)), "catalogue": int(len(data.catalogue)),
        "train_wall_seconds": main_entry["train_wall_seconds"],
        "test_ndcg@10": main_entry["ndcg@10"]["value"], "test_hr@10": main_entry["hr@10"]["value"],
        "recommenders": table,
        "baselines_fit_seconds": round(baseline_seconds, 1),
        "strongest_baseline": strongest,
        "ndcg_ratio_vs_strongest": main_entry["versus"][strongest]["ratio"],
        "ndcg_difference_vs_strongest": main_entry["versus"][strongest]["difference"],
        "cold_hr@10_new_item_popularity": pop_cold.summary["hr@10"].as_dict(),
        "cold_users": int(len(data.cold_targets)),
        "within_15_minutes": bool(main_entry["train_wall_seconds"] <= 15 * 60),
    }
    bench_dir.mkdir(parents=True, exist_ok=True)
    stem = "training" if config.dataset.name == "movielens-100k" else f"training_{config.dataset.name}"
    (bench_dir / f"{stem}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    _plot(table, bench_dir / f"{stem}.png", f"{config.dataset.name}: {len(data.targets)} test users, "
          f"{len(data.catalogue)} items")
    print("| recommender | NDCG@10 (95% CI) | HR@10 (95% CI) | two-tower / it | paired CI of the difference "
          "| cold HR@10 | train |")
    print("|---|---|---|---|---|---|---|")
    for name, row in table.items():
        n, h = row["ndcg@10"], row["hr@10"]
        params = ", ".join(f"{k}={v:g}" for k, v in row["params"].items() if isinstance(v, int | float))
        label = f"{name} ({params})" if params and row["kind"] == "baseline" else name
        if row["kind"] == "baseline":
            d = row["model_minus_baseline_ndcg@10"]
            rel, cold, train = f"{row['model_ndcg@10_ratio']:.2f}x", "-", "-"
            ci = f"{d['low']:+.4f}..{d['high']:+.4f}"
        else:
            ref = "two-tower" if name != "two-tower" else strongest
            v = row["versus"][ref]
            rel = f"{v['ratio']:.2f}x of {ref}" if name != "two-tower" else "-"
            ci = f"{v['difference']['low']:+.4f}..{v['difference']['high']:+.4f} vs {ref}"
            cold = f"{row['cold_hr@10']['value']:.3f}"
            train = f"{row['train_wall_seconds'] / 60:.1f} min"
        print(f"| {label} | {n['value']:.4f} ({n['low']:.4f}-{n['high']:.4f}) | {h['value']:.4f} "
              f"({h['low']:.4f}-{h['high']:.4f}) | {rel} | {ci} | {cold} | {train} |")
    return result


if __name__ == "__main__":
    main()
