"""Champion registry: promote, read, rollback, history."""

import json

import pytest

from components.registry import (
    RegistryError,
    champion_history,
    promote_champion,
    read_champion,
    registry_dir,
    rollback_champion,
)


def _model(tmp_path, name: str):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model_config.json").write_text(json.dumps({"name": name}))
    return folder


def test_promote_read_and_rollback(tmp_path) -> None:
    art = tmp_path / "artifacts"
    assert read_champion(art) is None
    first = promote_champion(art, _model(tmp_path, "m1"), {"ndcg@10": 0.08}, version="v1")
    assert read_champion(art) == first
    assert (registry_dir(art) / "models" / "v1" / "model_config.json").is_file()  # copied
    second = promote_champion(art, _model(tmp_path, "m2"), {"ndcg@10": 0.09}, version="v2")
    assert read_champion(art).version == "v2" and second.metrics == {"ndcg@10": 0.09}
    back = rollback_champion(art)
    assert back.version == "v1" and read_champion(art).version == "v1"
    assert json.loads((tmp_path / "artifacts/registry/models/v1/model_config.json").read_text())["name"] == "m1"
    assert [e["event"] for e in champion_history(art)] == ["promote", "promote", "rollback"]
    with pytest.raises(RegistryError, match="no predecessor"):
        rollback_champion(art)


def test_promote_errors(tmp_path) -> None:
    art = tmp_path / "artifacts"
    with pytest.raises(RegistryError, match="not a model directory"):
        promote_champion(art, tmp_path / "missing", {})
    promote_champion(art, _model(tmp_path, "m1"), {}, version="v1")
    with pytest.raises(RegistryError, match="already holds"):
        promote_champion(art, _model(tmp_path, "m2"), {}, version="v1")
    linked = promote_champion(art, tmp_path / "m2", {}, copy=False)
    assert linked.model_dir == str((tmp_path / "m2").resolve()) and linked.version.startswith("v")
    (registry_dir(art) / "champion.json").write_text("{broken")
    with pytest.raises(RegistryError, match="unreadable"):
        read_champion(art)
