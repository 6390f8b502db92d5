"""Training: leakage-free inputs, resume from checkpoint, time budget, DDP with two processes, the KFP component."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import kfp_interface, planted_tables, tiny_config, write_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(data_dir, canonical_dir, examples_dir) of the planted data set, text cache warmed once."""
    root = tmp_path_factory.mktemp("train")
    canonical, examples = write_dataset(root / "data")
    from components.schemas import read_tables
    from components.text_encoder import cached_text_embeddings

    items = read_tables(canonical)["items"].sort_values("item_id")
    cached_text_embeddings(items["text"].tolist(), None, root / "data" / "cache", progress=False)
    return root / "data", canonical, examples


def test_training_inputs_hold_no_validation_test_or_cold_rows(dataset) -> None:
    from components.train_data import prepare_data, read_examples

    data_dir, canonical, examples = dataset
    config = tiny_config(data_dir, **{"evaluate.cold_start_items": 3})
    tables = planted_tables()
    data = prepare_data(config, tables, read_examples(examples))
    held_out = data.split.held_out_items  # 3 cold-test + 3 cold-validation items (cold_validation_items: null)
    assert len(data.split.cold_items) == len(data.split.cold_validation_items) == 3 and len(held_out) == 6
    cold_rows = set(np.searchsorted(data.item_ids, held_out) + 1)
    used = set(np.unique(data.windows_in)) | set(np.unique(data.windows_out))
    assert not (cold_rows & used)
    assert data.train_count[np.searchsorted(data.item_ids, held_out)].sum() == 0
    # every training target is a train row; the held-out (validation, test) targets never are
    assert int((data.windows_out > 0).sum()) == len(data.split.train)
    per_user = {int(u): len(g) for u, g in data.split.train.groupby("user_id")}
    assert sum(per_user.values()) == len(data.split.train)
    assert len(data.split.validation) == len(data.split.test) == 60


def test_validation_ranks_a_seeded_user_sample_above_the_configured_size(dataset) -> None:
    """Early stopping and the priors rank data.validation: every validation user up to
    train.validation_max_users (the default keeps MovieLens-100K's 943 whole), a seeded sample above it, each
    sampled user with their own history and target; the test metrics saved with the model the same way."""
    from components.config import load_config
    from components.train_data import prepare_data, read_examples

    data_dir, canonical, examples = dataset
    assert load_config().train.validation_max_users >= 943
    whole = prepare_data(tiny_config(data_dir), planted_tables(), read_examples(examples)).validation
    assert whole.users_total is None and len(whole.users) == 60
    config = tiny_config(data_dir, **{"train.validation_max_users": 25})
    first, again = (prepare_data(config, planted_tables(), read_examples(examples)) for _ in range(2))
    sample = first.validation
    assert len(sample.users) == len(sample.targets) == len(sample.histories) == 25 and sample.users_total == 60
    assert sample.users["user_id"].tolist() == again.validation.users["user_id"].tolist()
    assert sample.users["user_id"].nunique() == 25
    row = {int(u): i for i, u in enumerate(whole.users["user_id"])}
    for i, user in enumerate(sample.users["user_id"]):
        assert sample.targets[i] == whole.targets[row[int(user)]]
        assert np.array_equal(sample.histories[i], whole.histories[row[int(user)]])
    assert first.test.users_total == 60 and len(first.test.users) == 25
    assert prepare_data(tiny_config(data_dir), planted_tables(), read_examples(examples)).test.users_total is None


@pytest.mark.parametrize("average_epochs", [0.0, 1.0])
def test_resume_continues_exactly_where_it_stopped(dataset, tmp_path: Path, average_epochs: float) -> None:
    """Also with a moving average of the weights: the checkpoint carries it, so the resumed run validates and
    saves the same averaged model as the straight one."""
    from components.train import train_model

    data_dir, canonical, examples = dataset
    settings = {"train.weight_average_epochs": average_epochs}
    straight = train_model(tiny_config(data_dir, **settings, **{"train.epochs": 4}), canonical, examples,
                           tmp_path / "a", progress=False)
    train_model(tiny_config(data_dir, **settings, **{"train.epochs": 2}), canonical, examples, tmp_path / "b",
                progress=False)
    ck = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)  # tensors and plain types only
    assert ck["epoch"] == 2 and {"model", "optimizer", "best_metric"} <= set(ck)
    assert (ck["weight_average"] is not None) == (average_epochs > 0)
    resumed = train_model(tiny_config(data_dir, **settings, **{"train.epochs": 4}), canonical, examples,
                          tmp_path / "b", resume=True, progress=False)
    hist_a = json.loads((tmp_path / "a" / "history.json").read_text())
    hist_b = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [h["epoch"] for h in hist_b] == [1, 2, 3, 4]
    np.testing.assert_allclose([h["loss"] for h in hist_b], [h["loss"] for h in hist_a], rtol=1e-4)
    assert resumed["test_ndcg@10"] == pytest.approx(straight["test_ndcg@10"], abs=1e-4)


