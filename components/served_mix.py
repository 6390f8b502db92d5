"""The served mix: trained and new items ranked in one list, as the API serves them.

The cold-start task ranks new items among themselves and the main task trained items among themselves; the API
ranks both in one list. The new-item prior's terms (`components.new_item_prior`) are fitted for the first, so on
their own they say nothing of where new items stand against trained ones. The new-item offset c (added to every
new item's score: `components.bundle_ops.PopularityPrior`) places them, chosen on the validation stage's mix
(`components.new_item_prior.fit_new_item_offset`).

The mix of one stage: from the first interaction on the stage's new items (the held-out period), the stage's warm
targets and every interaction on the new items, each ranked among the trained items and the new items at its own
time, the user's earlier items excluded. Its figure of merit is the expected HR@10 of an interaction of the period:
(1 - s) * warm HR@10 + s * new-item HR@10, with s the share of the period's interactions that went to the new items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from components.config import Config
from components.evaluation_types import EvalData
from components.metrics import FixedScores, bootstrap, per_user_metrics, rank_targets
from components.recommender import Recommender

K = 10
HR, NDCG = f"hr@{K}", f"ndcg@{K}"
LEFT_OUT = -np.inf  # the offset of a list without the new items
MIX_CELLS = 1 << 25  # users x items scored at once


@dataclass
class Targets:
    """Interactions to rank: the users (with `as_of`), their histories, the items met, what each request leaves out."""

    users: pd.DataFrame
    histories: list[np.ndarray]
    targets: np.ndarray
    exclude: list[np.ndarray]


@dataclass
class ServedMix:
    """One stage's held-out period ranked as served (see the module docstring)."""

    warm: Targets  # the stage's warm targets at or after `since`
    new: Targets  # every interaction on the new items
    catalogue: np.ndarray  # the trained items and the new items
    new_items: np.ndarray
    new_share: float  # s: the share of the period's interactions on the new items
    since: pd.Timestamp
    events: pd.DataFrame  # every interaction of the split: the priors' point-in-time counts


def served_mix(data: EvalData, every: EvalData) -> ServedMix | None:
    """The mix of `data`'s stage, `every` the same stage with every new-item interaction as its cold-start targets
    (`components.evaluate.every_event_cold`); None without interactions on the stage's new items or without warm
    targets after the first of them."""
    if not len(every.cold_targets) or data.item_events is None:
        return None
    new_events = data.cold_interactions
    since = new_events["event_timestamp"].min()
    earlier = {int(u): g for u, g in new_events.groupby("user_id")}

    def excluded(user: int, as_of: pd.Timestamp, *parts: np.ndarray) -> np.ndarray:
        own = earlier.get(int(user))
        met = own.loc[own["event_timestamp"] < as_of, "item_id"].to_numpy() if own is not None else []
        return np.unique(np.concatenate([np.asarray(met, np.int64), *parts])).astype(np.int64)

    keep = np.flatnonzero((data.users["as_of"] >= since).to_numpy())
    if not len(keep):
        return None
    warm_users = data.users.iloc[keep].reset_index(drop=True)
    warm_histories = [data.histories[i] for i in keep]
    warm = Targets(warm_users, warm_histories, data.targets[keep],
                   [excluded(u, t, h) for u, t, h in zip(warm_users["user_id"], warm_users["as_of"], warm_histories,
                                                         strict=True)])
    new = Targets(every.cold_users, every.cold_histories, every.cold_targets,
                  [excluded(u, t, h, x) for u, t, h, x in zip(every.cold_users["user_id"], every.cold_users["as_of"],
                                                              every.cold_histories, every.cold_exclude, strict=True)])
    period = data.item_events[data.item_events["event_timestamp"] >= since]
    new_items = np.asarray(data.cold_items, np.int64)
    share = float(period["item_id"].isin(new_items).mean()) if len(period) else 0.0
    return ServedMix(warm, new, np.union1d(data.catalogue, new_items), new_items, share, since, data.item_events)


