"""The new-item prior, fitted on the cold-validation items: how a new item's cosine and what the log knows of it at
the request (its interactions by other users in the feature store's windows, and whether anyone has met it yet)
combine into its score.

A conditional-logit ranker over each cold-validation target's candidates (the cold-validation items), with
non-negative weights and an L2 penalty chosen by 5-fold cross-validation on those targets (HR@10, then NDCG@10),
never on the report's items. The fit is served as `cosine + sum_t a_t * log1p(n_t) + b * [nobody has met it]`:
`components.bundle_ops.PriorPart` with the windows' weights a_t and the never-seen bonus b.
"""

import logging
from typing import Any

import numpy as np
import torch

from components.evaluation_types import EvalData
from components.metrics import per_user_metrics, rank_targets
from components.model import ItemEventCounter
from components.popularity_prior import EVAL_K, PRIOR_CELLS, _Fixed, in_training_recommender
from components.train_data import TrainData

log = logging.getLogger(__name__)
NEW_ITEM_WINDOWS = (None, 30.0, 7.0)  # days (None = all history): the feature store's rolling windows
PENALTIES = (0.0, 0.001, 0.01, 0.1)  # L2 on the standardized weights, chosen by cross-validation
FOLDS = 5
OFF: tuple[list[list], float, list[dict]] = ([[None, 0.0]], 0.0, [])


def new_item_features(cosine: np.ndarray, counts: list[np.ndarray]) -> np.ndarray:
    """float32 [users, items, 2 + windows]: the cosine, log1p of the counts in each window (NEW_ITEM_WINDOWS order,
    the all-history one first) and the never-seen flag."""
    never_seen = (counts[0] == 0).astype(np.float32)
    return np.stack([cosine, *[np.log1p(c) for c in counts], never_seen], axis=-1).astype(np.float32)


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
    ranks, _ = rank_targets(_Fixed(scores), users, [task.cold_histories[i] for i in rows], task.cold_targets[rows],
                            task.cold_items, EVAL_K, exclude=[task.cold_exclude[i] for i in rows])
    return per_user_metrics(ranks, [EVAL_K])


@torch.no_grad()
def _cosine(model: Any, data: TrainData, device: torch.device, rows: np.ndarray) -> np.ndarray:
    task = data.validation
    users = task.cold_users.iloc[rows].assign(_row=np.arange(len(rows)))
    return in_training_recommender(model, data, device).score(users, [task.cold_histories[i] for i in rows],
                                                              task.cold_items)


def fit_new_item_prior(model: Any, data: TrainData, device: torch.device,
                       seed: int = 0) -> tuple[list[list], float, list[dict]]:
    """([[window days or None, weight], ...], never-seen bonus, the cross-validation record) of the new-item prior,
    fitted on the cold-validation targets (a seeded sample of them when users x items would pass PRIOR_CELLS).
    Without cold-validation targets the prior is off."""
    task = data.validation
    if not len(task.cold_targets):
        log.info("no cold-validation targets (evaluate.cold_validation_items=0): new-item popularity prior off")
        return OFF
    rows = np.arange(len(task.cold_targets))
    limit = max(1, PRIOR_CELLS // max(len(task.cold_items), 1) // (len(NEW_ITEM_WINDOWS) + 2))
    if len(rows) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False))
    users = task.cold_users.iloc[rows]
    counter = ItemEventCounter(task.cold_interactions, task.cold_items)
    features = new_item_features(_cosine(model, data, device, rows),
                                 [counter.counts(users, days) for days in NEW_ITEM_WINDOWS])
    column = {int(item): c for c, item in enumerate(task.cold_items)}
    targets = np.array([column[int(t)] for t in task.cold_targets[rows]], dtype=np.int64)
    excluded = np.zeros(features.shape[:2], dtype=bool)
    for r, i in enumerate(rows):
        cols = [column[int(item)] for item in task.cold_exclude[i] if int(item) in column]
        excluded[r, cols] = True
    folds = np.random.default_rng(seed).integers(0, FOLDS, len(rows))
    record = []
    for penalty in PENALTIES:
        held_out = {}
        for fold in range(FOLDS):
            train, test = folds != fold, folds == fold
            if not train.any() or not test.any():
                continue
            w = fit_conditional_logit(features[train], excluded[train], targets[train], penalty)
            held_out[fold] = _metrics(features[test] @ w, task, rows[test])
        record.append({"penalty": penalty, **{f"cold_val_cv_{k}": float(np.concatenate(
            [m[k] for m in held_out.values()]).mean()) for k in (f"hr@{EVAL_K}", f"ndcg@{EVAL_K}")}})
    best = max(record, key=lambda r: (r[f"cold_val_cv_hr@{EVAL_K}"], r[f"cold_val_cv_ndcg@{EVAL_K}"], r["penalty"]))
    w = fit_conditional_logit(features, excluded, targets, best["penalty"])
    scale = max(w[0], 1e-9)  # served as cosine + ...: the cosine's weight divided out
    windows = [[days, float(a / scale)] for days, a in zip(NEW_ITEM_WINDOWS, w[1:-1], strict=True)]
    never_seen = float(w[-1] / scale)
    fitted = _metrics(features @ w, task, rows)
    plain = _metrics(features[..., 0], task, rows)
    log.info("new-item prior fitted on %d cold-validation targets (penalty %g by %d-fold CV HR@10 %.4f): windows %s, "
             "never-seen bonus %.3g; HR@10 %.4f (cosine alone %.4f)", len(rows), best["penalty"], FOLDS,
             best[f"cold_val_cv_hr@{EVAL_K}"], windows, never_seen, fitted[f"hr@{EVAL_K}"].mean(),
             plain[f"hr@{EVAL_K}"].mean())
    return windows, never_seen, record
