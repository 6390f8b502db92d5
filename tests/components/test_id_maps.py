"""Id maps: keys never change across re-ingests, new ids are appended, hand edits and duplicates are refused."""

import pandas as pd
import pytest

from components.config import load_config
from components.id_maps import IdMap, IdMapError, load_id_maps, map_path, save_id_maps
from components.ingest import id_maps_dir, ingest
from components.schemas import read_tables
from components.validate import validate
from tests.conftest import shop_source


def _ingest_and_commit(config, folder):
    ingest(config, folder / "canonical")
    validate(config, folder / "canonical", folder / "validated", folder / "docs")
    return read_tables(folder / "validated")


def test_keys_are_stable_and_new_ids_are_appended(tmp_path):
    source = shop_source(tmp_path / "shop")
    config = load_config(source.config_path)
    types = {"user": "string", "item": "string"}
    _ingest_and_commit(config, tmp_path / "run1")
    first = load_id_maps(id_maps_dir(config), types)
    users = pd.read_parquet(source.files["users"])
    newcomer = users.head(1).assign(customer_id="c-newcomer")
    pd.concat([newcomer, users.iloc[::-1]]).to_parquet(source.files["users"], index=False)  # new order, one new
    inter = pd.read_parquet(source.files["interactions"])
    pd.concat([inter, inter.head(1).assign(customer_id="c-newcomer")]).to_parquet(source.files["interactions"])
    second_tables = _ingest_and_commit(config, tmp_path / "run2")
    second = load_id_maps(id_maps_dir(config), types)
    n = len(first["user"])
    assert second["user"].table.head(n).equals(first["user"].table)  # every old key kept
    assert second["user"].externals_of([n + 1]) == ["c-newcomer"]
    assert second["item"].table.equals(first["item"].table)
    keys = second["user"].keys_of(pd.Series(["c-newcomer"]), "test")
    assert keys.iloc[0] in set(second_tables["interactions"]["user_id"])


def test_a_hand_edited_map_is_refused_and_nothing_is_written(tmp_path):
    source = shop_source(tmp_path / "shop")
    config = load_config(source.config_path)
    _ingest_and_commit(config, tmp_path / "run1")
    path = map_path(id_maps_dir(config), "user")
    table = pd.read_parquet(path)
    table.loc[0, "key"], table.loc[1, "key"] = table.loc[1, "key"], table.loc[0, "key"]  # swap two keys
    table.to_parquet(path, index=False)
    with pytest.raises(IdMapError, match=r"user_ids.parquet was changed outside ingest"):
        ingest(config, tmp_path / "run2" / "canonical")
    assert not (tmp_path / "run2").exists()


def test_duplicate_external_ids_are_named(tmp_path):
    source = shop_source(tmp_path / "shop")
    items = pd.read_parquet(source.files["items"])
    pd.concat([items, items.tail(1)]).to_parquet(source.files["items"], index=False)
    with pytest.raises(IdMapError, match=rf"items.sku: external id\(s\) \['{items['sku'].iloc[-1]}'\] appear more"):
        ingest(load_config(source.config_path), tmp_path / "canonical")
    assert not (tmp_path / "canonical").exists()


def test_string_ids_get_dense_keys_and_int_ids_are_their_own_keys(tmp_path):
    from components.id_maps import normalise_ids

    strings = IdMap.empty("user", "string").extended(pd.Series(["c", "a", "b"]))
    assert strings.keys_of(pd.Series(["a", "b", "c"]), "t").tolist() == [1, 2, 3]  # sorted on first ingest
    assert strings.extended(pd.Series(["0", "a"])).keys_of(pd.Series(["0"]), "t").tolist() == [4]  # appended
    ints = IdMap.empty("item", "int").extended(pd.Series([30, 10, 20]))
    assert ints.keys_of(pd.Series([10, 20, 30]), "t").tolist() == [10, 20, 30]
    with pytest.raises(IdMapError, match=r"items.sku: integer ids must be >= 1"):
        normalise_ids(pd.Series([0, 3]), "int", "items.sku")
    with pytest.raises(IdMapError, match=r"not integers, e.g. \['x'\] \(declare type: string"):
        normalise_ids(pd.Series(["x", 3]), "int", "items.sku")
    broken = IdMap("user", "string", pd.DataFrame({"external_id": ["a", "a"], "key": [1, 2]}))
    with pytest.raises(IdMapError, match=r"external id\(s\) \['a'\] appear more than once"):
        save_id_maps(tmp_path, {"user": broken})
    with pytest.raises(IdMapError, match="not in the user id map"):
        strings.keys_of(pd.Series(["zz"]), "interactions.user_id")
