"""`recsys features ...`: build and apply the Feast repository, materialize, look up a user online."""

from pathlib import Path

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from recsys.common import console, errors_as_exit, state

app = typer.Typer(help="Feast feature store: apply, materialize, online look-ups.", no_args_is_help=True)


@app.command()
def apply(
    ctx: typer.Context,
    canonical: Path | None = typer.Option(None, help="Folder with the canonical tables (default <data_dir>/canonical)"),
    examples: Path | None = typer.Option(None, help="Also write the training examples (C1) to this folder."),
) -> None:
    """Compute the feature tables from the canonical tables and register the repository."""
    from components.features import build_feature_store, feature_data_dir, write_training_examples

    config = state(ctx).config
    canonical = canonical or Path(config.paths.data_dir) / "canonical"
    with errors_as_exit():
        store = build_feature_store(config, canonical)
        if examples is not None:
            path = write_training_examples(config, store, canonical, examples)
            console.print(f"training examples in [bold]{path}[/]")
    console.print(f"feature repository applied; tables in [bold]{feature_data_dir(config)}[/]")


@app.command()
def materialize(ctx: typer.Context) -> None:
    """Load feature values up to now into the online store (SQLite or Redis, per features.online_store)."""
    from components.features import materialize as run_materialize
    from components.features import open_store

    config = state(ctx).config
    with errors_as_exit():
        done = run_materialize(open_store(config))
    console.print(f"materialized into the {config.features.online_store} online store: {done}")


@app.command()
def lookup(ctx: typer.Context, user_id: list[int] = typer.Option(..., "--user-id", "-u", help="Repeatable.")) -> None:
    """Print the online (`serving`) features of one or more users."""
    from components.features import open_store
    from components.features_online import online_features

    config = state(ctx).config
    with errors_as_exit():
        frame = online_features(open_store(config), user_id)
    table = Table(title=f"serving features ({config.features.online_store})")
    table.add_column("feature", style="bold")
    for uid in frame["user_id"]:
        table.add_column(f"user {uid}")
    for col in frame.columns.drop("user_id"):
        table.add_row(col, *[_show(v) for v in frame[col]])
    Console().print(table)  # stdout: the table is the command's output


def _show(value: object) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value) or "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None or value is pd.NA else str(value)
