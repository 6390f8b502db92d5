"""Drift with Evidently 0.7: per-column drift of tabular features and domain-classifier drift of embeddings.

Stat tests are pinned (config `monitoring.drift_num_method` / `drift_cat_method`, one threshold) because
Evidently's automatic choice switches from p-values to distances at 1000 rows, which changes what a score
means. Each report is written as a self-contained Evidently HTML page (its JavaScript is inlined).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftSettings:
    num_method: str = "wasserstein"
    cat_method: str = "jensenshannon"
    threshold: float = 0.1
    min_rows: int = 30
    embedding_auc_threshold: float = 0.55
    embedding_max_rows: int = 2000
    seed: int = 0

    @classmethod
    def from_config(cls, config: Any) -> DriftSettings:
        m = config.monitoring
        return cls(m.drift_num_method, m.drift_cat_method, m.drift_threshold, m.min_drift_rows,
                   m.embedding_auc_threshold, m.embedding_max_rows, config.train.seed)


@dataclass
class DriftResult:
    """One drift report: per-column scores and verdicts, and the share of drifted columns."""

    name: str
    status: str  # "ok" | "skipped"
    reason: str = ""
    n_reference: int = 0
    n_current: int = 0
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)  # column -> method, value, threshold, drifted
    html: str | None = None
    snapshot: Any = field(default=None, repr=False, compare=False)  # the Evidently snapshot (for the workspace)

    @property
    def drifted(self) -> int:
        return sum(bool(c["drifted"]) for c in self.columns.values())

    @property
    def share(self) -> float | None:
        return self.drifted / len(self.columns) if self.columns else None

    def as_dict(self) -> dict[str, Any]:
        plain = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "snapshot"}
        return {**plain, "drifted": self.drifted, "total": len(self.columns), "share": self.share}


def _sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return frame.sample(n=n, random_state=seed) if len(frame) > n else frame


def feature_drift(name: str, reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str],
                  categorical: list[str], settings: DriftSettings, html_path: str | Path | None = None,
                  at: datetime | None = None) -> DriftResult:
    """Column drift of `numerical` + `categorical` between two frames (DataDriftPreset, tests included); the
    snapshot is stamped `at` (default now) and tagged "drift" and `name`."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = numerical + categorical
    result = DriftResult(name, "ok", n_reference=len(reference), n_current=len(current))
    if min(len(reference), len(current)) < settings.min_rows:
        result.status, result.reason = "skipped", (
            f"too few rows (reference {len(reference)}, current {len(current)}; need {settings.min_rows})")
        log.info("drift '%s' skipped: %s", name, result.reason)
        return result
    ref, cur = reference[columns].copy(), current[columns].copy()
    for col in categorical:
        ref[col], cur[col] = ref[col].astype(str), cur[col].astype(str)
    for col in numerical:
        ref[col], cur[col] = ref[col].astype("float64"), cur[col].astype("float64")
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    preset = DataDriftPreset(columns=columns, num_method=settings.num_method, cat_method=settings.cat_method,
                             threshold=settings.threshold)
    snapshot = Report([preset], include_tests=True).run(Dataset.from_pandas(cur, data_definition=definition),
                                                        Dataset.from_pandas(ref, data_definition=definition),
                                                        timestamp=at, tags=["drift", name], name=name)
    result.snapshot = snapshot
    snap = snapshot.dict()
    verdicts = {t["metric_config"]["params"].get("column"): str(getattr(t["status"], "value", t["status"])) == "FAIL"
                for t in snap["tests"] if t["metric_config"]["params"].get("type", "").endswith("ValueDrift")}
    for metric in snap["metrics"]:
        cfg = metric["config"]
        if cfg["type"].endswith("ValueDrift"):
            result.columns[cfg["column"]] = {"method": cfg["method"], "value": float(metric["value"]),
                                             "threshold": float(cfg["threshold"]),
                                             "drifted": bool(verdicts[cfg["column"]])}
    if html_path is not None:
        snapshot.save_html(str(html_path))  # a Path object is silently ignored by Evidently 0.7
        result.html = Path(html_path).name
    log.info("drift '%s': %d/%d columns drifted %s", name, result.drifted, len(columns),
             {c: round(v["value"], 4) for c, v in result.columns.items()})
    return result


def embedding_drift(name: str, reference: np.ndarray, current: np.ndarray, settings: DriftSettings,
                    html_path: str | Path | None = None, pca_components: int = 5,
                    at: datetime | None = None) -> DriftResult:
    """Drift of vectors (rows = users or item events): ROC AUC of a domain classifier telling reference
    from current (Evidently's ModelDriftMethod without bootstrap, so the score is always an AUC).

    Evidently's EmbeddingsDrift metric would also fit a t-SNE for its plot (~30 s per report on 2 cores), so
    the method is called directly; the HTML page is an Evidently drift report over the first principal
    components (shown to a person, not counted: only the AUC verdict counts)."""
    from evidently.metrics.embeddings import ModelDriftMethod
    from sklearn.decomposition import PCA

    result = DriftResult(name, "ok", n_reference=len(reference), n_current=len(current))
    if min(len(reference), len(current)) < settings.min_rows:
        result.status, result.reason = "skipped", (
            f"too few vectors (reference {len(reference)}, current {len(current)}; need {settings.min_rows})")
        return result
    if reference.ndim != 2 or current.ndim != 2 or reference.shape[1] != current.shape[1]:
        from monitoring.data import MonitoringError

        raise MonitoringError(f"embedding drift '{name}': shapes {reference.shape} and {current.shape} differ")
    cols = [f"{name}_{i}" for i in range(reference.shape[1])]
    ref = _sample(pd.DataFrame(np.asarray(reference, np.float64), columns=cols), settings.embedding_max_rows,
                  settings.seed).reset_index(drop=True)
    cur = _sample(pd.DataFrame(np.asarray(current, np.float64), columns=cols), settings.embedding_max_rows,
                  settings.seed).reset_index(drop=True)
    method = ModelDriftMethod(threshold=settings.embedding_auc_threshold, bootstrap=False)
    value = float(method(cur.copy(), ref.copy())[0])
    result.columns[name] = {"method": "domain classifier ROC AUC", "value": value,
                            "threshold": settings.embedding_auc_threshold,
                            "drifted": value > settings.embedding_auc_threshold}
    if html_path is not None:
        n_comp = min(pca_components, len(cols))
        pca = PCA(n_components=n_comp, random_state=settings.seed).fit(ref.to_numpy())
        pcs = [f"{name}_pc{i + 1}" for i in range(n_comp)]
        page = feature_drift(f"{name}_pca", pd.DataFrame(pca.transform(ref.to_numpy()), columns=pcs),
                             pd.DataFrame(pca.transform(cur.to_numpy()), columns=pcs), pcs, [], settings, html_path,
                             at)
        result.html, result.snapshot = page.html, page.snapshot
    log.info("embedding drift '%s': AUC %.4f (threshold %.2f)", name, value, settings.embedding_auc_threshold)
    return result


def drift_share(results: list[DriftResult]) -> tuple[float | None, int, int]:
    """Share of drifted columns over every evaluated report (embeddings count as one column each)."""
    drifted = sum(r.drifted for r in results if r.status == "ok")
    total = sum(len(r.columns) for r in results if r.status == "ok")
    return (drifted / total if total else None), drifted, total
