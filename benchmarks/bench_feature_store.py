"""Feature store benchmark: online look-up latency of the `serving` feature service (SQLite and Redis), the
time to materialize all of MovieLens-100K, the point-in-time join of the training examples, and push latency.

For each online store the real path runs: feature tables from the canonical tables, `apply`, full
materialization, then single-user look-ups of random users (in-process Feast client, as the API does).
Redis is a private redis-server on a free loopback port, stopped at the end.

    python -m benchmarks.bench_feature_store [--canonical data/canonical] [--lookups 1000] [--pushes 200]

Writes artifacts/benchmarks/feature_store.json and prints Markdown table rows for the README.
"""

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from components.config import Config, load_config
from components.features import build_feature_store, materialize, redis_server, training_examples
from components.features_online import feature_service, online_feature_rows, push_interaction
from components.schemas import read_tables

log = logging.getLogger("bench_feature_store")


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "n": int(ms.size)}


def bench_backend(backend: str, config: Config, tables: dict, lookups: int, pushes: int, with_examples: bool,
                  seed: int = 0) -> dict:
    started = time.perf_counter()
    store = build_feature_store(config, tables)
    build_s = time.perf_counter() - started
    examples_s = None
    if with_examples:
        started = time.perf_counter()
        training_examples(store, tables["interactions"], config.dataset.user_attributes)
        examples_s = time.perf_counter() - started
    started = time.perf_counter()
    materialize(store)
    materialize_s = time.perf_counter() - started

    rng = np.random.default_rng(seed)
    users = rng.choice(tables["users"]["user_id"].to_numpy(), size=lookups)
    service = feature_service(store, "serving")
    for uid in users[:20]:  # warm-up (registry cache, connections)
        online_feature_rows(store, [int(uid)])
    raw, wrapped = [], []
    for uid in tqdm(users, desc=f"{backend} look-ups", leave=False):
        t0 = time.perf_counter()
        store.get_online_features(features=service, entity_rows=[{"user_id": int(uid)}]).to_dict()
        t1 = time.perf_counter()
        online_feature_rows(store, [int(uid)])
        wrapped.append(time.perf_counter() - t1)
        raw.append(t1 - t0)
    push_s = []
    for i, uid in enumerate(tqdm(users[:pushes], desc=f"{backend} pushes", leave=False)):
        t0 = time.perf_counter()
        push_interaction(store, int(uid), int(1 + i % 1682), 4.0, last_n=config.features.last_n_items)
        seen = online_feature_rows(store, [int(uid)])[0]
        push_s.append(time.perf_counter() - t0)
        if seen["recent_item_ids"][-1] != int(1 + i % 1682):
            raise RuntimeError(f"push for user {uid} not visible online in {backend}")
    return {"online_store": backend, "build_and_apply_s": round(build_s, 2), "materialize_s": round(materialize_s, 2),
            "training_examples_s": None if examples_s is None else round(examples_s, 2),
            "lookup_serving_raw": percentiles(raw), "lookup_serving_api": percentiles(wrapped),
            "push_to_visible": percentiles(push_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canonical", type=Path, default=Path("data/canonical"))
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--pushes", type=int, default=200)
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    base = load_config(args.config)
    tables = read_tables(args.canonical)
    out = Path(base.paths.artifacts_dir) / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
        sqlite = load_config(args.config, [f"features.data_dir={tmp}/sqlite", "features.online_store=sqlite"])
        results.append(bench_backend("sqlite", sqlite, tables, args.lookups, args.pushes, with_examples=True))
        with redis_server() as server:
            redis = load_config(args.config, [f"features.data_dir={tmp}/redis", "features.online_store=redis",
                                              f"features.redis_connection={server.address}"])
            os.environ[redis.features.redis_password_env] = server.password  # how Feast gets it (never the config)
            results.append(bench_backend("redis", redis, tables, args.lookups, args.pushes, with_examples=False))
    payload = {"created_at": datetime.now(UTC).isoformat(), "machine": platform.platform(),
               "canonical": str(args.canonical), "interactions": len(tables["interactions"]),
               "users": len(tables["users"]), "items": len(tables["items"]), "results": results}
    path = out / "feature_store.json"
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    print(f"\nwrote {path}\n")
    print("| online store | look-up p50 (ms) | look-up p99 (ms) | push→visible p50 (ms) | materialize ML-100K (s) |")
    print("|---|---|---|---|---|")
    for r in results:
        lk = r["lookup_serving_api"]
        print(f"| Feast {r['online_store']} (`serving`, 1 user) | {lk['p50_ms']:.2f} | {lk['p99_ms']:.2f} | "
              f"{r['push_to_visible']['p50_ms']:.2f} | {r['materialize_s']:.1f} |")
    ex = results[0]["training_examples_s"]
    print(f"\nPoint-in-time join of {payload['interactions']} training examples (DuckDB offline store): {ex:.1f} s")


if __name__ == "__main__":
    main()
