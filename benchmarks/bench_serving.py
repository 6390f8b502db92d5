"""One serving benchmark, three layers, one run: the in-process limit, Triton direct (gRPC) and the API end to end.

A MovieLens-sized stack (synthetic ids; 1682 items, a 64-d tower over 50 recent items, both popularity priors on) is
built under a temporary folder with the one-graph layout (`serving.retrieval_layout=graph`: Triton serves both the
three-step `recommender` ensemble and `recommender_graph`). Then, on the same cores:
- in process: the three steps (components.ensemble) and the one graph (ONNX Runtime), one request at a time;
- Triton direct: an asyncio gRPC load generator (tritonclient) against each layout at each concurrency;
- the API: locust (headless, closed-loop users: benchmarks/locustfile.py, from .venv-loadgen, `make loadgen`)
  against POST /recommend at each concurrency, and in the same run against the BentoML floor
  (benchmarks/bentoml_floor.py: the same framework and settings, no logic); httpx asyncio where locust is absent.
Each level is bounded in requests and seconds. CPU per request comes from the CPU times of each process (Triton's
server and Python-backend stubs, the API, this load generator). The load average before the run is recorded: the
machine is shared.

    .venv/bin/python -m benchmarks.bench_serving [--requests 1500] [--max-seconds 15] [--concurrency 1 8 32]
        [--api-workers 1 2]  # also the API with 1 and 2 worker processes on a shared PostgreSQL log
        [--api-threads 1 2 8]  # also the API with 1, 2 and 8 engine threads per worker (serving.request_threads)
        [--api-batch 1 32]  # also the API answering each /recommend alone and in batches (serving.request_batch)
        [--pin-workers]  # the API's worker on one CPU (serving.pin_workers)

Writes artifacts/benchmarks/serving.json and prints the README table rows.
"""

import argparse
import asyncio
import csv
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.bench_api import cpu_seconds, run_level
from benchmarks.bench_triton import _load, _requests
from components.processes import free_port, launch, stop_process, wait_ready

log = logging.getLogger("bench_serving")
OUT = Path("artifacts/benchmarks/serving.json")
LOCUST = Path(".venv-loadgen/bin/locust")  # `make loadgen`: locust in its own environment (its pins clash with kfp's)
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
TRITON_GROUPS = ("triton_server", "triton_prep", "triton_user_tower", "triton_topk", "triton_graph", "triton_other")


def _cpu_ms(before: dict[str, float], after: dict[str, float], groups: tuple[str, ...], n: int) -> float:
    return round(sum(after.get(g, 0.0) - before.get(g, 0.0) for g in groups) * 1000 / max(n, 1), 3)