def test_weight_average_is_the_exponential_moving_average_and_swaps_back() -> None:
    from components.train import WeightAverage

    layer = torch.nn.Linear(3, 2)
    average = WeightAverage(layer, epochs=2.0, steps_per_epoch=2)  # weight 1/4 per step
    start = layer.weight.detach().clone()
    expected = start.clone()
    for step in range(3):
        with torch.no_grad():
            layer.weight.add_(float(step + 1))
        average.update()
        expected = 0.75 * expected + 0.25 * layer.weight.detach()
    trained = layer.weight.detach().clone()
    with average.swapped():
        torch.testing.assert_close(layer.weight.detach(), expected)
    torch.testing.assert_close(layer.weight.detach(), trained)
    average.apply()
    torch.testing.assert_close(layer.weight.detach(), expected)


def test_weight_average_changes_what_is_validated_not_the_training_path(dataset, tmp_path: Path) -> None:
    """The same seeded run with and without the average: identical losses (the average never feeds back into
    training), different validated weights."""
    from components.train import train_model

    data_dir, canonical, examples = dataset
    for name, epochs in (("plain", 0.0), ("averaged", 1.0)):
        train_model(tiny_config(data_dir, **{"train.epochs": 3, "train.weight_average_epochs": epochs}), canonical,
                    examples, tmp_path / name, progress=False)
    plain, averaged = (json.loads((tmp_path / n / "history.json").read_text()) for n in ("plain", "averaged"))
    np.testing.assert_allclose([h["loss"] for h in plain], [h["loss"] for h in averaged], rtol=1e-5)
    weights = [torch.load(tmp_path / n / "model.pt", weights_only=True) for n in ("plain", "averaged")]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0] if weights[0][k].is_floating_point())


def test_time_budget_stops_training_inside_an_epoch(dataset, tmp_path: Path) -> None:
    """A budget spent after the first step ends the epoch there (an epoch at 10^7 events would run for an hour)."""
    from components.train import train_model
    from components.train_data import prepare_data, read_examples

    data_dir, canonical, examples = dataset
    config = tiny_config(data_dir, **{"train.max_minutes": 0.0001})
    metrics = train_model(config, canonical, examples, tmp_path, progress=False)
    assert metrics["epochs"] == 1
    from components.schemas import read_tables

    windows = len(prepare_data(config, read_tables(canonical), read_examples(examples)).windows_in)
    history = json.loads((tmp_path / "history.json").read_text())
    assert windows > config.train.batch_size and history[0]["samples"] == config.train.batch_size


def test_large_catalogue_path_trains_the_id_table_sparsely_and_resumes(dataset, tmp_path: Path) -> None:
    """When a step reads only its batch's items, the ID table gets sparse gradients under SparseAdam: training,
    checkpoint and resume work as with AdamW, and the flag is recorded in the model's config."""
    from components.train import train_model

    data_dir, canonical, examples = dataset
    large = {"model.batch_rows_min_items": 1, "train.epochs": 2}
    train_model(tiny_config(data_dir, **large), canonical, examples, tmp_path / "a", progress=False)
    cfg = json.loads((tmp_path / "a" / "model_config.json").read_text())
    assert cfg["sparse_id_gradients"] is True
    ck = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert len(ck["optimizer"]) == 2  # AdamW (dense weights) + SparseAdam (ID table)
    resumed = train_model(tiny_config(data_dir, **{**large, "train.epochs": 3}), canonical, examples, tmp_path / "a",
                          resume=True, progress=False)
    assert resumed["epochs"] == 3 and resumed["test_ndcg@10"] > 0
    train_model(tiny_config(data_dir, **{**large, "train.sparse_id_gradients": False, "train.epochs": 1}), canonical,
                examples, tmp_path / "b", progress=False)
    assert json.loads((tmp_path / "b" / "model_config.json").read_text())["sparse_id_gradients"] is False


@pytest.mark.timeout(600)
def test_ddp_two_processes_all_reduce_and_give_metrics_of_the_same_shape(dataset, tmp_path: Path) -> None:
    from components.config import write_config
    from components.train import train_model

    data_dir, canonical, examples = dataset
    config = tiny_config(data_dir, **{"train.epochs": 2})
    single = train_model(config, canonical, examples, tmp_path / "single", progress=False)
    cfg_file = write_config(config, tmp_path / "config.yaml")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    snapshots = tmp_path / "snapshots"  # each rank's weights before its first step and after it
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", str(Path(__file__).with_name("ddp_snapshot.py")),
         str(snapshots), "--config", str(cfg_file), "--canonical", str(canonical), "--examples", str(examples),
         "--out", str(tmp_path / "ddp")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=540,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    state = {(rank, n): torch.load(snapshots / f"rank{rank}_forward{n}.pt", weights_only=True)
             for rank in (0, 1) for n in (1, 2)}
    trained = [name for name, value in state[0, 1].items() if value.is_floating_point()]
    moved = [name for name in trained if not torch.equal(state[0, 1][name], state[0, 2][name])]
    assert len(moved) >= 3, "one optimizer step must change the weights"
    for n in (1, 2):  # the ranks read different windows; only all-reduced gradients keep their weights equal
        unequal = [name for name in trained if not torch.equal(state[0, n][name], state[1, n][name])]
        assert unequal == [], f"ranks differ after {n - 1} step(s) in {unequal[:5]}"
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert set(ddp) == set(single)
    assert all(np.isfinite(v) for v in ddp.values())
    hist_single = json.loads((tmp_path / "single" / "history.json").read_text())
    hist_ddp = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert len(hist_ddp) == len(hist_single) == 2 and set(hist_ddp[0]) == set(hist_single[0])
    assert hist_ddp[0]["samples"] >= hist_single[0]["samples"]  # each rank saw half of the (padded) windows
    assert (tmp_path / "ddp" / "item_embeddings.npy").is_file()


