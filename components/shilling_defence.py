"""Defence against fake profiles: suspicious accounts detected from their behaviour, excluded before training, and
reported.

Two stages:
1. behaviour: per account, robust z-scores ((x - median) / (1.4826 * MAD) over all accounts) of
   - burst: the most events the account posted within `burst_window_s` seconds, over its number of events
     (a script posts a whole profile at once);
   - rating deviation (explicit ratings or weighted events, as the data set declares; none for implicit data): the
     mean absolute deviation of the account's feedback from each item's mean, weighted by 1 / the item's number
     of events (RDMA, Chirita et al. 2005) — pushing a rarely consumed item to the top moves it far.
   Accounts whose mean z reaches `candidate_z` are candidates.
2. co-interaction: a campaign is a group. Items held by at least `min_group` candidates, far more than their
   overall popularity predicts (Poisson upper tail below `alpha` / catalogue size, Bonferroni), are suspected
   targets; candidates that hold `min_shared_items` of them (or all, when fewer are suspected) are flagged.
A lone odd account is never flagged, and neither is a crowd of ordinary accounts that like the same item.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.dataset import DatasetSchema
from components.errors import RecsysError

log = logging.getLogger(__name__)
REPORT_FILE = "excluded_accounts.json"
EPOCH = pd.Timestamp(0, tz="UTC")


class DefenceError(RecsysError, ValueError):
    """The defence cannot run on these inputs; the message names the field."""


@dataclass(frozen=True)
class DefenceSettings:
    """Thresholds of the detector (the `trust.defence` config section)."""

    burst_window_s: float = 60.0
    candidate_z: float = 2.0
    min_group: int = 5
    alpha: float = 0.001
    min_shared_items: int = 2

    @classmethod
    def from_config(cls, config: Any) -> DefenceSettings:
        d = config.trust.defence
        return cls(d.burst_window_s, d.candidate_z, d.min_group, d.alpha, d.min_shared_items)


def robust_z(values: pd.Series) -> pd.Series:
    """(x - median) / (1.4826 * MAD); a zero MAD (most accounts alike) falls back to 1.2533 * the mean absolute
    deviation from the median (then to 1), as the modified z-score does."""
    x = values.astype(float)
    med = x.median()
    scale = 1.4826 * (x - med).abs().median()
    if not scale > 0:
        scale = 1.2533 * (x - med).abs().mean()
    return (x - med) / (scale if scale > 0 else 1.0)


def burst_share(interactions: pd.DataFrame, window_s: float) -> pd.Series:
    """Per account: the most events within any `window_s` seconds, over its number of events (1 = all at once)."""
    df = interactions[["user_id", "event_timestamp"]].copy()
    df["t"] = (pd.to_datetime(df["event_timestamp"], utc=True) - EPOCH) / pd.Timedelta(seconds=1)
    df = df.sort_values(["user_id", "t"], kind="stable")
    out = {}
    for user, t in df.groupby("user_id", sort=False)["t"]:
        values = t.to_numpy()
        ends = np.searchsorted(values, values + window_s, side="right")
        out[user] = float((ends - np.arange(len(values))).max() / len(values))
    return pd.Series(out, name="burst")


def rating_deviation(interactions: pd.DataFrame) -> pd.Series | None:
    """RDMA per account: mean of |feedback - item mean| / item events; None without feedback values."""
    if "rating" not in interactions or interactions["rating"].isna().all():
        return None
    df = interactions[["user_id", "item_id", "rating"]].dropna()
    stats = df.groupby("item_id")["rating"].agg(["mean", "size"])
    dev = (df["rating"] - df["item_id"].map(stats["mean"])).abs() / df["item_id"].map(stats["size"])
    return dev.groupby(df["user_id"]).mean().rename("rating_deviation")


def suspected_items(interactions: pd.DataFrame, candidates: pd.Index, accounts: int, min_group: int,
                    alpha: float) -> np.ndarray:
    """Items over-represented among the candidate accounts: held by >= `min_group` candidates, with a Poisson upper
    tail below alpha / items given the item's overall share of accounts."""
    from scipy.stats import poisson

    holders = interactions[["user_id", "item_id"]].drop_duplicates()
    overall = holders.groupby("item_id").size()
    among = holders[holders["user_id"].isin(candidates)].groupby("item_id").size()
    if among.empty:
        return np.empty(0, dtype=np.int64)
    expected = overall.reindex(among.index) * len(candidates) / max(accounts, 1)
    tail = poisson.sf(among - 1, expected)
    return among.index[(among >= min_group) & (tail < alpha / max(len(overall), 1))].to_numpy(dtype=np.int64)


