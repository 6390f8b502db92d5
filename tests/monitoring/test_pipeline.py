"""The monitoring pipeline's interface: the inputs the simulation and `recsys monitor decide --execute` pass, each
defaulting to the cluster's scheduled behaviour."""

from pathlib import Path

import yaml

from components.config import load_config
from monitoring.pipeline import MONITOR_INPUTS, MONITORING, monitor_op, reference_op
from monitoring.retraining import monitoring_arguments
from pipelines.runner import compile_pipeline
from tests.conftest import kfp_interface


def test_compiled_pipeline_takes_the_reference_windows_and_clock_with_empty_defaults(tmp_path: Path) -> None:
    spec = next(yaml.safe_load_all(compile_pipeline(MONITORING, load_config(), tmp_path).read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"config", *MONITOR_INPUTS}
    assert all(params[name].get("defaultValue") == "" and params[name]["parameterType"] == "STRING"
               for name in MONITOR_INPUTS)
    monitor_inputs = spec["root"]["dag"]["tasks"]["monitor-op"]["inputs"]["parameters"]
    assert {name for name in MONITOR_INPUTS if name != "reference"} <= set(monitor_inputs)
    assert spec["root"]["dag"]["tasks"]["reference-op"]["inputs"]["parameters"]["reference"] == {
        "componentInputParameter": "reference"}


def test_step_interfaces(tmp_path: Path) -> None:
    assert kfp_interface(reference_op, tmp_path) == {
        "inputs.parameters": {"config": "STRING", "reference": "STRING"}, "inputs.artifacts": {},
        "outputs.parameters": {}, "outputs.artifacts": {"canonical": "system.Dataset", "metrics": "system.Metrics"}}
    monitor = kfp_interface(monitor_op, tmp_path)
    assert monitor["inputs.artifacts"] == {"canonical": "system.Dataset"}
    assert monitor["outputs.parameters"] == {"Output": "BOOLEAN"}
    assert set(monitor["inputs.parameters"]) == {"config", *MONITOR_INPUTS} - {"reference"}


def test_arguments_are_timestamps_as_text_and_empty_for_defaults() -> None:
    import pandas as pd

    args = monitoring_arguments(Path("/data/ref"), now=pd.Timestamp("1998-03-01", tz="UTC"),
                                current_start="1998-02-22")
    assert args == {**{name: "" for name in MONITOR_INPUTS}, "reference": "/data/ref",
                    "now": "1998-03-01T00:00:00+00:00", "current_start": "1998-02-22"}
