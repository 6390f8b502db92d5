"""What a local pipeline run shows: its steps in order, each one's status, seconds and headline figure, and the
run overview page (`index.html` in the run folder, the local stand-in for the KFP dashboard's run view).

The steps come from the compiled pipeline spec (so a step the gate skipped is still on the graph); their
progress from the KFP local runner's own task-status log lines; their figures from each task's outputs
(`executor_output.json`: Metrics metadata, artifact metadata, returned parameters).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from components.html_report import page, table

PENDING, RUNNING, SUCCESS, FAILURE, SKIPPED = "PENDING", "RUNNING", "SUCCESS", "FAILURE", "SKIPPED"
EXECUTOR_OUTPUT = "executor_output.json"
OVERVIEW = "index.html"
REPORTS_DIR = "reports"  # in the run folder: `.html` links to the HTML artifacts
METRICS = "metrics"  # every component names its Metrics output so
ANSI = re.compile(r"\x1b\[[0-9;]*m")
_KFP_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d+ - \w+ - (?P<message>.*)$")
_STARTED = re.compile(r"^Executing task '(?P<task>[^']+)'")
_FINISHED = re.compile(r"^Task '(?P<task>[^']+)' finished with status (?P<status>\w+)")
_SKIPPED = re.compile(r"^Skipping (?:conditional )?task (?P<task>\S+?):? ")


@dataclass
class Step:
    """One executor task of a run: where it sits in the graph and what it did."""

    task: str  # the task's name in the pipeline spec (also its folder in the run), e.g. "validate-op"
    label: str  # its display name, e.g. "validate"
    group: str | None = None  # the enclosing condition or nested pipeline's display name, e.g. "gate-passed"
    group_tasks: tuple[str, ...] = ()  # the enclosing groups' task names in the spec, outermost first
    status: str = PENDING
    seconds: float | None = None
    figure: str = ""  # the number that matters, in words
    metrics: dict[str, Any] = field(default_factory=dict)  # every Metrics artifact's values
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # artifact name -> {"uri", "metadata"}
    parameters: dict[str, Any] = field(default_factory=dict)  # returned values, e.g. {"Output": true}
    started: float | None = field(default=None, repr=False)


def pipeline_steps(pipeline: Any) -> list[Step]:
    """The executor tasks of a compiled @dsl.pipeline in run order, nested DAGs (conditions, nested pipelines)
    flattened in place."""
    spec = pipeline.pipeline_spec
    steps: list[Step] = []

    def walk(dag: Any, group: str | None, group_tasks: tuple[str, ...]) -> None:
        for name in _topological(dag.tasks):
            task = dag.tasks[name]
            component = spec.components[task.component_ref.name]
            label = task.task_info.name or name
            if component.WhichOneof("implementation") == "dag":
                walk(component.dag, label if group is None else f"{group} / {label}", (*group_tasks, name))
            else:
                steps.append(Step(task=name, label=label, group=group, group_tasks=group_tasks))

    walk(spec.root.dag, None, ())
    return steps


def _topological(tasks: Any) -> list[str]:
    """Task names ordered so that each comes after the tasks it depends on (ties by name)."""
    done: list[str] = []
    waiting = {name: set(t.dependent_tasks) & set(tasks) for name, t in tasks.items()}
    while waiting:
        ready = sorted(n for n, deps in waiting.items() if deps <= set(done)) or sorted(waiting)[:1]
        for name in ready:
            done.append(name)
            del waiting[name]
    return done


def read_outputs(task_dir: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """A finished task's output artifacts ({name: {"uri", "metadata"}}) and returned parameters."""
    path = task_dir / EXECUTOR_OUTPUT
    if not path.exists():
        return {}, {}
    data = json.loads(path.read_text())
    outputs = {name: {"uri": a["artifacts"][0].get("uri", ""), "metadata": a["artifacts"][0].get("metadata", {})}
               for name, a in data.get("artifacts", {}).items() if a.get("artifacts")}
    return outputs, data.get("parameterValues", {})


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _gate(step: Step) -> str:
    decision = step.outputs.get("decision", {})
    path = Path(decision.get("uri", "")) / "decision.json"
    if not path.is_file():
        return str(decision.get("metadata", {}).get("reason", ""))
    d = json.loads(path.read_text())
    metric = d["gate_metric"]
    candidate, champion = d["candidate"]["metrics"][metric], d["champion"]["metrics"][metric]
    relative = (candidate - champion) / champion if champion else float("inf")
    verdict = "promote" if d["promote"] else "keep the champion"
    return (f"{verdict}: {metric.upper()} {candidate:.4f} vs {d['champion']['name']} {champion:.4f} "
            f"({relative:+.1%}, needs > {d['min_improvement']:+.1%})")


