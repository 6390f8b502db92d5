"""Scaling benchmark: wall time, peak RSS and output size of every pipeline step on `recsys data synth` data.

Each size is events:items (users = events / 50 unless given as events:items:users). For each size the shop is
generated, then every step runs through its real function in a fresh child process (so its peak RSS is its own,
read with os.wait4): ingest -> validate (Great Expectations) -> features (DuckDB feature tables, point-in-time
examples, SQLite online store) -> embed (the item texts with a cold per-text cache) -> train (fixed small budget,
warm text cache) -> evaluate (candidate + baselines; sampled users above evaluate.max_users; with most-popular as a
stand-in candidate when train failed, so that its cost is still measured) -> compress (fp32
variant) -> deploy (a private Triton server: write, load and smoke-test the bundle; the server's own memory is
not the step's). The growth exponent of each step is the least-squares slope of log(time) (and log(peak RSS))
on log(events) over the sizes run.

    python -m benchmarks.bench_scale [--sizes 1e5:1e3,1e6:1e4] [--steps ingest,validate,...] [--work DIR]

Writes artifacts/benchmarks/scale.json and scale.png and prints Markdown rows for the README.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("bench_scale")
STEPS = ["generate", "ingest", "validate", "features", "embed", "train", "evaluate", "compress", "deploy"]
FALLBACK = "examples_fallback"  # runs only when `features` fails: C1 examples from the tables in pandas, no Feast
# a fixed small budget per step: the benchmark measures how cost grows with size, not model quality
BUDGET = ["train.epochs=1", "train.max_minutes=3", "train.patience=1", "evaluate.bootstrap_samples=50",
          "evaluate.max_users=2000", "evaluate.sasrec.enabled=false", "evaluate.knn_neighbours=[50]",
          "evaluate.ease_lambdas=[200]", "evaluate.als.factors=[32]", "evaluate.als.regularization=[1.0]",
          "evaluate.als.iterations=[5]", "evaluate.als.alpha=[1.0]", "evaluate.cold_start_items=20",
          "compress.variants=[fp32]", "compress.latency_repeats=3"]
NOT_RUN_NOTE = ("10^7 events / 10^6 items were not run here: this 2-core machine is shared with other jobs and the "
                "run is bounded to ~20 minutes; run `--sizes 1e7:1e6` on a free machine (the exponents below give "
                "the expected cost, docs/scale.md has the arithmetic).")


def parse_size(text: str) -> dict[str, int]:
    """'1e6:1e4' or '1e6:1e4:20000' -> {"events", "items", "users"}."""
    parts = [int(float(p)) for p in text.split(":")]
    if len(parts) not in (2, 3) or min(parts) < 1:
        raise SystemExit(f"--sizes: {text!r} is not events:items[:users] with positive numbers")
    events, items = parts[:2]
    return {"events": events, "items": items, "users": parts[2] if len(parts) == 3 else max(100, events // 50)}


def size_name(size: dict[str, int]) -> str:
    return f"e{size['events']}_i{size['items']}_u{size['users']}"


# ----------------------------------------------------------------------------------------------- child side


def _config(root: Path, extra: list[str]):
    from components.config import load_config

    return load_config(root / "shop" / "config.yaml", [*BUDGET, *extra])


def run_step(step: str, root: Path, size: dict[str, int], extra: list[str]) -> dict[str, Any]:
    """Run one step in this process; returns what it produced (counts) and the folders that hold its output."""
    if step == "generate":
        from components.synth import SynthSpec, write_synthetic

        write_synthetic(SynthSpec(users=size["users"], items=size["items"], events=size["events"]), root / "shop")
        return {"outputs": [str(root / "shop")]}
    config = _config(root, extra)
    data = Path(config.paths.data_dir)
    canonical, examples, model = data / "canonical", data / "examples", root / "model"
    if step == "ingest":
        from components.ingest import ingest

        return {"counts": ingest(config, canonical), "outputs": [str(canonical)]}
    if step == "validate":
        from components.validate import validate

        report = validate(config, canonical, data / "validated", root / "data_docs")
        return {"expectations": report.evaluated, "outputs": [str(data / "validated"), str(root / "data_docs")]}
    if step == "features":
        from components.features import run_features

        metrics = run_features(config, canonical, examples)
        return {"metrics": metrics, "outputs": [str(examples), str(config.features.data_dir)]}
    if step == "examples_fallback":  # the examples without Feast (in-memory pandas), when the features step failed
        from components.schemas import read_tables
        from components.train_data import EXAMPLES_FILE, examples_from_tables

        examples.mkdir(parents=True, exist_ok=True)
        frame = examples_from_tables(read_tables(canonical), config.features.last_n_items, config.dataset)
        frame.to_parquet(examples / EXAMPLES_FILE)
        return {"examples": int(len(frame)), "outputs": [str(examples)]}
    if step == "embed":
        from components.schemas import read_tables
        from components.text_encoder import cached_text_embeddings, encoder_workers

        items = read_tables(canonical)["items"]
        cache = data / "cache"
        emb = cached_text_embeddings(items["text"].fillna("").astype(str).tolist(), config.model.encoder_source, cache,
                                     progress=False, workers=encoder_workers(config.model.encoder_workers))
        return {"texts": int(len(emb)), "outputs": [str(cache)]}
    if step == "train":
        from components.train import train_model

        train_model(config, canonical, examples, model, progress=False)
        return {"outputs": [str(model)]}
    if step == "evaluate":
        from components.baselines import MostPopular
        from components.evaluate import prepare, run_evaluation
        from components.schemas import read_tables

        if model.is_dir():
            ev = run_evaluation(config, canonical, root / "evaluation", model_dir=model)
        else:  # no trained model at this size: the step's own cost (baselines, ranking, report) with a stand-in
            split = prepare(config, read_tables(canonical)).split
            ev = run_evaluation(config, canonical, root / "evaluation", candidate=MostPopular().fit(split.train))
        return {"candidate": ev.results[0].name, "test_users": ev.info["test_users"],
                "test_users_total": ev.info["test_users_total"],
                "baselines": [r.key for r in ev.results], "skipped": ev.info["baselines_skipped"],
                "outputs": [str(root / "evaluation")]}
    if step == "compress":
        from components.compress import run_compress

        run_compress(config, canonical, model, root / "bundle", root / "compress_report", progress=False)
        return {"outputs": [str(root / "bundle"), str(root / "compress_report")]}
    if step == "deploy":
        from serving.deploy import deploy_bundle, ensure_server
        from serving.triton_server import settings_from_config, stop_detached

        started = time.perf_counter()
        ensure_server(config)
        server_s = time.perf_counter() - started
        try:
            started = time.perf_counter()
            result = deploy_bundle(config, root / "bundle")
            deploy_s = time.perf_counter() - started
        finally:
            stop_detached(settings_from_config(config))
        return {"server_start_s": round(server_s, 2), "deploy_bundle_s": round(deploy_s, 2),
                "status": result.status, "outputs": [str(config.serving.model_repository)]}
    raise SystemExit(f"unknown step {step!r}; choose from {STEPS}")


# ----------------------------------------------------------------------------------------------- parent side


def folder_bytes(paths: list[str]) -> int:
    total = 0
    for p in map(Path, paths):
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
    return total


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def measure(step: str, root: Path, size: dict[str, int], extra: list[str], timeout_s: float,
            max_rss_mb: float) -> dict[str, Any]:
    """Run `step` in a child process; wall seconds, its peak RSS (os.wait4) and output bytes. A child past
    `timeout_s` or `max_rss_mb` is killed (the machine is shared) and the row says so."""
    result_file = root / f"{step}.result.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.bench_scale", "--child", step, "--work", str(root),
           "--sizes", f"{size['events']}:{size['items']}:{size['users']}", *[a for e in extra for a in ("--set", e)]]
    log_file = root / f"{step}.log"
    started = time.perf_counter()
    with open(log_file, "w") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline, over_cap = started + timeout_s, False
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            over_cap = _rss_mb(child.pid) > max_rss_mb
            if time.perf_counter() > deadline or over_cap:
                child.kill()
                pid, status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(0.2)
    wall = time.perf_counter() - started
    row: dict[str, Any] = {"step": step, "seconds": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
                           "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2)}
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or not result_file.is_file():
        tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
        if over_cap:
            row["error"] = f"killed: resident memory passed the cap of {max_rss_mb / 1024:.0f} GB after {wall:.0f} s"
        elif wall >= timeout_s:
            row["error"] = f"timed out after {timeout_s:.0f} s"
        else:
            row["error"] = f"exit {code}: " + " | ".join(tail)
        return row
    info = json.loads(result_file.read_text())
    row["output_mb"] = round(folder_bytes(info.pop("outputs", [])) / 1e6, 2)
    row["info"] = info
    return row


def growth_exponents(runs: list[dict[str, Any]], key: str, by: str = "events") -> dict[str, float | None]:
    """Per step: least-squares slope of log(key) on log(size[by]) (events, or items for the steps whose work
    follows the catalogue: embed) over the sizes where the step succeeded."""
    out: dict[str, float | None] = {}
    for step in [*STEPS, FALLBACK]:
        pts = [(r["size"][by], s[key]) for r in runs for s in r["steps"]
               if s["step"] == step and "error" not in s and s.get(key, 0) > 0]
        if len({e for e, _ in pts}) < 2:
            out[step] = None
            continue
        x, y = np.log10([p[0] for p in pts]), np.log10([p[1] for p in pts])
        out[step] = round(float(np.polyfit(x, y, 1)[0]), 2)
    return out


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for step in [*STEPS, FALLBACK]:
        pts = [(r["size"]["events"], s["seconds"], s["peak_rss_mb"]) for r in runs for s in r["steps"]
               if s["step"] == step and "error" not in s]
        failed = [(r["size"]["events"], s["seconds"], s["peak_rss_mb"]) for r in runs for s in r["steps"]
                  if s["step"] == step and "error" in s]
        if not pts and not failed:
            continue
        colour = None
        if pts:
            ev, sec, rss = zip(*pts, strict=True)
            colour = axes[0].plot(ev, sec, marker="o", label=step)[0].get_color()
            axes[1].plot(ev, rss, marker="o", color=colour)
        for ev, sec, rss in failed:  # killed (time or memory cap): the cost is at least this
            colour = axes[0].plot([ev], [sec], marker="X", markersize=11, linestyle="none", color=colour,
                                  label=None if pts else f"{step} (killed: at least)")[0].get_color()
            axes[1].plot([ev], [rss], marker="X", markersize=11, linestyle="none", color=colour)
    for ax, label in zip(axes, ("wall time (s)", "peak RSS of the step (MB)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("events")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle("Pipeline steps on the synthetic shop (2 shared cores, one thread per step; X = killed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def all_exponents(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Time and peak-RSS exponents against events, and time against catalogue items."""
    return {"seconds": growth_exponents(runs, "seconds"), "peak_rss_mb": growth_exponents(runs, "peak_rss_mb"),
            "seconds_by_items": growth_exponents(runs, "seconds", by="items")}