def test_fine_tuning_path_updates_and_ships_the_text_encoder(dataset, tmp_path: Path) -> None:
    """The GPU path (model.fine_tune_encoder), run on the CPU with bf16 autocast for one short epoch."""
    from safetensors.torch import load_file

    from components.model import load_recommender
    from components.text_encoder import default_encoder_dir
    from components.train import train_model

    data_dir, canonical, examples = dataset
    config = tiny_config(data_dir, **{"train.epochs": 1, "model.fine_tune_encoder": True,
                                      "model.encoder_learning_rate": 1e-3})
    metrics = train_model(config, canonical, examples, tmp_path, progress=False)
    assert np.isfinite(metrics["test_ndcg@10"])
    tuned = load_file(str(tmp_path / "encoder" / "model.safetensors"))
    base = load_file(str(default_encoder_dir() / "model.safetensors"))
    name = next(k for k in tuned if "layer.0.attention.self.query.weight" in k)
    base_name = next(k for k in base if k.endswith("layer.0.attention.self.query.weight"))
    assert not torch.equal(tuned[name].float(), base[base_name].float())
    rec = load_recommender(tmp_path)
    assert rec.cfg["encoder_dir"] == "encoder"
    import pandas as pd

    emb = rec.add_items(pd.DataFrame({"item_id": [500], "text": ["A ghost story in a haunted house."]}))
    assert emb.shape == (1, 32) and np.isfinite(emb).all()


@pytest.mark.integration
@pytest.mark.timeout(600)
def _catalogue_texts(model_dir: Path, canonical: Path) -> list[str]:
    """The item texts in the model's row order (row r + 1 = item_ids[r])."""
    from components.schemas import read_tables

    items = read_tables(canonical)["items"].set_index("item_id")
    return items.loc[np.load(model_dir / "item_ids.npy"), "text"].fillna("").astype(str).tolist()


@pytest.mark.parametrize("per_step", [None, 8])
def test_lora_path_tunes_the_encoder_and_ships_it_merged(dataset, tmp_path: Path, per_step: int | None) -> None:
    """model.encoder_tuning=lora on the CPU (every item a step needs through the encoder, or 8 of them): the item
    text vectors move, and the merged encoder saved with the model (what the serving bundle exports to ONNX) gives
    back the vectors the model was trained with."""
    from safetensors.torch import load_file

    from components.compress_export import encode_with, export_text_encoder_onnx, session
    from components.compress_variants import item_embeddings_from_text
    from components.model import load_model, load_recommender
    from components.text_encoder import SentenceEncoder, cached_text_embeddings
    from components.train import train_model

    data_dir, canonical, examples = dataset
    config = tiny_config(data_dir, **{"train.epochs": 2, "model.encoder_tuning": "lora", "model.lora_layers": 1,
                                      "model.lora_learning_rate": 0.01,
                                      "model.encoder_items_per_step": "null" if per_step is None else per_step})
    assert config.model.encoder_items_per_step == per_step
    assert not config.model.fine_tune_encoder  # the GPU switch stays off
    metrics = train_model(config, canonical, examples, tmp_path, progress=False)
    assert np.isfinite(metrics["test_ndcg@10"])
    model, _ = load_model(tmp_path)
    texts = _catalogue_texts(tmp_path, canonical)
    trained = model.text[1:].numpy()
    frozen = cached_text_embeddings(texts, None, data_dir / "cache", progress=False)
    assert np.abs(trained - frozen).max() > 1e-3  # the adapters changed the item vectors
    assert model.cfg["encoder_dir"] == "encoder" and model.cfg["encoder_tuning"] == "lora"
    assert not [k for k in load_file(str(tmp_path / "encoder" / "model.safetensors")) if "lora" in k]
    tuned = SentenceEncoder(tmp_path / "encoder")
    np.testing.assert_allclose(tuned.encode(texts), trained, atol=1e-4)
    onnx_text = encode_with(session(export_text_encoder_onnx(tuned, tmp_path / "text_encoder.onnx")),
                            tuned.tokenizer, texts)
    np.testing.assert_allclose(onnx_text, trained, atol=1e-4)
    # the compression step's check: the item tower over the exported encoder gives the model's item table
    base_emb = np.load(tmp_path / "item_embeddings.npy")
    assert np.abs(item_embeddings_from_text(model, onnx_text) - base_emb).max() < 1e-4
    import pandas as pd

    rec = load_recommender(tmp_path)  # a new item is embedded by the tuned encoder
    got = rec.add_items(pd.DataFrame({"item_id": [500], "text": [texts[0]]}))
    unknown = [torch.zeros(1, buffer.shape[1], dtype=torch.long) for buffer in model.attributes()]
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.content_vectors(model.text[1:2], unknown), dim=-1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_adapter_path_trains_a_residual_mlp_on_the_frozen_text_vectors(dataset, tmp_path: Path) -> None:
    import torch

    from components.model import load_model
    from components.text_encoder import cached_text_embeddings
    from components.train import train_model

    data_dir, canonical, examples = dataset
    config = tiny_config(data_dir, **{"train.epochs": 2, "model.encoder_tuning": "adapter",
                                      "model.adapter_hidden": 16})
    train_model(config, canonical, examples, tmp_path, progress=False)
    model, _ = load_model(tmp_path)
    assert model.text_adapter is not None and float(model.text_adapter.up.weight.detach().abs().max()) > 0  # left 0
    assert not (tmp_path / "encoder").exists() and model.cfg["encoder_dir"] is None
    frozen = cached_text_embeddings(_catalogue_texts(tmp_path, canonical), None, data_dir / "cache", progress=False)
    np.testing.assert_array_equal(model.text[1:].numpy(), frozen)  # the text vectors themselves stay frozen
    text, attributes = model.text[1:], [buffer[1:] for buffer in model.attributes()]
    with torch.no_grad():
        adapted = model.content_vectors(text, attributes)
        model.text_adapter = None
        plain = model.content_vectors(text, attributes)
    assert float((adapted - plain).abs().max()) > 1e-4  # the item tower reads the text through the adapter


