"""`recsys data synth`: a seeded e-commerce data set of another shape than MovieLens, with its schema file.

A shop: string customer ids (`c-5f3a19e2`) and SKUs (`SKU-10231`); items with a category, a brand, several
tags, a price and a listing time (a share of the catalogue arrives during the period); customers with a
country, a segment, a tenure and a sign-up channel; implicit feedback as view / cart / purchase events in
sessions. Sessions stay in one category and walk its items in a fixed order (item k is mostly followed by
k+1, then k+2 or k+3), so the next item is predictable from the sequence, not only from popularity. Naive local times
in Europe/Berlin exercise the declared time zone. Vectorised numpy: 10^7 events in well under a minute.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

log = logging.getLogger(__name__)

CATEGORIES = ["kitchen", "garden", "toys", "books", "outdoor", "audio", "beauty", "office", "pets", "sports",
              "fashion", "tools", "games", "baby", "bath", "lighting", "travel", "music", "crafts", "health"]
NOUNS = {c: n for c, n in zip(CATEGORIES, [
    "pan", "hose", "puzzle", "novel", "tent", "speaker", "serum", "stapler", "leash", "racket", "jacket",
    "drill", "board game", "stroller", "towel", "lamp", "backpack", "ukulele", "yarn", "vitamin"], strict=True)}
ADJECTIVES = ["classic", "compact", "deluxe", "eco", "smart", "mini", "pro", "soft", "travel", "vintage"]
TAGS = ["eco", "sale", "new", "premium", "bundle", "handmade", "bestseller", "gift"]
COUNTRIES = ["DE", "FR", "UK", "ES", "IT", "NL", "PL", "SE"]
SEGMENTS = ["new", "regular", "vip"]
CHANNELS = ["web", "app", "store"]
EVENT_TYPES = {"view": 1.0, "cart": 3.0, "purchase": 5.0}
EVENT_SHARES = (0.78, 0.16, 0.06)
LOCAL_ZONE = "Europe/Berlin"
MAX_SESSION = 20
WALK_STEPS, WALK_STEP_SHARES = (1, 2, 3), (0.6, 0.25, 0.15)  # how far a session moves along its category


@dataclass(frozen=True)
class SynthSpec:
    """Sizes of the generated shop."""

    users: int = 2_000
    items: int = 500
    events: int = 50_000
    days: int = 120
    new_item_share: float = 0.2  # items listed during the period (the rest exist from the start)
    seed: int = 7
    start: str = "2025-01-01"


def schema(name: str = "synthetic-shop") -> dict:
    """The dataset declaration of the generated files (what a team would write for its own shop)."""
    return {
        "name": name,
        "description": "Seeded e-commerce sessions: string ids, implicit view/cart/purchase events.",
        "user_id": {"column": "customer_id", "type": "string"},
        "item_id": {"column": "sku", "type": "string"},
        "event_time": {"column": "ts", "unit": "s", "timezone": LOCAL_ZONE},
        "feedback": {"kind": "events", "column": "event_type", "weights": dict(EVENT_TYPES)},
        "item_title": "name",
        "user_created": "signup_at",
        "item_created": "listed_at",
        "user_attributes": {
            "country": {"kind": "categorical", "categories": COUNTRIES},
            "segment": {"kind": "categorical", "categories": SEGMENTS},
            "tenure_days": {"kind": "bucketed", "edges": [90, 365, 1095], "min": 0, "max": 20000},
            "channel": {"kind": "categorical", "column": "signup_channel", "categories": CHANNELS,
                        "on_unknown": "other"},
        },
        "item_attributes": {
            "category": {"kind": "categorical", "categories": CATEGORIES},
            "brand": {"kind": "categorical"},
            "tags": {"kind": "multi_categorical", "separator": ",", "categories": TAGS, "missing_text": "none"},
            "price": {"kind": "numeric", "min": 0.01, "max": 100000},
        },
        "text_template": "{title} by {brand}, {category}. Tags: {tags}. Price {price} EUR.",
        "filterable": {"category": "membership", "brand": "membership", "tags": "membership", "price": "range"},
        "displayed": ["category", "brand", "price"],
        "fairness_groups": ["segment", "tenure_days"],
        "replay_cohort": "segment=vip",
    }


def _items(spec: SynthSpec, rng: np.random.Generator, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    n = spec.items
    category = rng.integers(0, len(CATEGORIES), n)
    n_brands = max(3, n // 25)
    brand = rng.zipf(1.6, n) % n_brands
    adjective = rng.integers(0, len(ADJECTIVES), n)
    price = np.round(np.exp(rng.normal(3.0 + 0.08 * category, 0.6)), 2)
    is_new = rng.random(n) < spec.new_item_share
    offset = np.where(is_new, rng.uniform(0.1, 0.95, n), 0.0) * (end - start).total_seconds()
    tag_mask = rng.random((n, len(TAGS))) < 0.18
    tags = [",".join(t for t, keep in zip(TAGS, row, strict=True) if keep) for row in tag_mask]
    return pd.DataFrame({
        "sku": [f"SKU-{10_000 + i}" for i in range(n)],
        "name": [f"{ADJECTIVES[a].title()} {NOUNS[CATEGORIES[c]]} {i}" for i, (a, c) in enumerate(zip(
            adjective, category, strict=True))],
        "category": [CATEGORIES[c] for c in category],
        "brand": [f"brand-{b:03d}" for b in brand],
        "tags": tags,
        "price": price,
        "listed_at": (start + pd.to_timedelta(offset, unit="s")).tz_convert(LOCAL_ZONE).tz_localize(None),  # local
    })


def _users(spec: SynthSpec, rng: np.random.Generator, start: pd.Timestamp) -> pd.DataFrame:
    n = spec.users
    ids = rng.choice(16**8, size=n, replace=False)
    tenure = np.minimum(rng.exponential(400, n).astype(int), 19_000)
    segment = np.where(tenure < 90, 0, np.where(rng.random(n) < 0.15, 2, 1))
    return pd.DataFrame({
        "customer_id": [f"c-{i:08x}" for i in ids],
        "country": rng.choice(COUNTRIES, n, p=[0.3, 0.18, 0.15, 0.1, 0.1, 0.07, 0.06, 0.04]),
        "segment": [SEGMENTS[s] for s in segment],
        "tenure_days": tenure,
        "signup_channel": rng.choice(CHANNELS, n, p=[0.5, 0.4, 0.1]),
        "signup_at": (start - pd.to_timedelta(tenure, unit="D")).tz_localize(None),
    })


def _events(spec: SynthSpec, rng: np.random.Generator, items: pd.DataFrame, users: pd.DataFrame,
            start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """Sessions walking one category's items in order; only items already listed are reachable."""
    span = (end - start).total_seconds()
    n_sessions = max(1, int(spec.events / 4.5))
    activity = rng.lognormal(0.0, 1.0, spec.users)
    session_user = rng.choice(spec.users, n_sessions, p=activity / activity.sum())
    favourite = rng.integers(0, len(CATEGORIES), (spec.users, 2))
    pick = rng.random(n_sessions)
    session_category = np.where(pick < 0.6, favourite[session_user, 0],
                                np.where(pick < 0.85, favourite[session_user, 1],
                                         rng.integers(0, len(CATEGORIES), n_sessions)))
    session_time = rng.uniform(0.0, span * 0.999, n_sessions)
    length = np.minimum(rng.geometric(1 / 4.5, n_sessions), MAX_SESSION)

    listed = (pd.to_datetime(items["listed_at"]).dt.tz_localize(LOCAL_ZONE).dt.tz_convert("UTC") - start)
    listed_s = listed.dt.total_seconds().to_numpy()
    category_codes = pd.Categorical(items["category"], categories=CATEGORIES).codes
    order = np.lexsort((listed_s, category_codes))  # items grouped by category, oldest first
    cat_start = np.searchsorted(category_codes[order], np.arange(len(CATEGORIES)))
    cat_count = np.bincount(category_codes, minlength=len(CATEGORIES))
    # items of a session's category already listed when it starts
    available = np.zeros(n_sessions, dtype=np.int64)
    for c in range(len(CATEGORIES)):
        rows = session_category == c
        if cat_count[c]:
            times = listed_s[order[cat_start[c]:cat_start[c] + cat_count[c]]]
            available[rows] = np.searchsorted(times, session_time[rows], side="right")
    ok = available > 0
    session_user, session_category, session_time = session_user[ok], session_category[ok], session_time[ok]
    length, available = length[ok], available[ok]

    position = np.floor(available * rng.random(len(available)) ** 2).astype(np.int64)
    chunks_user, chunks_item, chunks_time = [], [], []
    clock = session_time.copy()  # each event a few minutes after the previous one of its session
    for step in range(MAX_SESSION):
        alive = length > step
        if not alive.any():
            break
        item_rows = order[cat_start[session_category[alive]] + position[alive]]
        chunks_user.append(session_user[alive])
        chunks_item.append(item_rows)
        chunks_time.append(clock[alive])
        clock = clock + rng.uniform(20, 240, len(clock))
        walk = rng.random(len(position)) < 0.75
        jump = np.floor(available * rng.random(len(position)) ** 2).astype(np.int64)
        step_size = rng.choice(WALK_STEPS, len(position), p=WALK_STEP_SHARES)
        position = np.where(walk, (position + step_size) % available, jump)
    user = np.concatenate(chunks_user)
    item = np.concatenate(chunks_item)
    seconds = np.floor(np.minimum(np.concatenate(chunks_time), span - 1))
    keep = rng.permutation(len(user))[: spec.events]
    user, item, seconds = user[keep], item[keep], seconds[keep]
    kinds = rng.choice(list(EVENT_TYPES), len(user), p=list(EVENT_SHARES))
    utc = start + pd.to_timedelta(seconds, unit="s")
    frame = pd.DataFrame({
        "customer_id": users["customer_id"].to_numpy()[user],
        "sku": items["sku"].to_numpy()[item],
        "event_type": kinds,
        "ts": utc.tz_convert(LOCAL_ZONE).tz_localize(None),  # naive local time, as shops often log it
    })
    frame = frame.drop_duplicates(["customer_id", "sku", "ts"]).sort_values("ts", kind="stable")
    return frame.reset_index(drop=True)


