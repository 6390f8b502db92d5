"""Trustworthy ranking on one split: the fake-profile attack with and without the defence, the fairness mitigation
and the diversity curve. Writes artifacts/benchmarks/trust_attack.json and trust_ranking.json (+ PNG curves).

    python -m benchmarks.bench_trust --part attack      # 3 trainings (clean, attacked, attacked + defence)
    python -m benchmarks.bench_trust --part ranking     # 1 training (or --model DIR): fairness + diversity

The attack part trains on a reduced budget (`--attack-epochs`, default 15 epochs without early stopping) and says
so in its JSON; every training of it gets the same budget, so the comparison is like for like.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

log = logging.getLogger("bench_trust")


def _train(config, tables, folder: Path) -> Path:
    """Write `tables` as canonical tables + examples under `folder` and train a model there; returns its dir."""
    from components.schemas import write_tables
    from components.train import train_model
    from components.train_data import examples_from_tables

    model_dir = folder / "model"
    if (model_dir / "metrics.json").is_file():
        log.info("reusing %s", model_dir)
        return model_dir
    write_tables(tables, folder / "canonical")
    (folder / "examples").mkdir(parents=True, exist_ok=True)
    examples_from_tables(tables, config.features.last_n_items, config.dataset).to_parquet(
        folder / "examples" / "examples.parquet")
    train_model(config, folder / "canonical", folder / "examples", model_dir, progress=False)
    return model_dir


def attack_part(config, tables, out: Path, epochs: int, share: float, kind: str, n_targets: int,
                band: tuple[int, int], repeats: int) -> dict:
    from components.attacks import AttackSpec, inject_attack, target_hit_ratio
    from components.config import load_config
    from components.evaluate import prepare
    from components.fairness_mitigation import stage_events
    from components.model import load_recommender
    from components.shilling_defence import DefenceSettings, account_signals, defended_tables

    budget = [f"train.epochs={epochs}", "train.patience=1000", "train.max_minutes=120"]
    cfg = load_config(overrides=[f"paths.data_dir={config.paths.data_dir}", *budget])
    defended = load_config(overrides=[f"paths.data_dir={config.paths.data_dir}", *budget, "trust.defence.enabled=true"])
    clean = prepare(cfg, tables)  # genuine users' test task (the same split with the fakes in: fakes are new users)
    counts = clean.split.train["item_id"].value_counts()
    pool = np.setdiff1d(counts[(counts >= band[0]) & (counts < band[1])].index.to_numpy(), clean.split.held_out_items)
    targets = tuple(int(t) for t in np.random.default_rng(cfg.train.seed).choice(pool, n_targets, replace=False))
    attack = inject_attack(tables, cfg.dataset, AttackSpec(kind, targets, share, repeats=repeats, seed=cfg.train.seed))
    signals, suspected = account_signals(attack.tables["interactions"], cfg.dataset, DefenceSettings.from_config(cfg))
    fake = signals["user_id"].isin(attack.fake_users)
    runs = {"clean": (cfg, tables), "attacked": (cfg, attack.tables), "attacked_defended": (defended, attack.tables)}
    result: dict = {"attack": {"kind": kind, "fake_share": share, "order": attack.spec.order,
                               "target_band_train_interactions": list(band), "repeats": repeats,
                               "fake_accounts": int(len(attack.fake_users)),
                               "targets": list(targets), "target_train_interactions": [int(counts[t]) for t in targets],
                               "fake_events": int(len(attack.interactions))},
                    "budget": f"reduced: {epochs} epochs per training, no early stop (full budget: up to "
                              f"{config.train.epochs} epochs, early stop, {config.train.max_minutes} min)",
                    "detection": {"fake_flagged": int(signals["flagged"][fake].sum()),
                                  "fake_accounts": int(fake.sum()),
                                  "genuine_flagged": int(signals["flagged"][~fake].sum()),
                                  "genuine_accounts": int((~fake).sum()),
                                  "genuine_flagged_share": float(signals["flagged"][~fake].mean()),
                                  "suspected_items": suspected.tolist()},
                    "runs": {}}
    for name, (run_cfg, run_tables) in runs.items():
        started = time.monotonic()
        tag = f"-{epochs}ep" + ("" if name == "clean" else f"-{kind}-{share:g}-x{repeats}-"
                                                       f"{'-'.join(map(str, targets))}")
        model_dir = _train(run_cfg, run_tables, out / "trust_attack" / f"{name}{tag}")
        rec = load_recommender(model_dir)
        # ranked as the evaluator ranks it: the popularity priors count the events of the data it was trained on
        stage_events(rec, prepare(run_cfg, defended_tables(run_cfg, run_tables)))
        scores = rec.score(clean.users, clean.histories, clean.catalogue)
        effect = target_hit_ratio(scores, clean.histories, clean.catalogue, np.asarray(targets), k=10)
        effect["hit_ratio@50"] = target_hit_ratio(scores, clean.histories, clean.catalogue, np.asarray(targets),
                                                  k=50)["hit_ratio"]
        metrics = json.loads((model_dir / "metrics.json").read_text())
        result["runs"][name] = {**effect, "test_ndcg@10_all_users": metrics.get("test_ndcg@10"),
                                "epochs": metrics.get("epochs"), "seconds": round(time.monotonic() - started, 1)}
        log.info("%s: %s", name, result["runs"][name])
    base = result["runs"]["clean"]["hit_ratio"]
    for name in ("attacked", "attacked_defended"):
        value = result["runs"][name]["hit_ratio"]
        result["runs"][name]["hit_ratio_vs_clean"] = value / base if base > 0 else float("inf")
        at50 = result["runs"]["clean"]["hit_ratio@50"]
        result["runs"][name]["hit_ratio@50_vs_clean"] = result["runs"][name]["hit_ratio@50"] / at50 if at50 else None
        result["runs"][name]["mean_rank_shift"] = result["runs"]["clean"]["mean_rank"] - result["runs"][name][
            "mean_rank"]
    result["detection_sweep"] = detection_sweep(cfg, tables, targets)
    lift, kept = result["runs"]["attacked"]["hit_ratio_vs_clean"], result["runs"]["attacked_defended"][
        "hit_ratio_vs_clean"]
    result["acceptance"] = {"attack_lift_at_least_5x": lift >= 5.0, "defended_lift_below_1_5x": kept < 1.5,
                            "genuine_flagged_below_2pct": result["detection"]["genuine_flagged_share"] < 0.02}
    return result


def detection_sweep(config, tables, targets: tuple[int, ...]) -> list[dict]:
    """Detection alone (no training) for every attack kind at 1, 3 and 5% fake accounts, three seeds each."""
    from components.attacks import ATTACK_KINDS, AttackSpec, inject_attack
    from components.shilling_defence import DefenceSettings, account_signals

    rows = []
    for kind in ATTACK_KINDS:
        for share in (0.01, 0.03, 0.05):
            for seed in range(3):
                attack = inject_attack(tables, config.dataset, AttackSpec(kind, targets, share, repeats=2, seed=seed))
                signals, _ = account_signals(attack.tables["interactions"], config.dataset,
                                             DefenceSettings.from_config(config))
                fake = signals["user_id"].isin(attack.fake_users)
                rows.append({"kind": kind, "fake_share": share, "seed": seed, "fake_accounts": int(fake.sum()),
                             "fake_flagged": int(signals["flagged"][fake].sum()),
                             "genuine_flagged": int(signals["flagged"][~fake].sum())})
    return rows


def ranking_part(config, tables, out: Path, model_dir: Path | None) -> dict:
    from components.config import load_config
    from components.evaluate import ensure_items, eval_data, evaluate_main, prepare
    from components.model import load_recommender
    from components.trust_report import trust_analysis

    cfg = load_config(overrides=[f"paths.data_dir={config.paths.data_dir}", "trust.fairness.enabled=true"])
    model_dir = model_dir or _train(cfg, tables, out / "trust_ranking")
    rec = load_recommender(model_dir)
    data = prepare(cfg, tables)
    ensure_items(rec, data.items)
    validation = eval_data(data.split, tables["items"], tables["users"], "validation")
    result = trust_analysis(rec, data, validation, tables["users"], cfg,
                            lambda r: evaluate_main(r, r.name, "candidate", data, cfg), out / "trust_ranking_plots")
    return {"model_dir": str(model_dir), **result}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["attack", "ranking"], required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--model", type=Path, default=None, help="ranking: an existing model dir (no training)")
    parser.add_argument("--attack-epochs", type=int, default=15, help="epochs of every attack-part training")
    parser.add_argument("--repeats", type=int, default=2, help="events per target in each fake profile")
    parser.add_argument("--fake-share", type=float, default=0.03)
    parser.add_argument("--kind", default="bandwagon")
    parser.add_argument("--targets", type=int, default=5)
    parser.add_argument("--target-band", type=int, nargs=2, default=(30, 60),
                        help="targets drawn among items with this many training interactions [low, high)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from components.config import load_config
    from components.schemas import read_tables

    config = load_config(args.config, args.overrides)
    out = Path(config.paths.artifacts_dir) / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    tables = read_tables(Path(config.paths.data_dir) / "canonical")
    if args.part == "attack":
        result = attack_part(config, tables, out, args.attack_epochs, args.fake_share, args.kind, args.targets,
                             tuple(args.target_band), args.repeats)
    else:
        result = ranking_part(config, tables, out, args.model)
    path = out / f"trust_{args.part}.json"
    path.write_text(json.dumps(result, indent=2, default=float), encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "fairness_curve"}, indent=2, default=float)[:6000])
    return result


if __name__ == "__main__":
    main()