def test_frozen_path_has_no_adapter_and_no_encoder(planted_model: Path) -> None:
    """The default (encoder_tuning frozen): the artifact holds the same parts as before encoder tuning existed."""
    from components.model import load_model
    from components.text_encoder import cached_text_embeddings

    model, _ = load_model(planted_model)
    assert model.cfg["encoder_tuning"] == "frozen" and model.cfg["encoder_dir"] is None
    assert model.text_adapter is None and model.encoder is None and not (planted_model / "encoder").exists()
    parts = {key.split(".")[0] for key in torch.load(planted_model / "model.pt", weights_only=True)}
    assert parts == {"text", "train_count", "text_mlp", "item_id", "attribute_emb", "user",
                     *model.attribute_buffers}
    texts = _catalogue_texts(planted_model, planted_model.parent / "data" / "canonical")
    frozen = cached_text_embeddings(texts, None, planted_model.parent / "data" / "cache", progress=False)
    np.testing.assert_array_equal(model.text[1:].numpy(), frozen)


def test_train_op_runs_with_the_kfp_local_runner(dataset, tmp_path: Path, monkeypatch) -> None:
    from kfp import dsl, local

    from components.config import config_to_text
    from components.train import train_op

    data_dir, canonical, examples = dataset
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))

    @dsl.pipeline(name="train-only")
    def train_pipeline(config: str):
        tables = dsl.importer(artifact_uri=str(canonical), artifact_class=dsl.Dataset, reimport=False)
        ex = dsl.importer(artifact_uri=str(examples), artifact_class=dsl.Dataset, reimport=False)
        train_op(config=config, canonical=tables.output, examples=ex.output)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"),
               raise_on_error=True)
    train_pipeline(config=config_to_text(tiny_config(data_dir, **{"train.epochs": 2})))
    task_dir = next((tmp_path / "kfp").glob("train-only-*/train-op"))
    assert (task_dir / "model" / "item_embeddings.npy").is_file()
    assert (task_dir / "model" / "model_config.json").is_file()
    curve = (task_dir / "curve").read_text()
    assert "data:image/png;base64" in curve and "Popularity priors" in curve
    cfg = json.loads((task_dir / "model" / "model_config.json").read_text())
    assert f"<td>{cfg['popularity_weight']:.4f}</td>" in curve  # the chosen prior, as written in the artifact


def test_train_op_is_a_kfp_component(tmp_path: Path) -> None:
    from components.train import train_op

    assert kfp_interface(train_op, tmp_path) == {
        "inputs.parameters": {"config": "STRING"},
        "inputs.artifacts": {"canonical": "system.Dataset", "examples": "system.Dataset"},
        "outputs.parameters": {},
        "outputs.artifacts": {"model": "system.Model", "metrics": "system.Metrics", "curve": "system.HTML"}}


