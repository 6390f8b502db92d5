"""Fairness by user group (quality per group of each declared fairness attribute, worst/best ratio) and item
exposure (long tail, Gini)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.dataset import UNKNOWN_GROUP, DatasetSchema, group_labels
from components.metrics import gini, head_items

__all__ = ["attribute_values", "exposure", "gini", "group_quality", "head_items", "lorenz_curve", "user_groups"]


def attribute_values(requests: pd.DataFrame, users: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Each named user attribute per request: the logged profile's value first, else the users table's."""
    table = users.drop_duplicates("user_id").set_index("user_id")
    profiles = requests["profile"] if "profile" in requests.columns else pd.Series([{}] * len(requests))
    out = pd.DataFrame({"request_id": requests["request_id"].to_numpy()})
    for name in names:
        logged = pd.Series([p.get(name) if isinstance(p, dict) else None for p in profiles], dtype=object)
        known = (requests["user_id"].map(table[name]) if name in table.columns
                 else pd.Series([None] * len(requests))).astype(object)
        out[name] = logged.where(logged.notna(), known.to_numpy()).to_numpy()
    return out


def user_groups(requests: pd.DataFrame, users: pd.DataFrame, schema: DatasetSchema) -> pd.DataFrame:
    """The group of each request in every declared fairness attribute (bucketed numbers by their bands)."""
    out = attribute_values(requests, users, schema.fairness_groups)
    for name in schema.fairness_groups:
        out[name] = group_labels(out[name], schema.user_attributes[name])
    return out


def group_quality(per_request: pd.DataFrame, groups: pd.DataFrame, attribute: str,
                  min_group_size: int) -> dict:
    """Hit rate / NDCG per group of `attribute` over evaluable requests, and worst/best hit-rate ratio.

    Groups with fewer than `min_group_size` evaluable requests are listed but not ranked (too noisy)."""
    df = per_request.merge(groups[["request_id", attribute]], on="request_id")
    df = df[df["evaluable"].astype(bool)]
    table = {}
    for group, sub in df.groupby(attribute):
        table[str(group)] = {"requests": int(len(sub)), "hit_rate": float(sub["hit"].mean()),
                             "ndcg": float(sub["ndcg"].mean()), "counted": bool(len(sub) >= min_group_size)}
    counted = {g: v for g, v in table.items() if v["counted"] and g != UNKNOWN_GROUP}
    result = {"groups": table, "ratio": None, "worst": None, "best": None}
    if len(counted) >= 2:
        worst = min(counted, key=lambda g: counted[g]["hit_rate"])
        best = max(counted, key=lambda g: counted[g]["hit_rate"])
        if counted[best]["hit_rate"] > 0:
            result.update(ratio=counted[worst]["hit_rate"] / counted[best]["hit_rate"], worst=worst, best=best)
    return result


def exposure(recommendations: pd.DataFrame, reference: pd.DataFrame, catalogue: np.ndarray,
             head_fraction: float) -> dict:
    """Exposure of the catalogue in logged recommendations, against the catalogue and the reference consumption.

    long_tail_share: share of recommendation slots on long-tail (non-head) items; catalogue_long_tail_share:
    the tail's share of the catalogue (what uniform exposure would give); reference_long_tail_share: the tail's
    share of reference interactions; gini: Gini of slots over the whole catalogue; coverage: share of the
    catalogue recommended at least once."""
    catalogue = np.unique(np.asarray(catalogue, dtype=np.int64))
    head = head_items(reference, catalogue, head_fraction)
    slots = recommendations["item_id"].to_numpy()
    counts = pd.Series(slots).value_counts().reindex(catalogue, fill_value=0).to_numpy()
    n = len(slots)
    return {
        "slots": int(n),
        "long_tail_share": float((~np.isin(slots, head)).mean()) if n else None,
        "catalogue_long_tail_share": float(1.0 - len(head) / len(catalogue)) if len(catalogue) else None,
        "reference_long_tail_share": float((~reference["item_id"].isin(head)).mean()) if len(reference) else None,
        "gini": gini(counts) if n else None,
        "reference_gini": gini(reference["item_id"].value_counts().reindex(catalogue, fill_value=0).to_numpy()),
        "coverage": float((counts > 0).mean()) if len(catalogue) else None,
        "head_items": int(len(head)),
        "catalogue_items": int(len(catalogue)),
    }


def lorenz_curve(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative share of items (x) vs cumulative share of exposure (y), for plotting."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    total = x.sum() or 1.0
    return np.linspace(0.0, 1.0, len(x) + 1), np.concatenate([[0.0], np.cumsum(x) / total])
