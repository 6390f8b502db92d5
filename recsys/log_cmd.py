"""`recsys log ...`: the request log's upkeep; `prune` is the retention job (never the API's request path)."""

import json

import typer

from recsys.common import console, errors_as_exit, state

app = typer.Typer(help="The request/response log: retention.", no_args_is_help=True)


@app.command()
def prune(
    ctx: typer.Context,
    days: float | None = typer.Option(None, "--days", min=0.0, help="Keep this many days (default: "
                                      "serving.request_log_retention_days)."),
    log: str | None = typer.Option(None, help="Request log, SQLite file or postgresql:// URL (default: "
                                   "serving.request_log); a URL's password comes from RECSYS_REQUEST_LOG_PASSWORD."),
) -> None:
    """Delete requests, their ranked items and interactions older than the retention age (prints the counts)."""
    from datetime import timedelta

    from components.request_log import RequestLogError
    from components.request_logs import open_request_log

    config = state(ctx).config
    keep = config.serving.request_log_retention_days if days is None else days
    with errors_as_exit():
        if keep <= 0:
            raise RequestLogError(f"--days must be positive, got {keep}")
        with open_request_log(log or config.serving.request_log) as request_log:
            result = request_log.prune(timedelta(days=keep))
    console.print(json.dumps(result.as_dict(), indent=2))
    console.print(f"pruned entries before [bold]{result.cutoff.isoformat()}[/] ({keep:g} days kept)")
