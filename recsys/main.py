"""Root of the `recsys` command line; each area registers its sub-commands here."""

from pathlib import Path

import typer

from recsys import data, demo, pipeline
from recsys.common import State, setup_logging

app = typer.Typer(
    name="recsys",
    help="LLM-powered recommendation on Kubeflow: data, features, training, serving, monitoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML file merged over the defaults."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override one key: section.key=value (repeatable)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Configure the run: defaults < --config FILE < --set KEY=VALUE."""
    setup_logging(verbose)
    ctx.obj = State(config_path=config, overrides=list(set_))


app.add_typer(data.app, name="data")
app.add_typer(pipeline.app, name="pipeline")
app.command("demo")(demo.demo)
