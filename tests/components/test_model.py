"""Two-tower model: learns a planted pattern, cold-start items from real MiniLM text, ONNX equals torch.

On the planted data set of tests/conftest.py (`planted_tables`, `planted_model`).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import load_config
from tests.conftest import GROUPS, PER_GROUP, SEQ, planted_tables


def _group_users(tables: dict[str, pd.DataFrame], group: int) -> pd.DataFrame:
    return tables["users"][(tables["users"]["user_id"] - 1) % len(GROUPS) == group].reset_index(drop=True)


def test_learns_planted_pattern_far_above_random(planted_model: Path) -> None:
    metrics = json.loads((planted_model / "metrics.json").read_text())
    candidates = PER_GROUP * len(GROUPS) - (SEQ - 1)  # catalogue minus the test user's history
    random_ndcg = sum(1 / np.log2(r + 1) for r in range(1, 11)) / candidates
    assert metrics["test_hr@10"] >= 0.9
    assert metrics["test_ndcg@10"] >= 3 * random_ndcg
    history = json.loads((planted_model / "history.json").read_text())
    assert history[-1]["loss"] < history[0]["loss"]
    assert (planted_model / "training_curve.png").stat().st_size > 1000


def test_artifact_follows_contract_c4(planted_model: Path) -> None:
    from components.model import load_recommender
    from components.recommender import Recommender

    ids = np.load(planted_model / "item_ids.npy")
    emb = np.load(planted_model / "item_embeddings.npy")
    assert ids.dtype == np.int64 and emb.dtype == np.float32 and emb.shape == (len(ids), 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    encoder = json.loads((planted_model / "profile_encoder.json").read_text())
    fields = {f["source"]: f for f in encoder["fields"]}
    assert list(fields) == ["age", "gender", "occupation"] and 0 not in fields["gender"]["vocab"].values()
    rec = load_recommender(planted_model)
    assert isinstance(rec, Recommender)
    tables = planted_tables()
    users = tables["users"].head(4)
    scores = rec.score(users, [np.array([1, 2]), np.array([], np.int64), np.array([13]), np.array([999])], ids[:10])
    assert scores.shape == (4, 10) and scores.dtype == np.float32 and np.isfinite(scores).all()


def test_the_profile_changes_the_trained_models_user_vector(planted_model: Path) -> None:
    """Users without history get a vector from their profile alone: the same profile the same vector, another
    profile (or none) another one; with a history the profile still moves the vector."""
    from components.model import load_recommender

    rec = load_recommender(planted_model)
    users = pd.DataFrame({"age": [20, 20, 65, None], "gender": ["F", "F", "M", None],
                          "occupation": ["student", "student", "artist", None]})
    vectors = rec.user_embeddings(users, [np.array([], np.int64)] * 4)
    assert vectors.shape == (4, 32) and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    cosine = vectors @ vectors.T
    assert max(cosine[0, 2], cosine[0, 3], cosine[2, 3]) < 0.99, cosine.round(4)
    with_history = rec.user_embeddings(users.iloc[[0, 2]], [np.array([1, 2, 3])] * 2)
    assert float(with_history[0] @ with_history[1]) < 0.999


def test_new_item_from_text_alone_lands_in_its_group_and_is_recommended(planted_model: Path) -> None:
    """Runs the real all-MiniLM-L6-v2 on the new item's text."""
    from components.model import load_recommender
    from components.recommender import top_k

    rec = load_recommender(planted_model)
    known = rec.item_embeddings.copy()
    new = pd.DataFrame({"item_id": [1000], "title": ["Starship"],
                        "text": ["Starship. An adventure in outer space: astronauts fly a rocket to alien planets."]})
    emb = rec.add_items(new)
    assert emb.shape == (1, 32) and 1000 in rec.item_ids
    sims = known @ emb[0]
    by_group = [sims[g * PER_GROUP : (g + 1) * PER_GROUP].mean() for g in range(len(GROUPS))]
    assert int(np.argmax(by_group)) == 0  # closest to the space items
    tables = planted_tables()
    space_users = _group_users(tables, 0)
    inter = tables["interactions"]
    hist = [inter[inter["user_id"] == u]["item_id"].to_numpy()[-3:] for u in space_users["user_id"]]
    scores = rec.score(space_users, hist, rec.item_ids)
    ids, _ = top_k(scores, 10, hist, rec.item_ids)
    assert np.mean([1000 in row for row in ids]) >= 0.5


