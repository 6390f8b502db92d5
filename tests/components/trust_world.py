"""Canonical tables of both data set shapes, large enough for the fake-account detector and the fairness
mitigation's groups (the conftest's sources are sized for the pipeline tests)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from components.config import Config, load_config
from tests.conftest import small_tables, write_csvs

SHAPES = ("movielens", "shop")


def canonical(shape: str, folder: Path, users: int = 200) -> tuple[Config, dict[str, pd.DataFrame]]:
    """(config, canonical tables) of a `shape` data set with `users` users, ingested like any team's files."""
    from components.ingest import ingest
    from components.schemas import read_tables

    if shape == "movielens":
        files = write_csvs(small_tables(n_users=users, n_items=80, per_user=15, seed=5), folder / "files")
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump({"data": {"source": "files", **{f"{k}_path": str(v)
                                                                        for k, v in files.items()}}}))
    else:
        from components.synth import SynthSpec, write_synthetic

        path = write_synthetic(SynthSpec(users=users, items=60, events=users * 20, days=30, seed=3),
                               folder / "files")["config"]
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["paths"] = {"data_dir": str(folder / "data"), "artifacts_dir": str(folder / "artifacts")}
    data["evaluate"] = {"cold_start_items": 5, "cold_validation_items": 5, "bootstrap_samples": 50}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    config = load_config(str(path))
    ingest(config, folder / "canonical")
    return config, read_tables(folder / "canonical")
