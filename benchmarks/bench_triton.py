"""Triton serving benchmark: requests/s and p50/p99 latency of the `recommender` ensemble.

For every bundle variant given (e.g. fp32 and compressed ones), the bundle is deployed (the real deploy path:
new version, load, smoke test) into a private Triton server on free loopback ports, then an asyncio gRPC load
generator (tritonclient.grpc.aio) runs at each concurrency level, bounded in request count and time.

    python -m benchmarks.bench_triton BUNDLE_DIR [BUNDLE_DIR ...] [--concurrency 1 8 32] [--requests 2000]

Writes artifacts/benchmarks/triton.json and prints Markdown table rows for the README.
"""

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.serving_stack import serving_config
from components.bundle_ops import profile_sizes
from serving import triton_server as ts
from serving.deploy import deploy_bundle
from serving.triton_admin import admin_key

log = logging.getLogger("bench_triton")



def _requests(bundle: Path, n: int, k: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Random but realistic requests: a history of known items, a profile, the history excluded."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    ids = np.load(bundle / "item_ids.npy")
    sizes = profile_sizes(manifest)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        history = rng.choice(ids, size=int(rng.integers(0, manifest["max_seq_len"] + 1)), replace=False)
        out.append(
            {
                "history_item_ids": history.astype(np.int64),
                "profile": np.array([rng.integers(0, s) for s in sizes], np.int64),
                "exclude_item_ids": history.astype(np.int64),
                "k": np.array([k], np.int32),
                "prior_item_ids": np.zeros(0, np.int64),  # the bundle's priors, counts from the API (none here)
                "prior_counts": np.zeros(0, np.float32),
            }
        )
    return out


async def _load(url: str, payloads: list[dict[str, np.ndarray]], concurrency: int, max_seconds: float,
                model: str = "recommender") -> dict:
    """Send the payloads to `model` with `concurrency` requests in flight; stop early at max_seconds."""
    import tritonclient.grpc.aio as aioclient
    from tritonclient.utils import np_to_triton_dtype

    client = aioclient.InferenceServerClient(url)
    latencies: list[float] = []
    errors: list[str] = []
    cursor = iter(range(len(payloads)))
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        for i in cursor:
            if time.perf_counter() > deadline:
                return
            inputs = []
            for name, array in payloads[i].items():
                tensor = aioclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            start = time.perf_counter()
            try:
                result = await client.infer(model, inputs, client_timeout=10.0)
                result.as_numpy("item_ids")
                latencies.append(time.perf_counter() - start)
            except Exception as err:  # noqa: BLE001 - counted, reported
                errors.append(str(err)[:200])

    try:
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    finally:
        await client.close()
    lat = np.asarray(latencies) * 1000.0
    return {
        "concurrency": concurrency,
        "requests": int(lat.size),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": round(wall, 3),
        "requests_per_s": round(lat.size / wall, 1) if wall > 0 else 0.0,
        "p50_ms": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 3) if lat.size else None,
        "mean_ms": round(float(lat.mean()), 3) if lat.size else None,
    }


def _batching(url: str, admin_key: str | None) -> dict[str, float]:
    """Requests per user-tower execution (dynamic batching at work), from Triton's statistics (an admin call)."""
    from serving.triton_client import RecommenderClient

    with RecommenderClient(url, admin_key=admin_key) as client:
        stats = client.statistics("recommender_user_tower")["model_stats"]
    inferences = sum(int(s.get("inference_count", 0)) for s in stats)
    executions = sum(int(s.get("execution_count", 0)) for s in stats)
    return {
        "tower_inferences": inferences,
        "tower_executions": executions,
        "requests_per_execution": round(inferences / executions, 2) if executions else 0.0,
    }


def run(bundles: list[Path], concurrency: list[int], n_requests: int, max_seconds: float, k: int) -> dict:
    load_before = [round(x, 2) for x in os.getloadavg()]  # other work on the machine skews the figures
    root = Path(tempfile.mkdtemp(prefix="bench_triton_"))
    config = serving_config(root)
    config.serving.grpc_timeout_s = 30
    server = ts.start_server(ts.settings_from_config(config))
    url = server.grpc_url
    results = []
    try:
        for bundle in bundles:
            deployed = deploy_bundle(config, bundle)
            payloads = _requests(bundle, n_requests, k, seed=0)
            asyncio.run(_load(url, payloads[:50], 4, 30.0))  # warm-up
            before = _batching(url, admin_key(config.serving.triton_build_dir))
            levels = []
            for c in concurrency:
                level = asyncio.run(_load(url, payloads, c, max_seconds))
                levels.append(level)
                log.info(
                    "%s c=%d: %.0f req/s, p50 %.2f ms, p99 %.2f ms, %d errors",
                    deployed.variant,
                    c,
                    level["requests_per_s"],
                    level["p50_ms"] or 0,
                    level["p99_ms"] or 0,
                    level["errors"],
                )
            after = _batching(url, admin_key(config.serving.triton_build_dir))
            executions = after["tower_executions"] - before["tower_executions"]
            inferences = after["tower_inferences"] - before["tower_inferences"]
            results.append(
                {
                    "bundle": str(bundle),
                    "variant": deployed.variant,
                    "model_version": deployed.model_version,
                    "triton_version": deployed.version,
                    "deploy_seconds": round(deployed.duration_s, 2),
                    "requests_per_tower_execution": round(inferences / executions, 2) if executions else 0.0,
                    "levels": levels,
                }
            )
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "created_at": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": load_before},
        "k": k,
        "requests_per_level": n_requests,
        "max_seconds_per_level": max_seconds,
        "results": results,
    }


def markdown(report: dict) -> str:
    rows = ["| variant | concurrency | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for res in report["results"]:
        for lv in res["levels"]:
            rows.append(
                f"| {res['variant']} | {lv['concurrency']} | {lv['requests_per_s']} | {lv['p50_ms']} | "
                f"{lv['p99_ms']} | {lv['errors']} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", type=Path, help="serving bundle folders (one per variant)")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency level (upper bound)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="time bound per concurrency level")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("artifacts/benchmarks/triton.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = run(args.bundles, args.concurrency, args.requests, args.max_seconds, args.k)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(markdown(report))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
