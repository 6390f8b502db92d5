"""Every command of the `recsys` CLI answers --help; errors come out as one clean line."""

import typer
from typer.testing import CliRunner

from recsys.main import app

runner = CliRunner()


def _command_paths(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if hasattr(command, "commands"):
            paths += _command_paths(command, (*prefix, name))
    return paths


def test_every_command_has_help():
    root = typer.main.get_command(app)
    paths = _command_paths(root)
    assert {("data", "ingest"), ("data", "validate"), ("pipeline", "compile"), ("pipeline", "run"),
            ("log", "prune"), ("serve", "api-key", "create"), ("serve", "api-key", "revoke")} <= set(paths)
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output, path


def test_bad_override_is_a_clean_error():
    result = runner.invoke(app, ["--set", "train.epochz=1", "data", "fetch"])
    assert result.exit_code == 1
    assert "unknown config key 'train.epochz'" in result.output
    assert "Traceback" not in result.output


def test_submit_to_a_dead_host_fails_fast_and_clearly():
    import time

    from recsys.pipeline import pipeline_named

    pipeline_named("training")  # its modules imported first: the clock times the submission, not a cold import

    started = time.monotonic()
    result = runner.invoke(app, ["pipeline", "submit", "--host", "http://127.0.0.1:1", "--experiment", "x"])
    assert result.exit_code == 1
    assert "KFP host http://127.0.0.1:1 does not answer" in " ".join(result.output.split())
    assert time.monotonic() - started < 1.0


def test_log_prune_applies_the_configured_retention(log_target):
    from datetime import UTC, datetime, timedelta

    from components.request_logs import open_request_log
    from tests.conftest import request_record

    now = datetime.now(UTC)
    with open_request_log(log_target) as log:
        log.append_requests([request_record(1, ts=now - timedelta(days=10)),
                             request_record(2, ts=now - timedelta(days=1))])
        log.append_interaction("u-1", "sku-1", None, now - timedelta(days=30))
    args = ["--set", f"serving.request_log={log_target}", "--set", "serving.request_log_retention_days=7"]
    result = runner.invoke(app, [*args, "log", "prune"])
    assert result.exit_code == 0, result.output
    assert '"requests": 1' in result.output and '"interactions": 1' in result.output
    with open_request_log(log_target) as log:
        assert list(log.requests_frame()["request_id"]) == ["r2"] and log.interactions_frame().empty
    assert runner.invoke(app, [*args, "log", "prune", "--days", "0.5"]).exit_code == 0
    with open_request_log(log_target) as log:
        assert log.requests_frame().empty
