"""Fairness mitigation: group-aware re-scoring, its weights chosen on validation.

A user of group g gets score'(i) = (score(i) - mean) / std + w_g * prior(i), the model's scores standardised per
user and the prior standardised over the catalogue: `popularity` = log(1 + training interactions of i), or
`group_popularity` = log(1 + training interactions of i by users of g) — what the user's own group consumes, which
a model fitted mostly to the largest groups under-weights. Only under-served groups (validation NDCG@10 below the
overall) get a weight: each takes the w that maximises its own validation NDCG@10; the prior whose choice gives the
best worst-group validation NDCG@10 within `max_overall_loss` relative overall loss wins. Every weight 0 (no
point helps) leaves the ranking exactly as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from components.dataset import group_labels
from components.errors import RecsysError
from components.evaluation_types import EvalData
from components.metrics import per_user_metrics, rank_targets

log = logging.getLogger(__name__)
METRIC = "ndcg@10"
MIN_GROUP_USERS = 20  # smaller groups are not chosen as the mitigated attribute's worst


class MitigationError(RecsysError, ValueError):
    """The mitigation cannot run as configured; the message names the field."""


def stage_events(recommender: Any, stage: EvalData) -> None:
    """Hand `recommender` the stage's point-in-time item events, as the evaluator does before ranking (a model with
    popularity priors, `set_item_events`, then scores the stage as the evaluation does)."""
    share = getattr(recommender, "set_item_events", None)
    events = getattr(stage, "item_events", None)
    if share is not None and events is not None:
        share(events)


def standardised(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """(x - mean) / std along `axis` over finite entries (-inf stays -inf; a constant row becomes 0)."""
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    filled = np.where(finite, x, np.nan)
    mean = np.nanmean(filled, axis=axis, keepdims=True)
    std = np.nanstd(filled, axis=axis, keepdims=True)
    out = (x - mean) / np.where(std > 0, std, 1.0)
    return np.where(finite, out, -np.inf)


@dataclass
class GroupPriors:
    """log(1 + training interactions) per catalogue item, overall and per group of one attribute, standardised."""

    attribute: str
    declared: Any  # the attribute's declaration (how its values become groups)
    item_ids: np.ndarray
    overall: np.ndarray
    by_group: dict[str, np.ndarray]

    @classmethod
    def fit(cls, train: pd.DataFrame, users: pd.DataFrame, schema: Any, attribute: str,
            item_ids: np.ndarray) -> GroupPriors:
        item_ids = np.asarray(item_ids, dtype=np.int64)
        labels = pd.Series(group_labels(users[attribute], schema.user_attributes[attribute]),
                           index=users["user_id"].to_numpy())
        df = train[["user_id", "item_id"]].assign(group=train["user_id"].map(labels).fillna("unknown").to_numpy())

        def prior(rows: pd.DataFrame) -> np.ndarray:
            counts = rows["item_id"].value_counts().reindex(item_ids, fill_value=0).to_numpy()
            return standardised(np.log1p(counts.astype(np.float64)))

        return cls(attribute, schema.user_attributes[attribute], item_ids, prior(df),
                   {g: prior(rows) for g, rows in df.groupby("group")})

    def vector(self, kind: str, group: str) -> np.ndarray:
        if kind == "popularity":
            return self.overall
        return self.by_group.get(group, self.overall)


@dataclass
class FairnessChoice:
    """What validation chose: the attribute, the prior and each group's weight (empty = no change)."""

    attribute: str
    prior: str
    weights: dict[str, float] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return any(w > 0 for w in self.weights.values())


class MitigatedRecommender:
    """A recommender whose scores get the chosen group prior added (contract C3)."""

    def __init__(self, base: Any, priors: GroupPriors, choice: FairnessChoice) -> None:
        self.base, self.priors, self.choice = base, priors, choice
        self.name = f"{base.name}+fairness"
        self.params = {"attribute": choice.attribute, "prior": choice.prior,
                       **{f"w[{g}]": w for g, w in choice.weights.items()}}

    def set_item_events(self, events: pd.DataFrame) -> None:
        """Forwarded to the base recommender where it takes item events (see `stage_events`)."""
        share = getattr(self.base, "set_item_events", None)
        if share is not None:
            share(events)

    def score(self, users: pd.DataFrame, histories: list[np.ndarray], catalogue: np.ndarray) -> np.ndarray:
        scores = self.base.score(users, histories, catalogue)
        if not self.choice.active:
            return scores
        return adjust(scores, users, catalogue, self.priors, self.choice).astype(np.float32)


