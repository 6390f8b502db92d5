"""Root of the `recsys` command line; each area registers its sub-commands here."""

from pathlib import Path

import typer

from recsys import (
    compress_cmd,
    data,
    demo,
    evaluate_cmd,
    features,
    log_cmd,
    model,
    monitor,
    pipeline,
    serve,
)
from recsys.common import State, setup_logging
from recsys.simulate_cmd import simulate

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
app.add_typer(features.app, name="features")
app.command("evaluate")(evaluate_cmd.evaluate)
app.add_typer(pipeline.app, name="pipeline")
app.command("demo")(demo.demo)
app.add_typer(serve.app, name="serve")
app.add_typer(serve.deploy_app, name="deploy")
app.add_typer(monitor.app, name="monitor")
app.add_typer(log_cmd.app, name="log")
app.command("train")(model.train)
app.command("recommend")(model.recommend)
app.command("compress")(compress_cmd.compress)
app.command("simulate")(simulate)