def test_new_item_prior_is_fitted_on_cold_validation_items(dataset, tmp_path: Path) -> None:
    from components.model import load_model
    from components.new_item_prior import GRID_WEIGHTS, NEW_ITEM_WINDOWS, OFF, OFFSETS, PENALTIES, fit_new_item_prior
    from components.train import train_model
    from components.train_data import prepare_data, read_examples

    data_dir, canonical, examples = dataset
    config = tiny_config(data_dir, **{"evaluate.cold_start_items": 3, "train.epochs": 8})
    train_model(config, canonical, examples, tmp_path / "model", progress=False)
    cfg = json.loads((tmp_path / "model" / "model_config.json").read_text())
    data = prepare_data(config, planted_tables(), read_examples(examples))
    assert not data.split.cold_validation.empty
    model, _ = load_model(tmp_path / "model")
    windows, velocity, never_seen, record = fit_new_item_prior(model, data, torch.device("cpu"), config.train.seed)
    assert [d for d, _ in windows] == [d for d, _ in cfg["new_item_popularity_windows"]]
    np.testing.assert_allclose([w for _, w in windows], [w for _, w in cfg["new_item_popularity_windows"]],
                               rtol=1e-3, atol=1e-6)  # the saved model scores as the one in training did
    assert never_seen == pytest.approx(cfg["new_item_never_seen_bonus"], rel=1e-3, abs=1e-6)
    assert velocity == pytest.approx(cfg["new_item_velocity_weight"], rel=1e-3, abs=1e-6)
    assert min(w for _, w in windows) >= 0 and never_seen >= 0 and velocity >= 0
    assert cfg["new_item_popularity_weight"] == pytest.approx(
        sum(w for _, w in cfg["new_item_popularity_windows"]) + cfg["new_item_velocity_weight"])
    assert [r.get("penalty") for r in record] == [*PENALTIES, None] == [r.get("penalty") for r in cfg[
        "new_item_popularity_validation"]]
    assert [r["form"] for r in record] == ["ranker"] * len(PENALTIES) + ["grid"]
    assert all(0 <= r["cold_val_cv_hr@10"] <= 1 for r in record)
    cold_events = data.split.cold_validation_interactions  # every cold-validation interaction is a target
    assert {(r["targets"], r["users"]) for r in record} == {(len(cold_events), cold_events["user_id"].nunique())}
    # the form with the better cross-validated HR@10, then NDCG@10 (a tie: one window and weight) is the one served
    key = lambda r: (r["cold_val_cv_hr@10"], r["cold_val_cv_ndcg@10"])  # noqa: E731
    grid, ranker = record[-1], max(record[:-1], key=key)
    if key(grid) >= key(ranker):
        assert len(windows) == 1 and never_seen == velocity == 0 and windows[0][1] == grid["weight"] in GRID_WEIGHTS
    else:
        assert [days for days, _ in windows] == list(NEW_ITEM_WINDOWS) and "weight" not in grid
    # the offset against the trained items: the best expected HR@10 of the validation mix (components.served_mix)
    curve = cfg["new_item_offset_validation"]
    assert [r["offset"] for r in curve] == list(OFFSETS)
    best = max(curve, key=lambda r: (r["expected_hr@10"], r["expected_ndcg@10"], r["offset"]))
    assert cfg["new_item_offset"] == best["offset"]
    assert json.loads((tmp_path / "model" / "metrics.json").read_text())["new_item_offset"] == best["offset"]
    # without cold-validation items the prior stays off
    off = prepare_data(tiny_config(data_dir), planted_tables(), read_examples(examples))
    assert fit_new_item_prior(model, off, torch.device("cpu")) == OFF


def test_the_conditional_logit_recovers_which_signal_picks_the_target() -> None:
    """Targets drawn by a known rule (the cosine counts, the 7-day count more, the all-history count not at all):
    the fitted weights rank the same way and put most targets first."""
    from components.new_item_prior import fit_conditional_logit

    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 20, 5)).astype(np.float32)
    utility = 1.0 * features[..., 0] + 3.0 * features[..., 3] + rng.gumbel(size=(300, 20)) * 0.3
    excluded = np.zeros((300, 20), bool)
    excluded[:, 0] = True  # a seen item is never the target, whatever it scores
    utility[excluded] = -np.inf
    targets = utility.argmax(1)
    w = fit_conditional_logit(features, excluded, targets, penalty=0.0)
    assert w[3] > w[0] > max(w[1], w[2], w[4]) and (w >= 0).all()
    scores = np.where(excluded, -np.inf, features @ w)
    assert (scores.argmax(1) == targets).mean() > 0.8


