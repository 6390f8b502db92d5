"""`recsys train` and `recsys recommend`: train the two-tower model, write batch recommendations."""

from datetime import datetime
from pathlib import Path

import typer

from recsys.common import console, errors_as_exit, state


def _training_inputs(config, canonical: Path, examples: Path | None, interactions: Path | None,
                     users: Path | None, items: Path | None, work: Path) -> tuple[Path, Path]:
    """(canonical dir, examples dir): as given, or built from `--interactions` (+ users/items) files."""
    from components.ingest import coerce_table, read_table_file
    from components.schemas import INTERACTIONS, ITEMS, USERS, read_tables, table_path, write_tables
    from components.train_data import EXAMPLES_FILE, TrainError, examples_from_tables

    if interactions is None:
        if examples is None:
            raise TrainError("give --examples DIR (the features step's output) or --interactions FILE")
        return canonical, examples
    tables = {}
    for name, given in ((INTERACTIONS, interactions), (USERS, users), (ITEMS, items)):
        if given is not None:
            tables[name] = coerce_table(read_table_file(given), name)
        elif table_path(canonical, name).is_file():
            tables[name] = read_tables(canonical)[name]
        else:
            raise TrainError(f"no {name} table: pass --{name} FILE or --canonical DIR holding {name}.parquet")
    canonical = write_tables(tables, work / "canonical")
    (work / "examples").mkdir(parents=True, exist_ok=True)
    examples = examples_from_tables(tables, config.features.last_n_items, config.dataset)
    examples.to_parquet(work / "examples" / EXAMPLES_FILE)
    return canonical, work / "examples"


def train(
    ctx: typer.Context,
    canonical: Path | None = typer.Option(
        None, help="Canonical tables (interactions/users/items) (default <data_dir>/canonical)"),
    examples: Path | None = typer.Option(None, help="Training examples (contract C1) from the features step."),
    interactions: Path | None = typer.Option(None, help="Any interactions CSV/parquet in the canonical schema."),
    users: Path | None = typer.Option(None, help="Users file (with --interactions; else from --canonical)."),
    items: Path | None = typer.Option(None, help="Items file with text (with --interactions; else --canonical)."),
    out: Path | None = typer.Option(None, help="Model directory (default <artifacts_dir>/model)."),
    resume: bool = typer.Option(False, help="Continue from <out>/checkpoint.pt."),
) -> None:
    """Train the two-tower model (early stopping on validation NDCG@10) and write the model directory."""
    from components.train import train_model

    config = state(ctx).config
    canonical = canonical or Path(config.paths.data_dir) / "canonical"
    out = out or Path(config.paths.artifacts_dir) / "model"
    with errors_as_exit():
        canonical_dir, examples_dir = _training_inputs(config, canonical, examples, interactions, users, items,
                                                       out / "inputs")
        metrics = train_model(config, canonical_dir, examples_dir, out, resume=resume)
    console.print(f"model in [bold]{out}[/]: " + ", ".join(
        f"{k}={v:.4g}" if isinstance(v, int | float) else f"{k}={'/'.join(f'{x:.4g}' for x in v)}"
        for k, v in metrics.items()))


def recommend(
    ctx: typer.Context,
    users: Path = typer.Option(..., help="CSV/parquet with a user_id column (profile columns optional)."),
    model: Path | None = typer.Option(None, help="Model directory (default <artifacts_dir>/model)."),
    canonical: Path | None = typer.Option(
        None, help="Canonical tables: histories and profiles (default <data_dir>/canonical)"),
    k: int = typer.Option(10, help="Items per user."),
    exclude_seen: bool = typer.Option(True, "--exclude-seen/--include-seen", help="Skip items a user has seen."),
    out: Path = typer.Option(Path("recommendations.parquet"), help="Output .parquet or .csv."),
    as_of: datetime | None = typer.Option(
        None, help="Request time the popularity priors count interactions before (UTC; default now)."),
) -> None:
    """Write the top-K items per user (user_id,item_id,rank,score)."""
    from components.recommend import recommend as run_recommend

    config = state(ctx).config
    canonical = canonical or Path(config.paths.data_dir) / "canonical"
    with errors_as_exit():
        recs = run_recommend(model or Path(config.paths.artifacts_dir) / "model", users, canonical, k, exclude_seen,
                             out, as_of)
    console.print(f"{len(recs)} recommendations for {recs['user_id'].nunique()} users in [bold]{out}[/]")
