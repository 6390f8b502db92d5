"""Two-tower model: learns a planted pattern, cold-start items from real MiniLM text, ONNX equals torch.

Shared planted data set (also used by test_train.py and test_recommend.py): three groups of items whose
texts differ in topic; each user walks the ring of one group (next item = successor), so the last item of a
user is predictable from the previous one, and an item's group is readable from its text.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import Config, load_config

GROUPS = {
    "space": "A science fiction adventure in outer space with rockets, astronauts, aliens and distant planets.",
    "romance": "A romantic comedy about love, a wedding, a first kiss and two people falling in love in Paris.",
    "horror": "A horror film with ghosts, monsters, blood, screams and a haunted house at midnight.",
}
PER_GROUP = 12
SEQ = 8
_TRAINED: dict[str, Path] = {}


def planted_tables(n_users: int = 60, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Canonical tables with the planted sequential + textual pattern."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    names = list(GROUPS)
    items = pd.DataFrame({"item_id": np.arange(1, PER_GROUP * len(names) + 1, dtype=np.int64)})
    items["group"] = [names[(i - 1) // PER_GROUP] for i in items["item_id"]]
    items["title"] = [f"{g.title()} story {(i - 1) % PER_GROUP + 1}"
                      for i, g in zip(items["item_id"], items["group"], strict=True)]
    items["text"] = [f"{t}. {GROUPS[g]}" for t, g in zip(items["title"], items["group"], strict=True)]
    items["year"] = pd.array(rng.integers(1980, 2000, len(items)), dtype="Int64")
    items["created_timestamp"] = start
    rows = []
    for user in range(1, n_users + 1):
        group = (user - 1) % len(names)
        first = int(rng.integers(0, PER_GROUP))
        for j in range(SEQ):
            item = group * PER_GROUP + (first + j) % PER_GROUP + 1
            rows.append((user, item, 4.0, start + pd.Timedelta(hours=user * 10 + j)))
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "event_timestamp"])
    interactions["rating"] = interactions["rating"].astype("float32")
    interactions["event_timestamp"] = interactions["event_timestamp"].astype("datetime64[us, UTC]")
    users = pd.DataFrame({
        "user_id": np.arange(1, n_users + 1, dtype=np.int64),
        "age": rng.integers(18, 70, n_users),
        "gender": rng.choice(["F", "M"], n_users),
        "occupation": rng.choice(["student", "engineer", "artist"], n_users),
        "zip_code": ["00000"] * n_users,
        "created_timestamp": start,
    })
    users["created_timestamp"] = users["created_timestamp"].astype("datetime64[us, UTC]")
    items["created_timestamp"] = items["created_timestamp"].astype("datetime64[us, UTC]")
    return {"interactions": interactions, "users": users, "items": items.drop(columns="group")}


def tiny_config(data_dir: Path, **extra: object) -> Config:
    """A model that trains in seconds on the planted data."""
    overrides = {
        "paths.data_dir": str(data_dir), "model.embedding_dim": 32, "model.max_seq_len": SEQ, "model.user_layers": 1,
        "model.user_heads": 2, "model.dropout": 0.0, "model.id_dropout": 0.5, "model.temperature": 0.1,
        "train.epochs": 40, "train.batch_size": 32, "train.learning_rate": 0.01, "train.patience": 40,
        "train.max_minutes": 3, "evaluate.cold_start_items": 0, **extra,
    }
    return load_config(overrides=[f"{k}={v}" for k, v in overrides.items()])


def write_dataset(root: Path, tables: dict[str, pd.DataFrame] | None = None) -> tuple[Path, Path]:
    """Canonical tables + C1 examples under `root`; returns (canonical_dir, examples_dir)."""
    from components.schemas import write_tables
    from components.train import examples_from_tables

    tables = tables or planted_tables()
    canonical = write_tables(tables, root / "canonical")
    examples_dir = root / "examples"
    examples_dir.mkdir(parents=True, exist_ok=True)
    examples_from_tables(tables, 20, load_config().dataset).to_parquet(examples_dir / "examples.parquet", index=False)
    return canonical, examples_dir


def trained_model(root: Path) -> Path:
    """Train the tiny model once per test session (real MiniLM text embeddings, cached under `root`)."""
    if "planted" not in _TRAINED:
        from components.train import train_model

        canonical, examples = write_dataset(root / "data")
        train_model(tiny_config(root / "data"), canonical, examples, root / "model", progress=False)
        _TRAINED["planted"] = root / "model"
    return _TRAINED["planted"]


@pytest.fixture(scope="session")
def planted_model(tmp_path_factory) -> Path:
    return trained_model(tmp_path_factory.getbasetemp() / "planted")


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


def test_users_without_history_get_profile_vectors(planted_model: Path) -> None:
    from components.model import load_recommender

    rec = load_recommender(planted_model)
    users = planted_tables()["users"].head(3)
    vectors = rec.user_embeddings(users, [np.array([], np.int64)] * 3)
    assert vectors.shape == (3, 32) and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


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


@pytest.mark.parametrize("hard_negatives,logq", [(0, False), (3, True)])
def test_sampled_softmax_loss_is_finite_and_trains_every_part(hard_negatives: int, logq: bool) -> None:
    import torch

    from components.model import TwoTowerModel, sampled_softmax_loss

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
    opts = load_config(overrides=[f"model.hard_negatives={hard_negatives}", f"model.logq_correction={logq}"]).model
    loss = sampled_softmax_loss(model, history, targets, profile, log_pop, opts)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    for name in ("text_mlp.0.weight", "item_id.weight", "attribute_emb.0.weight", "user.profile.0.weight",
                 "user.blocks.0.qkv.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_int8_user_tower_quantizes_the_item_table(planted_model: Path, tmp_path: Path) -> None:
    """The table lookup exports as Gather (quantizable), without the exporter's per-node debug records."""
    import onnx

    from components.compress import quantize_int8
    from components.model import export_user_tower_onnx

    fp32 = export_user_tower_onnx(planted_model, tmp_path / "fp32.onnx")
    graph = onnx.load(str(fp32)).graph
    assert "GatherND" not in {n.op_type for n in graph.node}
    assert not any(len(n.metadata_props) for n in graph.node)
    int8 = onnx.load(str(quantize_int8(fp32, tmp_path / "int8.onnx"))).graph
    tables = {i.name: i.data_type for i in int8.initializer if i.name.startswith("table")}
    assert "table" not in tables and tables.get("table_quantized") in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)