def with_priors(bundle: Path) -> None:
    """Both popularity priors on, 5 % of the items new (what the served ranking of a trained model carries: the new
    items' prior fitted on cold validation blends three windows, gives a bonus to the ones nobody has met and an
    offset against the trained items)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    ids = np.load(bundle / "item_ids.npy")
    manifest["popularity_prior"] = {"new_item_windows": [[None, 0.02], [30, 0.15], [7, 0.2]],
                                    "new_item_never_seen": 0.2, "new_item_offset": -1.0, "weight": 0.02,
                                    "window_days": None,
                                    "new_item_ids": ids[: len(ids) // 20].tolist()}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def in_process(bundle: Path, payloads: list[dict[str, np.ndarray]]) -> dict[str, dict]:
    """CPU and wall time per request of each layout in this process (one request at a time, 1 ORT thread)."""
    from components.ensemble import EnsembleReference, onnx_session
    from components.retrieval_graph import OUTPUTS, as_batch_of_one, build_graph

    reference = EnsembleReference(bundle)
    graph = onnx_session(build_graph(bundle, bundle.parent / "retrieval.onnx"))
    calls = {
        "steps": lambda p: reference.recommend(p["history_item_ids"], p["profile"], p["exclude_item_ids"],
                                               int(p["k"][0]), p["prior_item_ids"], p["prior_counts"]),
        "graph": lambda p: graph.run(list(OUTPUTS), p),
    }
    batched = [as_batch_of_one(p) for p in payloads]
    out = {}
    for name, call in calls.items():
        inputs = batched if name == "graph" else payloads
        for p in inputs[:50]:
            call(p)
        wall, cpu = time.perf_counter(), time.process_time()
        for p in inputs:
            call(p)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        out[name] = {"requests": len(payloads), "ms_per_request": round(wall * 1000 / len(payloads), 4),
                     "cpu_ms_per_request": round(cpu * 1000 / len(payloads), 4),
                     "limit_requests_per_s_per_core": round(len(payloads) / cpu, 1)}
        log.info("in process, %s: %.3f ms CPU per request", name, out[name]["cpu_ms_per_request"])
    return out


def with_prior_counts(payloads: list[dict[str, np.ndarray]], bundle: Path, seed: int = 1) -> None:
    """Give each request sparse prior counts (what the API sends): 200 items with events."""
    ids = np.load(bundle / "item_ids.npy")
    rng = np.random.default_rng(seed)
    for p in payloads:
        p["prior_item_ids"] = rng.choice(ids, size=min(200, len(ids)), replace=False).astype(np.int64)
        p["prior_counts"] = rng.integers(1, 100, size=p["prior_item_ids"].size).astype(np.float32)


def triton_levels(url: str, payloads: list, concurrency: list[int], max_seconds: float, model: str,
                  label: str) -> list[dict]:
    """One model of a running Triton at each concurrency (after a warm-up), with the CPU per request of Triton
    and of this load generator from the processes' CPU times."""
    asyncio.run(_load(url, payloads[:50], 4, 30.0, model))  # warm-up
    levels = []
    for c in concurrency:
        before = cpu_seconds()
        level = asyncio.run(_load(url, payloads, c, max_seconds, model))
        after = cpu_seconds()
        level["cpu_ms_per_request"] = {
            "triton": _cpu_ms(before, after, TRITON_GROUPS, level["requests"]),
            "load_generator": _cpu_ms(before, after, ("bench_client",), level["requests"])}
        level["triton_cpu_ms_per_request_by_process"] = {  # the server (gRPC front end, scheduler) and each stub
            group: _cpu_ms(before, after, (group,), level["requests"]) for group in TRITON_GROUPS
            if after.get(group, 0.0) > before.get(group, 0.0)}
        levels.append(level)
        log.info("Triton %s c=%d: %.0f req/s, p50 %.2f ms, p99 %.2f ms, Triton CPU %.3f ms/req, %d errors",
                 label, c, level["requests_per_s"], level["p50_ms"] or 0, level["p99_ms"] or 0,
                 level["cpu_ms_per_request"]["triton"], level["errors"])
    return levels


def triton_direct(url: str, payloads: list, concurrency: list[int], max_seconds: float) -> dict[str, list[dict]]:
    """Both layouts (the three-step ensemble and the one graph, whose inputs are batches of one) on the same
    server."""
    from components.retrieval_graph import as_batch_of_one

    return {"steps": triton_levels(url, payloads, concurrency, max_seconds, "recommender", "steps"),
            "graph": triton_levels(url, [as_batch_of_one(p) for p in payloads], concurrency, max_seconds,
                                   "recommender_graph", "graph")}


SWEEPS = {  # layout -> (the delay's config key, extra overrides, the model loaded)
    "steps": ("serving.max_queue_delay_us", {}, "recommender"),
    "graph": ("serving.graph_max_queue_delay_us", {"serving.retrieval_layout": "graph"}, "recommender_graph"),
}


def batching_sweep(root: Path, bundle: Path, payloads: list, delays: list[int], concurrency: list[int],
                   max_seconds: float, layout: str = "steps") -> list[dict]:
    """One layout's dynamic batching (the three-step layout's user tower, or the one graph) at each queue delay,
    on a stack started afresh per delay (no API): requests/s, p99 and Triton's CPU per request per concurrency."""
    from benchmarks.serving_stack import build_stack
    from components.retrieval_graph import as_batch_of_one

    key, extra, model = SWEEPS[layout]
    sent = [as_batch_of_one(p) for p in payloads] if layout == "graph" else payloads
    out = []
    for delay in delays:
        stack = build_stack(root / f"{layout}_delay_{delay}", bundle, n_users=30, per_user=12, api=False,
                            overrides={key: delay, **extra})
        try:
            levels = triton_levels(stack.triton.grpc_url, sent, concurrency, max_seconds, model,
                                   f"{layout}, {key.split('.')[-1]}={delay}")
        finally:
            stack.stop()
        out += [{"layout": layout, "max_queue_delay_us": delay, **level} for level in levels]
    return out


