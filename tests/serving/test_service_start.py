"""Starting the API on a broken setup fails fast with the service's own error (no server needed)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.processes import free_port

pytestmark = pytest.mark.integration


def test_serve_api_without_feature_tables_says_what_is_missing(tmp_path):
    missing = tmp_path / "no_features"
    cmd = [str(Path(sys.executable).parent / "recsys"), "--set", f"features.data_dir={missing}",
           "--set", f"serving.api_port={free_port()}", "--set", f"serving.triton_build_dir={tmp_path / 'build'}",
           "--set", f"serving.request_log={tmp_path / 'log.sqlite'}", "serve", "api", "--detach"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "250"})
    assert proc.returncode == 1
    assert "item_metadata.parquet" in proc.stderr and str(missing) in proc.stderr
    assert "recsys features" in proc.stderr
