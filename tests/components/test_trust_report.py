"""The evaluation report's trustworthy-ranking section over both data set shapes: exposure, the diversity curve
(its default point is today's ranking) and per-group NDCG@10 with and without the fairness mitigation."""

import numpy as np
import pandas as pd
import pytest

from components.evaluate import eval_data, evaluate_main, prepare
from components.trust_report import STRENGTHS, markdown, trust_analysis
from tests.components.trust_world import SHAPES, canonical


class HistoryMean:
    """Scores items by the dot product of their embedding with the mean embedding of the user's history."""

    name = "history-mean"

    def __init__(self, item_ids: np.ndarray, seed: int = 0) -> None:
        self.item_ids = np.sort(np.asarray(item_ids, dtype=np.int64))
        self.item_embeddings = np.random.default_rng(seed).normal(size=(len(self.item_ids), 8)).astype(np.float32)
        self.row = pd.Series(np.arange(len(self.item_ids)), index=self.item_ids)

    def score(self, users: pd.DataFrame, histories: list[np.ndarray], catalogue: np.ndarray) -> np.ndarray:
        users_vec = np.stack([self.item_embeddings[self.row.reindex(h).dropna().astype(int)].mean(axis=0)
                              if len(h) else np.zeros(8, np.float32) for h in histories])
        return (users_vec @ self.item_embeddings[self.row[catalogue].to_numpy()].T).astype(np.float32)


def _fairness_world(shape, tmp_path):
    """(config with the fairness mitigation on, tables, test data, validation data, a HistoryMean recommender)."""
    config, tables = canonical(shape, tmp_path)
    config = config.model_copy(update={"trust": config.trust.model_copy(update={
        "fairness": config.trust.fairness.model_copy(update={"enabled": True})})})
    data = prepare(config, tables)
    validation = eval_data(data.split, tables["items"], tables["users"], "validation")
    return config, tables, data, validation, HistoryMean(tables["items"]["item_id"].to_numpy())


@pytest.mark.parametrize("shape", SHAPES)
def test_trust_section(shape, tmp_path):
    config, tables, data, validation, rec = _fairness_world(shape, tmp_path)
    out = trust_analysis(rec, data, validation, tables["users"], config,
                         lambda r: evaluate_main(r, r.name, "candidate", data, config), tmp_path / "plots")
    curve = out["diversity_curve"]
    assert [c["strength"] for c in curve] == list(STRENGTHS)
    assert curve[-1]["intra_list_diversity"] > curve[0]["intra_list_diversity"]
    assert out["default_ranking_unchanged"] is True
    assert 0.0 <= out["exposure"]["long_tail_share"] <= 1.0 and 0.0 <= out["exposure"]["gini"] <= 1.0
    fair = out["fairness"]
    assert fair["attribute"] in config.dataset.fairness_groups
    assert fair["groups"] and {"value_without", "value_with", "low_with", "high_with"} <= set(fair["groups"][0])
    if not fair["weights"]:  # validation found nothing to gain: the ranking stays as it was
        assert fair["overall_with"]["value"] == pytest.approx(fair["overall_without"]["value"])
    assert (tmp_path / "plots" / "diversity_curve.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "fairness_groups.png").stat().st_size > 1000
    text = markdown(out)
    assert "| MMR strength |" in text and "Fairness mitigation" in text


@pytest.mark.parametrize("shape", SHAPES)
def test_trust_section_over_the_users_pools_equals_the_whole_catalogues(shape, tmp_path, monkeypatch, caplog):
    """A catalogue too large to score every user at once: ranking the union of the users' MMR pools, a few users
    at a time, gives the same exposure, diversity curve and mitigated exposure as ranking the whole catalogue."""
    from components import trust_report

    config, tables, data, validation, rec = _fairness_world(shape, tmp_path)

    def analysis():
        return trust_analysis(rec, data, validation, tables["users"], config,
                              lambda r: evaluate_main(r, r.name, "candidate", data, config))

    whole = analysis()
    cells = 3 * len(data.catalogue)  # three users scored at a time
    assert len(data.users) * len(data.catalogue) > cells
    monkeypatch.setattr(trust_report, "TRUST_CELLS", cells)
    with caplog.at_level("INFO", logger="components.trust_report"):
        pooled = analysis()
    assert "trust analysis over the" in caplog.text  # the pooled path ran (these catalogues' pools cover them)
    shortlist = trust_report.ranking_shortlist(rec, data)
    assert set(shortlist) <= set(data.catalogue) and np.all(np.diff(shortlist) > 0)
    assert pooled["exposure"] == whole["exposure"]
    for got, want in zip(pooled["diversity_curve"], whole["diversity_curve"], strict=True):
        assert got == pytest.approx(want)
    assert pooled["default_ranking_unchanged"] is True
    assert pooled["fairness"]["exposure_with"] == whole["fairness"]["exposure_with"]