def test_the_fitted_ranker_serves_as_the_bundles_blended_prior() -> None:
    """The fitted weights, as the bundle serves them (cosine + a blended count of the windows and the velocity + the
    never-seen bonus), order every user's new items exactly as the fitted ranker does."""
    from components.bundle_ops import ItemIndex, PopularityPrior
    from components.new_item_prior import NEW_ITEM_WINDOWS, new_item_features, served_form

    rng = np.random.default_rng(1)
    cosine = rng.normal(size=(40, 12)).astype(np.float32)
    counts = [rng.poisson(lam, size=(40, 12)).astype(np.float32) for lam in (6.0, 3.0, 1.0)]
    counts[0][:, :3] = counts[1][:, :3] = counts[2][:, :3] = 0  # three items nobody has met
    ages = np.where(counts[0] > 0, rng.uniform(0.1, 60, size=(40, 12)), 0).astype(np.float32)  # some under a day
    weights = np.array([2.0, 0.1, 0.3, 0.6, 0.4, 0.5])
    windows, velocity, bonus = served_form(weights)
    assert [d for d, _ in windows] == list(NEW_ITEM_WINDOWS)
    assert (velocity, bonus) == (pytest.approx(0.2), pytest.approx(0.25))
    ids = np.arange(100, 112)
    prior = PopularityPrior(ItemIndex(ids), {"new_item_windows": windows, "new_item_never_seen": bonus,
                                             "new_item_velocity": velocity, "new_item_ids": ids.tolist()})
    (part,) = prior.parts
    served = cosine + part.dense_boost(counts, ages)
    fitted = new_item_features(cosine, counts, ages) @ weights
    np.testing.assert_allclose(served * weights[0], fitted, rtol=1e-5, atol=1e-5)  # the same scores, scaled
    np.testing.assert_array_equal(np.argsort(-served, axis=1), np.argsort(-fitted, axis=1))


def test_warm_popularity_prior_is_chosen_on_validation_targets(dataset, tmp_path: Path) -> None:
    from components.model import load_model
    from components.popularity_prior import POPULARITY_WINDOWS, WARM_POPULARITY_WEIGHTS, choose_warm_popularity_weight
    from components.train import train_model
    from components.train_data import prepare_data, read_examples

    data_dir, canonical, examples = dataset
    config = tiny_config(data_dir, **{"train.epochs": 4})
    metrics = train_model(config, canonical, examples, tmp_path / "model", progress=False)
    cfg = json.loads((tmp_path / "model" / "model_config.json").read_text())
    assert metrics["popularity_weight"] == cfg["popularity_weight"] in WARM_POPULARITY_WEIGHTS
    assert cfg["popularity_window_days"] in POPULARITY_WINDOWS
    data = prepare_data(config, planted_tables(), read_examples(examples))
    model, _ = load_model(tmp_path / "model")
    weight, window, curve = choose_warm_popularity_weight(model, data, torch.device("cpu"))
    assert (weight, window) == (cfg["popularity_weight"], cfg["popularity_window_days"])
    best = max(c["val_ndcg@10"] for c in curve)
    chosen = [c for c in curve if c["weight"] == weight and (c["window_days"] == window or weight == 0)]
    assert chosen[0]["val_ndcg@10"] == best and curve[0]["weight"] == 0.0
    from components import popularity_prior

    n_items = len(data.validation.catalogue)
    with pytest.MonkeyPatch.context() as patch:  # users ranked 7 at a time: the same curve (memory bounded)
        patch.setattr(popularity_prior, "PRIOR_CELLS", 7 * n_items)
        chunked = choose_warm_popularity_weight(model, data, torch.device("cpu"))
    assert len(data.validation.users) > 7 and chunked[:2] == (weight, window)
    for got, want in zip(chunked[2], curve, strict=True):
        assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], abs=1e-12) for k in want)
    with pytest.MonkeyPatch.context() as patch:  # a catalogue too large for every user: a seeded sample of 11
        patch.setattr(popularity_prior, "PRIOR_GRID_CELLS", 11 * n_items)
        sampled = choose_warm_popularity_weight(model, data, torch.device("cpu"))
        again = choose_warm_popularity_weight(model, data, torch.device("cpu"))
    assert sampled == again and sampled[2] != curve and len(sampled[2]) == len(curve)


@pytest.mark.parametrize("schedule,warmup,expected", [
    ("constant", 0, [1.0, 1.0, 1.0, 1.0]),
    ("cosine", 0, [1.0, 0.8536, 0.5, 0.1464]),
    ("cosine", 1, [0.5, 1.0, 0.75, 0.25]),
])
def test_learning_rate_schedule(schedule: str, warmup: int, expected: list[float]) -> None:
    from components.config import load_config
    from components.train import lr_factor

    config = load_config(overrides=[f"train.lr_schedule={schedule}", f"train.warmup_epochs={warmup}",
                                    "train.epochs=4"])
    assert [round(lr_factor(config, epoch), 4) for epoch in range(1, 5)] == expected


