"""Fake-profile (shilling) attacks: fake accounts that push chosen target items, injected into the canonical tables
or sent through the API's POST /interactions, and their measured effect on genuine users.

Attack models (Lam & Riedl 2004; Mobasher et al. 2007), each fake profile = the target items at the top of the
feedback scale + `filler` other items (items already consumed before the campaign):
- random: fillers drawn uniformly from the catalogue, feedback around the global mean (global spread);
- average: fillers drawn uniformly, feedback around each filler item's own mean (its own spread);
- bandwagon: the `selected` most popular items at the top of the scale as well, fillers as in random.
Feedback follows the data set's declaration: explicit ratings (rounded, clipped to [min, max]); weighted events
(targets and selected items get the highest-weight event type, fillers a type drawn by the data's own shares);
implicit data has no feedback value (rating null). Each fake account posts its whole profile in one scripted
session (`interval_s` apart), its sign-up time drawn within the campaign; against a next-item model each target
follows a popular item in the profile (`order`).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from components.bundle_ops import top_k
from components.dataset import DatasetSchema
from components.errors import RecsysError

AttackKind = Literal["random", "average", "bandwagon"]
ATTACK_KINDS: tuple[str, ...] = ("random", "average", "bandwagon")


class AttackError(RecsysError, ValueError):
    """The attack cannot be built as asked; the message names the field."""


@dataclass(frozen=True)
class AttackSpec:
    """One attack campaign. `fake_share` is the number of fake accounts as a share of the genuine users."""

    kind: AttackKind
    targets: tuple[int, ...]  # canonical item keys pushed
    fake_share: float = 0.03
    filler: int = 30  # filler items per fake profile
    selected: int = 10  # bandwagon: most popular items every fake profile rates at the top
    campaign_hours: float = 24.0  # fake sign-ups spread over this long
    start_quantile: float = 0.9  # the campaign starts at this quantile of the interactions' event times
    interval_s: float = 2.0  # seconds between one fake account's events
    order: Literal["sequential", "shuffled"] = "sequential"  # see `profile_order`
    repeats: int = 1  # events per target in each fake profile (each after its own anchor item when sequential)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ATTACK_KINDS:
            raise AttackError(f"kind must be one of {ATTACK_KINDS}, got {self.kind!r}")
        if not self.targets:
            raise AttackError("targets must name at least one item")
        if not 0.0 < self.fake_share <= 0.5:
            raise AttackError(f"fake_share must be in (0, 0.5], got {self.fake_share}")
        if self.filler < 0 or self.selected < 0:
            raise AttackError("filler and selected must be >= 0")
        if self.repeats < 1:
            raise AttackError(f"repeats must be >= 1, got {self.repeats}")
        if self.order not in ("sequential", "shuffled"):
            raise AttackError(f"order must be sequential or shuffled, got {self.order!r}")
        if not 0.0 <= self.start_quantile <= 1.0:
            raise AttackError(f"start_quantile must be in [0, 1], got {self.start_quantile}")


@dataclass
class Attack:
    """The injected campaign: the tables with the fakes in, and who the fakes are."""

    tables: dict[str, pd.DataFrame]
    fake_users: np.ndarray  # canonical user keys of the fake accounts
    interactions: pd.DataFrame  # the fake accounts' events alone (canonical columns)
    spec: AttackSpec


def _feedback_values(schema: DatasetSchema, inter: pd.DataFrame, items: np.ndarray, kind: AttackKind,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Filler feedback per the attack model and the declared feedback: (rating [n], event type [n] or None)."""
    fb = schema.feedback
    n = len(items)
    if fb.kind == "implicit":
        return np.full(n, np.nan, dtype=np.float32), None
    if fb.kind == "events":
        shares = inter["event_type"].value_counts(normalize=True) if "event_type" in inter else \
            pd.Series({name: 1.0 / len(fb.weights) for name in fb.weights})
        types = rng.choice(shares.index.to_numpy(), size=n, p=shares.to_numpy())
        return np.array([fb.weights[t] for t in types], dtype=np.float32), types.astype(object)
    ratings = inter["rating"].astype(float)
    if kind == "average":
        stats = inter.groupby("item_id")["rating"].agg(["mean", "std"])
        mean = stats["mean"].reindex(items).fillna(ratings.mean()).to_numpy()
        std = stats["std"].reindex(items).fillna(ratings.std()).fillna(0.0).to_numpy()
    else:
        mean, std = np.full(n, ratings.mean()), np.full(n, ratings.std())
    values = np.clip(np.round(rng.normal(mean, std)), fb.min, fb.max)
    return values.astype(np.float32), None


