"""What an evaluation works on and produces: the ranking tasks of one split stage, one recommender's result, the
whole evaluation. Shared by the evaluator (`components.evaluate`), its report (`components.evaluation_report`),
training's early stopping and the compression checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from components.errors import RecsysError
from components.metrics import Estimate


class EvaluationError(RecsysError, ValueError):
    """The evaluation cannot run as configured; the message says what is missing."""


@dataclass
class ModelResult:
    """One recommender on one task (main ranking or cold start)."""

    key: str  # unique in the report: candidate, champion, or the baseline's name
    name: str  # the recommender's own name
    role: str
    summary: dict[str, Estimate]
    coverage: dict[str, float]
    per_user: dict[str, np.ndarray] = field(repr=False)
    ranks: np.ndarray = field(repr=False)  # expected rank per user
    groups: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    params: dict[str, Any] = field(default_factory=dict)
    clusters: np.ndarray | None = field(repr=False, default=None)  # whose target each row is (None: one per user)

    def value(self, metric: str) -> float:
        if metric in self.summary:
            return self.summary[metric].value
        if metric in self.coverage:
            return self.coverage[metric]
        raise EvaluationError(f"metric {metric!r} not computed; have {sorted(self.summary) + sorted(self.coverage)}")


@dataclass
class EvalData:
    """The two ranking tasks of one split stage (validation or test), and the split they come from.

    Main ranking: each user's target against the warm catalogue, the items the user saw before excluded.
    Cold start: each user's last held-out-item interaction of the stage ranked among that stage's held-out items
    (`every_event_cold`: each of them).
    """

    split: Any
    items: pd.DataFrame
    catalogue: np.ndarray
    users: pd.DataFrame  # the stage's users in order, with profile columns and `as_of` (the target's timestamp)
    histories: list[np.ndarray]
    targets: np.ndarray
    cold_users: pd.DataFrame  # cold-task users with profile columns and `as_of` (the target's timestamp)
    cold_histories: list[np.ndarray]
    cold_exclude: list[np.ndarray]
    cold_targets: np.ndarray
    cold_items: np.ndarray  # the cold task's candidates
    cold_interactions: pd.DataFrame  # every interaction on those items (point-in-time popularity)
    stage: str = "test"
    item_events: pd.DataFrame | None = None  # every interaction of the split: point-in-time popularity of any item
    users_total: int | None = None  # main-task users before sampling (None: not sampled)
    cold_users_total: int | None = None  # cold-task users before sampling (None: not sampled)


@dataclass
class Evaluation:
    results: list[ModelResult]
    cold: list[ModelResult]
    decision: dict[str, Any]
    info: dict[str, Any]
    profile_only: list[ModelResult] = field(default_factory=list)  # cold-start users ranked from their profile

    def result(self, key: str) -> ModelResult:
        for r in self.results:
            if r.key == key:
                return r
        raise EvaluationError(f"no result named {key!r}")