def test_new_item_counts_are_point_in_time_by_other_users_and_windowed() -> None:
    from components.model import new_item_counts

    ts = pd.to_datetime(["2024-01-01", "2024-01-05", "2024-01-09", "2024-01-10", "2024-01-10"], utc=True)
    events = pd.DataFrame({"user_id": [1, 2, 3, 1, 4], "item_id": [10, 10, 10, 20, 10], "event_timestamp": ts})
    users = pd.DataFrame({"user_id": [1, 2], "as_of": pd.to_datetime(["2024-01-10", "2024-01-10"], utc=True)})
    counts = new_item_counts(events, users, np.array([10, 20, 30]))
    # user 1: item 10 by users 2, 3 (own event and the event at as_of not counted); user 2: by 1 and 3
    np.testing.assert_array_equal(counts, [[2, 0, 0], [2, 0, 0]])
    np.testing.assert_array_equal(new_item_counts(events, users, np.array([10]), window_days=3), [[1], [1]])
    everything = new_item_counts(events, users[["user_id"]], np.array([10, 20]))  # no as_of: all events known
    np.testing.assert_array_equal(everything, [[3, 0], [3, 1]])


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
    rec.new_item_popularity_weight = 0.5
    rec.set_item_events(pd.DataFrame({"user_id": [50, 51, 52], "item_id": [1001, 1001, 5],
                                      "event_timestamp": pd.Timestamp("2024-06-01", tz="UTC")}))
    boosted = rec.score(users, hist, rec.item_ids)
    np.testing.assert_allclose(boosted[:, :-2], plain[:, :-2])  # trained items: no prior
    np.testing.assert_allclose(boosted[:, -2], plain[:, -2])  # new item without events
    np.testing.assert_allclose(boosted[:, -1], plain[:, -1] + 0.5 * np.log1p(2), rtol=1e-5)