def _top_feedback(schema: DatasetSchema) -> tuple[float, str | None]:
    """The feedback a pushed item gets: the scale's top, or the highest-weight event type."""
    fb = schema.feedback
    if fb.kind == "explicit":
        return float(fb.max), None  # type: ignore[arg-type]
    if fb.kind == "events":
        name = max(fb.weights, key=fb.weights.get)  # type: ignore[arg-type]
        return float(fb.weights[name]), name  # type: ignore[index]
    return float("nan"), None


def profile_order(n_targets: int, n_selected: int, n_filler: int, order: str,
                  rng: np.random.Generator) -> np.ndarray:
    """The order of a fake profile's events (rows: targets, then selected, then fillers). shuffled: random.
    sequential (against next-item models): the fillers, then each target right after an anchor item (a selected
    popular item, or a filler where there are none), then the remaining anchors."""
    rows = np.arange(n_targets + n_selected + n_filler)
    if order == "shuffled":
        return rng.permutation(rows)
    targets, selected, filler = np.split(rows, [n_targets, n_targets + n_selected])
    filler = rng.permutation(filler)
    anchors = rng.permutation(selected) if n_selected else filler[-n_targets:]
    lead = filler if n_selected else filler[: len(filler) - len(anchors)]
    pairs = [x for a, t in zip(anchors, targets, strict=False) for x in (a, t)]
    rest = anchors[len(targets):]
    unpaired = targets[len(anchors):]
    return np.concatenate([lead, unpaired, np.asarray(pairs, dtype=np.int64), rest]).astype(np.int64)


def inject_attack(tables: dict[str, pd.DataFrame], schema: DatasetSchema, spec: AttackSpec) -> Attack:
    """The canonical tables with `spec`'s fake accounts added (new user keys after the largest; profiles copied
    from random genuine users so that no attribute gives them away)."""
    rng = np.random.default_rng(spec.seed)
    inter, users, items = tables["interactions"], tables["users"], tables["items"]
    catalogue = items["item_id"].to_numpy(dtype=np.int64)
    targets = np.asarray(spec.targets, dtype=np.int64)
    pushed = np.tile(targets, spec.repeats)
    unknown = np.setdiff1d(targets, catalogue)
    if len(unknown):
        raise AttackError(f"targets {unknown.tolist()} are not in the items table")
    n_genuine = int(users["user_id"].nunique())
    n_fake = max(1, int(round(spec.fake_share * n_genuine)))
    first_key = int(max(users["user_id"].max(), inter["user_id"].max())) + 1
    fake_ids = np.arange(first_key, first_key + n_fake, dtype=np.int64)
    popular = inter["item_id"].value_counts().index.to_numpy(dtype=np.int64)
    selected = np.setdiff1d(popular[: spec.selected + len(targets)], targets)[: spec.selected] \
        if spec.kind == "bandwagon" else np.empty(0, np.int64)
    top_value, top_type = _top_feedback(schema)
    ts = pd.to_datetime(inter["event_timestamp"], utc=True)
    start = ts.quantile(spec.start_quantile)
    existing = inter.loc[(ts < start).to_numpy(), "item_id"].unique()  # fillers: items out by then
    others = np.setdiff1d(np.intersect1d(catalogue, existing), np.concatenate([targets, selected]))
    rows = []
    for user in fake_ids:
        filler = rng.choice(others, size=min(spec.filler, len(others)), replace=False)
        rating, types = _feedback_values(schema, inter, filler, spec.kind, rng)
        profile = pd.DataFrame({
            "item_id": np.concatenate([pushed, selected, filler]),
            "rating": np.concatenate([np.full(len(pushed) + len(selected), top_value, np.float32), rating]),
        })
        if "event_type" in inter:
            profile["event_type"] = np.concatenate([[top_type] * (len(pushed) + len(selected)),
                                                    types if types is not None else [top_type] * len(filler)])
        profile = profile.iloc[profile_order(len(pushed), len(selected), len(filler), spec.order, rng)]
        profile = profile.reset_index(drop=True)
        begin = start + pd.Timedelta(hours=float(rng.uniform(0, spec.campaign_hours)))
        profile["event_timestamp"] = begin + pd.to_timedelta(np.arange(len(profile)) * spec.interval_s, unit="s")
        profile["user_id"] = user
        rows.append(profile)
    fake = pd.concat(rows, ignore_index=True)[[c for c in inter.columns if c in rows[0].columns]]
    fake = fake.astype({c: inter[c].dtype for c in fake.columns if c in inter and c != "event_timestamp"})
    fake["event_timestamp"] = fake["event_timestamp"].astype(inter["event_timestamp"].dtype)
    donors = users.sample(n=n_fake, replace=True, random_state=spec.seed).reset_index(drop=True)
    donors["user_id"] = fake_ids
    if "created_timestamp" in donors:
        donors["created_timestamp"] = fake.groupby("user_id")["event_timestamp"].min().to_numpy()
    out = dict(tables)
    out["interactions"] = pd.concat([inter, fake], ignore_index=True)
    out["users"] = pd.concat([users, donors.astype(users.dtypes.to_dict())], ignore_index=True)
    return Attack(out, fake_ids, fake.reset_index(drop=True), spec)


