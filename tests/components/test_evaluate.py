"""The evaluation step on a small planted data set: report files, gate decisions, cold start, CLI."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from components.baselines import EASE, MostPopular
from components.config import load_config
from components.evaluate import (
    EvaluationError,
    ModelResult,
    NewItemPopularity,
    PointInTimePopularity,
    ablation_dirs,
    eval_data,
    evaluate_main,
    every_event_cold,
    every_event_results,
    gate,
    kfp_metrics,
    prepare,
    profile_only_results,
    read_decision,
    run_evaluation,
    target_spread,
)
from components.metrics import bootstrap, per_user_metrics
from components.schemas import read_tables, write_tables
from components.splits import configured_split
from tests.conftest import kfp_interface


def planted_tables(n_users: int = 90, n_clusters: int = 6, per_cluster: int = 8) -> dict[str, pd.DataFrame]:
    """Users follow one item cluster; items 200..204 are released last (the cold items)."""
    rng = np.random.default_rng(1)
    rows = []
    for u in range(n_users):
        c = u % n_clusters
        seq = [0, 1, *(2 + c * per_cluster + rng.permutation(per_cluster)[:6]).tolist()]
        rows += [(u, item, 1000 * u + t) for t, item in enumerate(seq)]
        if u % 3 == 0:  # new items at the very end; item 200 is the hit among them
            rows.append((u, 200 + (u // 3) % 2 * (u % 5), 10_000_000 + u))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "sec"])
    ts = pd.to_datetime(inter.sec, unit="s", utc=True).astype("datetime64[us, UTC]")
    interactions = pd.DataFrame({"user_id": inter.user_id.astype("int64"), "item_id": inter.item_id.astype("int64"),
                                 "rating": np.float32(4.0), "event_timestamp": ts})
    item_ids = sorted(set(inter.item_id) | {205})
    created = pd.Timestamp("2020-01-01", tz="UTC")
    items = pd.DataFrame({"item_id": np.array(item_ids, dtype="int64"), "title": [f"t{i}" for i in item_ids],
                          "text": [f"item {i}" for i in item_ids], "created_timestamp": created})
    users = pd.DataFrame({"user_id": np.arange(n_users, dtype="int64"), "age": (15 + np.arange(n_users) % 50),
                          "gender": np.where(np.arange(n_users) % 2, "M", "F"), "occupation": "other",
                          "created_timestamp": created})
    items["created_timestamp"] = items["created_timestamp"].astype("datetime64[us, UTC]")
    users["created_timestamp"] = users["created_timestamp"].astype("datetime64[us, UTC]")
    return {"interactions": interactions, "users": users, "items": items}


@pytest.fixture(scope="module")
def canonical(tmp_path_factory):
    return write_tables(planted_tables(), tmp_path_factory.mktemp("canonical"))


# SASRec and ALS small enough for a test (a few seconds on one thread)
SMALL_BASELINES = ["evaluate.sasrec.max_seq_len=8", "evaluate.sasrec.embedding_dim=16", "evaluate.sasrec.blocks=1",
                   "evaluate.sasrec.epochs=15", "evaluate.sasrec.patience=3", "evaluate.sasrec.batch_size=32",
                   "evaluate.sasrec.learning_rate=0.005", "evaluate.als.factors=[8]",
                   "evaluate.als.regularization=[0.1]", "evaluate.als.iterations=[10]", "evaluate.als.alpha=[1.0]"]


def _config(tmp_path, *extra: str):
    return load_config(overrides=[f"paths.artifacts_dir={tmp_path / 'artifacts'}", "evaluate.bootstrap_samples=50",
                                  "evaluate.cold_start_items=6", "evaluate.knn_neighbours=[5,20]",
                                  "evaluate.ease_lambdas=[5,50]", *SMALL_BASELINES, *extra])


class Oracle:
    """Knows each test user's target (an upper bound, to exercise the promote path)."""

    name = "oracle"

    def __init__(self, targets: dict[int, int]) -> None:
        self.targets = targets

    def score(self, users, histories, catalogue):
        out = np.zeros((len(users), len(catalogue)), dtype=np.float32)
        for i, u in enumerate(users["user_id"]):
            out[i, np.asarray(catalogue) == self.targets.get(int(u), -1)] = 1.0
        return out


