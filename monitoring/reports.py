"""Run every monitoring report and write the folder: Evidently drift pages, an overview page, summary.json.

Folder layout (`out_dir`):
- index.html: overview a person opens (signals, drift table with links, quality/fairness/exposure plots);
- drift_<name>.html: Evidently drift reports (self-contained);
- summary.json: every signal and value, for programs (the retraining policy reads `signals`).
The run also adds its drift reports and signals as snapshots to the deployment's Evidently workspace
(monitoring.workspace), stamped with the current window's end, for Evidently's UI.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import Config
from components.dataset import DatasetSchema
from monitoring import fairness, quality
from monitoring.attack_alarm import attack_alarm
from monitoring.data import MonitoringData, Stamp, load_monitoring_data
from monitoring.drift import DriftResult, DriftSettings, drift_share, embedding_drift, feature_drift

log = logging.getLogger(__name__)
SUMMARY_FILE = "summary.json"
INDEX_FILE = "index.html"


# ---- feature frames --------------------------------------------------------------------------------------
def user_drift_columns(schema: DatasetSchema) -> tuple[list[str], list[str]]:
    """(numeric, categorical) declared user attributes: the columns of the user-feature drift report."""
    attrs = schema.user_attributes
    return ([n for n, a in attrs.items() if a.is_numeric], [n for n, a in attrs.items() if not a.is_numeric])


def requesting_users(requests: pd.DataFrame, users: pd.DataFrame, schema: DatasetSchema) -> pd.DataFrame:
    """One row per requesting user with the declared attributes (logged profile first, else the users table)."""
    numeric, categorical = user_drift_columns(schema)
    last = requests.drop_duplicates("user_id", keep="last").reset_index(drop=True)
    out = fairness.attribute_values(last, users, numeric + categorical).drop(columns="request_id")
    for name in numeric:
        out[name] = pd.to_numeric(out[name], errors="coerce")
    out.insert(0, "user_id", last["user_id"].to_numpy())
    return out


def active_users(interactions: pd.DataFrame, users: pd.DataFrame, schema: DatasetSchema) -> pd.DataFrame:
    """Declared attributes of the users active in the interactions."""
    numeric, categorical = user_drift_columns(schema)
    ids = interactions["user_id"].unique()
    cols = ["user_id"] + [c for c in numeric + categorical if c in users.columns]
    return users.loc[users["user_id"].isin(ids), cols].reset_index(drop=True)


def popularity(reference: pd.DataFrame) -> pd.Series:
    """Reference-window interaction count per item."""
    return reference["item_id"].value_counts()


def interaction_features(interactions: pd.DataFrame, pop: pd.Series) -> pd.DataFrame:
    """Per event: rating and the reference popularity of the consumed item."""
    return pd.DataFrame({"rating": interactions["rating"].astype("float64").to_numpy(),
                         "item_popularity": interactions["item_id"].map(pop).fillna(0).to_numpy(dtype=np.float64)})


def interaction_columns(schema: DatasetSchema) -> list[str]:
    """Interaction drift columns: the rating only where feedback is an explicit rating (implicit events carry
    none in the log), always the consumed item's reference popularity."""
    return ["rating", "item_popularity"] if schema.feedback.kind == "explicit" else ["item_popularity"]


