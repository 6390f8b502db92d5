"""Online quality: hit rate and NDCG of logged recommendations against the interactions that followed them.

A request is *evaluable* when its horizon has fully elapsed (request ts + horizon <= the latest logged
interaction) and the user interacted at least once within [ts, ts + horizon); those interactions are its
relevant items (binary relevance). HR@K = 1 if any of the top K is relevant; NDCG@K = DCG@K / IDCG@K with
IDCG over min(K, #relevant) positions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

REQUEST_COLUMNS = ["request_id", "ts", "user_id", "evaluable", "relevant", "hit", "ndcg"]


def per_request_quality(requests: pd.DataFrame, recommendations: pd.DataFrame, interactions: pd.DataFrame,
                        k: int, horizon: pd.Timedelta, as_of: pd.Timestamp | None = None) -> pd.DataFrame:
    """One row per request: evaluable, number of relevant items, hit@k and ndcg@k (NaN if not evaluable)."""
    if requests.empty:
        return pd.DataFrame(columns=REQUEST_COLUMNS)
    if as_of is None:
        as_of = interactions["event_timestamp"].max() if not interactions.empty else requests["ts"].min()
    req = requests[["request_id", "ts", "user_id"]].copy()
    pairs = req.merge(interactions[["user_id", "item_id", "event_timestamp"]], on="user_id")
    after = (pairs["event_timestamp"] >= pairs["ts"]) & (pairs["event_timestamp"] < pairs["ts"] + horizon)
    relevant = pairs.loc[after, ["request_id", "item_id"]].drop_duplicates()
    n_relevant = relevant.groupby("request_id").size()
    req["relevant"] = req["request_id"].map(n_relevant).fillna(0).astype("int64")
    req["evaluable"] = (req["ts"] + horizon <= as_of) & (req["relevant"] > 0)

    top = recommendations.loc[recommendations["rank"] <= k, ["request_id", "item_id", "rank"]]
    hits = top.merge(relevant, on=["request_id", "item_id"])
    gains = (1.0 / np.log2(hits["rank"].to_numpy(dtype=np.float64) + 1.0))
    dcg = pd.Series(gains, index=hits["request_id"].to_numpy()).groupby(level=0).sum()
    discounts = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(1, k + 1) + 1.0))])
    idcg = discounts[np.minimum(req["relevant"].to_numpy(), k)]
    req["hit"] = req["request_id"].isin(hits["request_id"]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        req["ndcg"] = req["request_id"].map(dcg).fillna(0.0).to_numpy() / idcg
    req.loc[~req["evaluable"], ["hit", "ndcg"]] = np.nan
    return req[REQUEST_COLUMNS].reset_index(drop=True)


def summarise(per_request: pd.DataFrame) -> dict[str, float | int | None]:
    """Requests, evaluable requests, mean hit rate and NDCG over the evaluable ones (None when none)."""
    ev = per_request[per_request["evaluable"].astype(bool)] if not per_request.empty else per_request
    return {
        "requests": int(len(per_request)),
        "evaluable_requests": int(len(ev)),
        "hit_rate": float(ev["hit"].mean()) if len(ev) else None,
        "ndcg": float(ev["ndcg"].mean()) if len(ev) else None,
    }


def relative_drop(baseline: float | None, current: float | None) -> float | None:
    """(baseline - current) / baseline; None when either is unknown or the baseline is 0."""
    if baseline is None or current is None or baseline <= 0:
        return None
    return float((baseline - current) / baseline)


def daily_quality(per_request: pd.DataFrame) -> pd.DataFrame:
    """Hit rate and NDCG of evaluable requests per day (for the trend plot)."""
    ev = per_request[per_request["evaluable"].astype(bool)]
    if ev.empty:
        return pd.DataFrame(columns=["day", "requests", "hit_rate", "ndcg"])
    day = ev["ts"].dt.floor("D")
    out = ev.groupby(day).agg(requests=("hit", "size"), hit_rate=("hit", "mean"), ndcg=("ndcg", "mean"))
    return out.rename_axis("day").reset_index()
