"""Cost of one training step against the catalogue's size, dense against sparse ID-embedding gradients.

A step on a large catalogue reads only its batch's items (`components.model.reads_batch_rows`): their vectors are
computed into a compact table, and with `train.sparse_id_gradients` the ID-embedding table gets a sparse gradient
and a lazy Adam (SparseAdam) instead of a dense gradient and AdamW over every row. This script times steps of the
real model, loss and optimizers (`components.train.make_optimizers`) on random windows at each catalogue size, both
ways, in one run, and reports ms/step and the ratio.

    python -m benchmarks.bench_train_step [--items 10000 100000 1000000] [--steps 20]

Writes artifacts/benchmarks/train_step.json and prints the README row.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_train_step")
OUT = Path("artifacts/benchmarks/train_step.json")


def model_config(n_items: int, config, sparse: bool) -> dict:
    """A model of `n_items` items with no item attributes and one profile field (the shapes the step cost needs)."""
    m = config.model
    return {"n_items": n_items, "embedding_dim": m.embedding_dim, "max_seq_len": m.max_seq_len,
            "user_layers": m.user_layers, "user_heads": m.user_heads, "dropout": m.dropout, "id_dropout": m.id_dropout,
            "item_representation": m.item_representation, "temperature": m.temperature, "text_dim": 384,
            "item_attribute_sizes": [], "item_attribute_widths": [], "profile_fields": ["segment"],
            "profile_sizes": [4], "sparse_id_gradients": sparse}


def time_steps(n_items: int, sparse: bool, steps: int, config) -> dict:
    """Mean seconds per step (after two warm-up steps) of the configured loss on random left-padded windows."""
    import torch

    from components.model import ItemFeatures, TwoTowerModel, next_item_loss
    from components.train import make_optimizers

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = TwoTowerModel(model_config(n_items, config, sparse))
    model.set_item_features(ItemFeatures(rng.standard_normal((n_items, 384), dtype=np.float32), []),
                            rng.integers(1, 50, n_items).astype(np.float32))
    model.train()
    opts = make_optimizers(model, config)
    counts = model.train_count.clone()
    log_pop = torch.log(counts / counts.sum() + 1e-12)
    bs, length = config.train.batch_size, config.model.max_seq_len
    seconds = []
    for i in range(steps + 2):
        history = torch.from_numpy(rng.integers(1, n_items + 1, (bs, length)))
        targets = torch.cat([history[:, :1], history[:, 1:], torch.from_numpy(rng.integers(1, n_items + 1, (bs, 1)))],
                            dim=1)
        profile = torch.zeros(bs, 1, dtype=torch.long)
        t0 = time.perf_counter()
        loss = next_item_loss(model, history, targets, profile, log_pop, config.model)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts:
            opt.step()
        if i >= 2:
            seconds.append(time.perf_counter() - t0)
    return {"items": n_items, "sparse_id_gradients": sparse, "ms_per_step": 1000 * float(np.mean(seconds)),
            "ms_per_step_p90": 1000 * float(np.percentile(seconds, 90)), "steps": steps}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration (after 2 warm-up)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from components.config import load_config
    from components.model import reads_batch_rows, resolved_loss

    torch.set_num_threads(1)
    config = load_config(None, args.overrides)
    rows = []
    for n in args.items:
        if not reads_batch_rows(config.model, n):
            log.warning("%d items: the %s step reads the whole catalogue; sparse gradients do not apply", n,
                        resolved_loss(config.model, n))
        for sparse in (False, True):
            row = time_steps(n, sparse, args.steps, config)
            rows.append(row)
            log.info("%d items, %s ID gradients: %.1f ms/step", n, "sparse" if sparse else "dense",
                     row["ms_per_step"])
    by = {(r["items"], r["sparse_id_gradients"]): r["ms_per_step"] for r in rows}
    ratios = {str(n): by[(n, False)] / by[(n, True)] for n in args.items}
    result = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
              "loss": config.model.loss, "batch_size": config.train.batch_size,
              "max_seq_len": config.model.max_seq_len, "rows": rows, "dense_over_sparse": ratios}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    cells = ", ".join(f"{n:,} items {by[(n, False)]:.0f} → {by[(n, True)]:.0f} ms ({ratios[str(n)]:.1f} ×)"
                      for n in args.items)
    print(f"| training step, dense → sparse ID gradients (`python -m benchmarks.bench_train_step`; "
          f"`train_step.json`) | {cells} |")


if __name__ == "__main__":
    main()