def test_refit_trains_on_validation_targets_for_the_best_epoch_count(dataset, tmp_path: Path) -> None:
    from components.model import load_model
    from components.train import train_model
    from components.train_data import TrainError, prepare_data, read_examples

    data_dir, canonical, examples = dataset
    config = tiny_config(data_dir, **{"train.epochs": 3, "train.refit_on_validation": True})
    metrics = train_model(config, canonical, examples, tmp_path / "model", progress=False)
    assert metrics["refit_on_validation"] is True
    model, _ = load_model(tmp_path / "model")
    plain = prepare_data(config, planted_tables(), read_examples(examples))
    refit = prepare_data(config, planted_tables(), read_examples(examples), with_validation=True)
    assert refit.train_count.sum() == plain.train_count.sum() + len(plain.split.validation)
    np.testing.assert_array_equal(model.train_count[1:].numpy(), refit.train_count)  # the refit model was saved
    cfg = json.loads((tmp_path / "model" / "model_config.json").read_text())
    from components.train import PRIOR_CONFIG_KEYS  # every prior fitted on the early-stopped model, bonus included

    assert set(PRIOR_CONFIG_KEYS) <= set(cfg) and "new_item_never_seen_bonus" in PRIOR_CONFIG_KEYS
    with pytest.raises(TrainError, match="refit_on_validation"):
        train_model(tiny_config(data_dir, **{"train.refit_on_validation": True, "model.fine_tune_encoder": True}),
                    canonical, examples, tmp_path / "other", progress=False)
    with pytest.raises(TrainError, match="refit_on_validation"):
        train_model(tiny_config(data_dir, **{"train.refit_on_validation": True, "model.encoder_tuning": "lora"}),
                    canonical, examples, tmp_path / "other", progress=False)