def _process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its descendants so far."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _children_cpu_s() -> float:
    """CPU seconds of this process's terminated and reaped children (locust runs, once each has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def locust_level(url: str, token: str, concurrency: int, seconds: float, users: int, server_pid: int,
                 workdir: Path) -> dict:
    """One headless locust run (`concurrency` closed-loop users for `seconds`) against `url`: requests/s,
    p50/p99 and failures from its CSV summary; CPU per answered request of the server (`server_pid` and its
    children) and of locust itself, from their CPU times."""
    prefix = workdir / f"locust_c{concurrency}"
    env = {**os.environ, "RECSYS_API_TOKEN": token, "RECSYS_LOAD_USERS": str(users),
           "RECSYS_LOAD_SEED": str(concurrency)}
    server_before, locust_before = _process_cpu_s(server_pid), _children_cpu_s()
    proc = subprocess.run([str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "-u", str(concurrency),
                           "-r", str(concurrency), "-t", f"{int(seconds)}s", "--host", url, "--csv", str(prefix),
                           "--only-summary", "--stop-timeout", "5", "--loglevel", "WARNING"],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=seconds + 120, check=False)
    server_cpu, locust_cpu = _process_cpu_s(server_pid) - server_before, _children_cpu_s() - locust_before
    with open(f"{prefix}_stats.csv", encoding="utf-8") as f:
        stats = next((row for row in csv.DictReader(f) if row["Name"] == "/recommend"), None)
    if stats is None:
        raise RuntimeError(f"locust wrote no /recommend stats (exit {proc.returncode}): {proc.stderr[-2000:]}")
    ok = max(int(stats["Request Count"]) - int(stats["Failure Count"]), 1)
    return {"concurrency": concurrency, "seconds": seconds, "requests": int(stats["Request Count"]),
            "errors": int(stats["Failure Count"]), "requests_per_s": round(float(stats["Requests/s"]), 1),
            "p50_ms": float(stats["50%"]), "p99_ms": float(stats["99%"]),
            "cpu_ms_per_request": {"server": round(server_cpu * 1000 / ok, 3),
                                   "load_generator": round(locust_cpu * 1000 / ok, 3)}}


def api_levels_locust(stack, users: int, concurrency: list[int], seconds: float, workdir: Path) -> dict:
    """The API (the stack's BentoML server) and, in the same run, the BentoML floor (benchmarks.bentoml_floor)
    under the same locust scenario."""
    token = stack.auth_headers()["Authorization"].removeprefix("Bearer ")
    port = free_port()
    floor_log = workdir / "floor.log"
    floor = launch([sys.executable, "-m", "bentoml", "serve", "benchmarks.bentoml_floor:FloorService",
                    "--port", str(port), "--host", "127.0.0.1"], floor_log, cwd=Path.cwd())
    out: dict[str, list[dict]] = {"bentoml_floor": [], "api": []}
    try:
        wait_ready("the BentoML floor service", lambda: _answers(f"http://127.0.0.1:{port}/readyz"), floor, 120,
                   floor_log)
        for name, url, pid in (("bentoml_floor", f"http://127.0.0.1:{port}", floor.pid),
                               ("api", stack.url, stack.api_pid)):
            locust_level(url, token, 4, 3, users, pid, workdir)  # warm-up
            for c in concurrency:
                level = locust_level(url, token, c, seconds, users, pid, workdir)
                out[name].append(level)
                log.info("%s c=%d (locust): %.0f req/s, p50 %.1f ms, p99 %.1f ms, server CPU %.3f ms/req, %d errors",
                         name, c, level["requests_per_s"], level["p50_ms"], level["p99_ms"],
                         level["cpu_ms_per_request"]["server"], level["errors"])
    finally:
        stop_process(floor.pid, process=floor)
    return out


def _postgres_pid(port: int) -> int:
    """The postmaster of the throw-away PostgreSQL on `port` (its backends are its children)."""
    import psutil

    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and "-p" in cmdline and cmdline[cmdline.index("-p") + 1] == str(port):
            return proc.pid
    raise RuntimeError(f"no PostgreSQL server on port {port}")


def api_workers_sweep(root: Path, bundle: Path, workers: list[int], concurrency: list[int], seconds: float,
                      users: int, per_user: int) -> list[dict]:
    """The API with each number of worker processes (serving.api_workers) on one shared PostgreSQL request log (what
    several workers need), locust-loaded: requests/s, p50/p99 and CPU per request of the API (all its workers)
    and of PostgreSQL."""
    from benchmarks.serving_stack import build_stack
    from components.request_log_pg import PASSWORD_ENV, postgres_server

    out = []
    with postgres_server() as pg:
        os.environ[PASSWORD_ENV] = pg.password  # the API's workers inherit it
        pg_pid = _postgres_pid(pg.port)
        for n in workers:
            stack = build_stack(root / f"workers_{n}", bundle, n_users=users, per_user=per_user,
                                overrides={"features.last_n_items": 50, "serving.retrieval_layout": "graph",
                                           "serving.request_log": pg.create_database(f"workers_{n}"),
                                           "serving.api_workers": n})
            try:
                token = stack.auth_headers()["Authorization"].removeprefix("Bearer ")
                locust_level(stack.url, token, 4, 3, users, stack.api_pid, root)  # warm-up
                for c in concurrency:
                    pg_before = _process_cpu_s(pg_pid)
                    level = locust_level(stack.url, token, c, seconds, users, stack.api_pid, root)
                    ok = max(level["requests"] - level["errors"], 1)
                    level["cpu_ms_per_request"]["postgres"] = round((_process_cpu_s(pg_pid) - pg_before) * 1000 / ok,
                                                                    3)
                    out.append({"api_workers": n, **level})
                    log.info("API, %d worker(s), PostgreSQL log, c=%d: %.0f req/s, p99 %.1f ms, API CPU %.3f ms/req, "
                             "%d errors", n, c, level["requests_per_s"], level["p99_ms"],
                             level["cpu_ms_per_request"]["server"], level["errors"])
            finally:
                stack.stop()
    return out


def api_setting_sweep(root: Path, bundle: Path, setting: str, values: list[int], concurrency: list[int],
                      seconds: float, users: int, per_user: int) -> list[dict]:
    """The API with each value of one `serving.` setting (request_threads: engine threads per worker; request_batch:
    /recommend requests answered together at most; one worker, the SQLite log), a fresh stack each, locust-loaded:
    requests/s, p50/p99 and the API's CPU per request."""
    from benchmarks.serving_stack import build_stack

    out = []
    for n in values:
        stack = build_stack(root / f"{setting}_{n}", bundle, n_users=users, per_user=per_user,
                            overrides={"features.last_n_items": 50, "serving.retrieval_layout": "graph",
                                       f"serving.{setting}": n})
        try:
            token = stack.auth_headers()["Authorization"].removeprefix("Bearer ")
            locust_level(stack.url, token, 4, 3, users, stack.api_pid, root)  # warm-up
            for c in concurrency:
                level = locust_level(stack.url, token, c, seconds, users, stack.api_pid, root)
                out.append({setting: n, **level})
                log.info("API, %s=%d, c=%d: %.0f req/s, p99 %.1f ms, API CPU %.3f ms/req, %d errors", setting, n, c,
                         level["requests_per_s"], level["p99_ms"], level["cpu_ms_per_request"]["server"],
                         level["errors"])
        finally:
            stack.stop()
    return out


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def api_levels(stack, users: int, concurrency: list[int], requests: int) -> list[dict]:
    headers = stack.auth_headers()
    asyncio.run(run_level(stack.url, headers, 4, 100, users, 0.0, seed=99))  # warm-up
    levels = []
    for c in concurrency:
        level = run_level(stack.url, headers, c, requests, users, 0.0, seed=c)
        level = asyncio.run(level)
        cpu = level["cpu_ms_per_request"]
        level["cpu_ms_per_request_by_layer"] = {
            "api": round(cpu.get("api_bentoml", 0.0), 3),
            "triton": round(sum(cpu.get(g, 0.0) for g in TRITON_GROUPS), 3),
            "load_generator": round(cpu.get("bench_client", 0.0), 3)}
        levels.append(level)
        log.info("API c=%d: %.0f req/s, p50 %.2f ms, p99 %.2f ms, API CPU %.2f ms/req, %d errors", c, level["rps"],
                 level["p50_ms"], level["p99_ms"], level["cpu_ms_per_request_by_layer"]["api"], level["errors"])
    return levels


def run(n_requests: int, max_seconds: float, concurrency: list[int], instances: int = 1, users: int = 943,
        per_user: int = 20, queue_delays: list[int] | None = None, graph_queue_delays: list[int] | None = None,
        api_workers: list[int] | None = None, api_threads: list[int] | None = None,
        api_batch: list[int] | None = None, pin_workers: bool = False) -> dict:
    import torch

    from benchmarks.serving_stack import build_stack, make_bundle

    torch.set_num_threads(1)
    load_before = [round(x, 2) for x in os.getloadavg()]
    root = Path(tempfile.mkdtemp(prefix="bench_serving_"))
    try:
        bundle = make_bundle(root / "bundle", n_items=1682, dim=64, max_seq_len=50, seed=0)
        with_priors(bundle)
        payloads = _requests(bundle, n_requests, 10, seed=0)
        with_prior_counts(payloads, bundle)
        local = in_process(bundle, payloads)
        stack = build_stack(root, bundle, n_users=users, per_user=per_user,
                            overrides={"features.last_n_items": 50, "serving.retrieval_layout": "graph",
                                       "serving.tower_instances": instances, "serving.pin_workers": pin_workers})
        request_threads, request_batch = stack.config.serving.request_threads, stack.config.serving.request_batch
        try:
            triton = triton_direct(stack.triton.grpc_url, payloads, concurrency, max_seconds)
            if LOCUST.exists():
                api_locust = api_levels_locust(stack, users, concurrency, max_seconds, root)
                api, floor = api_locust["api"], api_locust["bentoml_floor"]
            else:
                log.warning("%s not found (`make loadgen` builds it): the API is loaded by httpx instead", LOCUST)
                api, floor = api_levels(stack, users, concurrency, min(n_requests, int(max_seconds * 150))), []
        finally:
            stack.stop()
        sweep = [row for layout, delays in (("steps", queue_delays), ("graph", graph_queue_delays)) if delays
                 for row in batching_sweep(root, bundle, payloads, delays, concurrency, max_seconds, layout)]
        workers = (api_workers_sweep(root, bundle, api_workers, concurrency, max_seconds, users, per_user)
                   if api_workers and LOCUST.exists() else [])
        threads, batches = (
            api_setting_sweep(root, bundle, setting, values, concurrency, max_seconds, users, per_user)
            if values and LOCUST.exists() else []
            for setting, values in (("request_threads", api_threads), ("request_batch", api_batch)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    top = {layout: next(lv for lv in levels if lv["concurrency"] == max(concurrency))
           for layout, levels in triton.items()}
    cores = os.cpu_count() or 1
    ratios = {
        f"triton_{layout}_c{max(concurrency)}_rps_over_in_process_{layout}_limit_{cores}_cores":
            round(level["requests_per_s"] / (local[layout]["limit_requests_per_s_per_core"] * cores), 3)
        for layout, level in top.items()}
    ratios.update({
        f"triton_{layout}_cpu_per_request_over_in_process_{layout}": round(
            level["cpu_ms_per_request"]["triton"] / local[layout]["cpu_ms_per_request"], 2)
        for layout, level in top.items()})
    api_top = api[-1]
    ratios[f"api_c{max(concurrency)}_rps_over_triton_graph"] = round(
        api_top.get("requests_per_s", api_top.get("rps", 0.0)) / max(top["graph"]["requests_per_s"], 1e-9), 3)
    if floor:
        ratios[f"api_c{max(concurrency)}_cpu_per_request_over_bentoml_floor"] = round(
            api_top["cpu_ms_per_request"]["server"] / max(floor[-1]["cpu_ms_per_request"]["server"], 1e-9), 2)
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": cores, "platform": platform.platform(), "load_average_before": load_before,
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "stack": {"items": 1682, "embedding_dim": 64, "max_seq_len": 50, "users": users, "k": 10,
                  "priors": "both on, 200 items with counts per request", "api_layout": "graph",
                  "instances_per_model": instances, "api_request_threads": request_threads,
                  "api_request_batch": request_batch,
                  "api_workers_pinned": pin_workers,
                  "api_load_generator": "locust (headless, closed-loop users)" if floor else "httpx asyncio"},
        "requests_per_level": n_requests, "max_seconds_per_level": max_seconds,
        "in_process": local, "triton_direct": triton, "api": api, "bentoml_floor": floor, "ratios": ratios,
        "dynamic_batching_sweep": sweep, "api_workers_sweep": workers, "api_threads_sweep": threads,
        "api_batch_sweep": batches,
    }


def markdown(report: dict) -> list[str]:
    rows = []
    for layout, entry in report["in_process"].items():
        rows.append(f"| in process, {layout} | 1 | {entry['limit_requests_per_s_per_core']} req/s per core | "
                    f"{entry['ms_per_request']} ms | | {entry['cpu_ms_per_request']} ms | |")
    for layout, levels in report["triton_direct"].items():
        for lv in levels:
            cpu = lv["cpu_ms_per_request"]
            rows.append(f"| Triton gRPC, {layout} | {lv['concurrency']} | {lv['requests_per_s']} req/s | "
                        f"{lv['p50_ms']} ms | {lv['p99_ms']} ms | {cpu['triton']} ms | {cpu['load_generator']} ms |")
    for name, levels in (("BentoML floor (no logic)", report.get("bentoml_floor", [])), ("API /recommend (graph)",
                                                                                           report["api"])):
        for lv in levels:
            if "cpu_ms_per_request_by_layer" in lv:  # the httpx load generator
                cpu = lv["cpu_ms_per_request_by_layer"]
                rows.append(f"| {name} | {lv['concurrency']} | {lv['rps']} req/s | {lv['p50_ms']} ms | "
                            f"{lv['p99_ms']} ms | API {cpu['api']} + Triton {cpu['triton']} ms | "
                            f"{cpu['load_generator']} ms |")
                continue
            cpu = lv["cpu_ms_per_request"]
            rows.append(f"| {name} | {lv['concurrency']} | {lv['requests_per_s']} req/s | {lv['p50_ms']} ms | "
                        f"{lv['p99_ms']} ms | {cpu['server']} ms | {cpu['load_generator']} ms (locust) |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500, help="requests per level (bounded by --max-seconds)")
    parser.add_argument("--max-seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--instances", type=int, default=1,
                        help="Triton instances of the user tower and of the graph (serving.tower_instances)")
    parser.add_argument("--queue-delays", type=int, nargs="*", default=[],
                        help="also measure the three-step layout at each max_queue_delay_us (a fresh stack each)")
    parser.add_argument("--graph-queue-delays", type=int, nargs="*", default=[],
                        help="also measure the one graph at each graph_max_queue_delay_us (a fresh stack each)")
    parser.add_argument("--api-workers", type=int, nargs="*", default=[],
                        help="also measure the API with each number of worker processes on a PostgreSQL request log "
                             "(a throw-away local server; needs locust)")
    parser.add_argument("--api-threads", type=int, nargs="*", default=[],
                        help="also measure the API with each number of engine threads per worker "
                             "(serving.request_threads; a fresh stack each; needs locust)")
    parser.add_argument("--api-batch", type=int, nargs="*", default=[],
                        help="also measure the API with each most /recommend requests answered together "
                             "(serving.request_batch; 1: each alone; a fresh stack each; needs locust)")
    parser.add_argument("--pin-workers", action="store_true",
                        help="the API's worker on one CPU (serving.pin_workers; the floor stays unpinned)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "components", "serving"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    report = run(args.requests, args.max_seconds, args.concurrency, args.instances,
                 queue_delays=args.queue_delays, graph_queue_delays=args.graph_queue_delays,
                 api_workers=args.api_workers, api_threads=args.api_threads, api_batch=args.api_batch,
                 pin_workers=args.pin_workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print("| layer | concurrency | requests/s | p50 | p99 | server CPU / request | load generator CPU / request |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(markdown(report)))
    for row in report["dynamic_batching_sweep"]:
        print(f"| {row['layout']}, queue delay {row['max_queue_delay_us']} µs | {row['concurrency']} | "
              f"{row['requests_per_s']} req/s | {row['p50_ms']} ms | {row['p99_ms']} ms | "
              f"{row['cpu_ms_per_request']['triton']} ms | {row['cpu_ms_per_request']['load_generator']} ms |")
    for row in report["api_workers_sweep"]:
        cpu = row["cpu_ms_per_request"]
        print(f"| API, {row['api_workers']} worker(s), PostgreSQL log | {row['concurrency']} | "
              f"{row['requests_per_s']} req/s | {row['p50_ms']} ms | {row['p99_ms']} ms | {cpu['server']} ms "
              f"(+ PostgreSQL {cpu['postgres']} ms) | {cpu['load_generator']} ms |")
    for sweep, label in (("api_threads_sweep", "{request_threads} request thread(s)"),
                         ("api_batch_sweep", "batches of at most {request_batch}")):
        for row in report[sweep]:
            cpu = row["cpu_ms_per_request"]
            print(f"| API, {label.format(**row)} | {row['concurrency']} | {row['requests_per_s']} req/s | "
                  f"{row['p50_ms']} ms | {row['p99_ms']} ms | {cpu['server']} ms | {cpu['load_generator']} ms |")
    print(json.dumps(report["ratios"], indent=2))


if __name__ == "__main__":
    main()
