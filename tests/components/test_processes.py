"""Process identity: a recorded pid is ours only while its start time (and command line) still match."""

import json
import sys
from pathlib import Path

import pytest

from components.processes import (
    PidFileError,
    ProcessIdentity,
    owned_pid,
    read_pid_file,
    start_ticks,
    write_pid_file,
)


def test_identity_tells_a_recycled_pid_apart(tmp_path: Path, sleeping_process) -> None:
    child = sleeping_process(sys.executable, "-c", "import time; time.sleep(60)")
    try:
        me = ProcessIdentity.of(child.pid)
        assert me.start_ticks == start_ticks(child.pid) and me.start_ticks is not None and me.alive() is True
        # the same pid with another start time: the process the record names has gone, whoever holds the pid now
        assert ProcessIdentity(child.pid, me.host, me.start_ticks - 1).alive() is False
        assert ProcessIdentity(child.pid, "another-host.invalid", me.start_ticks).alive() is None
    finally:
        child.kill()
        child.wait()
    assert me.alive() is False and start_ticks(child.pid) is None


def test_pid_file_round_trip_and_legacy_format(tmp_path: Path, sleeping_process) -> None:
    child = sleeping_process(sys.executable, "-c", "import time; time.sleep(60)")
    try:
        path = write_pid_file(tmp_path / "server.pid", child.pid)
        assert json.loads(path.read_text())["start_ticks"] == start_ticks(child.pid)
        assert owned_pid(path, "time.sleep(60)") == child.pid
        legacy = tmp_path / "legacy.pid"
        legacy.write_text(str(child.pid))
        assert read_pid_file(legacy).start_ticks is None
        with pytest.raises(PidFileError, match=f"refusing to stop pid {child.pid}.*does not mention tritonserver"):
            owned_pid(legacy, "tritonserver")
        assert not legacy.exists() and child.poll() is None
    finally:
        child.kill()
        child.wait()
    assert owned_pid(path, "time.sleep(60)") is None and not path.exists()  # gone: the stale file is removed
    (tmp_path / "bad.pid").write_text("{not json")
    with pytest.raises(PidFileError, match="bad.pid is unreadable"):
        owned_pid(tmp_path / "bad.pid", "x")
