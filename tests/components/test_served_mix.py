"""The served mix: trained and new items in one list, on the evaluation's planted data set with some users coming
back to the trained items after the new ones appear."""

import numpy as np
import pandas as pd
import pytest

from components.evaluate import every_event_cold, kfp_metrics, prepare, run_evaluation, served_mix_results
from components.new_item_prior import OFFSETS, fit_new_item_offset
from components.schemas import write_tables
from components.served_mix import LEFT_OUT, mix_figures, served_mix
from tests.components.test_evaluate import _config, planted_tables


def mixed_tables() -> dict[str, pd.DataFrame]:
    """The planted tables, and every fourth user meets one more trained item after the new items' first
    interactions: their test targets fall in the held-out period."""
    tables = planted_tables()
    users = np.arange(1, 90, 4)
    late = pd.DataFrame({"user_id": users.astype("int64"), "item_id": (2 + (users % 6) * 8 + 7).astype("int64"),
                         "rating": np.float32(4.0), "event_timestamp": pd.to_datetime(
                             10_000_500 + users, unit="s", utc=True).astype("datetime64[us, UTC]")})
    tables["interactions"] = pd.concat([tables["interactions"], late], ignore_index=True)
    return tables


class NewItemsFirst:
    """Each user's warm test target scores 1, other trained items 0, new items `new_score`: an over-scored new-item
    prior (2.0) puts every new item above the target."""

    name = "new-items-first"

    def __init__(self, targets: dict[int, int], new_items: np.ndarray, new_score: float = 2.0) -> None:
        self.targets, self.new_items, self.new_score = targets, new_items, new_score

    def score(self, users, histories, catalogue):
        catalogue = np.asarray(catalogue)
        out = np.where(np.isin(catalogue, self.new_items), np.float32(self.new_score), np.float32(0.0))
        out = np.tile(out, (len(users), 1)).astype(np.float32)
        for i, u in enumerate(users["user_id"]):
            out[i, catalogue == self.targets.get(int(u), -1)] = 1.0
        return out


def new_items_in_top(mix) -> float:
    """The share of a warm top 10 that new items take when they all score above every trained item: those the
    user has not met yet."""
    return float(np.mean([len(np.setdiff1d(mix.new_items, exclude)) / 10 for exclude in mix.warm.exclude]))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tables = mixed_tables()
    config = _config(tmp_path_factory.mktemp("mix"), "evaluate.cold_start_items=5")  # items 200..204
    return tables, config, prepare(config, tables)


def test_the_mix_ranks_the_held_out_period_in_one_catalogue(world) -> None:
    tables, config, data = world
    mix = served_mix(data, every_event_cold(data, tables["users"], None, config.train.seed))
    cold = data.split.cold_interactions
    since = cold["event_timestamp"].min()
    assert mix.since == since
    late = data.users["as_of"] >= since
    assert 0 < len(mix.warm.targets) == late.sum() < len(data.users)  # only the period's warm targets
    assert set(mix.warm.users["user_id"]) == set(np.arange(1, 90, 4))
    assert len(mix.new.targets) == len(cold)  # every new-item interaction
    np.testing.assert_array_equal(mix.catalogue, np.union1d(data.catalogue, data.cold_items))
    for part in (mix.warm, mix.new):  # each request leaves out the user's earlier items, trained and new
        for user, as_of, history, exclude in zip(part.users["user_id"], part.users["as_of"], part.histories,
                                                 part.exclude, strict=True):
            met = cold[(cold["user_id"] == user) & (cold["event_timestamp"] < as_of)]["item_id"]
            assert set(exclude.tolist()) == set(history.tolist()) | set(met.tolist())
            assert len(history)  # the trained items seen before
    period = data.item_events[data.item_events["event_timestamp"] >= since]
    assert mix.new_share == pytest.approx(period["item_id"].isin(data.cold_items).mean())
    assert 0 < mix.new_share < 1
    # no warm target in the period: no mix
    plain = prepare(config, planted_tables())
    assert served_mix(plain, every_event_cold(plain, tables["users"], None, config.train.seed)) is None


