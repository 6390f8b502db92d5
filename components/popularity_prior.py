"""The model being trained, scored exactly as the evaluate step scores a saved model; and its popularity priors
(cosine + w * log(1 + the item's recent interactions by other users)) for the trained items, chosen on validation
targets (the new items' prior is fitted in `components.new_item_prior`)."""

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.config import Config
from components.evaluate import evaluate_cold, evaluate_main
from components.evaluation_types import EvalData
from components.item_events import epoch_us
from components.metrics import FixedScores, per_user_metrics, rank_targets
from components.model import ItemEventCounter, UserEncoder
from components.recommender import Recommender, TowerRecommender
from components.train_data import TrainData

log = logging.getLogger(__name__)
EVAL_K = 10


def ranking_metrics(rec: Recommender, stage: EvalData, config: Config, cold: bool = False) -> dict[str, float]:
    """NDCG@10 and HR@10 of `rec` on a stage's main ranking (the warm catalogue, each user's history excluded) or
    its cold-start ranking, computed by the evaluate step's own `evaluate_main` / `evaluate_cold`.
    Without targets: zeros for the main ranking, nothing for the cold one."""
    names = (f"ndcg@{EVAL_K}", f"hr@{EVAL_K}")
    if cold:
        if not len(stage.cold_targets):
            return {}
        result = evaluate_cold(rec, rec.name, "candidate", stage, config, ks=[EVAL_K], intervals=False)
    else:
        if not len(stage.targets):
            return dict.fromkeys(names, 0.0)
        result = evaluate_main(rec, rec.name, "candidate", stage, config, groups=False, ks=[EVAL_K], intervals=False)
    return {name: result.value(name) for name in names}


def in_training_recommender(model: Any, data: TrainData, device: torch.device) -> TowerRecommender:
    """The model being trained as a Recommender, scored like the saved artifact (eval mode, current weights)."""
    item_emb = model.item_embeddings().float().cpu().numpy()
    encoder = UserEncoder(model, item_emb).to(device).eval()

    @torch.no_grad()
    def tower(history: np.ndarray, profile: np.ndarray) -> np.ndarray:
        return encoder(torch.from_numpy(history).to(device), torch.from_numpy(profile).to(device)).float().cpu().numpy()

    return TowerRecommender("two_tower", tower, data.item_ids, item_emb, data.profile_encoder,
                            model.cfg["max_seq_len"], batch_size=1024)


WARM_POPULARITY_WEIGHTS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15)  # trained items: a nudge to the cosine
POPULARITY_WINDOWS = (None, 30.0, 7.0)  # days (None = all history): the feature store's rolling windows


PRIOR_CELLS = 1 << 26  # users x items of prior scores held at once; larger tasks are ranked in chunks of users
PRIOR_GRID_CELLS = 500_000_000  # users x items the trained items' prior grid ranks (5,000 users up to 10^5 items)


def prior_grid(weights: tuple[float, ...]) -> list[tuple[float | None, float]]:
    """The (window, w) settings a one-window prior is chosen among: w = 0 once (no window), every other w on each
    of POPULARITY_WINDOWS."""
    return [(window, w) for window in POPULARITY_WINDOWS for w in (weights if window is None else weights[1:])]