def test_onnx_user_tower_equals_torch(planted_model: Path, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from components.model import export_user_tower_onnx, load_recommender

    path = export_user_tower_onnx(planted_model, tmp_path / "user_tower.onnx")
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["history", "profile"]
    assert [o.name for o in model.graph.output] == ["user_embedding"]
    assert not list(tmp_path.glob("*.data"))  # weights inside the one file
    rec = load_recommender(planted_model)
    tables = planted_tables()
    users = tables["users"].head(5)
    inter = tables["interactions"]
    hist = [inter[inter["user_id"] == u]["item_id"].to_numpy()[: i + 1] for i, u in enumerate(users["user_id"])]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    history, profile = rec.tower_inputs(users, hist)
    got = session.run(None, {"history": history, "profile": profile})[0]
    np.testing.assert_allclose(got, rec.user_embeddings(users, hist), atol=1e-4)
    assert got.dtype == np.float32 and got.shape == (5, 32)


def test_profile_inputs_use_the_declared_attributes(planted_model: Path) -> None:
    """The trained model encodes the declared user attributes (MovieLens: age bands, gender, occupation)."""
    from components.model import load_recommender

    rec = load_recommender(planted_model)
    assert rec.cfg["profile_fields"] == ["age", "gender", "occupation"]
    users = pd.DataFrame({"age": [17, 30, None], "gender": ["F", "M", None], "occupation": ["student", "x", None]})
    idx = rec.tower_inputs(users, [np.empty(0, np.int64)] * len(users))[1]
    assert idx.dtype == np.int64 and idx.shape == (3, 3)
    assert idx[0, 0] != idx[1, 0] and (idx[0] > 0).all() and idx[1, 2] == 0 and (idx[2] == 0).all()


def _loss_fixture():
    import torch

    from components.model import TwoTowerModel

    torch.manual_seed(0)
    cfg = {"n_items": 20, "embedding_dim": 8, "max_seq_len": 4, "user_layers": 1, "user_heads": 2, "dropout": 0.0,
           "id_dropout": 0.5, "temperature": 0.1, "text_dim": 6, "item_attribute_widths": [2, 1],
           "item_attribute_sizes": [4, 3], "profile_sizes": [7, 2, 3]}
    model = TwoTowerModel(cfg)
    model.text[1:] = torch.randn(20, 6)
    model.item_attribute_0[1:, 0] = torch.randint(1, 4, (20,))  # a multi-valued attribute, one value each
    model.train_count[1:] = 1.0
    history = torch.tensor([[0, 1, 2, 3], [0, 0, 5, 6]])
    targets = torch.tensor([[0, 2, 3, 4, 0], [0, 0, 0, 6, 7]])
    profile = torch.tensor([[1, 1, 2], [0, 2, 1]])
    log_pop = torch.log(torch.full((21,), 1 / 20))
    return model, history, targets, profile, log_pop


@pytest.mark.parametrize("loss,hard_negatives,logq", [("in_batch", 0, False), ("in_batch", 3, True),
                                                      ("full_softmax", 0, True), ("sampled_softmax", 0, True)])
def test_next_item_loss_is_finite_and_trains_every_part(loss: str, hard_negatives: int, logq: bool) -> None:
    import torch

    from components.model import next_item_loss

    model, history, targets, profile, log_pop = _loss_fixture()
    opts = load_config(overrides=[f"model.loss={loss}", f"model.hard_negatives={hard_negatives}",
                                  f"model.logq_correction={logq}", "model.sampled_negatives=8"]).model
    torch.manual_seed(1)
    value = next_item_loss(model, history, targets, profile, log_pop, opts)
    value.backward()
    assert torch.isfinite(value) and value.item() > 0
    for name in ("text_mlp.0.weight", "item_id.weight", "attribute_emb.0.weight", "user.profile.0.weight",
                 "user.blocks.0.qkv.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


@pytest.mark.parametrize("representation", ["text_and_id", "text_only", "id_only"])
def test_item_representation_decides_what_an_item_vector_reads(representation: str) -> None:
    """`model.item_representation`: text_only vectors ignore the ID embeddings, so a new item embedded from its text
    and attributes gets exactly the vector a trained item with the same content has; id_only vectors ignore the
    content and new items get nothing (zeros); text_and_id adds the ID part to trained items only."""
    import torch
    import torch.nn.functional as F

    from components.model import TwoTowerModel

    base, *_ = _loss_fixture()
    model = TwoTowerModel({**base.cfg, "item_representation": representation})
    model.load_state_dict(base.state_dict())
    model.train_count[5] = 0.0  # row 5 was never trained on
    model.eval()
    rows = torch.arange(1, 21)
    content = F.normalize(model.content_vectors(model.text[rows], [b[rows] for b in model.attributes()]), dim=-1)
    new = model.new_item_vectors(model.text[rows], [b[rows] for b in model.attributes()])
    before = model.item_vectors(rows)
    with torch.no_grad():
        model.item_id.weight.mul_(3.0).add_(0.5)
    after_ids = model.item_vectors(rows)
    with torch.no_grad():
        model.text.add_(1.0)
    after_text = model.item_vectors(rows)
    if representation == "text_only":
        torch.testing.assert_close(before, content)
        torch.testing.assert_close(after_ids, before)
        torch.testing.assert_close(new, before)  # a new item is scored the way every trained item is
        assert not torch.allclose(after_text, after_ids)
    elif representation == "id_only":
        assert torch.count_nonzero(new) == 0
        torch.testing.assert_close(after_text, after_ids)
        assert not torch.allclose(after_ids, before)
    else:
        torch.testing.assert_close(new, content)
        torch.testing.assert_close(before[4], content[4])  # the untrained row: content only
        torch.testing.assert_close(after_ids[4], before[4])
        trained = torch.tensor([i for i in range(20) if i != 4])
        assert not torch.allclose(after_ids[trained], before[trained])
        assert not torch.allclose(after_text, after_ids)


def test_learnt_temperature_starts_at_the_configured_one_and_gets_a_gradient() -> None:
    import torch

    from components.model import TwoTowerModel, next_item_loss

    model, history, targets, profile, log_pop = _loss_fixture()
    model.eval()
    opts = load_config(overrides=["model.loss=in_batch", f"model.temperature={model.cfg['temperature']}"]).model
    fixed = next_item_loss(model, history, targets, profile, log_pop, opts)
    learnt = TwoTowerModel({**model.cfg, "learn_temperature": True})
    learnt.load_state_dict(model.state_dict(), strict=False)
    learnt.eval()
    value = next_item_loss(learnt, history, targets, profile, log_pop, opts)
    torch.testing.assert_close(value, fixed)  # log_temperature starts at log(model.temperature)
    value.backward()
    assert learnt.log_temperature.grad is not None and learnt.log_temperature.grad.abs() > 0


def test_full_softmax_is_cross_entropy_over_the_whole_catalogue() -> None:
    import torch
    import torch.nn.functional as F

    from components.model import next_item_loss, resolved_loss

    model, history, targets, profile, log_pop = _loss_fixture()
    model.eval()  # no ID dropout: the same table both ways
    opts = load_config(overrides=["model.loss=full_softmax"]).model
    table = model.item_table()
    query = model.user_positions(table, history, profile)[targets > 0]
    expected = F.cross_entropy(query @ table[1:].T / opts.temperature, targets[targets > 0] - 1)
    torch.testing.assert_close(next_item_loss(model, history, targets, profile, log_pop, opts), expected)
    auto = load_config(overrides=["model.loss=auto", "model.full_softmax_max_items=10"]).model
    assert resolved_loss(auto, 10) == "full_softmax" and resolved_loss(auto, 11) == "sampled_softmax"


def test_in_batch_loss_over_the_batchs_rows_equals_the_whole_tables() -> None:
    """Large catalogues compute only the rows a step reads: the same loss and gradients, and items the batch does
    not read get no gradient."""
    import torch

    from components.model import next_item_loss

    model, history, targets, profile, log_pop = _loss_fixture()
    model.eval()  # no ID dropout: the same draws both ways
    grads = {}
    for name, threshold in (("whole", 1000), ("rows", 1)):
        model.zero_grad()
        opts = load_config(overrides=["model.loss=in_batch", f"model.batch_rows_min_items={threshold}"]).model
        value = next_item_loss(model, history, targets, profile, log_pop, opts)
        value.backward()
        grads[name] = (value.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(grads["rows"][0], grads["whole"][0])
    assert grads["rows"][1].keys() == grads["whole"][1].keys()
    for name, grad in grads["whole"][1].items():
        torch.testing.assert_close(grads["rows"][1][name], grad, msg=name)
    unread = sorted(set(range(1, 21)) - set(history.flatten().tolist()) - set(targets.flatten().tolist()))
    assert unread and grads["rows"][1]["item_id.weight"][unread].abs().sum() == 0


def test_sparse_id_gradients_hold_the_read_rows_and_a_lazy_adam_moves_only_them() -> None:
    """Sparse ID gradients equal the dense ones; a step under `make_optimizers` moves the rows the batch read and
    leaves every other ID-embedding row as it was."""
    import torch

    from components.model import TwoTowerModel, next_item_loss
    from components.train import make_optimizers

    model, history, targets, profile, log_pop = _loss_fixture()
    model.eval()
    config = load_config(overrides=["model.loss=in_batch", "model.batch_rows_min_items=1"])
    next_item_loss(model, history, targets, profile, log_pop, config.model).backward()
    dense = model.item_id.weight.grad.clone()
    sparse_model = TwoTowerModel({**model.cfg, "sparse_id_gradients": True})
    sparse_model.load_state_dict(model.state_dict())
    sparse_model.eval()
    next_item_loss(sparse_model, history, targets, profile, log_pop, config.model).backward()
    grad = sparse_model.item_id.weight.grad
    assert grad.is_sparse
    torch.testing.assert_close(grad.to_dense(), dense)
    opts = make_optimizers(sparse_model, config)
    assert [type(o).__name__ for o in opts] == ["AdamW", "SparseAdam"]
    before = sparse_model.item_id.weight.detach().clone()
    for opt in opts:
        opt.step()
    moved = (sparse_model.item_id.weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    read = sorted((set(history.flatten().tolist()) | set(targets.flatten().tolist())) - {0})
    assert moved == read
    assert [type(o).__name__ for o in make_optimizers(model, config)] == ["AdamW"]  # dense: one AdamW as before


def test_sampled_softmax_with_every_item_sampled_ranks_like_the_full_softmax() -> None:
    """With many uniform shared negatives the logQ-corrected sampled loss approaches the full softmax's."""
    import torch

    from components.model import next_item_loss

    model, history, targets, profile, log_pop = _loss_fixture()
    model.eval()
    full = next_item_loss(model, history, targets, profile, log_pop,
                          load_config(overrides=["model.loss=full_softmax"]).model)
    torch.manual_seed(0)
    sampled = next_item_loss(model, history, targets, profile, log_pop,
                             load_config(overrides=["model.loss=sampled_softmax",
                                                    "model.sampled_negatives=20000"]).model)
    assert abs(sampled.item() - full.item()) < 0.05 * full.item()


def test_int8_user_tower_quantizes_the_item_table(planted_model: Path, tmp_path: Path) -> None:
    """The table lookup exports as Gather (quantizable), without the exporter's per-node debug records."""
    import onnx

    from components.compress_export import quantize_int8
    from components.model import export_user_tower_onnx

    fp32 = export_user_tower_onnx(planted_model, tmp_path / "fp32.onnx")
    graph = onnx.load(str(fp32)).graph
    assert "GatherND" not in {n.op_type for n in graph.node}
    assert not any(len(n.metadata_props) for n in graph.node)
    int8 = onnx.load(str(quantize_int8(fp32, tmp_path / "int8.onnx"))).graph
    tables = {i.name: i.data_type for i in int8.initializer if i.name.startswith("table")}
    assert "table" not in tables and tables.get("table_quantized") in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)


def test_item_event_counts_are_point_in_time_by_other_users_and_windowed() -> None:
    from components.model import item_event_counts

    ts = pd.to_datetime(["2024-01-01", "2024-01-05", "2024-01-09", "2024-01-10", "2024-01-10"], utc=True)
    events = pd.DataFrame({"user_id": [1, 2, 3, 1, 4], "item_id": [10, 10, 10, 20, 10], "event_timestamp": ts})
    users = pd.DataFrame({"user_id": [1, 2], "as_of": pd.to_datetime(["2024-01-10", "2024-01-10"], utc=True)})
    counts = item_event_counts(events, users, np.array([10, 20, 30]))
    # user 1: item 10 by users 2, 3 (own event and the event at as_of not counted); user 2: by 1 and 3
    np.testing.assert_array_equal(counts, [[2, 0, 0], [2, 0, 0]])
    np.testing.assert_array_equal(item_event_counts(events, users, np.array([10]), window_days=3), [[1], [1]])
    everything = item_event_counts(events, users[["user_id"]], np.array([10, 20]))  # no as_of: all events known
    np.testing.assert_array_equal(everything, [[3, 0], [3, 1]])


@pytest.mark.parametrize("window", [None, 5.0])
def test_item_event_counter_in_chunks_equals_one_call(window: float | None) -> None:
    """The prepared counter gives the same counts whether users come at once, in time-ordered chunks (the sweep
    resumes, with long stretches added by bincount) or out of order (the sweep restarts)."""
    from components.model import ItemEventCounter, item_event_counts

    rng = np.random.default_rng(3)
    n = 4000
    start = pd.Timestamp("2024-01-01", tz="UTC")
    events = pd.DataFrame({"user_id": rng.integers(0, 50, n), "item_id": rng.integers(0, 40, n),
                           "event_timestamp": start + pd.to_timedelta(rng.integers(0, 30 * 86_400, n), unit="s")})
    users = pd.DataFrame({"user_id": rng.integers(0, 60, 90),
                          "as_of": start + pd.to_timedelta(rng.integers(0, 31 * 86_400, 90), unit="s")})
    catalogue = np.arange(0, 45)  # five items without events
    whole = item_event_counts(events, users, catalogue, window)
    assert whole.sum() > 0
    counter = ItemEventCounter(events, catalogue)
    by_time = np.argsort(users["as_of"].to_numpy(), kind="stable")
    for chunk in np.array_split(by_time, 7):
        np.testing.assert_array_equal(counter.counts(users.iloc[chunk], window), whole[chunk])
    for chunk in np.array_split(np.arange(len(users)), 4):  # earlier users after later ones: a fresh sweep
        np.testing.assert_array_equal(counter.counts(users.iloc[chunk], window), whole[chunk])


def test_new_item_prior_changes_only_new_items(planted_model: Path) -> None:
    from components.model import load_recommender

    rec = load_recommender(planted_model)
    cfg = json.loads((planted_model / "model_config.json").read_text())
    assert rec.new_item_popularity_weight == cfg["new_item_popularity_weight"] >= 0
    rec.add_items(pd.DataFrame({"item_id": [1000, 1001], "title": ["A", "B"],
                                "text": ["A space adventure.", "A haunted house at midnight."]}))
    users = planted_tables()["users"].head(3).assign(as_of=pd.Timestamp("2025-01-01", tz="UTC"))
    hist = [np.array([1, 2])] * 3
    plain = rec.score(users, hist, rec.item_ids)
    # a user who already met a new item: it enters the user tower through its text vector
    met = rec.score(users, [np.array([1, 2, 1001])] * 3, rec.item_ids)
    assert np.isfinite(met).all() and not np.allclose(met, plain)
    rec.new_item_popularity_windows, rec.new_item_never_seen_bonus = [[None, 0.5]], 0.0
    rec.set_item_events(pd.DataFrame({"user_id": [50, 51, 52], "item_id": [1001, 1001, 5],
                                      "event_timestamp": pd.Timestamp("2024-06-01", tz="UTC")}))
    boosted = rec.score(users, hist, rec.item_ids)
    np.testing.assert_allclose(boosted[:, :-2], plain[:, :-2])  # trained items: no prior
    np.testing.assert_allclose(boosted[:, -2], plain[:, -2])  # new item without events
    np.testing.assert_allclose(boosted[:, -1], plain[:, -1] + 0.5 * np.log1p(2), rtol=1e-5)
    # the fitted form: windows blended, and a bonus for the new item nobody has met yet
    rec.new_item_popularity_windows, rec.new_item_never_seen_bonus = [[None, 0.5], [30, 0.25]], 0.125
    blended = rec.score(users, hist, rec.item_ids)
    np.testing.assert_allclose(blended[:, :-2], plain[:, :-2])
    np.testing.assert_allclose(blended[:, -2], plain[:, -2] + 0.125, rtol=1e-5)  # never met: the bonus
    np.testing.assert_allclose(blended[:, -1], plain[:, -1] + 0.5 * np.log1p(2), rtol=1e-5)  # none in 30 days
    # the velocity: the item met twice, first 214 days before the request, 2 / 214 interactions a day
    rec.new_item_velocity_weight = 0.75
    fast = rec.score(users, hist, rec.item_ids)
    np.testing.assert_allclose(fast[:, :-1], blended[:, :-1], rtol=1e-6)  # never met: no velocity, the bonus
    np.testing.assert_allclose(fast[:, -1], blended[:, -1] + 0.75 * np.log1p(2 / 214), rtol=1e-5)


def test_popularity_prior_of_trained_items_counts_other_users_before_the_request(planted_model: Path) -> None:
    from components.model import load_recommender

    rec = load_recommender(planted_model)
    users = planted_tables()["users"].head(2).assign(as_of=pd.Timestamp("2024-06-10", tz="UTC"))
    users.loc[users.index[1], "as_of"] = pd.Timestamp("2024-05-01", tz="UTC")  # before every event
    hist = [np.array([1, 2])] * 2
    plain = rec.score(users, hist, rec.item_ids)
    rec.popularity_weight, rec.popularity_window = 0.1, 30.0
    item = int(rec.item_ids[3])
    rec.set_item_events(pd.DataFrame({"user_id": [90, 91, 92, int(users["user_id"].iloc[0])],
                                      "item_id": [item, item, item, item],
                                      "event_timestamp": pd.to_datetime(["2024-06-01", "2024-06-02", "2024-01-01",
                                                                         "2024-06-03"], utc=True)}))
    boosted = rec.score(users, hist, rec.item_ids)
    others = np.arange(len(rec.item_ids)) != 3
    np.testing.assert_allclose(boosted[:, others], plain[:, others])
    # user 0: two events by others inside the 30-day window (the one in January is outside, their own is skipped)
    np.testing.assert_allclose(boosted[0, 3], plain[0, 3] + 0.1 * np.log1p(2), rtol=1e-5)
    np.testing.assert_allclose(boosted[1, 3], plain[1, 3])  # user 1 asked before any of them