def _ranked(recommender: Recommender, part: Targets, mix: ServedMix, deltas: list[float]
            ) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Per delta: (per-target metrics, per target the share of its top 10 that are new items); the recommender
    scores each chunk of users once."""
    is_new = np.isin(mix.catalogue, mix.new_items)
    out: list[list] = [[] for _ in deltas]
    step = max(1, MIX_CELLS // max(len(mix.catalogue), 1))
    for start in range(0, len(part.targets), step):
        rows = np.arange(start, min(start + step, len(part.targets)))
        users = part.users.iloc[rows].reset_index(drop=True)
        histories, exclude = [part.histories[i] for i in rows], [part.exclude[i] for i in rows]
        scores = recommender.score(users, histories, mix.catalogue)
        users = users.assign(_row=np.arange(len(rows)))
        for d, delta in enumerate(deltas):
            shifted = FixedScores(np.where(is_new, scores + np.float32(delta), scores).astype(np.float32))
            ranks, top = rank_targets(shifted, users, histories, part.targets[rows], mix.catalogue, K, exclude=exclude)
            out[d].append((per_user_metrics(ranks, [K]), np.isin(top, mix.new_items).mean(axis=1)))
    return [({name: np.concatenate([m[name] for m, _ in chunks]) for name in (HR, NDCG)},
             np.concatenate([s for _, s in chunks])) for chunks in out]


def mix_figures(recommender: Recommender, mix: ServedMix, offsets: list[float]) -> list[dict[str, Any]]:
    """Per offset c of the new items (LEFT_OUT: none served): the warm and new-item metrics per target, the new
    items' share of the warm targets' top 10, and the expected HR@10 / NDCG@10 of the period's interactions."""
    share = getattr(recommender, "set_item_events", None)
    if share is not None:
        share(mix.events)
    own = float(getattr(recommender, "new_item_offset", 0.0))
    deltas = [c - own for c in offsets]
    warm, new = _ranked(recommender, mix.warm, mix, deltas), _ranked(recommender, mix.new, mix, deltas)
    s = mix.new_share
    figures = []
    for c, (warm_m, warm_share), (new_m, _) in zip(offsets, warm, new, strict=True):
        expected = {f"expected_{name}": (1 - s) * _mean(warm_m[name]) + s * _mean(new_m[name]) for name in (HR, NDCG)}
        figures.append({"offset": c, "warm": warm_m, "new": new_m, "new_in_warm_top": _mean(warm_share), **expected})
    return figures


def mix_curve(recommender: Recommender, mix: ServedMix, offsets: list[float]) -> list[dict[str, float]]:
    """`mix_figures` as means, one row per offset: the expected HR@10 and NDCG@10, the warm NDCG@10, the new-item
    HR@10 and the new items' share of a warm top 10."""
    return [{"offset": f["offset"], f"expected_{HR}": f[f"expected_{HR}"], f"expected_{NDCG}": f[f"expected_{NDCG}"],
             f"warm_{NDCG}": _mean(f["warm"][NDCG]), f"new_{HR}": _mean(f["new"][HR]),
             "new_in_warm_top": f["new_in_warm_top"]} for f in mix_figures(recommender, mix, offsets)]


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else 0.0


def mix_report(recommender: Recommender, mix: ServedMix, config: Config) -> dict[str, Any]:
    """The report's served-mix figures: the period, its targets and the new items' share; a row each for the model
    as served (its own offset), offset 0 and the new items left out, with 95% intervals (the new-item targets
    resample whole users)."""
    own = float(getattr(recommender, "new_item_offset", 0.0))
    settings = {"as served": own, "offset 0": 0.0, "new items left out": LEFT_OUT}
    figures = mix_figures(recommender, mix, list(settings.values()))
    samples, seed = config.evaluate.bootstrap_samples, config.train.seed
    rows = []
    for name, f in zip(settings, figures, strict=True):
        warm = bootstrap(f["warm"], samples, seed)
        new = bootstrap(f["new"], samples, seed, clusters=mix.new.users["user_id"].to_numpy())
        rows.append({"setting": name, "offset": None if f["offset"] == LEFT_OUT else f["offset"],
                     f"warm_{NDCG}": warm[NDCG].as_dict(), f"warm_{HR}": warm[HR].as_dict(),
                     f"new_{HR}": new[HR].as_dict(), "new_in_warm_top": f["new_in_warm_top"],
                     f"expected_{HR}": f[f"expected_{HR}"], f"expected_{NDCG}": f[f"expected_{NDCG}"]})
    return {"since": mix.since.isoformat(), "warm_targets": int(len(mix.warm.targets)),
            "new_targets": int(len(mix.new.targets)), "new_items": int(len(mix.new_items)),
            "new_share": mix.new_share, "rows": rows}