def test_report_files_and_first_run_gate(canonical, tmp_path) -> None:
    config = _config(tmp_path)
    split = configured_split(read_tables(canonical)["interactions"], config)
    ev = run_evaluation(config, canonical, tmp_path / "out", candidate=EASE(5.0).fit(split.train))
    out = tmp_path / "out"
    for name in ("report.html", "report.md", "metrics.json", "decision.json", "plots/overall.png"):
        assert (out / name).is_file(), name
    md = (out / "report.md").read_text()
    assert "| recommender | model | role |" in md and "NDCG@10" in md and "most-popular" in md
    assert "Cold start" in md and "new-item-popularity" in md
    cold = {r.key: r for r in ev.cold}  # the cold start's paired gain over new-item popularity, in the report
    gain = ev.info["cold_gain"]["candidate_minus_baseline"]
    assert set(gain) == {"hr@10", "ndcg@10", "hr@20", "ndcg@20"} and ev.info["cold_gain"]["users"] == len(
        cold["candidate"].per_user["hr@10"])
    assert gain["hr@10"]["value"] == pytest.approx(cold["candidate"].value("hr@10") -
                                                   cold["new-item-popularity"].value("hr@10"))
    assert gain["hr@10"]["low"] <= gain["hr@10"]["value"] <= gain["hr@10"]["high"]
    assert f"Candidate minus new-item-popularity, paired 95% interval: hr@10 {gain['hr@10']['value']:+.4f}" in md
    every = ev.info["cold_every_event"]  # every new-item interaction, each at its own time
    assert every["targets"] == len(split.cold_interactions) and every["users"] == split.cold_interactions[
        "user_id"].nunique()
    assert every["candidate_minus_baseline"]["hr@10"]["value"] == pytest.approx(
        every["candidate"]["hr@10"]["value"] - every["baseline_value"]["hr@10"]["value"])
    assert (f"Every interaction with the new items, each at its own time ({every['users']} users; "
            f"{every['targets']} targets over {every['spread']['items']} items") in md
    mix = ev.info["served_mix"]  # trained and new items in one list, from the first new item's interaction on
    assert mix["warm_targets"] > 0 and mix["new_targets"] == len(split.cold_interactions) and "## Served mix" in md
    page = (out / "report.html").read_text()
    assert "<table" in page and "data:image/png;base64," in page
    decision = read_decision(out)
    assert set(decision) >= {"promote", "candidate", "champion", "reason"}
    assert decision["champion"]["source"] == "best baseline"
    assert {r.key for r in ev.results} == {"candidate", "most-popular", "item-knn", "ease", "als", "sasrec-ce"}
    assert "sasrec-ce" in md and "| als |" in md
    best = max((r for r in ev.results if r.role == "baseline"), key=lambda r: r.value("ndcg@10"))
    assert decision["champion"]["key"] == best.key == ev.info["champion_key"]
    for r in ev.results + ev.cold:
        for est in r.summary.values():
            assert est.low <= est.value <= est.high
    assert ev.result("ease").value("ndcg@10") > ev.result("most-popular").value("ndcg@10")
    assert set(ev.result("candidate").groups["attribute"]) == {"gender", "age"}  # the declared fairness_groups
    metrics = kfp_metrics(ev)
    assert metrics["ndcg@10"] == ev.result("candidate").value("ndcg@10") and "ease_ndcg@10" in metrics
    assert metrics["cold_every_event_gain_hr@10"] == every["candidate_minus_baseline"]["hr@10"]["value"]
    assert json.loads((out / "metrics.json").read_text())["results"]["ease"]["params"]["lambda"] == 50.0
    # cold-start users from their profile alone: EASE reads histories only, so it ranks them no better than chance
    assert [r.key for r in ev.profile_only] == ["candidate", "most-popular", "popularity-as-of"]
    assert ev.profile_only[0].value("ndcg@10") < ev.result("candidate").value("ndcg@10")
    assert "## Cold-start users (profile only)" in md and "Candidate minus" in md and "popularity-as-of" in md
    assert "Cold-start users (profile only)" in page
    assert "profile_only" in json.loads((out / "metrics.json").read_text())
    assert metrics["profile_only_candidate_ndcg@10"] == ev.profile_only[0].value("ndcg@10")