def account_signals(interactions: pd.DataFrame, schema: DatasetSchema,
                    settings: DefenceSettings) -> tuple[pd.DataFrame, np.ndarray]:
    """(one row per account: raw signals, z-scores, `anomaly`, `candidate`, `suspected_items`, `flagged`;
    the suspected target items)."""
    missing = {"user_id", "item_id", "event_timestamp"} - set(interactions.columns)
    if missing:
        raise DefenceError(f"interactions lack column(s) {sorted(missing)}")
    parts = [burst_share(interactions, settings.burst_window_s)]
    deviation = rating_deviation(interactions) if schema.feedback.kind != "implicit" else None
    if deviation is not None:
        parts.append(deviation)
    table = pd.concat(parts, axis=1)
    table.index.name = "user_id"
    table["events"] = interactions.groupby("user_id").size()
    signals = [p.name for p in parts]
    for column in signals:
        table[f"{column}_z"] = robust_z(table[column].fillna(table[column].median()))
    table["anomaly"] = table[[f"{c}_z" for c in signals]].mean(axis=1)
    table["candidate"] = table["anomaly"] >= settings.candidate_z
    candidates = table.index[table["candidate"]]
    targets = suspected_items(interactions, candidates, len(table), settings.min_group, settings.alpha)
    held = interactions[interactions["item_id"].isin(targets)].drop_duplicates(["user_id", "item_id"])
    table["suspected_items"] = held.groupby("user_id").size().reindex(table.index, fill_value=0)
    need = min(settings.min_shared_items, len(targets))
    table["flagged"] = table["candidate"] & (table["suspected_items"] >= need) & (need > 0)
    return table.reset_index(), targets


def screen_accounts(interactions: pd.DataFrame, schema: DatasetSchema,
                    settings: DefenceSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the interactions without the flagged accounts' events, the flagged accounts with their signals)."""
    signals, _ = account_signals(interactions, schema, settings)
    flagged = signals[signals["flagged"]].sort_values("anomaly", ascending=False).reset_index(drop=True)
    kept = interactions[~interactions["user_id"].isin(flagged["user_id"])].reset_index(drop=True)
    log.info("defence: %d of %d accounts flagged (%d events excluded)", len(flagged), len(signals),
             len(interactions) - len(kept))
    return kept, flagged


def write_report(flagged: pd.DataFrame, accounts: int, out_dir: str | Path) -> Path:
    """excluded_accounts.json in `out_dir`: every excluded account with its signals."""
    path = Path(out_dir) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"accounts": accounts, "excluded": len(flagged),
               "excluded_accounts": json.loads(flagged.to_json(orient="records"))}
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return path


def defended_tables(config: Any, tables: dict[str, pd.DataFrame],
                    report_dir: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """Training's hook: with `trust.defence.enabled`, the tables without the flagged accounts' interactions
    (their report written to `report_dir`); otherwise `tables` unchanged."""
    if not config.trust.defence.enabled:
        return tables
    kept, flagged = screen_accounts(tables["interactions"], config.dataset, DefenceSettings.from_config(config))
    if report_dir is not None:
        write_report(flagged, int(tables["interactions"]["user_id"].nunique()), report_dir)
    return {**tables, "interactions": kept}