def test_ensemble_trains_members_apart_and_serves_them_as_one_two_tower(dataset, tmp_path: Path) -> None:
    """model.ensemble_members=2: two members from seeds 42 and 43 (in two processes), joined into one artifact
    whose vectors are the members' concatenated / sqrt(2): its scores are the mean of the members' cosines, its
    user tower exports to ONNX and new items are embedded by every member."""
    from components.model import TwoTowerEnsemble, export_user_tower_onnx, load_recommender
    from components.schemas import read_tables
    from components.train import train_model

    data_dir, canonical, examples = dataset
    config = tiny_config(data_dir, **{"train.epochs": 3, "model.ensemble_members": 2, "train.member_processes": 2})
    metrics = train_model(config, canonical, examples, tmp_path / "ens", progress=False)
    assert metrics["ensemble_members"] == 2 and len(metrics["member_val_ndcg@10"]) == 2
    for i in range(2):  # a worker's epochs are in its member's log file
        assert "epoch 3:" in (tmp_path / "ens" / "members" / str(i) / "train.log").read_text()
    ensemble = load_recommender(tmp_path / "ens")
    members = [load_recommender(tmp_path / "ens" / "members" / str(i)) for i in range(2)]
    assert isinstance(ensemble.model, TwoTowerEnsemble) and ensemble.model.cfg["member_seeds"] == [42, 43]
    assert ensemble.item_embeddings.shape[1] == 2 * members[0].item_embeddings.shape[1]
    np.testing.assert_allclose(np.linalg.norm(ensemble.item_embeddings, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(members[0].item_embeddings, members[1].item_embeddings)  # different seeds
    tables = read_tables(canonical)
    users = tables["users"].head(5)
    histories = [tables["interactions"].query("user_id == @u")["item_id"].to_numpy()[-4:] for u in users["user_id"]]
    catalogue = np.asarray(ensemble.item_ids)
    expected = np.mean([m.score(users, histories, catalogue) for m in members], axis=0)
    np.testing.assert_allclose(ensemble.score(users, histories, catalogue), expected, atol=1e-5)
    export_user_tower_onnx(tmp_path / "ens", tmp_path / "user_tower.onnx")  # checks ONNX == torch itself
    new = tables["items"].head(2).assign(item_id=[10_001, 10_002])
    vectors = ensemble.add_items(new)
    joined = np.concatenate([m.add_items(new) for m in members], axis=1) / np.sqrt(2)
    np.testing.assert_allclose(vectors, joined, atol=1e-6)


def test_ensemble_budget_is_the_whole_ensembles_and_resume_keeps_finished_members(dataset, tmp_path: Path) -> None:
    """train.max_minutes bounds the ensemble: a member that would start with under a quarter of it left is not
    trained (here the second, after the first spent the budget) and the one trained serves alone; resuming keeps
    finished members as they are."""
    from components.model import TwoTowerModel, load_model
    from components.train import train_model

    data_dir, canonical, examples = dataset
    spent = tiny_config(data_dir, **{"model.ensemble_members": 2, "train.member_processes": 1,
                                     "train.max_minutes": 0.0001})
    metrics = train_model(spent, canonical, examples, tmp_path / "spent", progress=False)
    assert metrics["ensemble_members"] == 1 and not (tmp_path / "spent" / "members" / "1").exists()
    assert type(load_model(tmp_path / "spent")[0]) is TwoTowerModel
    config = tiny_config(data_dir, **{"model.ensemble_members": 2, "train.member_processes": 1, "train.epochs": 2})
    first = train_model(config, canonical, examples, tmp_path / "ens", progress=False)
    stamps = [(tmp_path / "ens" / "members" / str(i) / "model.pt").stat().st_mtime_ns for i in range(2)]
    again = train_model(config, canonical, examples, tmp_path / "ens", resume=True, progress=False)
    assert [(tmp_path / "ens" / "members" / str(i) / "model.pt").stat().st_mtime_ns for i in range(2)] == stamps
    assert again["test_ndcg@10"] == pytest.approx(first["test_ndcg@10"], abs=1e-6)
    assert again["member_val_ndcg@10"] == first["member_val_ndcg@10"]


@pytest.mark.parametrize("settings,expected", [
    ({}, 3),
    ({"model.ensemble_max_items": 10}, 1),  # the planted catalogue is larger: one two-tower
    ({"model.encoder_tuning": "lora"}, 1),  # each member would tune its own encoder
    ({"train.refit_on_validation": True}, 1),
])
def test_ensemble_size_falls_back_to_one_two_tower_where_an_ensemble_does_not_apply(
        dataset, settings: dict, expected: int, caplog) -> None:
    from components.train import ensemble_size

    data_dir, canonical, _ = dataset
    config = tiny_config(data_dir, **{"model.ensemble_members": 3, **settings})
    assert ensemble_size(config, canonical) == expected
    assert (expected == 1) == ("ignored: one two-tower is trained" in caplog.text)


def test_available_cpus_follows_a_pods_cpu_quota(tmp_path: Path, monkeypatch) -> None:
    from components.train import available_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # a limit of 1.5 CPUs
    assert available_cpus(quota) == 2
    quota.write_text("max 100000\n")  # no limit: the affinity
    assert available_cpus(quota) == 8
    assert available_cpus(tmp_path / "absent") == 8


def test_the_static_text_encoder_trains_compresses_and_embeds_new_items(dataset, tmp_path: Path) -> None:
    """model.text_encoder=wordllama-l2-256 (frozen): the model's text vectors are that encoder's (256 wide), the
    artifact records it, compression exports it (no layers to distil: that variant is skipped) and the bundle's
    text encoder gives back the model's text vectors, and a new item is embedded by it."""
    import pandas as pd

    from components.compress import run_compress
    from components.compress_export import encode_texts_onnx
    from components.model import load_model, load_recommender
    from components.text_encoder import WORDLLAMA, load_text_encoder
    from components.train import train_model

    data_dir, canonical, examples = dataset
    config = tiny_config(data_dir, **{"train.epochs": 3, "model.text_encoder": WORDLLAMA,
                                      "compress.distill_layers": 1, "compress.distill_epochs": 1,
                                      "compress.latency_repeats": 1})
    metrics = train_model(config, canonical, examples, tmp_path / "model", progress=False)
    assert np.isfinite(metrics["test_ndcg@10"])
    model, _ = load_model(tmp_path / "model")
    texts = _catalogue_texts(tmp_path / "model", canonical)
    assert model.cfg["encoder_dir"] == WORDLLAMA and model.cfg["text_dim"] == 256
    np.testing.assert_allclose(model.text[1:].numpy(), load_text_encoder(WORDLLAMA).encode(texts), atol=1e-6)

    comparison = run_compress(config, canonical, tmp_path / "model", tmp_path / "bundle", tmp_path / "report",
                              work_dir=tmp_path / "variants", progress=False)
    assert "distilled" not in comparison["variants"] and "pruned" in comparison["variants"]
    np.testing.assert_allclose(encode_texts_onnx(tmp_path / "bundle", texts), model.text[1:].numpy(), atol=1e-3)

    got = load_recommender(tmp_path / "model").add_items(pd.DataFrame({"item_id": [500], "text": [texts[0]]}))
    unknown = [torch.zeros(1, buffer.shape[1], dtype=torch.long) for buffer in model.attributes()]
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.content_vectors(model.text[1:2], unknown), dim=-1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_full_tuning_of_the_static_encoder_ships_the_tuned_table(dataset, tmp_path: Path) -> None:
    """encoder_tuning=full on a token table: the table's rows move, the saved static encoder (what the bundle
    exports and new items are embedded by) gives back the vectors the model was trained with."""
    from components.model import load_model
    from components.text_encoder import WORDLLAMA, is_static, load_text_encoder
    from components.train import train_model

    data_dir, canonical, examples = dataset
    config = tiny_config(data_dir, **{"train.epochs": 1, "model.text_encoder": WORDLLAMA,
                                      "model.encoder_tuning": "full", "model.encoder_learning_rate": 0.05})
    train_model(config, canonical, examples, tmp_path, progress=False)
    model, _ = load_model(tmp_path)
    texts = _catalogue_texts(tmp_path, canonical)
    assert model.cfg["encoder_dir"] == "encoder" and is_static(tmp_path / "encoder")
    tuned = load_text_encoder(tmp_path / "encoder").encode(texts)
    assert np.abs(tuned - load_text_encoder(WORDLLAMA).encode(texts)).max() > 1e-3
    np.testing.assert_allclose(tuned, model.text[1:].numpy(), atol=1e-4)
