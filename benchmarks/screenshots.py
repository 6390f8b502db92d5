"""The README's screenshots, taken by headless Chromium from a simulation's output so they stay current.

    python -m benchmarks.screenshots [--simulation artifacts/simulation] [--run RUN_DIR] [--out docs/img]

After `recsys simulate`, writes PNGs of: the simulation's summary page, a training run's overview page (its run
folder's index.html: `--run`, e.g. the demo's run under artifacts/kfp, else the simulation's first training run)
and its evaluation report, and Evidently's dashboard of the simulation's project (`evidently ui` started on a
free loopback port over <simulation>/monitoring/workspace and stopped again). A page that logs a console error
or needs the network fails the script.
"""

import argparse
import json
import logging
from pathlib import Path

from benchmarks.browser import check_page
from components.config import load_config
from components.processes import free_port, stop_process
from recsys.monitor import start_ui

log = logging.getLogger(__name__)


def shoot(target: Path | str, png: Path, settle_s: float = 2.0, window: tuple[int, int] = (1280, 900)) -> Path:
    """One screenshot of the page's first screen; raises when the page shows errors or stays blank."""
    check = check_page(target, png, settle_s=settle_s, window=window)
    if check.errors or check.text_length < 100:
        raise RuntimeError(f"{target}: errors {check.errors}, {check.text_length} characters of text")
    log.info("%s -> %s", target, png)
    return png


def evaluation_report(run_dir: Path) -> Path:
    """The evaluation step's HTML report in a training run folder (KFP local layout: beside its plots)."""
    report = run_dir / "evaluate-op" / "decision" / "report.html"
    if not report.is_file():
        raise RuntimeError(f"no evaluation report at {report}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulation", type=Path, default=Path("artifacts/simulation"))
    parser.add_argument("--run", type=Path, default=None, help="a training pipeline's run folder (default: the "
                        "simulation's first training run)")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = json.loads((args.simulation / "summary.json").read_text(encoding="utf-8"))
    out = args.out
    shots = [shoot(args.simulation / "index.html", out / "simulation.png", window=(1280, 1400))]
    run_dir = args.run or Path(summary["pipelines"][0]["run_dir"])
    if (run_dir / "index.html").is_file():
        shots.append(shoot(run_dir / "index.html", out / "run_overview.png", window=(1280, 1100)))
    else:
        log.warning("%s has no run overview page (index.html): not taken", run_dir)
    shots.append(shoot(evaluation_report(run_dir), out / "evaluation_report.png", window=(1280, 1400)))
    config = load_config(overrides=[f"paths.artifacts_dir={args.simulation / 'artifacts'}"])
    port = free_port()
    pid = start_ui(config, Path(summary["evidently"]["workspace"]), port, detach=False)
    try:
        project = summary["evidently"]["project"]
        from evidently.ui.workspace import Workspace

        [found] = Workspace(summary["evidently"]["workspace"]).search_project(project)
        shots.append(shoot(f"http://127.0.0.1:{port}/projects/{found.id}", out / "evidently_dashboard.png",
                           settle_s=6.0, window=(1400, 1300)))
    finally:
        stop_process(pid)
    print("\n".join(str(p) for p in shots))


if __name__ == "__main__":
    main()
