"""The request engine's test world: a Feast store (SQLite, in process), a model repository with versions 1 and 2
(real serving bundles, ranked in process by the ensemble reference) and a SQLite request log, under one folder."""

from pathlib import Path

import numpy as np

from benchmarks.serving_stack import NOW, serving_config, synthetic_tables
from components.config import Config
from components.ensemble import EnsembleReference
from components.features import build_feature_store, materialize
from serving import triton_repo as tr
from serving.engine import Engine, ReferenceScorer
from serving.triton_client import encode_profile

LAST_N = 8  # features.last_n_items of the store


class World:
    """Feature store, model repository (versions 1 and 2) and request log under one folder."""

    def __init__(self, root: Path, bundles: dict[str, Path]) -> None:
        self.config: Config = serving_config(root)
        self.config.features.data_dir = root / "features"
        self.config.features.last_n_items = LAST_N
        self.config.data.id_maps_dir = root / "id_maps"  # none yet: integer ids are their own keys
        self.config.serving.request_log = root / "request_log.sqlite"
        self.tables = synthetic_tables(np.load(bundles["a"] / "item_ids.npy"))
        materialize(build_feature_store(self.config, self.tables), end=NOW)
        self.bundles = {tr.write_version(bundles[name], self.config.serving.model_repository): bundles[name]
                        for name in ("a", "b")}
        self.references = {v: EnsembleReference(path) for v, path in self.bundles.items()}

    def engine(self, versions: tuple[int, ...] = (1,), config: Config | None = None) -> tuple[Engine, ReferenceScorer]:
        scorer = ReferenceScorer({v: self.bundles[v] for v in versions})
        return Engine(config or self.config, new_scorer=lambda: scorer, watch=False), scorer

    def user_state(self, user_id: int) -> tuple[list[int], dict]:
        """The user's last LAST_N items (oldest -> newest) and profile, from the canonical tables."""
        inter = self.tables["interactions"]
        mine = inter[inter.user_id == user_id].sort_values(["event_timestamp", "item_id"], kind="stable")
        user = self.tables["users"].set_index("user_id").loc[user_id]
        return mine.item_id.tolist()[-LAST_N:], {"age": int(user.age), "gender": user.gender,
                                                  "occupation": user.occupation}

    def expected(self, version: int, history: list[int], profile: dict, exclude: list[int], k: int):
        ref = self.references[version]
        return ref.recommend(history, encode_profile(ref.manifest, profile), exclude, k)


def ask(engine: Engine, reveal_history: bool = True, **body):
    """One validated RecommendRequest answered by the engine."""
    return engine.recommend(engine.models.RecommendRequest.model_validate(body), reveal_history=reveal_history)


def ids_and_scores(response) -> tuple[list, list]:
    return [i.item_id for i in response.items], [i.score for i in response.items]