def choose_popularity_prior(cosine: np.ndarray | Callable[[np.ndarray], np.ndarray], events: pd.DataFrame,
                            users: pd.DataFrame, histories: list[np.ndarray], targets: np.ndarray,
                            catalogue: np.ndarray, exclude: list[np.ndarray] | None, weights: tuple[float, ...],
                            prefix: str) -> tuple[float, float | None, list[dict]]:
    """(w, window days or None, curve): the prior cosine + w * log(1 + n) that ranks `targets` best, n = the
    item's interactions in `events` by other users strictly before each user's `as_of` (within the window).
    Best NDCG@10 wins with the "val" prefix (the trained items' prior), HR@10 with any other; ties go to the
    smaller w.
    `cosine`: the users' scores [users, catalogue], or a function giving the rows of the users at some positions;
    users are taken PRIOR_CELLS scores at a time (the same per-user values: memory stays bounded by the chunk)."""
    first, second = (f"{prefix}_hr@{EVAL_K}", f"{prefix}_ndcg@{EVAL_K}")
    if prefix == "val":
        first, second = second, first
    grid = prior_grid(weights)
    metrics = (f"hr@{EVAL_K}", f"ndcg@{EVAL_K}")
    per_user: dict[tuple, list[dict[str, np.ndarray]]] = {key: [] for key in grid}
    step = max(1, PRIOR_CELLS // max(len(catalogue), 1))
    counter = ItemEventCounter(events, catalogue)
    # chunks in time order: the counter's sweep over the events then runs once in all (the means do not depend on it)
    by_time = np.argsort(epoch_us(users["as_of"]), kind="stable") if "as_of" in users else np.arange(len(users))
    for start in range(0, len(users), step):
        rows = by_time[start : start + step]
        part = users.iloc[rows].assign(_row=np.arange(len(rows)))
        scores = cosine(rows) if callable(cosine) else cosine[rows]
        part_histories = [histories[i] for i in rows]
        part_exclude = None if exclude is None else [exclude[i] for i in rows]
        for window in POPULARITY_WINDOWS:  # one window's counts held at a time
            prior = np.log1p(counter.counts(part, window))
            for w in (w for grid_window, w in grid if grid_window == window):
                ranks, _ = rank_targets(FixedScores(scores + w * prior), part, part_histories, targets[rows], catalogue,
                                        EVAL_K, exclude=part_exclude)
                per_user[(window, w)].append(per_user_metrics(ranks, [EVAL_K]))
    curve = [{"weight": w, "window_days": window,
              **{f"{prefix}_{k}": float(np.concatenate([part[k] for part in per_user[(window, w)]]).mean())
                 for k in metrics}} for window, w in grid]
    best = max(curve, key=lambda c: (c[first], c[second], -c["weight"]))
    window = best["window_days"] if best["weight"] > 0 else None
    return float(best["weight"]), window, curve


@torch.no_grad()
def choose_warm_popularity_weight(model: Any, data: TrainData,
                                  device: torch.device) -> tuple[float, float | None, list[dict]]:
    """Weight w and window of the trained items' popularity prior (cosine + w * log(1 + n), n = the item's
    interactions by other users in the window before the request), chosen on the VALIDATION targets by NDCG@10.

    The loss's logQ correction takes popularity out of the cosine; this puts back what the validation targets
    show, at the request's own time. Returns (0, None, []) without validation targets.
    """
    task = data.validation
    if not len(task.targets) or task.item_events is None:
        return 0.0, None, []
    recommender = in_training_recommender(model, data, device)
    keep = np.arange(len(task.users))
    limit = max(1, PRIOR_GRID_CELLS // max(len(task.catalogue), 1))
    if len(keep) > limit:  # a large catalogue: the grid's 24 full rankings on a seeded sample of the users
        keep = np.sort(np.random.default_rng(0).choice(len(keep), limit, replace=False))
        log.info("popularity prior grid on %d of %d validation users (%d items)", limit, len(task.users),
                 len(task.catalogue))
    users, histories, targets = task.users.iloc[keep], [task.histories[i] for i in keep], task.targets[keep]

    def cosine(rows: np.ndarray) -> np.ndarray:  # a chunk of users at a time: 5,000 x 10^5 items would be 2 GB
        return recommender.score(users.iloc[rows], [histories[i] for i in rows], task.catalogue)

    weight, window, curve = choose_popularity_prior(cosine, task.item_events, users, histories, targets,
                                                    task.catalogue, None, WARM_POPULARITY_WEIGHTS, "val")
    log.info("popularity weight %.3g, window %s days chosen on %d validation targets (NDCG@10 %.4f; w=0: %.4f)",
             weight, window, len(targets), max(c[f"val_ndcg@{EVAL_K}"] for c in curve),
             curve[0][f"val_ndcg@{EVAL_K}"])
    return weight, window, curve
