"""Crash-safe file replacement: a state file is either its old or its new content, never a torn mix.

Every writer of state (deployment history, policy state, the champion registry, id maps, model repository
configs, PID files, checkpoints) goes through `atomic_path`: the new content is written to a temporary file in
the same folder, flushed and fsynced, renamed over the target (os.replace is atomic on POSIX), and the folder
is fsynced so that the rename itself survives a power cut.
"""

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    """Flush a file's content to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to `path`; write it in the block; on success it replaces `path` durably.

    `suffix` keeps the extension libraries expect (np.save appends ".npy" to other names). On an exception
    the temporary file is removed and `path` is left as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}{suffix}")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask applies, as for any new file
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Replace `path` with `data` (str is written as UTF-8), atomically and durably."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_json_atomic(path: str | Path, payload: Any, **dump_options: Any) -> Path:
    """Replace `path` with `payload` as indented JSON, atomically and durably (`dump_options` go to json.dumps)."""
    return write_atomic(path, json.dumps(payload, **{"indent": 2, **dump_options}))
