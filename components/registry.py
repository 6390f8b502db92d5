"""The champion registry: which model serves, under `<paths.artifacts_dir>/registry/`.

- `champion.json`: the current champion {model_dir, version, metrics, promoted_at, source_dir, note}.
- `history.jsonl`: every promotion and rollback, appended, oldest first.
- `models/<version>/`: a copy of each promoted model directory (so a pipeline-root clean-up cannot break serving
  or rollback), unless promoted with copy=False.
Writes are atomic (temporary file + rename), so a reader never sees half a champion.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.atomic import fsync_dir, write_json_atomic
from components.errors import RecsysError

CHAMPION_FILE = "champion.json"
HISTORY_FILE = "history.jsonl"


class RegistryError(RecsysError, ValueError):
    """The registry or a model to promote is unusable; the message names the path."""


@dataclass
class Champion:
    model_dir: str
    version: str
    metrics: dict[str, float] = field(default_factory=dict)
    promoted_at: str = ""
    source_dir: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def registry_dir(artifacts_dir: str | Path) -> Path:
    return Path(artifacts_dir) / "registry"


def _append_history(artifacts_dir: str | Path, event: str, champion: Champion) -> None:
    path = registry_dir(artifacts_dir) / HISTORY_FILE
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"event": event, **champion.to_dict()}, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_champion(artifacts_dir: str | Path) -> Champion | None:
    """The current champion, or None before the first promotion."""
    path = registry_dir(artifacts_dir) / CHAMPION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Champion(**data)
    except (json.JSONDecodeError, TypeError) as err:
        raise RegistryError(f"champion registry {path} is unreadable: {err}") from err


def champion_history(artifacts_dir: str | Path) -> list[dict[str, Any]]:
    """Every promotion/rollback event, oldest first."""
    path = registry_dir(artifacts_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def new_version() -> str:
    """A sortable, unique version name: v<UTC time>-<6 hex>."""
    return f"v{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


def promote_champion(
    artifacts_dir: str | Path,
    model_dir: str | Path,
    metrics: dict[str, float],
    version: str | None = None,
    copy: bool = True,
    note: str = "",
) -> Champion:
    """Make `model_dir` the champion (copied to registry/models/<version>/ unless copy=False); returns it."""
    source = Path(model_dir)
    if not source.is_dir():
        raise RegistryError(f"cannot promote {source}: not a model directory")
    version = version or new_version()
    target = source
    if copy:
        target = registry_dir(artifacts_dir) / "models" / version
        if target.exists():
            raise RegistryError(f"registry already holds version {version} at {target}")
        tmp = target.with_name(f".{version}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    champion = Champion(
        model_dir=str(target.resolve()),
        version=version,
        metrics={k: float(v) for k, v in metrics.items()},
        promoted_at=datetime.now(UTC).isoformat(),
        source_dir=str(source.resolve()),
        note=note,
    )
    write_json_atomic(registry_dir(artifacts_dir) / CHAMPION_FILE, champion.to_dict(), sort_keys=True)
    _append_history(artifacts_dir, "promote", champion)
    return champion


def rollback_champion(artifacts_dir: str | Path) -> Champion:
    """Make the champion before the current one the champion again (its model directory must still exist)."""
    current = read_champion(artifacts_dir)
    if current is None:
        raise RegistryError(f"no champion in {registry_dir(artifacts_dir)} to roll back from")
    stack: list[dict[str, Any]] = []  # replay: a promotion pushes, a rollback pops the champion it replaced
    for event in champion_history(artifacts_dir):
        if event["event"] == "promote":
            stack.append(event)
        elif stack:
            stack.pop()
    if len(stack) < 2:
        raise RegistryError(f"champion {current.version} has no predecessor to roll back to")
    data = {k: v for k, v in stack[-2].items() if k != "event"}
    previous = Champion(**data)
    if not Path(previous.model_dir).is_dir():
        raise RegistryError(f"previous champion {previous.version}: model directory {previous.model_dir} is gone")
    previous.note = f"rollback from {current.version}"
    previous.promoted_at = datetime.now(UTC).isoformat()
    write_json_atomic(registry_dir(artifacts_dir) / CHAMPION_FILE, previous.to_dict(), sort_keys=True)
    _append_history(artifacts_dir, "rollback", previous)
    return previous