def interaction_payloads(fake: pd.DataFrame, user_external: Sequence, item_external: Sequence,
                         rated: bool) -> Iterator[dict]:
    """POST /interactions bodies (external ids, ISO times) for the fake events, in time order."""
    for row, user, item in zip(fake.sort_values("event_timestamp").itertuples(index=False), user_external,
                               item_external, strict=True):
        body = {"user_id": user, "item_id": item,
                "event_timestamp": pd.Timestamp(row.event_timestamp).tz_convert("UTC").isoformat()}
        if rated and not pd.isna(row.rating):
            body["rating"] = float(row.rating)
        yield body


def send_interactions(base_url: str, token: str | None, payloads: Sequence[dict], timeout_s: float = 10.0) -> int:
    """POST each body to `<base_url>/interactions` (bearer `token`); returns how many the API logged."""
    logged = 0
    for body in payloads:
        request = urllib.request.Request(f"{base_url.rstrip('/')}/interactions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {token}"} if token else {})},
                                         method="POST")
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310 - the caller's API URL
            logged += bool(json.loads(answer.read()).get("logged"))
    return logged


# ----------------------------------------------------------------------------------------------- effect


def target_hit_ratio(scores: np.ndarray, exclude: Sequence[np.ndarray], catalogue: np.ndarray,
                     targets: np.ndarray, k: int = 10) -> dict[str, float]:
    """How far the targets reach genuine users: hit ratio = share of (user, target) pairs where the target is in
    the user's top-k (users who already consumed a target are left out for it), and its mean rank."""
    catalogue = np.asarray(catalogue, dtype=np.int64)
    ids, _ = top_k(scores, k, exclude, catalogue)
    cols = pd.Series(np.arange(len(catalogue)), index=catalogue)
    hits, ranks, pairs = 0, [], 0
    for t in np.asarray(targets, dtype=np.int64):
        col = int(cols[t])
        eligible = np.array([t not in set(np.asarray(e).tolist()) for e in exclude])
        target_score = scores[:, col][:, None]
        higher = (scores > target_score).sum(axis=1)
        hits += int(((ids == t).any(axis=1) & eligible).sum())
        ranks += (higher[eligible] + 1).tolist()
        pairs += int(eligible.sum())
    return {"hit_ratio": hits / pairs if pairs else float("nan"),
            "mean_rank": float(np.mean(ranks)) if ranks else float("nan"), "pairs": pairs}
