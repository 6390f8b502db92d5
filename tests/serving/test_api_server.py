"""The API launcher (serving.api_server): a PID file's pid is stopped only while it is still the API server."""

from pathlib import Path

import pytest

from components.config import load_config
from components.processes import PidFileError, write_pid_file
from serving.api_server import pid_file, stop_api


def test_stop_api_refuses_an_unrelated_process(tmp_path: Path, sleeping_process) -> None:
    config = load_config(None, [f"serving.triton_build_dir={tmp_path / 'build'}", "serving.api_port=3999"])
    path = pid_file(config)
    other = sleeping_process()
    try:
        write_pid_file(path, other.pid)  # the right start time, but the process is not the API server
        with pytest.raises(PidFileError, match=f"refusing to stop pid {other.pid}.*RecommendationService"):
            stop_api(config)
        assert other.poll() is None and not path.exists()
        assert stop_api(config) is False
    finally:
        other.kill()
        other.wait()