def test_the_offset_moves_new_items_against_trained_ones(world) -> None:
    tables, config, data = world
    mix = served_mix(data, every_event_cold(data, tables["users"], None, config.train.seed))
    scorer = NewItemsFirst(dict(zip(data.users["user_id"], data.targets, strict=True)), data.cold_items)
    first, placed, left_out = mix_figures(scorer, mix, [0.0, -1.5, LEFT_OUT])
    # the 5 new items above the target, which still makes the top 10
    assert first["new_in_warm_top"] == pytest.approx(new_items_in_top(mix)) and first["new_in_warm_top"] > 0.4
    assert first["warm"]["hr@10"].mean() == 1 and first["warm"]["ndcg@10"].mean() < 0.5
    assert placed["warm"]["ndcg@10"].mean() == 1 and placed["new"]["hr@10"].mean() == 1  # 0.5: below, above 0
    assert left_out["new_in_warm_top"] == 0 and left_out["new"]["hr@10"].mean() == 0
    for f in (first, placed, left_out):
        s = mix.new_share
        assert f["expected_hr@10"] == pytest.approx((1 - s) * f["warm"]["hr@10"].mean() + s * f["new"]["hr@10"].mean())
    assert placed["expected_ndcg@10"] > max(first["expected_ndcg@10"], left_out["expected_ndcg@10"])


def test_the_fitted_offset_is_the_best_expected_hit_rate_and_the_largest_of_ties(world) -> None:
    tables, config, data = world
    scorer = NewItemsFirst(dict(zip(data.users["user_id"], data.targets, strict=True)), data.cold_items)
    offset, curve = fit_new_item_offset(scorer, data, tables["users"], config.train.seed)
    assert [row["offset"] for row in curve] == list(OFFSETS)
    # new items between 0 (the other trained items) and 1 (the target): 2 + c in (0, 1), the largest such c wins
    assert offset == max(c for c in OFFSETS if 0 < 2 + c < 1) == -1.25
    best = max(row["expected_hr@10"] for row in curve)
    assert next(r for r in curve if r["offset"] == offset)["expected_hr@10"] == best
    assert next(r for r in curve if r["offset"] == 0.0)["new_in_warm_top"] > 0.4  # most of the 5 new items
    # under-scored new items: raised to just above the other trained items
    low = NewItemsFirst(scorer.targets, data.cold_items, new_score=-0.6)
    assert fit_new_item_offset(low, data, tables["users"], config.train.seed)[0] == 1.0
    assert fit_new_item_offset(scorer, prepare(config, planted_tables()), tables["users"], 0) == (0.0, [])


def test_the_report_rows_use_the_models_own_offset(world) -> None:
    tables, config, data = world
    scorer = NewItemsFirst(dict(zip(data.users["user_id"], data.targets, strict=True)), data.cold_items, 0.5)
    scorer.new_item_offset = -1.0  # its scores already carry it: offset 0 means +1 on them
    result = served_mix_results(scorer, data, tables["users"], config)
    rows = {row["setting"]: row for row in result["rows"]}
    assert [rows[name]["offset"] for name in ("as served", "offset 0", "new items left out")] == [-1.0, 0.0, None]
    assert rows["as served"]["warm_ndcg@10"]["value"] == 1.0  # 0.5 as scored: below the target
    mix = served_mix(data, every_event_cold(data, tables["users"], None, config.train.seed))
    assert rows["offset 0"]["new_in_warm_top"] == pytest.approx(new_items_in_top(mix))  # 1.5: above it
    assert rows["new items left out"]["new_hr@10"]["value"] == 0
    for row in rows.values():
        for name in ("warm_ndcg@10", "warm_hr@10", "new_hr@10"):
            assert row[name]["low"] <= row[name]["value"] <= row[name]["high"]
    assert (result["warm_targets"], result["new_targets"]) == (len(range(1, 90, 4)),
                                                                len(data.split.cold_interactions))


def test_the_report_shows_the_served_mix(world, tmp_path) -> None:
    tables, _, data = world
    config = _config(tmp_path, "evaluate.cold_start_items=5", "evaluate.sasrec.enabled=false",
                     "evaluate.als.enabled=false")
    scorer = NewItemsFirst(dict(zip(data.users["user_id"], data.targets, strict=True)), data.cold_items)
    ev = run_evaluation(config, write_tables(tables, tmp_path / "canonical"), tmp_path / "out", candidate=scorer)
    mix = ev.info["served_mix"]
    assert [row["setting"] for row in mix["rows"]] == ["as served", "offset 0", "new items left out"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Served mix" in md and f"{mix['warm_targets']} test users' targets" in md
    assert f"{mix['new_share']:.1%} of that period's interactions went to the new items" in md
    assert "| new items | offset | warm ndcg@10 |" in md and "| new items left out | - |" in md
    assert "Served mix" in (tmp_path / "out" / "report.html").read_text()
    metrics = kfp_metrics(ev)
    assert metrics["served_mix_as_served_expected_hr@10"] == mix["rows"][0]["expected_hr@10"]
    assert metrics["served_mix_new_items_left_out_new_in_warm_top"] == 0
