"""Load test of the recommendation API on loopback: requests/s and p50/p99 at several concurrencies, errors,
and where the time goes (Feast, Triton, the request log, the service itself, HTTP + BentoML), plus the CPU
milliseconds each process of a built stack (API, Triton server, each Python-backend step, this client) spends
per request: with two cores, sum(cpu_ms_per_request) bounds requests/s whatever the latency stages say.

By default it builds a MovieLens-sized stack (1682 items, 943 users, a 64-d tower over 50 recent items) with
real Feast, Triton and BentoML under a temporary folder; `--url` measures an API that already runs instead.

    .venv/bin/python benchmarks/bench_api.py                      # JSON in artifacts/benchmarks/api.json
    RECSYS_API_TOKEN=... .venv/bin/python benchmarks/bench_api.py --url http://127.0.0.1:3000 --users 943
"""

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from serving.engine import TIMED_PARTS  # noqa: E402  (after the path)

log = logging.getLogger("bench_api")


def parse_timing(header: str | None) -> dict[str, float]:
    """Server-Timing: 'feast;dur=0.4, triton;dur=2.1, ...' -> {'feast': 0.4, ...} (ms)."""
    out: dict[str, float] = {}
    for part in (header or "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


def _process_group(proc: Any) -> str:
    """Which part of the stack a process is (by its command line)."""
    cmd = " ".join(proc.cmdline())
    if "triton_python_backend_stub" in cmd:
        for model in ("recommender_topk", "recommender_user_tower", "recommender_prep", "recommender_graph"):
            if f"/{model}/" in cmd:
                return f"triton_{model.removeprefix('recommender_')}"
        return "triton_other"
    if "tritonserver" in cmd:
        return "triton_server"
    if "bentoml" in cmd:
        return "api_bentoml"
    return "bench_client" if proc.pid == os.getpid() else "other"


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by this process and all its descendants, by part of the stack."""
    import psutil

    me = psutil.Process()
    out: dict[str, float] = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            group = _process_group(proc)
        except psutil.Error:
            continue
        out[group] = out.get(group, 0.0) + times.user + times.system
    return out


def make_body(rng: random.Random, users: int, filter_share: float) -> dict:
    body = {"user_id": rng.randint(1, users), "k": 10}
    if rng.random() < filter_share:
        body["filters"] = {"year_min": 1980} if rng.random() < 0.5 else {"genres": ["Drama", "Comedy"]}
    return body


async def run_level(url: str, headers: dict[str, str], concurrency: int, requests: int, users: int,
                    filter_share: float, seed: int) -> dict:
    """`requests` requests spread over `concurrency` workers that each send one at a time (with `headers`:
    the bearer token)."""
    rng = random.Random(seed)
    bodies = [make_body(rng, users, filter_share) for _ in range(requests)]
    latencies: list[float] = []
    stages: list[dict[str, float]] = []
    errors: dict[str, int] = {}
    degraded = 0
    queue = iter(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits, headers=headers) as client:

        async def worker() -> None:
            nonlocal degraded
            for body in queue:
                t0 = time.perf_counter()
                try:
                    resp = await client.post("/recommend", json=body)
                except httpx.HTTPError as err:
                    errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
                    continue
                elapsed = time.perf_counter() - t0
                if resp.status_code != 200:
                    errors[str(resp.status_code)] = errors.get(str(resp.status_code), 0) + 1
                    continue
                latencies.append(elapsed * 1000)
                timing = parse_timing(resp.headers.get("server-timing"))
                timing["client"] = elapsed * 1000
                stages.append(timing)
                degraded += bool(resp.json()["degraded"])

        cpu0 = cpu_seconds()
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
        cpu1 = cpu_seconds()
    lat = np.asarray(latencies) if latencies else np.zeros(1)
    mean = {k: float(np.mean([s.get(k, 0.0) for s in stages])) if stages else 0.0
            for k in (*TIMED_PARTS, "total", "client")}
    mean["http_bentoml"] = max(mean["client"] - mean["total"], 0.0)
    share_keys = (*TIMED_PARTS, "http_bentoml")
    denom = sum(mean[k] for k in share_keys) or 1.0
    return {
        "concurrency": concurrency, "requests": requests, "ok": len(latencies),
        "errors": sum(errors.values()), "error_kinds": errors, "degraded": degraded,
        "rps": round(len(latencies) / wall, 1), "wall_s": round(wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 2), "p90_ms": round(float(np.percentile(lat, 90)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2), "max_ms": round(float(lat.max()), 2),
        "mean_stage_ms": {k: round(v, 3) for k, v in mean.items()},
        "time_share": {k: round(mean[k] / denom, 3) for k in share_keys},
        # CPU ms per answered request by part of the stack (processes of a built stack; the client's own
        # CPU is in bench_client); with N cores the stack cannot exceed N * 1000 / total requests/s
        "cpu_ms_per_request": {k: round((cpu1[k] - cpu0.get(k, 0.0)) * 1000 / max(len(latencies), 1), 2)
                               for k in sorted(cpu1)},
        "load_average": os.getloadavg(),
    }


def _token_from_env() -> str:
    """The bearer token for --url: $RECSYS_API_TOKEN (a key with the `recommend` scope)."""
    from serving.api_server import TOKEN_ENV

    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise SystemExit(f"--url needs a bearer token with the `recommend` scope in ${TOKEN_ENV}")
    return token


def build_movielens_sized_stack(root: Path, per_user: int, request_log: Path | None = None):
    """A stack with MovieLens-100K sizes (synthetic ids/metadata; the timings depend on sizes only)."""
    import torch

    torch.set_num_threads(1)
    from benchmarks.serving_stack import build_stack, make_bundle

    bundle = make_bundle(root / "bundle", n_items=1682, dim=64, max_seq_len=50, seed=0)
    overrides = {"features.last_n_items": 50}
    if request_log is not None:
        overrides["serving.request_log"] = request_log
    return build_stack(root, bundle, n_users=943, per_user=per_user, overrides=overrides)


def markdown(result: dict) -> list[str]:
    rows = []
    for level in result["levels"]:
        share = level["time_share"]
        rows.append(
            f"| API /recommend | c={level['concurrency']} | {level['rps']} req/s | p50 {level['p50_ms']} ms | "
            f"p99 {level['p99_ms']} ms | errors {level['errors']} | feast {share['feast']:.0%} · triton "
            f"{share['triton']:.0%} · log {share['log']:.0%} · service {share['service']:.0%} · "
            f"http/bentoml {share['http_bentoml']:.0%} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Measure a running API instead of building a stack.")
    parser.add_argument("--users", type=int, default=943, help="User ids are drawn from 1..users.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, nargs="+", default=[400, 1200, 2000],
                        help="Requests per concurrency level (one number, or one per level).")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--filter-share", type=float, default=0.2, help="Share of requests with filters.")
    parser.add_argument("--per-user", type=int, default=60, help="Events per user in the built stack.")
    parser.add_argument("--request-log", type=Path, help="Request log file of the built stack (default: in its "
                        "folder); e.g. under /dev/shm to measure the API without the disk's fsync cost.")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "benchmarks" / "api.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    counts = args.requests if len(args.requests) == len(args.concurrency) else args.requests[:1] * len(
        args.concurrency)

    stack = None
    url = args.url
    if url is None:
        t0 = time.perf_counter()
        stack = build_movielens_sized_stack(Path(tempfile.mkdtemp(prefix="bench_api_")), args.per_user,
                                            args.request_log)
        url = stack.url
        log.info("stack ready in %.0f s at %s", time.perf_counter() - t0, url)
    headers = stack.auth_headers() if stack is not None else {"Authorization": f"Bearer {_token_from_env()}"}
    try:
        asyncio.run(run_level(url, headers, 4, args.warmup, args.users, args.filter_share, seed=99))
        levels = []
        for conc, n in zip(args.concurrency, counts, strict=True):
            level = asyncio.run(run_level(url, headers, conc, n, args.users, args.filter_share, seed=conc))
            log.info("c=%d: %.1f req/s, p50 %.2f ms, p99 %.2f ms, errors %d, degraded %d, share %s, "
                     "CPU ms/request %s, load %s", conc, level["rps"], level["p50_ms"], level["p99_ms"],
                     level["errors"], level["degraded"], level["time_share"], level["cpu_ms_per_request"],
                     level["load_average"])
            levels.append(level)
    finally:
        if stack is not None:
            stack.stop()
    result = {
        "benchmark": "api", "url": url if args.url else "built stack (loopback)",
        "setup": {"items": 1682, "users": args.users, "embedding_dim": 64, "max_seq_len": 50, "k": 10,
                  "filter_share": args.filter_share, "bentoml_workers": 1,
                  "request_log": str(args.request_log or "stack folder (disk, fsync per request)"),
                  "cpus": os.cpu_count(),
                  "load_average_at_end": os.getloadavg(), "python": platform.python_version()},
        "targets": {"p99_ms_at_c1": 25, "rps_at_c32": 200},
        "levels": levels,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")
    print("\n".join(markdown(result)))


if __name__ == "__main__":
    main()
