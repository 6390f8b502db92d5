"""Triton's admin key on a real server: model control refused without it, accepted with it; inference open."""

import os
import stat
import time

import pytest

from serving import deploy, triton_admin
from serving import triton_repo as tr
from serving import triton_server as ts
from serving.triton_client import RecommenderClient, TritonAdminKeyError

pytestmark = pytest.mark.integration


def _url(config) -> str:
    return f"{config.serving.host}:{config.serving.triton_grpc_port}"


@pytest.fixture(scope="module")
def live(triton, bundles):
    """Bundle `a` deployed (with the key, as deploy does) on the module's server."""
    config, _ = triton
    deploy.deploy_bundle(config, bundles["a"])
    return config


def _loaded(admin: RecommenderClient) -> dict[str, list[int]]:
    """READY versions of every model of the repository index (a keyed call)."""
    return {model: admin.ready_versions(model) for model in tr.MODELS}


def test_the_launcher_keeps_its_key_in_a_private_file(live):
    path = triton_admin.key_file(live.serving.triton_build_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = triton_admin.admin_key(live.serving.triton_build_dir)
    assert key == path.read_text().strip() and len(key) == 64
    # the server took it on its command line; the project's own log lines never hold it
    log_text = ts.settings_from_config(live).log_file.read_text(errors="replace")
    assert key not in log_text
    cmd, _ = ts.server_command(ts.settings_from_config(live))
    assert key in " ".join(cmd) and key not in " ".join(triton_admin.redact(cmd))
    assert any(a.endswith(f":{triton_admin.HEADER}=***") for a in triton_admin.redact(cmd))


def test_unkeyed_model_control_is_refused_and_changes_nothing(live):
    with deploy._client(live) as admin:
        before = _loaded(admin)
    assert before == {model: [1] for model in tr.MODELS}
    for wrong in (None, "x" * 64):
        with RecommenderClient(_url(live), timeout_s=10, retries=2, admin_key=wrong) as client:
            for call in (lambda: client.unload("recommender"), lambda: client.load("recommender"),
                         client.ready_versions, client.statistics, client.model_config):
                with pytest.raises(TritonAdminKeyError, match="UNAUTHENTICATED.*RECSYS_TRITON_ADMIN_KEY") as err:
                    call()
                assert ("wrong admin key" in str(err.value)) is (wrong is not None)
            # inference, health and metadata stay open: the API needs nothing else
            assert client.model_ready("recommender") and client.active_version() == 1
            assert client.recommend([], [1, 1, 1], [], 5)[0].size == 5
    with deploy._client(live) as admin:
        assert _loaded(admin) == before


def test_keyed_model_control_is_accepted(live):
    with deploy._client(live) as admin:
        assert admin.ready_versions("recommender") == [1]
        assert admin.statistics("recommender")["model_stats"]
        assert admin.model_config()["platform"] == "ensemble"
        admin.unload("recommender")
        for _ in range(100):
            if not admin.model_ready("recommender"):
                break
            time.sleep(0.1)
        assert not admin.model_ready("recommender")
    assert deploy.restore_active(live) == 1  # a keyed load brings it back
    with RecommenderClient(_url(live), timeout_s=10) as client:
        assert client.recommend([], [1, 1, 1], [], 5)[0].size == 5


def test_the_environment_key_wins_and_a_bad_key_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv(triton_admin.ADMIN_KEY_ENV, "k" * 20)
    assert triton_admin.admin_key(tmp_path, create=True) == "k" * 20
    assert not triton_admin.key_file(tmp_path).exists()  # nothing written when the environment holds the key
    for bad in ("short", "has:colon-and-more-than-16", "x" * 20 + "=y"):
        monkeypatch.setenv(triton_admin.ADMIN_KEY_ENV, bad)
        with pytest.raises(triton_admin.AdminKeyError, match=triton_admin.ADMIN_KEY_ENV):
            triton_admin.admin_key(tmp_path)
    monkeypatch.delenv(triton_admin.ADMIN_KEY_ENV)
    assert triton_admin.admin_key(tmp_path) is None  # a client never creates a key
    key = triton_admin.admin_key(tmp_path, create=True)
    assert triton_admin.admin_key(tmp_path, create=True) == key  # generated once, then read
    os.chmod(triton_admin.key_file(tmp_path), 0o644)
    with pytest.raises(triton_admin.AdminKeyError, match="chmod 600"):
        triton_admin.admin_key(tmp_path)