def _compress(step: Step) -> str:
    variant = step.outputs.get("bundle", {}).get("metadata", {}).get("variant", "?")
    quality = step.metrics.get(f"{variant}_ndcg@10")
    return f"chosen variant {variant}" + (f" (NDCG@10 {quality:.4f})" if quality is not None else "")


def _monitor(step: Step) -> str:
    meta = step.outputs.get("summary", {}).get("metadata", {})
    return f"retrain: {'yes' if meta.get('retrain') else 'no'} ({meta.get('reason', 'no reason recorded')})"


# The figure that matters per component; a task without an entry shows its first metrics.
FIGURES: dict[str, Callable[[Step], str]] = {
    "ingest-op": lambda s: "{} interactions, {} users, {} items".format(
        *(_num(s.metrics.get(f"rows_{t}", "?")) for t in ("interactions", "users", "items"))),
    "validate-op": lambda s: f"{_num(s.metrics.get('interactions', '?'))} rows validated against "
                             f"{_num(s.metrics.get('expectations_evaluated', '?'))} expectations",
    "features-op": lambda s: f"{_num(s.metrics.get('examples', '?'))} examples; {_num(s.metrics.get('users', '?'))} "
                             f"users, {_num(s.metrics.get('items', '?'))} items materialized",
    "train-op": lambda s: f"validation NDCG@10 {_num(s.metrics.get('val_ndcg@10', '?'))} after "
                          f"{_num(s.metrics.get('epochs', '?'))} epochs",
    "evaluate-op": _gate,
    "compress-op": _compress,
    "deploy-op": lambda s: "version {version} live at {grpc_url}".format(
        **{"version": "?", "grpc_url": "?", **s.outputs.get("deployment", {}).get("metadata", {})}),
    "promote-op": lambda s: f"champion {s.parameters.get('Output', '?')}",
    "monitor-op": _monitor,
    "retrain-done-op": lambda s: "retrain lock released",
}


def step_figure(step: Step) -> str:
    """The headline of a finished step (one definition for the console and the overview page)."""
    figure = FIGURES.get(re.sub(r"-\d+$", "", step.task))
    if figure is not None:
        return figure(step)
    return ", ".join(f"{k} {_num(v)}" for k, v in list(step.metrics.items())[:3])


