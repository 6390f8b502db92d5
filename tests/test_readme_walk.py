"""Every README command works as written, in the order written, on a fresh folder.

The commands are the README's own ```bash blocks, run one line at a time by bash in a new working folder (with
the project's `.venv`, as `make` leaves it in a clone) on a tiny configuration given the way a user gives one:
`recsys --config tiny.yaml ...`, every path and port of it inside the folder. What the walk changes in a line,
and nothing else: `--config tiny.yaml` after `recsys`; the curl call's `localhost:3000` becomes the tiny API's
address; `recsys simulate` gets the tiny replay's options; `KEY_ID` is the key the walk created. A command the
walk does not run is in SKIPPED with its reason.
"""

import dataclasses
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from components.config import parse_overrides
from components.processes import free_port
from monitoring.replay_world import SimSettings
from tests.conftest import TINY_PIPELINE as TINY
from tests.conftest import TINY_REPLAY

PROJECT_ROOT = Path(__file__).resolve().parents[1]
README = PROJECT_ROOT / "README.md"
RECSYS = ".venv/bin/recsys"
README_API = "localhost:3000"  # the API's address in the README's curl call (the defaults' port)

SKIPPED = {  # README command -> why the walk does not run it
    "make demo": "the whole pipeline on the full configuration (about 10 minutes); the walk runs its steps one "
                 "command at a time",
    "make test": "the walk is one of its tests",
    ".venv/bin/recsys data synth --out data/shop": "the shop is another data set with its own --config (no tiny "
                                                   "one); tests/pipelines/test_your_data.py runs its flow end to end",
    ".venv/bin/recsys --config data/shop/config.yaml pipeline run training": "the shop's flow (see data synth)",
    ".venv/bin/recsys --config data/shop/config.yaml serve api --detach": "the shop's flow (see data synth)",
}

# The walk in order (fetch -> ingest -> validate -> pipeline -> serve -> call -> loop -> monitor -> stop): a README
# edit that drops one of these, or moves it out of order, fails the test
WALK = ["recsys data fetch", "recsys data ingest", "recsys data validate", "recsys pipeline run training",
        "recsys serve triton --detach", "recsys serve api --detach", "curl", "recsys serve api-key create",
        "recsys simulate", "recsys monitor report", "recsys monitor decide", "recsys monitor ui --detach",
        "recsys monitor ui-stop", "recsys serve api-stop", "recsys serve triton-stop"]
STOPS = ["serve api-stop", "serve triton-stop", "monitor ui-stop"]  # also run after a failure


