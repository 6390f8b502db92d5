"""`recsys simulate`: replay the data set through the real API: the closed loop (drift -> retrain -> redeploy)."""

import json
from pathlib import Path

import typer

from monitoring.replay_world import SimSettings
from recsys.common import console, errors_as_exit, state

DEFAULTS = SimSettings()

# What a replay on a 2-core CPU can afford, and a policy for week-long windows of a few hundred events (small
# windows make distances noisy; the activity feature always drifts because the log runs on a compressed clock);
# fairness and quality are reported every week but only drift triggers (quality only if it falls to zero: a week
# of ~150 sampled requests swings by half from week to week). Every model trains with the defaults' budget (a cut
# one left the first model far below EASE on its own data), and each evaluation keeps the cheap baselines
# (SASRec off, ALS at one grid point). --config/--set come on top of these.
# The loop trains on a fifth of the data set (~20k interactions of ~300 users: ~600 sequence windows), so the
# defaults' batch of 128 windows makes an epoch 5 optimiser steps and the patience of 10 epochs stops on the noise
# of a ~300-user validation set while the model is still far from converged (a retrain stopped at epoch 24 with
# test NDCG@10 0.026, below most-popular; trained on for 80 epochs it reached 0.060). A batch of 32 gives an epoch
# about as many steps as one epoch of the whole data set at the defaults (~20).
# The policy acts on drift that persists for two weekly runs: a retrain on the first shifted week alone (one week of
# the new cohort) tied the champion at the gate.
SIMULATION_DEFAULTS = [
    "train.batch_size=32",
    "evaluate.bootstrap_samples=50", "evaluate.knn_neighbours=[50,200]", "evaluate.ease_lambdas=[200,800]",
    "evaluate.sasrec.enabled=false", "evaluate.als.factors=[64]", "evaluate.als.regularization=[1.0]",
    "evaluate.als.iterations=[15]", "evaluate.als.alpha=[10.0]",
    "compress.variants=[fp32]", "compress.latency_repeats=3",
    "monitoring.drift_threshold=0.4", "monitoring.embedding_auc_threshold=0.8",
    "monitoring.drift_share_threshold=0.3", "monitoring.quality_drop_threshold=1.0",
    "monitoring.fairness_ratio_threshold=0.0", "monitoring.signal_persistence_runs=2",
]


def simulate(
    ctx: typer.Context,
    out: Path = typer.Option(Path("artifacts/simulation"), help="Folder for every artifact, store, log and report."),
    tables: Path | None = typer.Option(
        None, help="Canonical tables (ingested if missing) (default <data_dir>/canonical)"),
    train_weeks: float = typer.Option(DEFAULTS.train_weeks, help="Weeks of data the first model is trained on."),
    serve_weeks: int = typer.Option(DEFAULTS.serve_weeks, help="Normal weeks served before the shift."),
    shift_weeks: int = typer.Option(DEFAULTS.shift_weeks, help="Weeks of shifted traffic (cohort + new items)."),
    events_per_week: int = typer.Option(
        DEFAULTS.events_per_week, help="Events replayed per week (each: /recommend then /interactions)."),
    events_per_user_week: int = typer.Option(
        DEFAULTS.events_per_user_week, help="At most this many events of one user per week."),
    cohort: str | None = typer.Option(
        None, help="Users held out until the shift: '<attribute><op><value>' (default: the data set's declared "
        "replay_cohort, e.g. age<30 for MovieLens)."),
    cohort_share: float = typer.Option(DEFAULTS.cohort_share, help="Share of shifted-week events from the cohort."),
    new_items: int = typer.Option(
        DEFAULTS.new_items, help="The shifted weeks' most wanted items, held back until the shift (new releases)."),
    cooldown_weeks: float | None = typer.Option(
        None, help="Retraining policy cooldown in weeks of data time (default: shift weeks + 1, one retrain per "
        "shift; a shorter one retrains again while the drift persists)."),
    seed: int = typer.Option(DEFAULTS.seed, help="Sampling seed."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars while replaying."),
) -> None:
    """Replay the data set in time order through the API, with monitoring, retraining and redeploy."""
    from components.config import load_config
    from monitoring.simulate import run_simulation

    st = state(ctx)
    with errors_as_exit():
        config = load_config(st.config_path, [*SIMULATION_DEFAULTS, *st.overrides])
        tables = tables or Path(config.paths.data_dir) / "canonical"
        if not (tables / "interactions.parquet").exists():  # ingested beside the data, never into `out`
            from components.ingest import ingest

            ingest(config, tables)
        settings = SimSettings(train_weeks=train_weeks, serve_weeks=serve_weeks, shift_weeks=shift_weeks,
                               events_per_week=events_per_week, events_per_user_week=events_per_user_week,
                               cohort=cohort, cohort_share=cohort_share, new_items=new_items,
                               cooldown_weeks=shift_weeks + 1 if cooldown_weeks is None else cooldown_weeks,
                               seed=seed)
        summary = run_simulation(config, out, settings, tables, progress=progress)
    q = summary["quality"]
    console.rule("closed-loop replay")
    console.print(json.dumps({
        "drift_detected_at": summary["drift_detected_at"], "retrains_triggered": summary["retrains_triggered"],
        "promoted_version": summary["promoted_version"],
        "hit_rate_shifted_pre_retrain": q["pre_retrain_shifted"]["hit_rate"],
        "hit_rate_shifted_post_retrain": q["post_retrain_shifted"]["hit_rate"],
        "ndcg_shifted_pre_retrain": q["pre_retrain_shifted"]["ndcg"],
        "ndcg_shifted_post_retrain": q["post_retrain_shifted"]["ndcg"], "recovered": summary["recovered"],
        "first_model_gate": ((summary["first_model"] or {}).get("gate") or {}).get("reason"),
        "gain_over_shadow_champion": (summary["counterfactual"] or {}).get("gain"),
        "seconds": summary["seconds"]}, indent=2, default=str))
    console.print(f"Evidently dashboard: [bold]{summary['evidently']['ui']}[/]", soft_wrap=True)
    console.print(f"timeline [bold]{summary['timeline']}[/]; index [bold]{summary['index']}[/]", soft_wrap=True)