def markdown_rows(runs: list[dict[str, Any]], exponents: dict[str, float | None],
                  item_exponents: dict[str, float | None] | None = None) -> list[str]:
    sizes = [r["size"] for r in runs]
    item_exponents = item_exponents or {}
    head = "| step | " + " | ".join(f"{s['events']:.0e} ev / {s['items']:.0e} items: s, MB RSS, MB out"
                                       for s in sizes) + " | time exponent (events) | (items) |"
    rows = [head, "|" + "---|" * (len(sizes) + 3)]
    for step in [*STEPS[:4], FALLBACK, *STEPS[4:]]:
        if step == FALLBACK and not any(s["step"] == FALLBACK for r in runs for s in r["steps"]):
            continue
        cells = []
        for r in runs:
            s = next((s for s in r["steps"] if s["step"] == step), None)
            if s is None:
                cells.append("not run" if step != FALLBACK else "not needed")
            elif "error" in s:
                cells.append(f"failed ({s['error'][:60]})")
            else:
                stand_in = s.get("info", {}).get("candidate") == "most-popular"
                stand_in = " (most-popular as the candidate)" if stand_in else ""
                cells.append(f"{s['seconds']:.1f} s, {s['peak_rss_mb']:.0f}, {s.get('output_mb', 0):.1f}{stand_in}")
        exp, by_items = exponents.get(step), item_exponents.get(step)
        rows.append(f"| {step} | " + " | ".join(cells) + f" | {'' if exp is None else f'{exp:.2f}'} | "
                    f"{'' if by_items is None else f'{by_items:.2f}'} |")
    return rows


