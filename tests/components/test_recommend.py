"""Batch recommendations (`recsys recommend`) and `recsys train --interactions` on the planted data set."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from components.schemas import check_recommendations
from tests.conftest import planted_tables, tiny_config, write_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def canonical(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("recommend"))[0]


def test_recommendations_exclude_seen_items(planted_model: Path, canonical: Path, tmp_path: Path) -> None:
    from components.recommend import recommend

    users = pd.DataFrame({"user_id": [1, 2, 3, 4, 5, 999]})  # 999: unknown user, profile only
    users.to_csv(tmp_path / "users.csv", index=False)
    recs = recommend(planted_model, tmp_path / "users.csv", canonical, 10, True, tmp_path / "recs.parquet")
    check_recommendations(recs)
    assert set(recs["user_id"]) == {1, 2, 3, 4, 5, 999}
    assert (recs.groupby("user_id").size() == 10).all()
    inter = planted_tables()["interactions"]
    seen = set(zip(inter["user_id"], inter["item_id"], strict=True))
    assert not any((u, i) in seen for u, i in zip(recs["user_id"], recs["item_id"], strict=True))
    written = pd.read_parquet(tmp_path / "recs.parquet")
    pd.testing.assert_frame_equal(written, recs)
    assert recs.groupby("user_id")["score"].apply(lambda s: s.is_monotonic_decreasing).all()


def test_recommend_cli_writes_csv_and_can_include_seen(planted_model: Path, canonical: Path,
                                                       tmp_path: Path) -> None:
    from recsys.main import app

    pd.DataFrame({"user_id": [1, 2]}).to_parquet(tmp_path / "users.parquet")
    out = tmp_path / "recs.csv"
    result = runner.invoke(app, ["recommend", "--users", str(tmp_path / "users.parquet"), "--model", str(planted_model),
                                 "--canonical", str(canonical), "--k", "36", "--include-seen", "--out", str(out)])
    assert result.exit_code == 0, result.output
    recs = pd.read_csv(out)
    check_recommendations(recs)
    assert (recs.groupby("user_id").size() == 36).all()  # the whole catalogue, seen items included

    bad = runner.invoke(app, ["recommend", "--users", str(tmp_path / "nope.csv"), "--model", str(planted_model),
                              "--canonical", str(canonical), "--out", str(out)])
    assert bad.exit_code == 1 and "not found" in bad.output


def test_next_item_is_recommended_first(planted_model: Path, canonical: Path) -> None:
    """The planted successor of a user's last item should usually top the list."""
    from components.model import load_recommender
    from components.recommend import recommend_users

    tables = planted_tables()
    inter = tables["interactions"]
    recs = recommend_users(load_recommender(planted_model), tables["users"][["user_id"]], inter, 1, True,
                           tables["users"])
    last = inter.sort_values("event_timestamp").groupby("user_id")["item_id"].last()
    successor = (last - 1) // 12 * 12 + (last % 12) + 1  # next item in the user's group ring
    hits = (recs.set_index("user_id")["item_id"] == successor.reindex(recs["user_id"]).to_numpy()).mean()
    assert hits >= 0.5


def test_train_cli_from_an_interactions_file(tmp_path: Path) -> None:
    from recsys.main import app

    tables = planted_tables(n_users=30)
    inter_file, users_file, items_file = tmp_path / "inter.csv", tmp_path / "users.csv", tmp_path / "items.parquet"
    tables["interactions"].to_csv(inter_file, index=False)
    tables["users"].to_csv(users_file, index=False)
    tables["items"].to_parquet(items_file)
    # fake text embeddings in the cache: the CLI path is under test here, not the encoder
    from components.text_encoder import store_text_embeddings

    texts = tables["items"].sort_values("item_id")["text"].tolist()
    rng = np.random.default_rng(0)
    store_text_embeddings(texts, rng.normal(size=(len(texts), 384)).astype(np.float32), None, tmp_path / "cache")
    config = tiny_config(tmp_path, **{"train.epochs": 2})
    sets = [f"{k}={v}" for k, v in config.dump()["train"].items()]
    sets = [f"train.{s}" for s in sets] + [f"paths.data_dir={tmp_path}", "model.embedding_dim=32",
                                           "model.max_seq_len=8", "evaluate.cold_start_items=0"]
    args = [a for s in sets for a in ("--set", s)]
    result = runner.invoke(app, [*args, "train", "--interactions", str(inter_file), "--users", str(users_file),
                                 "--items", str(items_file), "--out", str(tmp_path / "model")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model" / "item_embeddings.npy").is_file()
    assert len(np.load(tmp_path / "model" / "item_ids.npy")) == 36


def test_users_file_and_output_speak_external_ids(planted_model: Path, canonical: Path,
                                                  tmp_path: Path) -> None:
    """With id maps beside the tables, batch recommendations read and write the data set's own ids."""
    import shutil

    from components.id_maps import IdMap, save_id_maps
    from components.recommend import recommend
    from components.schemas import read_tables

    folder = tmp_path / "canonical"
    shutil.copytree(canonical, folder)
    tables = read_tables(folder)
    users, items = sorted(tables["users"]["user_id"]), sorted(tables["items"]["item_id"])
    save_id_maps(folder / "id_maps", {
        "user": IdMap("user", "string", pd.DataFrame({"external_id": [f"u-{k}" for k in users], "key": users})),
        "item": IdMap("item", "string", pd.DataFrame({"external_id": [f"SKU-{k}" for k in items], "key": items})),
    })
    pd.DataFrame({"user_id": ["u-1", "u-2", "u-brand-new"]}).to_csv(tmp_path / "users.csv", index=False)
    recs = recommend(planted_model, tmp_path / "users.csv", folder, 5, True, tmp_path / "recs.csv")
    check_recommendations(recs)
    assert set(recs["user_id"]) == {"u-1", "u-2", "u-brand-new"}  # an unknown id is a cold-start user
    assert recs["item_id"].str.match(r"^SKU-\d+$").all()
    by_key = recommend(planted_model, _write_users(tmp_path, [1, 2]), canonical, 5, True, tmp_path / "k.csv")
    assert [f"SKU-{i}" for i in by_key[by_key.user_id == 1]["item_id"]] == recs[recs.user_id == "u-1"][
        "item_id"].tolist()  # the same ranking, in external ids


def _write_users(folder: Path, ids: list) -> Path:
    path = folder / "users_by_key.csv"
    pd.DataFrame({"user_id": ids}).to_csv(path, index=False)
    return path
