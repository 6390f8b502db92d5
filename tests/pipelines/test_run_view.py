"""The run view: the steps of a compiled pipeline in run order, and a run followed through the KFP local runner's
task-status lines (skips included, nested conditions that share a name told apart)."""

from pathlib import Path

from components.config import load_config
from monitoring.pipeline import MONITORING
from pipelines.run_view import RunTracker, Step, pipeline_steps
from pipelines.training import TRAINING

RUNNER_LINE = "06:36:06.254 - INFO - "


def test_training_steps_in_run_order_with_the_gate_as_a_group():
    steps = pipeline_steps(TRAINING.build(load_config()))
    assert [s.task for s in steps] == ["ingest-op", "validate-op", "features-op", "train-op", "evaluate-op",
                                       "compress-op", "deploy-op", "promote-op"]
    assert {s.group for s in steps[5:]} == {"gate-passed"} and {s.group for s in steps[:5]} == {None}


def test_monitoring_steps_nest_the_training_pipeline_under_the_retrain_condition():
    steps = pipeline_steps(MONITORING.build(load_config()))
    assert [s.label for s in steps[:2]] == ["collect reference", "reports + policy"]
    assert steps[-1].task == "retrain-done-op" and steps[-1].group == "retrain"
    assert all(s.group_tasks[0] == "condition-1" for s in steps[2:])


def _follow(steps: list[Step], *messages: str) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    tracker = RunTracker(steps, Path("/nonexistent-pipeline-root"), lambda s: seen.append((s.task, s.status)))
    for message in messages:
        tracker.line(RUNNER_LINE + message)
    tracker.line("    [KFP Executor] Executing task 'ingest-op'")  # a task's own output is not a status line
    return seen


def test_a_skipped_outer_condition_skips_every_step_inside_it():
    steps = [Step("monitor-op", "m"), Step("ingest-op", "i", "r / t", ("condition-1", "recsys-training")),
             Step("compress-op", "c", "r / t / g", ("condition-1", "recsys-training", "condition-1")),
             Step("retrain-done-op", "d", "r", ("condition-1",))]
    seen = _follow(steps, "Executing task \x1b[96m'monitor-op'\x1b[0m",
                   "Task \x1b[96m'monitor-op'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m",
                   "Skipping conditional task condition-1 (condition evaluated to False)")
    assert seen == [("monitor-op", "RUNNING"), ("monitor-op", "SUCCESS"), ("ingest-op", "SKIPPED"),
                    ("compress-op", "SKIPPED"), ("retrain-done-op", "SKIPPED")]


def test_a_skipped_inner_condition_leaves_the_entered_outer_one_alone():
    steps = [Step("ingest-op", "i", "r / t", ("condition-1", "recsys-training")),
             Step("compress-op", "c", "r / t / g", ("condition-1", "recsys-training", "condition-1")),
             Step("retrain-done-op", "d", "r", ("condition-1",))]
    seen = _follow(steps, "Executing task 'ingest-op'", "Task 'ingest-op' finished with status SUCCESS",
                   "Skipping conditional task condition-1 (condition evaluated to False)",
                   "Executing task 'retrain-done-op'", "Task 'retrain-done-op' finished with status FAILURE")
    assert [s.status for s in steps] == ["SUCCESS", "SKIPPED", "FAILURE"]
    assert ("retrain-done-op", "SKIPPED") not in seen