def readme_commands(text: str) -> list[str]:
    """The command lines of the README's ```bash blocks, in order (continuation lines joined)."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        block = re.sub(r"\\\n\s*", "", block)
        commands += [line.strip() for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return commands


def without_comment(command: str) -> str:
    return re.sub(r"\s+#\s.*$", "", command).strip()


def tiny_config(folder: Path) -> Path:
    """tiny.yaml: a fast model and every path and port of the walk inside `folder`."""
    places = {
        "paths.data_dir": folder / "data", "paths.artifacts_dir": folder / "artifacts",
        "paths.pipeline_root": folder / "artifacts" / "kfp", "features.data_dir": folder / "features",
        "serving.host": "127.0.0.1", "serving.triton_grpc_port": free_port(), "serving.triton_http_port": free_port(),
        "serving.triton_metrics_port": free_port(), "serving.api_port": free_port(),
        "serving.model_repository": folder / "artifacts" / "triton_models",
        "serving.triton_build_dir": folder / "build" / "triton",
        "serving.triton_log_file": folder / "build" / "triton" / "tritonserver.log",
        "serving.request_log": folder / "artifacts" / "request_log.sqlite",
        "monitoring.reports_dir": folder / "artifacts" / "monitoring",
        "monitoring.state_path": folder / "artifacts" / "monitoring" / "policy_state.json",
        "monitoring.ui_port": free_port(),
    }
    fastest = {"train.epochs": 1, "evaluate.sasrec.enabled": False, "evaluate.als.enabled": False}  # EASE: champion
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(parse_overrides([f"{k}={v}" for k, v in {**TINY, **fastest, **places}.items()])),
                    encoding="utf-8")
    return path


def tiny_replay_options() -> str:
    """The tiny replay of the simulation tests (tests/conftest.py) as `recsys simulate` options."""
    tiny, defaults = SimSettings(**TINY_REPLAY), SimSettings()
    return " ".join(f"--{f.name.replace('_', '-')} {getattr(tiny, f.name)}"
                    for f in dataclasses.fields(SimSettings)
                    if getattr(tiny, f.name) != getattr(defaults, f.name))


def as_walked(command: str, api: str, key_id: str | None) -> str:
    """The README line as the walk runs it (see the module docstring)."""
    line = command.replace(f"{RECSYS} ", f"{RECSYS} --config tiny.yaml ", 1)
    if without_comment(command).startswith("curl"):
        assert README_API in command, f"the README's curl call no longer names {README_API}: {command}"
        line = line.replace(README_API, api)
    if without_comment(command) == f"{RECSYS} simulate":
        line = line.replace(f"{RECSYS} --config tiny.yaml simulate", f"{RECSYS} --config tiny.yaml simulate "
                            f"--no-progress {tiny_replay_options()}", 1)
    if "KEY_ID" in command:
        assert key_id, f"{command}: no key was created before it"
        line = line.replace("KEY_ID", key_id)
    return line


def run(line: str, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", line], cwd=folder, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.integration
@pytest.mark.slow
def test_the_readme_walks_as_written(tmp_path):
    commands = readme_commands(README.read_text(encoding="utf-8"))
    bare = [without_comment(c) for c in commands]
    for skipped in SKIPPED:
        assert skipped in bare, f"SKIPPED names {skipped!r}, which the README no longer holds"
    positions = [next((i for i, c in enumerate(bare) if c.replace(f"{RECSYS} ", "recsys ").startswith(step)), None)
                 for step in WALK]
    missing = [step for step, at in zip(WALK, positions, strict=True) if at is None]
    assert not missing, f"the README's commands no longer hold {missing}"
    assert positions == sorted(positions), f"the README's commands are out of the walk's order: {WALK}"

    folder = tmp_path / "clone"
    folder.mkdir()
    (folder / ".venv").symlink_to(PROJECT_ROOT / ".venv")  # what `make` leaves in a clone
    config = yaml.safe_load(tiny_config(folder).read_text(encoding="utf-8"))
    api = f"127.0.0.1:{config['serving']['api_port']}"
    env = {k: v for k, v in os.environ.items() if k not in ("RECSYS_CONFIG", "RECSYS_API_TOKEN")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GX_ANALYTICS_ENABLED="false",
               BENTOML_DO_NOT_TRACK="true", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="200")
    key_id, timings = None, []
    try:
        for command in commands:
            if without_comment(command) in SKIPPED:
                continue
            line = as_walked(command, api, key_id)
            started = time.monotonic()
            done = run(line, folder, env)
            timings.append((round(time.monotonic() - started, 1), without_comment(command)))
            output = f"$ {line}\n(exit {done.returncode})\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
            assert done.returncode == 0, output
            if without_comment(command).startswith("curl"):
                try:
                    answer = json.loads(done.stdout)
                except json.JSONDecodeError:
                    pytest.fail(f"the curl call did not answer JSON:\n{output}")
                assert answer.get("items") and not answer.get("degraded"), output
            if created := re.search(r"created key (\w+)", done.stderr):
                key_id = created.group(1)
    finally:
        for stop in STOPS:  # a failed walk leaves no server behind
            run(f"{RECSYS} --config tiny.yaml {stop}", folder, env)
        print("\n".join(f"{seconds:7.1f} s  {command}" for seconds, command in timings))
    assert (folder / "artifacts" / "simulation" / "summary.json").is_file()