def test_gate_promotes_better_and_keeps_worse(canonical, tmp_path) -> None:
    config = _config(tmp_path)
    split = configured_split(read_tables(canonical)["interactions"], config)
    oracle = Oracle(dict(zip(split.test.user_id, split.test.item_id, strict=True)))
    better = run_evaluation(config, canonical, tmp_path / "better", candidate=oracle)
    assert better.decision["promote"] is True and better.result("candidate").value("hr@10") == 1.0
    assert better.decision["difference"]["low"] > 0
    worse = run_evaluation(config, canonical, tmp_path / "worse", candidate=MostPopular().fit(split.train))
    assert worse.decision["promote"] is False and "keep the champion" in worse.decision["reason"]


def test_registry_champion_that_cannot_load_falls_back_to_its_stored_metrics(canonical, tmp_path) -> None:
    from components.registry import promote_champion

    config = _config(tmp_path)
    broken = tmp_path / "broken_model"
    broken.mkdir()
    promote_champion(config.paths.artifacts_dir, broken, {"ndcg@10": 0.99}, version="v1")
    split = configured_split(read_tables(canonical)["interactions"], config)
    ev = run_evaluation(config, canonical, tmp_path / "out", candidate=EASE(5.0).fit(split.train))
    champion = ev.decision["champion"]
    assert champion["source"] == "registry" and champion["version"] == "v1" and "load_error" in champion
    assert ev.decision["promote"] is False and "0.9900" in ev.decision["reason"]


def _result(values: np.ndarray) -> ModelResult:
    per_user = per_user_metrics(values, [10])
    return ModelResult("k", "m", "candidate", bootstrap(per_user, 20, 0), {}, per_user, values)


def test_gate_threshold_and_stored_champion(tmp_path) -> None:
    config = _config(tmp_path, "evaluate.gate_min_improvement=0.1")
    champ = _result(np.array([1.0, 3.0, 20.0, 5.0]))
    slightly = _result(np.array([1.0, 2.0, 20.0, 5.0]))  # better, but by less than 10 %
    much = _result(np.array([1.0, 1.0, 2.0, 5.0]))
    assert gate(slightly, champ, config, {})["promote"] is False
    assert gate(much, champ, config, {})["promote"] is True
    stored = gate(much, None, config, {"source": "registry", "metrics": {"ndcg@10": 0.99}})
    assert stored["promote"] is False and "0.9900" in stored["reason"]
    with pytest.raises(EvaluationError, match="gate_metric"):
        gate(much, champ, _config(tmp_path, "evaluate.gate_metric=ndcg@7"), {})


def test_new_item_popularity_is_point_in_time() -> None:
    ts = pd.to_datetime([10, 20, 30, 40], unit="s", utc=True)
    events = pd.DataFrame({"user_id": [1, 2, 3, 9], "item_id": [100, 100, 101, 101], "event_timestamp": ts})
    users = pd.DataFrame({"user_id": [9, 2], "as_of": pd.to_datetime([35, 20], unit="s", utc=True)})
    scores = NewItemPopularity(events).score(users, [np.array([]), np.array([])], np.array([100, 101, 102]))
    assert scores.tolist() == [[2, 1, 0], [1, 0, 0]]  # user 2 at t=20: only user 1's event at t=10 counts