def generate(spec: SynthSpec) -> dict[str, pd.DataFrame]:
    """The three source tables of the shop (interactions, users, items), deterministic for a seed."""
    if min(spec.users, spec.items, spec.events) < 1:
        raise ValueError("users, items and events must each be at least 1")
    rng = np.random.default_rng(spec.seed)
    start = pd.Timestamp(spec.start, tz="UTC")
    end = start + pd.Timedelta(days=spec.days)
    items = _items(spec, rng, start, end)
    users = _users(spec, rng, start)
    interactions = _events(spec, rng, items, users, start, end)
    seen = set(interactions["customer_id"])
    users = users[users["customer_id"].isin(seen)].reset_index(drop=True)  # every customer has an event
    return {"interactions": interactions, "users": users, "items": items}


def write_synthetic(spec: SynthSpec, out_dir: str | Path) -> dict[str, Path]:
    """Write the tables as parquet, `schema.yaml` (its declaration) and `config.yaml` (a config that ingests
    them: `recsys --config <out>/config.yaml ...`). Returns the written paths."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tables = generate(spec)
    paths = {}
    for name, frame in tables.items():
        paths[name] = out / f"{name}.parquet"
        frame.to_parquet(paths[name], index=False)
    paths["schema"] = out / "schema.yaml"
    paths["schema"].write_text(yaml.safe_dump(schema(), sort_keys=False), encoding="utf-8")
    paths["config"] = out / "config.yaml"
    config = {
        "paths": {"data_dir": str(out / "data"), "artifacts_dir": str(out / "artifacts"),
                  "pipeline_root": str(out / "artifacts" / "kfp")},
        "dataset": {"preset": str(paths["schema"])},
        "data": {"source": "files", "interactions_path": str(paths["interactions"]),
                 "users_path": str(paths["users"]), "items_path": str(paths["items"])},
        # its own feature store, models, request log, servers' folders and reports: the shop and another data
        # set live side by side in one checkout (their servers share the default ports: one runs at a time)
        "features": {"data_dir": str(out / "features")},
        "serving": {"model_repository": str(out / "artifacts" / "triton_models"),
                    "request_log": str(out / "artifacts" / "request_log.sqlite"),
                    "triton_build_dir": str(out / "build" / "triton"),
                    "triton_log_file": str(out / "build" / "triton" / "tritonserver.log")},
        "monitoring": {"reports_dir": str(out / "artifacts" / "monitoring"),
                       "state_path": str(out / "artifacts" / "monitoring" / "policy_state.json")},
    }
    paths["config"].write_text("# Ingests the synthetic shop beside this file; its data, features, models and servers' "
                               "files stay in this folder.\n"
                               + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    log.info("synthetic shop: %s", {k: len(v) for k, v in tables.items()})
    return paths
