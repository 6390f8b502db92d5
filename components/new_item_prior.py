"""The new-item prior, fitted on the cold-validation items: how a new item's cosine and what the log knows of it at
the request (its interactions by other users in the feature store's windows, its velocity: those interactions per
day since it was first met, and whether anyone has met it yet) combine into its score.

A conditional-logit ranker over every interaction with a cold-validation item, each ranked among the
cold-validation items at its own time (`components.evaluate.every_event_cold`: the items' whole early life, about
twice the targets of one per user), with non-negative weights and an L2 penalty chosen by 5-fold cross-validation
over users (HR@10, then NDCG@10), never on the report's items. The fit is served as
`cosine + sum_t a_t * log1p(n_t) + v * log1p(n / days since first met) + b * [nobody has met it]`:
`components.bundle_ops.PriorPart` with the windows' weights a_t, the velocity's weight v (n over all history, the
days floored at one) and the never-seen bonus b. The same folds score the simpler form, one window and one weight
from a grid (`cosine + w * log1p(n)`); it serves instead when its cross-validated HR@10 (then NDCG@10) is at least
the ranker's.
"""

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from components.bundle_ops import interactions_per_day
from components.evaluate import every_event_cold
from components.evaluation_types import EvalData
from components.metrics import FixedScores, per_user_metrics, rank_targets
from components.model import ItemEventCounter
from components.popularity_prior import (
    EVAL_K,
    POPULARITY_WINDOWS,
    PRIOR_CELLS,
    in_training_recommender,
    prior_grid,
)
from components.recommender import Recommender
from components.served_mix import mix_curve, served_mix
from components.train_data import TrainData

log = logging.getLogger(__name__)
NEW_ITEM_WINDOWS = POPULARITY_WINDOWS  # all history first, then the feature store's rolling windows (days)
PENALTIES = (0.0, 0.001, 0.01, 0.1)  # L2 on the standardized weights, chosen by cross-validation
FOLDS = 5
GRID_WEIGHTS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)  # the simpler form: w on one window
HR, NDCG = f"hr@{EVAL_K}", f"ndcg@{EVAL_K}"
OFFSETS = (-3.0, -2.0, -1.5, -1.25, -1.0, -0.875, -0.75, -0.625, -0.5, -0.375, -0.25, -0.125, 0.0, 0.25, 0.5, 1.0)


class NewItemPrior(NamedTuple):
    """A fitted new-item prior: [[window days or None, weight], ...], the velocity's weight, the never-seen bonus
    and the cross-validation record."""

    windows: list[list]
    velocity: float
    never_seen: float
    record: list[dict]

    @property
    def weight(self) -> float:
        """w as served (`components.bundle_ops.PriorPart.weight`): the windows' and the velocity's weights summed."""
        return float(sum(w for _, w in self.windows) + self.velocity)


OFF = NewItemPrior([[None, 0.0]], 0.0, 0.0, [])


def new_item_features(cosine: np.ndarray, counts: list[np.ndarray], ages: np.ndarray) -> np.ndarray:
    """float32 [users, items, 3 + windows]: the cosine, log1p of the counts in each window (NEW_ITEM_WINDOWS order,
    the all-history one first), log1p of the velocity (all-history count per day since first met: `ages`) and the
    never-seen flag."""
    never_seen = (counts[0] == 0).astype(np.float32)
    velocity = np.log1p(interactions_per_day(counts[0], ages))
    return np.stack([cosine, *[np.log1p(c) for c in counts], velocity, never_seen], axis=-1).astype(np.float32)


