"""The Feast Deployment of k8s/ really starts: its init command, its serve command and its ConfigMap's
feature_store.yaml, run against the repository's definitions with a real redis-server on loopback.

The commands come from the rendered manifest (only the repository path, host, port and Redis address
are swapped for local ones), so a broken command line, store file or definition fails here. Redis requires a
password: the store file's ${RECSYS_REDIS_PASSWORD} reference gets it from the pod's environment.
"""

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import requests
import yaml

from components.processes import free_port
from tests.conftest import KUBECTL_MISSING, REDIS_MISSING
from tests.k8s import policies as P

pytestmark = [
    pytest.mark.integration,
    KUBECTL_MISSING,
    REDIS_MISSING,
]
BIN = Path(sys.executable).parent
REPO_IN_IMAGE = "/app/feature_repo"



def wait_for(url: str, proc: subprocess.Popen, timeout_s: float = 90.0) -> requests.Response:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {url} answered")
        try:
            response = requests.get(url, timeout=1)
            if response.status_code == 200:
                return response
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer 200 within {timeout_s} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def local_command(command: list[str], repo: Path, **swap: str) -> list[str]:
    """The manifest's command with the image's repository path and the given flag values replaced."""
    out = [str(repo) if word == REPO_IN_IMAGE else word for word in command]
    for flag, value in swap.items():
        out[out.index(flag) + 1] = value
    out[0] = str(BIN / out[0])
    return out


def test_feast_deployment_applies_serves_and_reads_redis(tmp_path, local_redis):
    objs = P.render("overlays/local")
    feast = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "feast")
    pod = feast["spec"]["template"]["spec"]
    init, server = pod["initContainers"][0], pod["containers"][0]
    config_map = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("feast-config-"))

    # The image's copy of the repository: definitions without the embedded data folder (.dockerignore).
    repo = tmp_path / "feature_repo"
    shutil.copytree(P.K8S_DIR.parent / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    store_yaml = yaml.safe_load(config_map["data"]["feature_store.yaml"])
    address, password_ref = store_yaml["online_store"]["connection_string"].split(",", 1)
    store_yaml["online_store"]["connection_string"] = f"{local_redis.address},{password_ref}"  # still ${...}
    store_yaml["registry"]["path"] = str(tmp_path / "registry" / "registry.db")
    (tmp_path / "registry").mkdir()
    fs_file = tmp_path / "feature_store.yaml"
    fs_file.write_text(yaml.safe_dump(store_yaml), encoding="utf-8")
    fields_file = tmp_path / "feature_fields.json"
    fields_file.write_text(config_map["data"]["feature_fields.json"], encoding="utf-8")
    env = {**os.environ, **{e["name"]: e["value"] for e in server["env"] if "value" in e}}
    assert env["RECSYS_FEATURE_FIELDS"] == "/etc/feast/feature_fields.json"
    # the Secret's value, as the kubelet puts it into the pod's environment
    [password_env] = [e["name"] for e in server["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    assert f"${{{password_env}}}" in password_ref
    env[password_env] = local_redis.password
    env.update(FEAST_FS_YAML_FILE_PATH=str(fs_file), RECSYS_FEATURE_FIELDS=str(fields_file), HOME=str(tmp_path),
               PATH=f"{BIN}:{os.environ['PATH']}")

    applied = subprocess.run(local_command(init["command"], repo), env=env, capture_output=True, text=True,
                             timeout=180, cwd=tmp_path)  # fmt: skip
    assert applied.returncode == 0, applied.stderr[-2000:]
    assert (tmp_path / "registry" / "registry.db").is_file()
    assert not (repo / "data").exists(), "feast apply wrote into the (read-only in the image) repository"

    port = free_port()
    command = local_command(server["command"], repo, **{"--host": "127.0.0.1", "--port": str(port)})
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        readiness = server["readinessProbe"]["httpGet"]["path"]
        wait_for(f"http://127.0.0.1:{port}{readiness}", proc)
        now = datetime.now(UTC).isoformat()
        profiles = {"user_id": [1, 2], "age": [24, 53], "age_band": ["18-24", "50-55"], "gender": ["F", "M"],
                    "occupation": ["student", "writer"], "event_timestamp": [now, now]}  # fmt: skip
        written = requests.post(
            f"http://127.0.0.1:{port}/write-to-online-store",
            json={"feature_view_name": "user_profile", "df": profiles},
            timeout=30,
        )
        assert written.status_code == 200, written.text
        response = requests.post(
            f"http://127.0.0.1:{port}/get-online-features",
            json={"features": ["user_profile:age", "user_profile:gender"], "entities": {"user_id": [1, 2, 999]}},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        columns = dict(zip(body["metadata"]["feature_names"], body["results"], strict=True))
        assert columns["age"]["values"] == [24, 53, None]
        assert columns["gender"]["values"] == ["F", "M", None]
    finally:
        stop(proc)
    # the features went to the Redis that refuses clients without the password
    assert local_redis.client().dbsize() > 0
    with pytest.raises(redis.exceptions.AuthenticationError):
        local_redis.client(authenticated=False).dbsize()
