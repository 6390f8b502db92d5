"""The Triton launcher's PID file: a stop command never signals a process it did not start."""

import json
import socket
from pathlib import Path

import pytest

from benchmarks.serving_stack import serving_config
from components.processes import PidFileError, start_ticks
from serving import triton_server as ts


def test_stop_detached_refuses_a_pid_that_is_no_longer_the_server(tmp_path: Path, sleeping_process) -> None:
    settings = ts.settings_from_config(serving_config(tmp_path))
    path = ts.pid_file(settings)
    path.parent.mkdir(parents=True)
    other = sleeping_process()
    try:
        # the recorded server's pid now belongs to `sleep` (started later: another start time)
        path.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(),
                                    "start_ticks": start_ticks(other.pid) - 5}))
        assert ts.running_pid(settings) is None and not path.exists()
        path.write_text(json.dumps({"pid": other.pid, "start_ticks": start_ticks(other.pid) - 5}))
        with pytest.raises(PidFileError, match=f"refusing to stop pid {other.pid}.*started at tick"):
            ts.stop_detached(settings, timeout_s=1)
        path.write_text(str(other.pid))  # a bare pid (older PID files): the command line is not tritonserver
        with pytest.raises(PidFileError, match="does not mention tritonserver.*sleep 60"):
            ts.stop_detached(settings, timeout_s=1)
        assert other.poll() is None, "the unrelated process was signalled"
    finally:
        other.kill()
        other.wait()
    assert ts.stop_detached(settings) is False