class RunTracker:
    """Follows a run through the KFP local runner's log lines; calls `on_step` when a step starts or ends."""

    def __init__(self, steps: list[Step], pipeline_root: Path, on_step: Callable[[Step], None] | None = None) -> None:
        self.steps = steps
        self.root = pipeline_root
        self.before = {p.name for p in pipeline_root.iterdir()} if pipeline_root.exists() else set()
        self.on_step = on_step or (lambda step: None)

    @property
    def run_dir(self) -> Path | None:
        """The run's folder (the newest one this run created under the pipeline root)."""
        if not self.root.is_dir():
            return None
        new = [p for p in self.root.iterdir() if p.is_dir() and p.name not in self.before | {".kfp_cache"}]
        return max(new, key=lambda p: p.stat().st_mtime) if new else None

    def _next(self, task: str, statuses: tuple[str, ...]) -> Step:
        step = next((s for s in self.steps if s.task == task and s.status in statuses), None)
        if step is None:  # a task the spec walk did not list: show it anyway
            step = Step(task=task, label=task)
            self.steps.append(step)
        return step

    def line(self, text: str) -> None:
        """One line of the runner's output."""
        match = _KFP_LINE.match(ANSI.sub("", text).rstrip())
        if not match:
            return
        message = match["message"]
        if started := _STARTED.match(message):
            step = self._next(started["task"], (PENDING,))
            step.status, step.started = RUNNING, time.monotonic()
            self.on_step(step)
        elif finished := _FINISHED.match(message):
            step = self._next(finished["task"], (RUNNING,))
            step.status = finished["status"]
            step.seconds = round(time.monotonic() - step.started, 1) if step.started else None
            if self.run_dir is not None:
                step.outputs, step.parameters = read_outputs(self.run_dir / step.task)
                step.metrics = {k: v for name, o in step.outputs.items() if name == METRICS
                                for k, v in o["metadata"].items()}
                if step.status == SUCCESS:
                    step.figure = step_figure(step)
            self.on_step(step)
        elif skipped := _SKIPPED.match(message):
            for step in self._skipped_by(skipped["task"]):
                step.status = SKIPPED
                self.on_step(step)

    def finish(self) -> None:
        """The run is over: a step still pending never ran (the runner stops at the first failure)."""
        for step in self.steps:
            if step.status in (PENDING, RUNNING):
                step.status = SKIPPED if step.status == PENDING else FAILURE
                self.on_step(step)

    def _skipped_by(self, name: str) -> list[Step]:
        """The pending steps that a skipped task or group `name` takes along: the task itself, or every step of
        a group of that name not yet entered (a nested pipeline's condition may share its name with an outer
        one that did run)."""
        def entered(prefix: tuple[str, ...]) -> bool:
            return any(s.status != PENDING and s.group_tasks[:len(prefix)] == prefix for s in self.steps)

        return [s for s in self.steps if s.status == PENDING and (s.task == name or any(
            g == name and not entered(s.group_tasks[:i + 1]) for i, g in enumerate(s.group_tasks)))]


class TeeToTracker:
    """A text stream that writes to a log file and hands each complete line to a `RunTracker`."""

    def __init__(self, log: Any, tracker: RunTracker) -> None:
        self.log, self.tracker, self.pending = log, tracker, ""

    def write(self, text: str) -> int:
        self.log.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.tracker.line(line)
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.log.fileno()


# ---- the run overview page ----

_GRAPH_STYLE = """
.flow{display:flex;flex-wrap:wrap;align-items:stretch;gap:.4rem;margin:1rem 0}
.node{border:2px solid #bbb;border-radius:6px;padding:.4rem .6rem;min-width:7.5rem;max-width:15rem;background:#fafafa}
.node b{display:block}.node small{color:#555;display:block}
.SUCCESS{border-color:#1b7f3b;background:#eef8f0}.FAILURE{border-color:#b00020;background:#fdeeee}
.SKIPPED,.PENDING{border-style:dashed;color:#777}.RUNNING{border-color:#c77700}
.arrow{align-self:center;font-size:1.4rem;color:#777}
.group{display:flex;flex-wrap:wrap;gap:.4rem;border:1px dashed #999;border-radius:8px;padding:1.3rem .5rem .5rem;
position:relative}.group>.glabel{position:absolute;top:.1rem;left:.5rem;font-size:.8rem;color:#555}
"""


