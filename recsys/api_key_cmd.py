"""`recsys serve api-key create|list|revoke`: the API keys of the recommendation API (hashes in the keys file).

The running API re-reads the keys file when it changes: a created key works and a revoked one is refused from
the next request on, without a restart. On a cluster the keys file is the Secret `recsys-api-keys`: run these
commands with --keys-file on a local copy and apply it (docs/cluster.md).
"""

import json
from pathlib import Path

import typer

from recsys.common import console, errors_as_exit, state

app = typer.Typer(help="Create, list and revoke the API's bearer keys (stored as hashes).", no_args_is_help=True)

KEYS_FILE = typer.Option(None, "--keys-file", help="Keys file to change (default: serving.auth.api_keys_file, "
                                                   "else api_keys.json in the API's folder).")


def _keys_file(ctx: typer.Context, keys_file: Path | None) -> Path:
    from serving.api_server import api_keys_file

    return keys_file or api_keys_file(state(ctx).config)


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name", help="Who or what uses the key (shown by `list`)."),
    scopes: str = typer.Option(..., "--scopes", help="Comma-separated: recommend, interactions:write, history:read, "
                                                     "admin (admin may do everything)."),
    keys_file: Path | None = KEYS_FILE,
) -> None:
    """Create a key and print its token once (only its SHA-256 is stored): keep it in a secret store."""
    from serving.auth import create_key

    path = _keys_file(ctx, keys_file)
    with errors_as_exit():
        record, token = create_key(path, name, [s.strip() for s in scopes.split(",") if s.strip()])
    console.print(f"created key {record.id} ({record.name}: {', '.join(record.scopes)}) in {path}; its token, "
                  "shown this once:", soft_wrap=True, markup=False)
    typer.echo(token)


@app.command("list")
def list_keys(ctx: typer.Context, keys_file: Path | None = KEYS_FILE) -> None:
    """The keys as JSON: id, name, scopes, creation time (never hashes or tokens)."""
    from serving.auth import read_keys

    path = _keys_file(ctx, keys_file)
    with errors_as_exit():
        keys = read_keys(path)
    typer.echo(json.dumps([record.public() for record in keys.values()], indent=2))


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    key_id: str = typer.Argument(..., help="The key's id (see `recsys serve api-key list`)."),
    keys_file: Path | None = KEYS_FILE,
) -> None:
    """Remove a key: the running API refuses it from its next request on."""
    from serving.auth import revoke_key

    path = _keys_file(ctx, keys_file)
    with errors_as_exit():
        record = revoke_key(path, key_id)
    console.print(f"revoked key {record.id} ({record.name}) in {path}", soft_wrap=True, markup=False)
