"""`recsys serve` / `recsys deploy` and the KFP deploy component, each against a real detached Triton server."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.serving_stack import serving_config
from components.config import config_to_text
from components.processes import pid_alive
from serving import triton_admin
from serving import triton_server as ts
from serving.deploy import read_history

pytestmark = pytest.mark.integration


def _recsys(config, *args: str) -> subprocess.CompletedProcess:
    s = config.serving
    sets = [
        f"serving.{key}={getattr(s, key)}"
        for key in (
            "triton_http_port",
            "triton_grpc_port",
            "triton_metrics_port",
            "model_repository",
            "triton_build_dir",
            "triton_log_file",
        )
    ]
    cmd = [str(Path(sys.executable).parent / "recsys"), *[x for pair in sets for x in ("--set", pair)], *args]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_cli_serve_deploy_status_stop(tmp_path, bundles):
    config = serving_config(tmp_path)
    settings = ts.settings_from_config(config)
    started = _recsys(config, "serve", "triton", "--detach")
    assert started.returncode == 0, started.stderr
    pid = ts.running_pid(settings)
    try:
        assert pid is not None and ts.is_ready(settings)
        deployed = _recsys(config, "deploy", "bundle", str(bundles["a"]))
        assert deployed.returncode == 0 and "version 1 live" in deployed.stderr
        lonely = _recsys(config, "deploy", "rollback")
        assert lonely.returncode == 1 and "no rollback target" in lonely.stderr
        status = json.loads(_recsys(config, "deploy", "status").stdout)
        assert status["active"] == 1 and status["serving_version"] == 1 and status["versions_on_disk"] == [1]
    finally:
        stopped = _recsys(config, "serve", "triton-stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stderr
    # the key the deploy commands used is in the launcher's 0600 file, and in no output or log line
    key = triton_admin.admin_key(settings.build_dir)
    assert str(triton_admin.key_file(settings.build_dir)) in started.stderr.replace("\n", "")
    outputs = (started, deployed, lonely, stopped)
    assert all(key not in p.stdout + p.stderr for p in outputs) and key not in json.dumps(status)
    assert key not in settings.log_file.read_text(errors="replace")
    assert not pid_alive(pid) and not ts.is_ready(settings)
    assert not list(ts.SHM_DIR.glob(f"{settings.shm_prefix}*"))


def test_deploy_op_starts_triton_and_deploys(tmp_path, bundles):
    from kfp import dsl, local

    from pipelines.training import deploy_op

    config = serving_config(tmp_path)
    settings = ts.settings_from_config(config)

    @dsl.pipeline(name="deploy-only")
    def deploy_only(config_text: str, bundle_uri: str):
        bundle = dsl.importer(artifact_uri=bundle_uri, artifact_class=dsl.Artifact)
        deploy_op(config=config_text, bundle=bundle.output)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    try:
        deploy_only(config_text=config_to_text(config), bundle_uri=str(bundles["a"]))
        assert ts.running_pid(settings) is not None
        history = read_history(config.serving.model_repository)
        assert history["active"] == 1 and history["events"][-1]["status"] == "active"
        outputs = list(Path(tmp_path / "kfp").rglob("deployment"))
        assert outputs and json.loads(outputs[0].read_text())["version"] == 1
    finally:
        ts.stop_detached(settings)