def _is_html(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(64).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def artifact_pages(run_dir: Path, steps: list[Step]) -> dict[tuple[str, str], Path]:
    """What a browser opens for each (task, output) artifact on disk: a folder's index page when it has one, an
    HTML artifact (KFP names its file without a suffix) through a `.html` link in `<run>/reports/`, else the file
    or folder itself. A Metrics artifact is metadata only and has none."""
    pages: dict[tuple[str, str], Path] = {}
    for step in steps:
        for output, meta in step.outputs.items():
            path = Path(meta["uri"]) if meta["uri"] else None
            if path is None or not path.exists():
                continue
            if path.is_dir():
                path = next((path / n for n in ("index.html", "report.html") if (path / n).is_file()), path)
            elif not path.suffix and _is_html(path):
                link = run_dir / REPORTS_DIR / f"{step.task}.{output}.html"
                link.parent.mkdir(exist_ok=True)
                if not link.is_symlink():
                    link.symlink_to(os.path.relpath(path, link.parent))
                path = link
            pages[(step.task, output)] = path
    return pages


def _link(run_dir: Path, path: Path) -> str:
    """A link from the overview (in `run_dir`) to `path`: relative inside the run, a file URI outside it."""
    try:
        href = path.relative_to(run_dir).as_posix()
    except ValueError:
        href = path.resolve().as_uri()
    return f'<a href="{escape(href)}">{escape(href)}</a>'


def _node(step: Step) -> str:
    seconds = f"{step.seconds:.1f} s" if step.seconds is not None else ""
    return (f'<div class="node {step.status}" title="{escape(step.task)}"><b>{escape(step.label)}</b>'
            f"<small>{step.status.lower()} {seconds}</small><small>{escape(step.figure)}</small></div>")


def _graph(steps: list[Step]) -> str:
    parts: list[str] = []
    i = 0
    while i < len(steps):
        group = steps[i].group
        members = [steps[i]]
        while group is not None and i + len(members) < len(steps) and steps[i + len(members)].group == group:
            members.append(steps[i + len(members)])
        arrows = '<span class="arrow">&rarr;</span>'
        body = arrows.join(_node(s) for s in members)
        parts.append(body if group is None else
                     f'<div class="group"><span class="glabel">if {escape(group)}</span>{body}</div>')
        i += len(members)
    return '<div class="flow">' + '<span class="arrow">&rarr;</span>'.join(parts) + "</div>"


def write_overview(name: str, run_dir: Path, steps: list[Step], seconds: float, log_path: Path | None,
                   pages: dict[tuple[str, str], Path]) -> Path:
    """Write `<run_dir>/index.html`: the graph, each step's metrics, links to its artifacts (`pages`, from
    `artifact_pages`) and the run's log, the decisions taken."""
    rows = [(s.label, s.status.lower(), "" if s.seconds is None else f"{s.seconds:.1f} s", s.figure) for s in steps]
    sections = [("Graph", _graph(steps)), ("Steps", table(["step", "status", "seconds", "figure"], rows))]
    decisions = [(s.label, o["metadata"]["reason"]) for s in steps for o in s.outputs.values()
                 if isinstance(o.get("metadata"), dict) and "reason" in o["metadata"]]
    if decisions:
        sections.append(("Decisions", table(["step", "decision"], decisions)))
    labels = {s.task: s.label for s in steps}
    links = [(labels[task], output, _link(run_dir, path)) for (task, output), path in pages.items()]
    if log_path is not None and log_path.exists():
        links.append(("run", "log", _link(run_dir, log_path)))
    sections.append(("Artifacts and reports", table(["step", "output", "link"], links, raw_columns=(2,))))
    for s in steps:
        if s.metrics:
            sections.append((f"Metrics: {s.label}", table(["metric", "value"], list(s.metrics.items()))))
    failed = [s.label for s in steps if s.status == FAILURE]
    state = f"failed at {', '.join(failed)}" if failed else "finished"
    intro = f"{name} pipeline run {run_dir.name}: {state} in {seconds:.1f} s ({len(steps)} steps)."
    path = run_dir / OVERVIEW
    path.write_text(page(f"Run overview: {name}", intro, sections, style=_GRAPH_STYLE), encoding="utf-8")
    return path