def merge_runs(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`old` runs with the rows of `new` added where a size had no row, or a failed one, for that step."""
    merged = {size_name(r["size"]): {"size": r["size"], "steps": list(r["steps"])} for r in old}
    for run in new:
        into = merged.setdefault(size_name(run["size"]), {"size": run["size"], "steps": []})
        for row in run["steps"]:
            at = next((i for i, s in enumerate(into["steps"]) if s["step"] == row["step"]), None)
            if at is None:
                into["steps"].append({**row, "merged": True})
            elif "error" in into["steps"][at]:
                into["steps"][at] = {**row, "merged": True}
    order = {name: i for i, name in enumerate([*STEPS[:4], FALLBACK, *STEPS[4:]])}
    for run in merged.values():
        run["steps"].sort(key=lambda s: order.get(s["step"], len(order)))
    return sorted(merged.values(), key=lambda r: r["size"]["events"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e5:1e3,1e6:1e4", help="events:items[:users], comma-separated")
    parser.add_argument("--steps", default=",".join(STEPS), help="steps to run, in pipeline order")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--out", type=Path, default=Path("artifacts/benchmarks/scale.json"))
    parser.add_argument("--step-timeout", type=float, default=900.0, help="seconds before a step is killed")
    parser.add_argument("--max-rss-gb", type=float, default=12.0, help="resident memory at which a step is killed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    parser.add_argument("--merge", action="store_true",
                        help="add to the existing --out JSON: a step's new row fills a size's missing or failed one")
    parser.add_argument("--replot", action="store_true", help="redraw the PNG and rows from an existing --out JSON")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

    if args.child:
        result = run_step(args.child, args.work, parse_size(args.sizes), args.overrides)
        (args.work / f"{args.child}.result.json").write_text(json.dumps(result, default=str))
        return

    if args.replot:  # also after runs of other invocations were appended to the JSON's "runs" by hand
        report = json.loads(args.out.read_text(encoding="utf-8"))
        runs = report["runs"]
        report["growth_exponent"] = all_exponents(runs)
        report["not_run"] = None if max(r["size"]["events"] for r in runs) >= 10**7 else NOT_RUN_NOTE
        report["readme_rows"] = markdown_rows(runs, report["growth_exponent"]["seconds"],
                                              report["growth_exponent"]["seconds_by_items"])
        args.out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        plot(runs, args.out.with_suffix(".png"))
        print("\n".join(report["readme_rows"]))
        return

    from components.processes import free_port

    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if unknown := set(steps) - set(STEPS):
        raise SystemExit(f"--steps: unknown {sorted(unknown)}; choose from {STEPS}")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    runs = []
    for size in map(parse_size, args.sizes.split(",")):
        root = work / size_name(size)
        root.mkdir(parents=True, exist_ok=True)
        ports = [f"serving.triton_{kind}_port={free_port()}" for kind in ("http", "grpc", "metrics")]
        extra = [*args.overrides, *ports]
        rows: list[dict[str, Any]] = []
        for step in steps:
            row = measure(step, root, size, extra, args.step_timeout, args.max_rss_gb * 1024)
            rows.append(row)
            log.info("%s %s: %s", size_name(size), step, {k: v for k, v in row.items() if k != "info"})
            if "error" in row and step == "features":  # later steps still measured, on examples built without Feast
                row = measure("examples_fallback", root, size, extra, args.step_timeout, args.max_rss_gb * 1024)
                rows.append(row)
                log.info("%s examples_fallback: %s", size_name(size), row)
            if "error" in row and step == "train" and "evaluate" in steps:  # evaluate with a stand-in candidate
                row = measure("evaluate", root, size, extra, args.step_timeout, args.max_rss_gb * 1024)
                rows.append(row)
                log.info("%s evaluate (most-popular candidate): %s", size_name(size), row)
            if "error" in row and step not in ("deploy",):
                log.warning("%s failed: the later steps of this size are skipped", step)
                break
        runs.append({"size": size, "steps": rows})
    if args.merge and args.out.is_file():
        runs = merge_runs(json.loads(args.out.read_text(encoding="utf-8"))["runs"], runs)
    exponents = all_exponents(runs)
    largest = max(s["events"] for s in map(parse_size, args.sizes.split(",")))
    report = {
        "benchmark": "pipeline steps vs data size on the synthetic shop",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "note": "shared 2-core machine: other jobs ran at the same time, so times are upper bounds"},
        "budget": BUDGET + args.overrides,
        "runs": runs,
        "growth_exponent": exponents,
        "not_run": None if largest >= 10**7 else NOT_RUN_NOTE,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report["readme_rows"] = markdown_rows(runs, exponents["seconds"], exponents["seconds_by_items"])
    args.out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    plot(runs, args.out.with_suffix(".png"))
    print("\n".join(report["readme_rows"]))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
