"""`recsys evaluate`: the candidate model against the champion and the baselines, with the promotion gate."""

from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.table import Table

from recsys.common import console, errors_as_exit, state


def evaluate(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", help="Trained model directory (or baseline:ease|item-knn|most-popular)."),
    canonical: Path | None = typer.Option(
        None, "--canonical", help="Folder with the canonical tables (default <data_dir>/canonical)"),
    out: Path | None = typer.Option(None, "--out", help="Report folder (default <artifacts>/evaluation/<time>)."),
    ablation: list[str] = typer.Option(
        [], "--ablation", metavar="NAME=DIR",
        help="A variant of the model (another trained model directory) reported beside it, paired on the same "
             "users, with its validation figures and the variant validation picks; repeatable."),
) -> None:
    """Rank test targets over the whole catalogue; HR/NDCG/MRR/coverage with CIs, groups, cold start, gate."""
    from components.evaluate import BASELINE_PREFIX, ablation_dirs, baseline_candidate, run_evaluation

    config = state(ctx).config
    canonical = canonical or Path(config.paths.data_dir) / "canonical"
    out = out or Path(config.paths.artifacts_dir) / "evaluation" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with errors_as_exit():
        variants = ablation_dirs(ablation)
        if model.startswith(BASELINE_PREFIX):
            candidate = baseline_candidate(config, canonical, model)
            evaluation = run_evaluation(config, canonical, out, candidate=candidate, ablations=variants)
        else:
            evaluation = run_evaluation(config, canonical, out, model_dir=Path(model), ablations=variants)
    ks = evaluation.info["ks"]
    gate_metric = config.evaluate.gate_metric
    table = Table(title=f"{evaluation.info['test_users']} test users x {evaluation.info['catalogue_items']} items; "
                        f"cold: {evaluation.info['cold_users']} users x {evaluation.info['split']['cold_items']} items")
    for col in ["recommender", *[f"{m}@{k}" for k in ks for m in ("HR", "NDCG")], "MRR", f"{gate_metric} 95% CI",
                f"cov@{ks[0]}"]:
        table.add_column(col, justify="left" if col == "recommender" else "right")
    for r in evaluation.results + evaluation.cold:
        cold = r not in evaluation.results
        label = f"{'cold: ' if cold else ''}{r.key}" + (f" ({r.name})" if r.name != r.key else "")
        est = r.summary.get(gate_metric)
        ci = f"{est.low:.4f}-{est.high:.4f}" if est is not None else "-"
        cells = [f"{r.summary[f'{m}@{k}'].value:.4f}" for k in ks for m in ("hr", "ndcg")]
        cov = "-" if cold else f"{r.coverage[f'coverage@{ks[0]}']:.3f}"
        table.add_row(label, *cells, f"{r.summary['mrr'].value:.4f}", ci, cov)
    console.print(table)
    for row in evaluation.info["ablation"]:
        diff = row.get("minus_candidate")
        console.print(f"ablation {row['variant']}: {row['metric']} {row['value']['value']:.4f}"
                      + (f" (minus the model {diff['value']:+.4f}, paired CI {diff['low']:+.4f}..{diff['high']:+.4f})"
                         if diff else ""))
    if evaluation.info.get("ablation_choice"):
        from components.evaluation_report import ablation_choice_line

        console.print(ablation_choice_line(evaluation.info).replace("**", ""))
    d = evaluation.decision
    colour = "green" if d["promote"] else "yellow"
    console.print(f"[bold {colour}]{'PROMOTE' if d['promote'] else 'KEEP CHAMPION'}[/]: {d['reason']}")
    console.print(f"report: [bold]{out / 'report.html'}[/] (and report.md, metrics.json, decision.json)")

