"""ANN benchmark: the top-K step over a large catalogue, approximate (HNSW, inner product) beside exact.

Item embeddings are unit vectors of a latent-factor model (16 factors in 64 dimensions plus noise, as
trained embeddings are); queries come from the same model. One compute thread throughout (faiss and numpy),
as a server process gets. For each efSearch: recall@10 of the ANN step against exact search, and the
per-request latency (p50/p99) of the serving step itself (`components.bundle_ops.ann_top_k`: search, drop excluded
items, exact re-score) beside the exact step (`request_top_k`, a full scan), same requests, same run.

    python -m benchmarks.bench_ann [--items 1000000] [--dim 64] [--queries 500] [--ef 32 64 128 256]

Writes artifacts/benchmarks/ann.json and ann.png (recall against p99 latency) and prints a README row.
"""

import argparse
import json
import logging
import os
import platform
import resource
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

log = logging.getLogger("bench_ann")


def embeddings(n: int, dim: int, rank: int, noise: float, seed: int, chunk: int = 200_000) -> np.ndarray:
    """float32 [n, dim] unit vectors of a latent-factor model: `rank` factors mapped to `dim` (one fixed map for
    items and queries) plus isotropic noise, as trained embeddings are (a few directions carry most variance).
    rank = dim and a large noise give near-isotropic vectors: the hard case for any ANN index."""
    mapping = np.random.default_rng(12345).normal(size=(rank, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = rng.normal(size=(m, rank)).astype(np.float32) @ mapping + noise * rng.normal(size=(m, dim)).astype(
            np.float32)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3)}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16, help="latent factors behind the embeddings")
    parser.add_argument("--noise", type=float, default=0.3, help="isotropic noise added to each embedding")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--exclude", type=int, default=20, help="excluded (seen) items per request")
    parser.add_argument("--ef", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--exact-requests", type=int, default=100, help="requests timed through exact top_k")
    parser.add_argument("--out", default="artifacts/benchmarks")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import faiss

    from components import bundle_ops as ops
    from components.ann import AnnParams, build_item_index, exact_top_k, recall_at_k

    faiss.omp_set_num_threads(1)
    items = embeddings(args.items, args.dim, args.rank, args.noise, seed=0)
    queries = embeddings(args.queries, args.dim, args.rank, args.noise, seed=1)
    item_ids = np.arange(1, args.items + 1, dtype=np.int64)
    index = ops.ItemIndex(item_ids)
    rng = np.random.default_rng(2)
    excludes = [rng.choice(item_ids, args.exclude, replace=False) for _ in range(args.queries)]

    log.info("exact top-10 of %d queries over %d items", args.queries, args.items)
    started = time.perf_counter()
    exact_rows, _ = exact_top_k(items, queries, 10)
    exact_batch_s = time.perf_counter() - started
    exact_ids = []  # exact answers of the serving step, exclusions applied
    exact_times = []
    for q in range(args.queries):
        t0 = time.perf_counter()
        ids, _ = ops.request_top_k(index, items, queries[q], excludes[q], 10)
        if q < args.exact_requests:
            exact_times.append(time.perf_counter() - t0)
        exact_ids.append(ids)

    log.info("building HNSW (M=%d, efConstruction=%d) over %d items", args.m, args.ef_construction, args.items)
    started = time.perf_counter()
    ann = build_item_index(items, AnnParams(args.m, args.ef_construction, args.ef[0]))
    build_s = time.perf_counter() - started
    rows = []
    for ef in args.ef:
        ann.hnsw.efSearch = ef
        _, approx = ann.search(queries, 10)
        times, served = [], []
        for q in range(args.queries):
            t0 = time.perf_counter()
            ids, _ = ops.ann_top_k(ann, index, items, queries[q], excludes[q], 10)
            times.append(time.perf_counter() - t0)
            served.append(ids)
        rows.append({"ef_search": ef, "recall@10_index": round(recall_at_k(approx, exact_rows), 4),
                     "recall@10_served": round(recall_at_k(np.array(served), np.array(exact_ids)), 4),
                     **percentiles(times)})
        log.info("efSearch %d: %s", ef, rows[-1])
    exact = percentiles(exact_times)
    chosen = next((r for r in rows if r["recall@10_served"] >= 0.95 and r["p99_ms"] <= 5.0), None)
    result = {
        "benchmark": "top-K step over a large catalogue: HNSW (inner product) beside exact, one thread",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 thread",
        "items": args.items, "dim": args.dim, "rank": args.rank, "noise": args.noise, "queries": args.queries,
        "excluded_per_request": args.exclude, "m": args.m, "ef_construction": args.ef_construction,
        "build_seconds": round(build_s, 1), "exact_batch_seconds": round(exact_batch_s, 2),
        "exact_step": exact, "ann_steps": rows,
        "chosen": chosen, "speedup_p50_vs_exact": round(exact["p50_ms"] / chosen["p50_ms"], 1) if chosen else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "meets_target": chosen is not None,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ann.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    _plot(rows, exact, out / "ann.png", args.items)
    if chosen:
        print(f"| top-K step, {args.items:,} items (dim {args.dim}), 1 thread | HNSW efSearch {chosen['ef_search']}: "
              f"recall@10 {chosen['recall@10_served']:.3f}, p50 {chosen['p50_ms']:.2f} ms, p99 {chosen['p99_ms']:.2f}"
              f" ms | exact scan p50 {exact['p50_ms']:.1f} ms, p99 {exact['p99_ms']:.1f} ms | build "
              f"{build_s / 60:.1f} min | `python -m benchmarks.bench_ann` |")
    else:
        print("no efSearch met recall@10 >= 0.95 with p99 <= 5 ms:", rows)
    return result


def _plot(rows: list[dict], exact: dict, path: Path, items: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["p99_ms"] for r in rows], [r["recall@10_served"] for r in rows], "o-", label="HNSW (efSearch)")
    for r in rows:
        ax.annotate(str(r["ef_search"]), (r["p99_ms"], r["recall@10_served"]), textcoords="offset points",
                    xytext=(4, -10), fontsize=8)
    ax.axvline(exact["p99_ms"], color="grey", linestyle="--", label=f"exact scan p99 {exact['p99_ms']:.1f} ms")
    ax.axhline(0.95, color="red", linestyle=":", label="recall 0.95")
    ax.set_xscale("log")
    ax.set_xlabel("p99 latency of the top-K step (ms, one thread)")
    ax.set_ylabel("recall@10 against exact")
    ax.set_title(f"Top-K over {items:,} items")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
