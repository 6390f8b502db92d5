"""The fairness mitigation moves the worst group, over both data set shapes, on a constructed case: the smallest
group of a fairness attribute consumes its own corner of the catalogue, which a recommender fitted to everyone
(overall popularity) misses."""

import numpy as np
import pandas as pd
import pytest

from components.config import ConfigError, load_config
from components.dataset import group_labels
from components.evaluate import eval_data, evaluate_main, prepare
from components.fairness_mitigation import MitigationError, choose
from tests.components.trust_world import SHAPES, canonical


class Popularity:
    """Training popularity for everyone: what most users like."""

    name = "popularity"

    def __init__(self, train: pd.DataFrame) -> None:
        self.counts = train["item_id"].value_counts()

    def score(self, users: pd.DataFrame, histories: list[np.ndarray], catalogue: np.ndarray) -> np.ndarray:
        counts = self.counts.reindex(catalogue, fill_value=0).to_numpy(dtype=np.float32)
        return np.tile(np.log1p(counts), (len(users), 1))


def group_taste(config, tables: dict[str, pd.DataFrame], seed: int = 0):
    """Rewrite the interactions: the smallest group of the first fairness attribute draws from a fifth of the
    catalogue, everyone else from the rest, both skewed towards a few favourites."""
    rng = np.random.default_rng(seed)
    attr = config.dataset.fairness_groups[0]
    users = tables["users"].copy()
    labels = pd.Series(group_labels(users[attr], config.dataset.user_attributes[attr]), index=users.index)
    common = labels.value_counts()
    majority_value = users.loc[labels == common.index[0], attr].iloc[0]
    minority_value = users.loc[labels == common.index[-1], attr].iloc[0]
    small = rng.random(len(users)) < 0.2  # a fifth of the users form the minority
    users[attr] = np.where(small, minority_value, majority_value)
    users[attr] = users[attr].astype(tables["users"][attr].dtype)
    labels = pd.Series(group_labels(users[attr], config.dataset.user_attributes[attr]), index=users["user_id"])
    minority = labels[small].iloc[0]
    items = np.sort(tables["items"]["item_id"].to_numpy())
    niche, main = items[: len(items) // 5], items[len(items) // 5:]
    start = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for user, group in labels.items():
        pool = niche if group == minority else main
        p = 1.0 / np.arange(1, len(pool) + 1)
        chosen = rng.choice(pool, size=min(12, len(pool)), replace=False, p=p / p.sum())
        for j, item in enumerate(chosen):
            rows.append((user, item, 4.0, start + pd.Timedelta(hours=int(user) * 50 + j)))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "event_timestamp"])
    inter = inter.astype({"user_id": "int64", "item_id": "int64", "rating": "float32"})
    inter["event_timestamp"] = inter["event_timestamp"].astype(tables["interactions"]["event_timestamp"].dtype)
    if "event_type" in tables["interactions"]:
        fb = config.dataset.feedback
        top = max(fb.weights, key=fb.weights.get)
        inter["rating"], inter["event_type"] = np.float32(fb.weights[top]), top
    return {**tables, "users": users, "interactions": inter}, attr, minority


@pytest.mark.parametrize("shape", SHAPES)
def test_mitigation_raises_the_worst_group(shape, tmp_path):
    config, tables = canonical(shape, tmp_path, users=300)
    config = config.model_copy(update={"trust": config.trust.model_copy(update={"fairness": config.trust.fairness
                                                                                 .model_copy(update={
                                                                                     "enabled": True,
                                                                                     "max_overall_loss": 0.5})})})
    tables, attr, minority = group_taste(config, tables)
    data = prepare(config, tables)
    validation = eval_data(data.split, tables["items"], tables["users"], "validation")
    base = Popularity(data.split.train)
    mitigated, choice = choose(base, validation, data.split.train, tables["users"], config)
    assert choice.attribute == attr and choice.weights.get(minority, 0) > 0
    assert choice.validation["worst_group_after"] > choice.validation["worst_group_before"]
    before = evaluate_main(base, "before", "candidate", data, config).groups
    after = evaluate_main(mitigated, "after", "candidate", data, config).groups

    def group_value(groups: pd.DataFrame) -> float:
        row = groups[(groups["attribute"] == attr) & (groups["group"] == minority) & (groups["metric"] == "ndcg@10")]
        return float(row["value"].iloc[0])

    assert group_value(after) > group_value(before) + 0.05


def test_unknown_attribute_is_refused(tmp_path):
    config, tables = canonical("movielens", tmp_path)
    config = config.model_copy(update={"trust": config.trust.model_copy(update={"fairness": config.trust.fairness
                                                                                 .model_copy(update={
                                                                                     "attribute": "zip_code"})})})
    data = prepare(config, tables)
    validation = eval_data(data.split, tables["items"], tables["users"], "validation")
    with pytest.raises(MitigationError, match="trust.fairness.attribute"):
        choose(Popularity(data.split.train), validation, data.split.train, tables["users"], config)


def test_config_refuses_negative_weights():
    with pytest.raises(ConfigError, match="weights"):
        load_config(overrides=["trust.fairness.weights=[0.0, -1.0]"])