class HistoryRecorder:
    """Scores like the recommender it wraps and keeps the histories it was given."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.seen = inner, inner.name, []

    def score(self, users, histories, catalogue):
        self.seen += [len(h) for h in histories]
        return self.inner.score(users, histories, catalogue)


def test_profile_only_users_are_ranked_without_history_against_point_in_time_popularity(canonical, tmp_path):
    config = _config(tmp_path)
    data = prepare(config, read_tables(canonical))
    assert sum(len(h) for h in data.histories) > 0
    recorder = HistoryRecorder(Oracle({int(u): int(t) for u, t in zip(data.users.user_id, data.targets,
                                                                       strict=True)}))
    results, gain = profile_only_results(recorder, {"most-popular": MostPopular().fit(data.split.train)}, data,
                                         config)
    assert recorder.seen == [0] * len(data.users)  # no history reached the candidate
    assert [r.key for r in results] == ["candidate", "most-popular", "popularity-as-of"]
    assert results[0].value("hr@10") == 1.0 and gain["users"] == len(data.users)
    assert gain["strongest_baseline"] in ("most-popular", "popularity-as-of")
    best = next(r for r in results if r.key == gain["strongest_baseline"])
    hr = gain["candidate_minus_baseline"]["hr@10"]
    assert hr["value"] == pytest.approx(1.0 - best.value("hr@10")) and hr["low"] > 0
    # popularity-as-of counts other users' interactions strictly before each target (here: the whole split's)
    last = data.users.iloc[[-1]]
    events = data.item_events
    before = events[(events.event_timestamp < last.as_of.iloc[0]) & (events.user_id != last.user_id.iloc[0])]
    want = before.item_id.value_counts().reindex(data.catalogue, fill_value=0).to_numpy()
    got = PointInTimePopularity(events, "popularity-as-of").score(last, [np.array([])], data.catalogue)
    assert got[0].tolist() == want.tolist() and want.sum() > 0


def test_ablations_are_reported_paired_against_the_candidate(canonical, tmp_path) -> None:
    config = _config(tmp_path)
    data = prepare(config, read_tables(canonical))
    oracle = Oracle({int(u): int(t) for u, t in zip(data.users.user_id, data.targets, strict=True)})
    weaker = EASE(5.0).fit(data.split.train)
    with pytest.raises(EvaluationError, match="ablation 'gone': model directory .*nope does not exist"):
        run_evaluation(config, canonical, tmp_path / "never", candidate=EASE(50.0).fit(data.split.train),
                       ablations={"gone": tmp_path / "nope"})
    assert not (tmp_path / "never").exists()  # refused before any work
    ev = run_evaluation(config, canonical, tmp_path / "out", candidate=EASE(50.0).fit(data.split.train),
                        ablations={"lambda-5": weaker, "oracle": oracle})
    rows = {row["variant"]: row for row in ev.info["ablation"]}
    assert list(rows) == ["(the model)", "lambda-5", "oracle"] and rows["oracle"]["metric"] == "ndcg@10"
    assert rows["(the model)"]["value"]["value"] == ev.result("candidate").value("ndcg@10")
    alone = evaluate_main(EASE(5.0).fit(data.split.train), "x", "candidate", data, config, groups=False)
    assert rows["lambda-5"]["value"]["value"] == pytest.approx(alone.value("ndcg@10"))
    gain = rows["oracle"]["minus_candidate"]
    assert gain["value"] == pytest.approx(1.0 - ev.result("candidate").value("ndcg@10")) and gain["low"] > 0
    assert "cold_minus_candidate" in rows["oracle"] and rows["oracle"]["cold_metric"] == "hr@10"
    assert "cold_text_only" not in rows["oracle"]  # no popularity prior to leave out: no text-alone ranking
    # validation figures, the ones to choose by: the oracle knows only the test targets, so validation does not pick it
    tables = read_tables(canonical)
    validation = eval_data(data.split, tables["items"], tables["users"], "validation")
    on_validation = evaluate_main(EASE(5.0).fit(data.split.train), "x", "candidate", validation, config, groups=False)
    assert rows["lambda-5"]["validation"]["metric"]["value"] == pytest.approx(on_validation.value("ndcg@10"))
    best = max(rows.values(), key=lambda row: row["validation"]["metric"]["value"])["variant"]
    assert ev.info["ablation_choice"]["metric"] == best != "oracle"
    assert rows["oracle"]["validation"]["metric"]["value"] < rows["oracle"]["value"]["value"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Ablation" in md and "| lambda-5 |" in md and "| oracle |" in md
    assert "validation ndcg@10" in md and "Chosen on validation" in md and f"validation ndcg@10: **{best}**" in md
    assert "Ablation" in (tmp_path / "out" / "report.html").read_text()
    assert ablation_dirs(["a=/m/a", "b = /m/b"]) == {"a": Path("/m/a"), "b": Path("/m/b")}
    for bad in (["a"], ["=x"], ["a=x", "a=y"], ["(the model)=x"]):
        with pytest.raises(EvaluationError, match="--ablation"):
            ablation_dirs(bad)


def test_a_trained_model_against_itself_as_ablation(planted_model, tmp_path) -> None:
    """A real model directory: zero paired differences, the cold start from text alone, training minutes."""
    canonical = planted_model.parent / "data" / "canonical"
    ev = run_evaluation(_config(tmp_path), canonical, tmp_path / "out", model_dir=planted_model,
                        ablations={"same": planted_model})
    model_row, same = ev.info["ablation"]
    assert model_row["variant"] == "(the model)" and same["variant"] == "same"
    assert same["minus_candidate"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert same["cold_minus_candidate"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert same["cold_text_only"] == model_row["cold_text_only"] and "value" in same["cold_text_only"]
    assert same["cold_text_only_minus_candidate"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert same["cold_text_only_ratio"] == pytest.approx(1.0) and "cold_text_only_ratio" not in model_row
    minutes = json.loads((planted_model / "metrics.json").read_text())["train_seconds"] / 60
    assert same["train_minutes"] == model_row["train_minutes"] == round(minutes, 1)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "cold, text only" in md and "training (min)" in md and "| same |" in md and "nan" not in md
    assert "text only − candidate (paired)" in md and "| 1.00 × |" in md
    assert same["validation"] == model_row["validation"]
    assert {"metric", "cold", "cold_text_only"} <= set(same["validation"])
    assert set(ev.info["ablation_choice"].values()) == {"(the model)"}  # a tie goes to the earlier row
    spread = ev.info["ablation_validation"]["validation_cold_targets"]
    assert 0 < spread["items"] <= spread["targets"] and 0 < spread["top_item_share"] <= 1
    assert f"its cold start {spread['targets']} targets over {spread['items']} items" in md
    assert target_spread(np.array([7, 7, 7, 3])) == {"targets": 4, "items": 2, "top_item_share": 0.75}
    assert target_spread(np.array([], dtype=np.int64))["targets"] == 0


def test_prepare_cold_start_task(canonical, tmp_path) -> None:
    data = prepare(_config(tmp_path), read_tables(canonical))
    assert not np.isin(data.split.cold_items, data.catalogue).any()
    assert np.isin(data.cold_targets, data.split.cold_items).all()
    assert "as_of" in data.cold_users and len(data.cold_users) == len(data.cold_targets) > 0


class PrefersItem:
    """Scores one item above the rest, the others by id (a fixed taste, to rank the new items by)."""

    name = "prefers-item"

    def __init__(self, item: int) -> None:
        self.item = item

    def score(self, users, histories, catalogue):
        row = -np.asarray(catalogue, dtype=np.float32) / 1000 + (np.asarray(catalogue) == self.item)
        return np.tile(row, (len(users), 1))


def test_every_event_cold_start_ranks_each_new_item_interaction(tmp_path) -> None:
    tables = planted_tables()
    early = pd.DataFrame({"user_id": np.arange(0, 90, 6, dtype="int64"), "item_id": np.int64(203),
                          "rating": np.float32(4.0), "event_timestamp": pd.to_datetime(
                              9_000_000 + np.arange(0, 90, 6), unit="s", utc=True).astype("datetime64[us, UTC]")})
    tables["interactions"] = pd.concat([tables["interactions"], early], ignore_index=True)
    config = _config(tmp_path)
    data = prepare(config, tables)
    every = every_event_cold(data, tables["users"], None, config.train.seed)
    cold_events = data.split.cold_interactions
    assert len(every.cold_targets) == len(cold_events) > len(data.cold_targets)  # users met several new items
    assert sorted(zip(every.cold_users["user_id"], every.cold_targets, strict=True)) == sorted(
        zip(cold_events["user_id"], cold_events["item_id"], strict=True))
    for user, as_of, exclude in zip(every.cold_users["user_id"], every.cold_users["as_of"], every.cold_exclude,
                                    strict=True):  # each target excludes exactly the user's earlier new items
        earlier = cold_events[(cold_events["user_id"] == user) & (cold_events["event_timestamp"] < as_of)]
        assert sorted(exclude.tolist()) == sorted(earlier["item_id"].tolist())
    sampled = every_event_cold(data, tables["users"], 5, config.train.seed)
    users = set(sampled.cold_users["user_id"])
    assert len(users) == 5 and sampled.cold_users_total == cold_events["user_id"].nunique()
    assert len(sampled.cold_targets) == cold_events["user_id"].isin(users).sum()  # all of each user's targets

    result = every_event_results(PrefersItem(200), data, tables["users"], config)
    assert (result["targets"], result["users"]) == (len(cold_events), cold_events["user_id"].nunique())
    for name in ("hr@10", "ndcg@10"):
        gain = result["candidate_minus_baseline"][name]
        assert gain["value"] == pytest.approx(result["candidate"][name]["value"] -
                                              result["baseline_value"][name]["value"])
        assert gain["low"] <= gain["value"] <= gain["high"]
    hit = (cold_events["item_id"] == 200).mean()  # item 200 ranks first for everyone: NDCG@10 counts the rest too
    assert result["candidate"]["hr@10"]["value"] == 1.0 and result["candidate"]["ndcg@10"]["value"] > hit


def test_cli_prints_table(canonical, tmp_path) -> None:
    from recsys.main import app

    small = [arg for pair in SMALL_BASELINES for arg in ("--set", pair)]
    result = CliRunner().invoke(app, ["--set", f"paths.artifacts_dir={tmp_path}", "--set",
                                      "evaluate.bootstrap_samples=20", "--set", "evaluate.cold_start_items=6",
                                      *small, "evaluate", "--model", "baseline:sasrec-ce", "--canonical",
                                      str(canonical), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli" / "report.html").is_file()
    assert read_decision(tmp_path / "cli")["candidate"]["name"] == "sasrec-ce"
    bad = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path / "nope"), "--canonical", str(canonical)])
    assert bad.exit_code == 1
    bad = CliRunner().invoke(app, ["evaluate", "--model", "baseline:ease", "--canonical", str(canonical),
                                   "--ablation", "no-folder-given"])
    assert bad.exit_code == 1 and "expected NAME=DIR" in bad.output


def test_kfp_component_interface(tmp_path) -> None:
    from components.evaluate import evaluate_op

    assert kfp_interface(evaluate_op, tmp_path) == {
        "inputs.parameters": {"config": "STRING"},
        "inputs.artifacts": {"canonical": "system.Dataset", "model": "system.Model"},
        "outputs.parameters": {"Output": "BOOLEAN"},
        "outputs.artifacts": {"report": "system.HTML", "metrics": "system.Metrics", "decision": "system.Artifact"}}


def test_prepare_samples_users_when_asked(canonical, tmp_path) -> None:
    full = prepare(_config(tmp_path), read_tables(canonical))
    assert full.users_total is None
    same = prepare(_config(tmp_path, f"evaluate.max_users={len(full.users)}"), read_tables(canonical))
    assert same.users_total is None and same.users["user_id"].tolist() == full.users["user_id"].tolist()
    sample = prepare(_config(tmp_path, "evaluate.max_users=20"), read_tables(canonical))
    assert len(sample.users) == len(sample.targets) == len(sample.histories) == 20
    assert sample.users_total == len(full.users)
    position = {int(u): i for i, u in enumerate(full.users["user_id"])}
    for user, target, hist in zip(sample.users["user_id"], sample.targets, sample.histories, strict=True):
        assert full.targets[position[int(user)]] == target  # each sampled user keeps its own task
        np.testing.assert_array_equal(full.histories[position[int(user)]], hist)
    again = prepare(_config(tmp_path, "evaluate.max_users=20"), read_tables(canonical))
    assert again.users["user_id"].tolist() == sample.users["user_id"].tolist()  # seeded


def test_sampled_evaluation_reports_its_size_and_skipped_ease(canonical, tmp_path) -> None:
    config = _config(tmp_path, "evaluate.max_users=25", "evaluate.ease_max_items=5", "evaluate.sasrec.enabled=false",
                     "evaluate.als.enabled=false")
    ev = run_evaluation(config, canonical, tmp_path / "out", candidate=MostPopular().fit(
        configured_split(read_tables(canonical)["interactions"], config).train))
    assert ev.info["test_users"] == 25 < ev.info["test_users_total"]
    assert len(ev.result("candidate").per_user["ndcg@10"]) == 25
    est = ev.result("candidate").summary["ndcg@10"]
    assert est.low <= est.value <= est.high and est.low < est.high  # the bootstrap interval over the sample
    assert "ease" not in {r.key for r in ev.results} and "ease" in ev.info["baselines_skipped"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"a seeded sample of 25 of {ev.info['test_users_total']} users" in md
    assert "Baseline ease skipped" in md and "evaluate.ease_max_items=5" in md