def adjust(scores: np.ndarray, users: pd.DataFrame, catalogue: np.ndarray, priors: GroupPriors,
           choice: FairnessChoice) -> np.ndarray:
    """score / std + w_g * prior for users of weighted groups; other users' scores unchanged."""
    attr = priors.attribute
    labels = np.asarray(group_labels(users[attr], priors.declared), dtype=object) \
        if attr in users else np.full(len(users), "unknown", dtype=object)
    cols = pd.Series(np.arange(len(priors.item_ids)), index=priors.item_ids).reindex(
        np.asarray(catalogue, dtype=np.int64)).to_numpy()
    out = np.asarray(scores, dtype=np.float64).copy()
    for group, weight in choice.weights.items():
        rows = np.flatnonzero(labels == group)
        if weight <= 0 or not len(rows):
            continue
        vec = priors.vector(choice.prior, group)
        prior = np.where(np.isnan(cols), 0.0, vec[np.nan_to_num(cols, nan=0).astype(np.int64)])
        out[rows] = standardised(out[rows]) + weight * prior[None, :]
    return out


def _ndcg(scores: np.ndarray, data: EvalData) -> np.ndarray:
    class Fixed:
        name = "fixed"

        def score(self, users: pd.DataFrame, histories: list[np.ndarray], catalogue: np.ndarray) -> np.ndarray:
            return scores[users["_row"].to_numpy()]

    users = data.users.assign(_row=np.arange(len(data.users)))
    ranks, _ = rank_targets(Fixed(), users, data.histories, data.targets, data.catalogue, 10)
    return per_user_metrics(ranks, [10])[METRIC]


def choose(base: Any, validation: EvalData, train: pd.DataFrame, users: pd.DataFrame, config: Any,
           ) -> tuple[MitigatedRecommender, FairnessChoice]:
    """Fit the priors on the training rows and choose the attribute, prior and group weights on `validation`."""
    settings, schema = config.trust.fairness, config.dataset
    attrs = [a for a in schema.fairness_groups if a in validation.users]
    if settings.attribute is not None and settings.attribute not in attrs:
        raise MitigationError(f"trust.fairness.attribute={settings.attribute!r} is not one of the data set's "
                              f"fairness_groups {attrs}")
    if not attrs:
        raise MitigationError("the data set declares no fairness_groups the mitigation could balance")
    stage_events(base, validation)
    base_scores = base.score(validation.users, validation.histories, validation.catalogue).astype(np.float64)
    base_ndcg = _ndcg(base_scores, validation)
    overall = float(base_ndcg.mean())
    labels = {a: np.asarray(group_labels(validation.users[a], schema.user_attributes[a]), dtype=object)
              for a in attrs}

    def ratio(a: str, per_user: np.ndarray) -> float:
        vals = [per_user[labels[a] == g].mean() for g in np.unique(labels[a])
                if (labels[a] == g).sum() >= MIN_GROUP_USERS]
        return min(vals) / max(vals) if vals and max(vals) > 0 else 1.0

    attribute = settings.attribute or min(attrs, key=lambda a: ratio(a, base_ndcg))
    lab = labels[attribute]
    groups = [g for g in np.unique(lab) if (lab == g).sum() >= MIN_GROUP_USERS]
    under = [g for g in groups if base_ndcg[lab == g].mean() < overall]
    priors = GroupPriors.fit(train, users, schema, attribute, validation.catalogue)
    curve, best = [], None
    for prior in settings.priors:
        per_weight = {}
        for w in sorted(set(settings.weights)):
            trial = FairnessChoice(attribute, prior, dict.fromkeys(under, w))
            per_weight[w] = _ndcg(adjust(base_scores, validation.users, validation.catalogue, priors, trial),
                                  validation) if w > 0 else base_ndcg
            worst = min(per_weight[w][lab == g].mean() for g in groups)
            curve.append({"prior": prior, "weight": w, "overall": float(per_weight[w].mean()),
                          "worst_group": float(worst)})
        weights = {g: max(per_weight, key=lambda w, g=g: (per_weight[w][lab == g].mean(), -w)) for g in under}
        combined = base_ndcg.copy()
        for g, w in weights.items():
            combined[lab == g] = per_weight[w][lab == g]
        worst = min(combined[lab == g].mean() for g in groups)
        ok = combined.mean() >= (1.0 - settings.max_overall_loss) * overall
        if ok and (best is None or worst > best[1]):
            best = (FairnessChoice(attribute, prior, weights), worst, float(combined.mean()))
    base_worst = min(base_ndcg[lab == g].mean() for g in groups)
    if best is None or best[1] <= base_worst:
        choice = FairnessChoice(attribute, settings.priors[0], {})
        best_worst, best_overall = base_worst, overall
    else:
        choice, best_worst, best_overall = best
    choice.validation = {"overall_before": overall, "overall_after": best_overall,
                         "worst_group_before": float(base_worst), "worst_group_after": float(best_worst),
                         "under_served": under, "curve": curve}
    log.info("fairness mitigation on %s: prior %s, weights %s (validation worst group %.4f -> %.4f, overall %.4f -> "
             "%.4f)", attribute, choice.prior, choice.weights, base_worst, best_worst, overall, best_overall)
    return MitigatedRecommender(base, priors, choice), choice
