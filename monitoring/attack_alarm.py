"""The fake-account alarm over live traffic: the defence's detector (components.shilling_defence) run on the
interactions posted through the API in the current window, beside the reference interactions as the population
of ordinary behaviour. It fires when `trust.alarm_min_accounts` live accounts are flagged.

Live accounts keep the log's external ids (a new account has no key yet), so they are told apart from reference
accounts by their origin; items are the canonical keys (events on items the maps lack are left out).
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from components.config import Config
from components.shilling_defence import DefenceSettings, account_signals

log = logging.getLogger(__name__)
COLUMNS = ["user_id", "item_id", "rating", "event_timestamp"]
MAX_LISTED = 100  # flagged accounts named in the summary


def attack_alarm(reference: pd.DataFrame, live: pd.DataFrame, live_users: pd.Series | None,
                 config: Config) -> dict[str, Any]:
    """{"fired", "flagged_count", "flagged_accounts" (external ids, most anomalous first), "live_accounts",
    "suspected_items", "threshold"}; `live` is keyed (item keys), `live_users` its rows' external user ids."""
    threshold = config.trust.alarm_min_accounts
    result: dict[str, Any] = {"fired": False, "flagged_count": 0, "flagged_accounts": [], "live_accounts": 0,
                              "suspected_items": [], "threshold": threshold}
    if live.empty:
        return result
    users = live["user_id"] if live_users is None else pd.Series(live_users).reset_index(drop=True)
    cur = live[COLUMNS].reset_index(drop=True).assign(user_id=("live:" + users.astype(str)).to_numpy())
    cur = cur[cur["item_id"] >= 0]
    ref = reference[COLUMNS].assign(user_id="ref:" + reference["user_id"].astype(str))
    ref = ref.astype({"event_timestamp": "datetime64[us, UTC]"})
    cur = cur.astype({"event_timestamp": "datetime64[us, UTC]"})
    signals, suspected = account_signals(pd.concat([ref, cur], ignore_index=True), config.dataset,
                                         DefenceSettings.from_config(config))
    is_live = signals["user_id"].str.startswith("live:")
    flagged = signals[is_live & signals["flagged"]].sort_values("anomaly", ascending=False)
    result.update(fired=bool(len(flagged) >= threshold), flagged_count=int(len(flagged)),
                  flagged_accounts=flagged["user_id"].str.removeprefix("live:").head(MAX_LISTED).tolist(),
                  live_accounts=int(is_live.sum()), suspected_items=[int(i) for i in suspected])
    if result["fired"]:
        log.warning("attack alarm: %d live accounts behave like a fake-profile campaign (suspected target items %s)",
                    len(flagged), result["suspected_items"])
    return result