def fit_conditional_logit(features: np.ndarray, excluded: np.ndarray, targets: np.ndarray,
                          penalty: float) -> np.ndarray:
    """Non-negative weights [features] on the raw features maximizing each target's softmax likelihood among its
    candidates (excluded ones left out), with `penalty` * |w|^2 on the standardized weights."""
    x = torch.from_numpy(features)
    flat = x[~torch.from_numpy(excluded)]
    mean, std = flat.mean(0), flat.std(0) + 1e-6
    z = (x - mean) / std
    mask, y = torch.from_numpy(excluded), torch.from_numpy(targets)
    raw = torch.zeros(x.shape[-1], requires_grad=True)
    optimizer = torch.optim.LBFGS([raw], max_iter=200, line_search_fn="strong_wolfe")

    def weights() -> torch.Tensor:
        return torch.nn.functional.softplus(5 * raw) / 5  # >= 0: more interactions never count against an item

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy((z @ weights()).masked_fill(mask, -1e9), y)
        loss = loss + penalty * (weights() ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return (weights() / std).detach().numpy().astype(np.float64)


def _metrics(scores: np.ndarray, task: EvalData, rows: np.ndarray) -> dict[str, np.ndarray]:
    users = task.cold_users.iloc[rows].assign(_row=np.arange(len(rows)))
    ranks, _ = rank_targets(FixedScores(scores), users, [task.cold_histories[i] for i in rows], task.cold_targets[rows],
                            task.cold_items, EVAL_K, exclude=[task.cold_exclude[i] for i in rows])
    return per_user_metrics(ranks, [EVAL_K])


def served_form(weights: np.ndarray) -> tuple[list[list], float, float]:
    """The ranker's weights on `new_item_features` as served: ([[window, a_t], ...], v, b) of cosine + sum_t a_t *
    log1p(n_t) + v * log1p(velocity) + b * [never met], the cosine's weight divided out (the same order of items)."""
    scale = max(float(weights[0]), 1e-9)
    windows = [[days, float(a / scale)] for days, a in zip(NEW_ITEM_WINDOWS, weights[1:-2], strict=True)]
    return windows, float(weights[-2] / scale), float(weights[-1] / scale)


def best_grid_setting(features: np.ndarray, task: EvalData, rows: np.ndarray) -> tuple[int, float]:
    """(window position, w) of cosine + w * log1p(n_window) that ranks these targets best: HR@10, then NDCG@10,
    then the smaller w."""
    best, best_key = (0, 0.0), None
    for window, weight in prior_grid(GRID_WEIGHTS):
        position = NEW_ITEM_WINDOWS.index(window)
        m = _metrics(features[..., 0] + weight * features[..., 1 + position], task, rows)
        key = (m[HR].mean(), m[NDCG].mean(), -weight)
        if best_key is None or key > best_key:
            best, best_key = (position, weight), key
    return best


@torch.no_grad()
def _cosine(model: Any, data: TrainData, task: EvalData, device: torch.device, rows: np.ndarray) -> np.ndarray:
    users = task.cold_users.iloc[rows].assign(_row=np.arange(len(rows)))
    return in_training_recommender(model, data, device).score(users, [task.cold_histories[i] for i in rows],
                                                              task.cold_items)


def fit_new_item_prior(model: Any, data: TrainData, device: torch.device, seed: int = 0) -> NewItemPrior:
    """The new-item prior (its windows' weights, the velocity's, the never-seen bonus, the cross-validation record),
    fitted on every cold-validation interaction (a seeded sample of them when targets x items would pass
    PRIOR_CELLS): the ranker, or one window and weight when that cross-validates at least as well. Without
    cold-validation targets the prior is off."""
    task = every_event_cold(data.validation, data.users, None, seed)
    if not len(task.cold_targets):
        log.info("no cold-validation targets (evaluate.cold_validation_items=0): new-item popularity prior off")
        return OFF
    rows = np.arange(len(task.cold_targets))
    limit = max(1, PRIOR_CELLS // max(len(task.cold_items), 1) // (len(NEW_ITEM_WINDOWS) + 3))
    if len(rows) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False))
    users = task.cold_users.iloc[rows]
    counter = ItemEventCounter(task.cold_interactions, task.cold_items)
    features = new_item_features(_cosine(model, data, task, device, rows),
                                 [counter.counts(users, days) for days in NEW_ITEM_WINDOWS], counter.ages(users))
    column = {int(item): c for c, item in enumerate(task.cold_items)}
    targets = np.array([column[int(t)] for t in task.cold_targets[rows]], dtype=np.int64)
    excluded = np.zeros(features.shape[:2], dtype=bool)
    for r, i in enumerate(rows):
        cols = [column[int(item)] for item in task.cold_exclude[i] if int(item) in column]
        excluded[r, cols] = True
    user_codes, distinct = pd.factorize(users["user_id"])  # a user's targets stay in one fold
    folds = np.random.default_rng(seed).integers(0, FOLDS, len(distinct))[user_codes]
    splits = [(folds != fold, folds == fold) for fold in range(FOLDS)
              if (folds == fold).any() and (folds != fold).any()]

    def cross_validated(score_fold: Callable[[np.ndarray, np.ndarray], dict]) -> dict[str, float]:
        held_out = [score_fold(train, test) for train, test in splits]
        return {**{f"cold_val_cv_{k}": float(np.concatenate([m[k] for m in held_out]).mean()) for k in (HR, NDCG)},
                "targets": int(len(rows)), "users": int(len(distinct))}

    def grid_fold(train: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
        position, weight = best_grid_setting(features[train], task, rows[train])
        return _metrics(features[test][..., 0] + weight * features[test][..., 1 + position], task, rows[test])

    def ranker_fold(penalty: float) -> Callable[[np.ndarray, np.ndarray], dict]:
        def score(train: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
            w = fit_conditional_logit(features[train], excluded[train], targets[train], penalty)
            return _metrics(features[test] @ w, task, rows[test])
        return score

    record = [{"form": "ranker", "penalty": penalty, **cross_validated(ranker_fold(penalty))} for penalty in PENALTIES]
    grid = {"form": "grid", **cross_validated(grid_fold)}
    best = max(record, key=lambda r: (r[f"cold_val_cv_{HR}"], r[f"cold_val_cv_{NDCG}"], r["penalty"]))
    record.append(grid)
    if (grid[f"cold_val_cv_{HR}"], grid[f"cold_val_cv_{NDCG}"]) >= (best[f"cold_val_cv_{HR}"],
                                                                      best[f"cold_val_cv_{NDCG}"]):
        position, weight = best_grid_setting(features, task, rows)
        grid.update(weight=weight, window_days=NEW_ITEM_WINDOWS[position])
        log.info("new-item prior: one window and weight (w %.3g, window %s days; %d-fold CV HR@10 %.4f) ranks the %d "
                 "cold-validation interactions at least as well as the fitted ranker (%.4f)", weight,
                 NEW_ITEM_WINDOWS[position], FOLDS, grid[f"cold_val_cv_{HR}"], len(rows), best[f"cold_val_cv_{HR}"])
        return NewItemPrior([[NEW_ITEM_WINDOWS[position] if weight else None, weight]], 0.0, 0.0, record)
    w = fit_conditional_logit(features, excluded, targets, best["penalty"])
    windows, velocity, never_seen = served_form(w)
    fitted = _metrics(features @ w, task, rows)
    plain = _metrics(features[..., 0], task, rows)
    log.info("new-item prior fitted on %d cold-validation interactions (penalty %g by %d-fold CV HR@10 %.4f; one "
             "window and weight: %.4f): windows %s, velocity %.3g, never-seen bonus %.3g; HR@10 %.4f (cosine alone "
             "%.4f)", len(rows), best["penalty"], FOLDS, best[f"cold_val_cv_{HR}"], grid[f"cold_val_cv_{HR}"], windows,
             velocity, never_seen, fitted[HR].mean(), plain[HR].mean())
    return NewItemPrior(windows, velocity, never_seen, record)


def fit_new_item_offset(recommender: Recommender, validation: EvalData, users: pd.DataFrame,
                        seed: int) -> tuple[float, list[dict[str, Any]]]:
    """(c, the curve): the offset of every new item against the trained ones (`components.served_mix`), the one of
    OFFSETS with the best expected HR@10 on the validation stage's served mix (then NDCG@10, then the larger c: new
    items shown where it costs nothing); (0, []) without a mix. `recommender` scores as served, its offset 0."""
    mix = served_mix(validation, every_event_cold(validation, users, None, seed))
    if mix is None:
        log.info("no cold-validation interactions with validation targets after them: new-item offset 0")
        return 0.0, []
    curve: list[dict[str, Any]] = mix_curve(recommender, mix, list(OFFSETS))
    best = max(curve, key=lambda c: (c[f"expected_{HR}"], c[f"expected_{NDCG}"], c["offset"]))
    unshifted = next(c for c in curve if c["offset"] == 0.0)
    log.info("new-item offset %g chosen on the validation mix (%d warm targets, %d new-item interactions, %.1f%% of "
             "the period's interactions on new items): expected HR@10 %.4f (offset 0: %.4f), new items %.0f%% of a "
             "warm top 10 (offset 0: %.0f%%)", best["offset"], len(mix.warm.targets), len(mix.new.targets),
             100 * mix.new_share, best[f"expected_{HR}"], unshifted[f"expected_{HR}"], 100 * best["new_in_warm_top"],
             100 * unshifted["new_in_warm_top"])
    for row in curve:
        row["targets"] = {"warm": int(len(mix.warm.targets)), "new": int(len(mix.new.targets))}
    return float(best["offset"]), curve