def activity(interactions: pd.DataFrame, span: pd.Timedelta | None, end: pd.Timestamp | None = None) -> pd.DataFrame:
    """Interactions per active user per window of length `span` (the current window's length).

    The reference is cut into consecutive windows of that length counted back from its end (so they line up
    with the baseline and current windows); an incomplete earliest window is dropped."""
    if interactions.empty:
        return pd.DataFrame({"interactions_per_user": pd.Series(dtype="float64")})
    ts = interactions["event_timestamp"]
    bucket = pd.Series(0, index=interactions.index)
    if span is not None:
        end = end if end is not None else ts.max() + pd.Timedelta(microseconds=1)
        bucket = ((end - ts) // span).astype("int64")
        first = bucket.max()
        if bucket.nunique() > 1 and end - (first + 1) * span < ts.min():
            keep = bucket < first
            interactions, bucket = interactions[keep], bucket[keep]
    counts = interactions.groupby([interactions["user_id"], bucket]).size()
    return pd.DataFrame({"interactions_per_user": counts.to_numpy(dtype=np.float64)})


def recommendation_features(recommendations: pd.DataFrame, pop: pd.Series) -> pd.DataFrame:
    """Per recommendation slot: reference popularity of the recommended item and its score."""
    return pd.DataFrame({"recommended_item_popularity": recommendations["item_id"].map(pop).fillna(0)
                         .to_numpy(dtype=np.float64),
                         "score": recommendations["score"].to_numpy(dtype=np.float64)})


def user_vectors(interactions: pd.DataFrame, item_ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Each active user's mean item embedding over their interactions (items without a vector skipped)."""
    rows = pd.Series(np.arange(len(item_ids)), index=item_ids)
    pos = interactions["item_id"].map(rows)
    known = interactions.loc[pos.notna(), "user_id"].to_numpy()
    if len(known) == 0:
        return np.empty((0, vectors.shape[1]), dtype=np.float32)
    emb = pd.DataFrame(vectors[pos.dropna().astype(int).to_numpy()])
    return emb.groupby(known).mean().to_numpy(dtype=np.float32)


def item_vectors(interactions: pd.DataFrame, item_ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """The embedding of the consumed item of every event (items without a vector skipped)."""
    rows = pd.Series(np.arange(len(item_ids)), index=item_ids)
    pos = interactions["item_id"].map(rows).dropna().astype(int).to_numpy()
    return vectors[pos]


# ---- the run ---------------------------------------------------------------------------------------------
def drift_reports(data: MonitoringData, schema: DatasetSchema, settings: DriftSettings,
                  out_dir: Path, at: datetime | None = None) -> list[DriftResult]:
    """All drift reports of one run (skipped ones say why); their Evidently snapshots are stamped `at`."""
    numeric, categorical = user_drift_columns(schema)
    pop = popularity(data.reference_interactions)
    span = None if data.windows.current.hours is None else pd.Timedelta(hours=data.windows.current.hours)
    results = [
        feature_drift("user_features", active_users(data.reference_interactions, data.users, schema),
                      requesting_users(data.current_requests, data.users, schema), numeric, categorical, settings,
                      out_dir / "drift_user_features.html", at),
        feature_drift("interaction_features", interaction_features(data.reference_interactions, pop),
                      interaction_features(data.current_interactions, pop), interaction_columns(schema), [],
                      settings, out_dir / "drift_interaction_features.html", at),
        feature_drift("user_activity", activity(data.reference_window, span, data.windows.reference.end),
                      activity(data.current_interactions, None), ["interactions_per_user"], [], settings,
                      out_dir / "drift_user_activity.html", at),
        feature_drift("recommendations", recommendation_features(data.baseline_recommendations, pop),
                      recommendation_features(data.current_recommendations, pop),
                      ["recommended_item_popularity", "score"], [], settings, out_dir / "drift_recommendations.html",
                      at),
    ]
    if data.item_embeddings is None:
        for name in ("user_embeddings", "item_embeddings"):
            results.append(DriftResult(name, "skipped", reason="no item embeddings (no champion model)"))
    else:
        ids, vecs = data.item_embeddings
        results.append(embedding_drift("user_embeddings", user_vectors(data.reference_interactions, ids, vecs),
                                       user_vectors(data.current_interactions, ids, vecs), settings,
                                       out_dir / "drift_user_embeddings.html", at=at))
        results.append(embedding_drift("item_embeddings", item_vectors(data.reference_interactions, ids, vecs),
                                       item_vectors(data.current_interactions, ids, vecs), settings,
                                       out_dir / "drift_item_embeddings.html", at=at))
    return results


def build_summary(config: Config, data: MonitoringData, out_dir: str | Path,
                  snapshot_at: Stamp = None) -> dict[str, Any]:
    """Compute every report from loaded data, write the folder and add the run to the Evidently workspace
    (snapshots stamped `snapshot_at`, default the current window's end); returns the summary dict."""
    from monitoring import workspace
    from monitoring.overview import write_overview

    started = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = config.monitoring
    settings = DriftSettings.from_config(config)
    at = workspace.snapshot_time(snapshot_at or data.windows.current.end or pd.Timestamp.now(tz="UTC"))
    drift = drift_reports(data, config.dataset, settings, out, at)
    share, drifted, total = drift_share(drift)

    horizon = pd.Timedelta(hours=m.quality_horizon_hours)
    as_of = data.outcome_interactions["event_timestamp"].max() if not data.outcome_interactions.empty else None
    cur_q = quality.per_request_quality(data.current_requests, data.current_recommendations,
                                        data.outcome_interactions, m.quality_k, horizon, as_of)
    base_q = quality.per_request_quality(data.baseline_requests, data.baseline_recommendations,
                                         data.outcome_interactions, m.quality_k, horizon, as_of)
    cur_s, base_s = quality.summarise(cur_q), quality.summarise(base_q)
    enough = cur_s["evaluable_requests"] >= m.min_requests
    base_enough = base_s["evaluable_requests"] >= m.min_requests
    drop = quality.relative_drop(base_s["hit_rate"], cur_s["hit_rate"]) if enough and base_enough else None

    groups = (fairness.user_groups(data.current_requests, data.users, config.dataset)
              if not data.current_requests.empty else None)
    fair = {attr: fairness.group_quality(cur_q, groups, attr, m.min_group_size) if groups is not None else
            {"groups": {}, "ratio": None, "worst": None, "best": None} for attr in config.dataset.fairness_groups}
    ratios = [v["ratio"] for v in fair.values() if v["ratio"] is not None]
    catalogue = data.items["item_id"].to_numpy()
    expo = fairness.exposure(data.current_recommendations, data.reference_interactions, catalogue,
                             m.long_tail_head_fraction)

    alarm = attack_alarm(data.reference_window, data.current_interactions, data.current_interaction_users, config)
    summary: dict[str, Any] = {
        "generated_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "windows": data.windows.as_dict(),
        "counts": {"reference_interactions": len(data.reference_interactions),
                   "baseline_requests": len(data.baseline_requests), "current_requests": len(data.current_requests),
                   "current_interactions": len(data.current_interactions)},
        "model_versions": sorted(data.current_requests["model_version"].unique().tolist())
        if not data.current_requests.empty else [],
        "drift": {"reports": {r.name: r.as_dict() for r in drift}, "drifted_columns": drifted,
                  "total_columns": total, "share": share},
        "quality": {"k": m.quality_k, "horizon_hours": m.quality_horizon_hours, "current": cur_s,
                    "baseline": base_s, "relative_hit_rate_drop": drop,
                    "relative_ndcg_drop": quality.relative_drop(base_s["ndcg"], cur_s["ndcg"])
                    if enough and base_enough else None},
        "fairness": {"groups": fair, "min_ratio": min(ratios) if ratios and enough else None,
                     "min_group_size": m.min_group_size},
        "exposure": expo,
        "attack": alarm,
        "signals": {"drift_share": share, "quality_drop": drop,
                    "fairness_ratio": min(ratios) if ratios and enough else None,
                    "hit_rate": cur_s["hit_rate"], "ndcg": cur_s["ndcg"],
                    "long_tail_share": expo["long_tail_share"], "exposure_gini": expo["gini"],
                    "suspicious_accounts": alarm["flagged_count"]},
        "reports": {"index": INDEX_FILE, **{r.name: r.html for r in drift if r.html}},
    }
    summary["evidently"] = workspace.add_run(config, summary, drift, at)
    summary["seconds"] = round(time.monotonic() - started, 2)
    write_overview(config, summary, cur_q, base_q, data, out / INDEX_FILE)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=_json_default), encoding="utf-8")
    log.info("monitoring reports in %s (%.1f s): signals %s", out, summary["seconds"], summary["signals"])
    return json.loads(json.dumps(summary, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)


def generate_reports(config: Config, reference_dir: str | Path, log_path: str | Path, out_dir: str | Path,
                     embeddings_dir: str | Path | None = None, snapshot_at: Stamp = None,
                     **bounds: Stamp) -> dict[str, Any]:
    """Load the windows (explicit `reference_start/_end`, `baseline_start/_end`, `current_start/_end`, or the
    defaults of monitoring.data.resolve_windows) and write every report; returns the summary. `snapshot_at`
    stamps the Evidently snapshots (default: the current window's end)."""
    data = load_monitoring_data(config, reference_dir, log_path, embeddings_dir=embeddings_dir, **bounds)
    return build_summary(config, data, out_dir, snapshot_at)
