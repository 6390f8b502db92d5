"""Text encoding throughput: the synthetic shop's item texts through each shipped text encoder (all-MiniLM-L6-v2,
wordllama-l2-256), torch against its ONNX export on ONNX Runtime, one process against worker processes.

The step that bounds a large catalogue is encoding item texts missing from the text cache (`embed`, and `train` or
`compress` when the cache is cold). From a few thousand texts the frozen encoder runs as its ONNX export (made once
per encoder, kept in the cache folder), and `model.encoder_workers` shards them over processes of one thread each
(`components.text_encoder.encode_in_workers`). This script encodes the same texts, cold cache each time (so each
ONNX run includes the export), with each encoder, runtime and worker count in turn, in one run, and reports
texts/s and the speed-up over the first.

    python -m benchmarks.bench_text_encoding [--items 6000] [--encoders all-MiniLM-L6-v2 wordllama-l2-256]
        [--runtimes torch onnx] [--workers 1 2]

Writes artifacts/benchmarks/text_encoding.json and prints the README row.
"""

from __future__ import annotations

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

log = logging.getLogger("bench_text_encoding")
OUT = Path("artifacts/benchmarks/text_encoding.json")


def shop_texts(items: int, seed: int = 7) -> list[str]:
    """The item texts of a generated shop, composed by its declared template (what ingest writes)."""
    from components.dataset import DatasetSchema
    from components.item_text import compose_text
    from components.synth import SynthSpec, generate, schema

    declaration = DatasetSchema.model_validate(schema())
    frame = generate(SynthSpec(users=100, items=items, events=max(1000, items), seed=seed))["items"]
    return compose_text(frame.rename(columns={declaration.item_title: "title"}), declaration)


def run(items: int, encoders: list[str], runtimes: list[str], worker_counts: list[int]) -> dict:
    import torch

    from components.text_encoder import cached_text_embeddings

    torch.set_num_threads(1)
    texts = shop_texts(items)
    rows = []
    for encoder in encoders:
        reference = None
        for runtime in runtimes:
            for workers in worker_counts:
                with tempfile.TemporaryDirectory(prefix="bench_text_") as cache:
                    start = time.perf_counter()
                    vectors = cached_text_embeddings(texts, encoder, cache, progress=False, workers=workers,
                                                     runtime=runtime)
                    seconds = time.perf_counter() - start
                if reference is None:
                    reference = vectors
                rows.append({"encoder": encoder, "runtime": runtime, "workers": workers, "seconds": round(seconds, 2),
                             "texts_per_s": round(len(texts) / seconds, 1),
                             "max_abs_diff_vs_encoders_first": float(np.abs(vectors - reference).max())})
                log.info("%s, %s, %d worker(s): %d texts in %.1f s (%.0f texts/s)", encoder, runtime, workers,
                         len(texts), seconds, len(texts) / seconds)
    base = rows[0]["texts_per_s"]
    for row in rows:
        row["speedup"] = round(row["texts_per_s"] / base, 2)
    return {"created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "load_average_before": [round(x, 2) for x in os.getloadavg()]},
            "texts": len(texts), "mean_chars": round(float(np.mean([len(t) for t in texts])), 1), "runs": rows}


def main() -> None:
    from components.text_encoder import SHIPPED_ENCODERS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=6000, help="item texts to encode (cold cache each run)")
    parser.add_argument("--encoders", nargs="+", choices=SHIPPED_ENCODERS, default=list(SHIPPED_ENCODERS),
                        help="shipped text encoders, the first the base")
    parser.add_argument("--runtimes", nargs="+", choices=["torch", "onnx"], default=["torch", "onnx"],
                        help="encoder runtimes, the first the base")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = run(args.items, args.encoders, args.runtimes, args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    cells = ", ".join(f"{r['encoder']} {r['runtime']}, {r['workers']} worker(s) {r['texts_per_s']:.0f} texts/s "
                      f"({r['speedup']:.2f}×)" for r in report["runs"])
    print(f"| item text encoding, {report['texts']} shop texts, cold cache (`bench_text_encoding`) | {cells} |")


if __name__ == "__main__":
    main()
