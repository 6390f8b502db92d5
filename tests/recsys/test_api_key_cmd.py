"""`recsys serve api-key create|list|revoke`: tokens printed once, only hashes stored, clean errors."""

import json

from typer.testing import CliRunner

from recsys.main import app
from serving.auth import KeyStore, token_hash

runner = CliRunner()


def test_create_list_revoke_round_trip(tmp_path):
    keys = tmp_path / "keys" / "api_keys.json"
    base = ["--set", f"serving.auth.api_keys_file={keys}", "serve", "api-key"]
    created = runner.invoke(app, [*base, "create", "--name", "web", "--scopes", "recommend, interactions:write"])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("rsk_") and token not in keys.read_text()
    assert token_hash(token) in keys.read_text()
    assert KeyStore(keys).verify(token).scopes == {"recommend", "interactions:write"}

    listed = runner.invoke(app, [*base, "list"])
    assert listed.exit_code == 0, listed.output
    (entry,) = json.loads(listed.stdout)
    assert entry["name"] == "web" and entry["scopes"] == ["recommend", "interactions:write"]
    assert "sha256" not in listed.stdout and token_hash(token) not in listed.stdout

    revoked = runner.invoke(app, [*base, "revoke", entry["id"]])
    assert revoked.exit_code == 0 and entry["id"] in revoked.output
    assert json.loads(runner.invoke(app, [*base, "list"]).stdout) == []


def test_bad_scope_and_unknown_id_are_clean_errors(tmp_path):
    keys = tmp_path / "api_keys.json"
    result = runner.invoke(app, ["serve", "api-key", "create", "--keys-file", str(keys), "--name", "x",
                                 "--scopes", "recommend,write"])
    assert result.exit_code == 1 and "unknown scope 'write'" in result.output and "Traceback" not in result.output
    assert not keys.exists()
    result = runner.invoke(app, ["serve", "api-key", "revoke", "--keys-file", str(keys), "abc"])
    assert result.exit_code == 1 and "abc" in result.output
