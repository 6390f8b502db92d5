import pandas as pd
import pytest

from components.config import load_config
from components.ingest import IngestError, coerce_table, ingest, read_table_file
from components.movielens import SHA256, _split_title, fetch_movielens, movielens_to_canonical
from components.schemas import SchemaError, read_tables
from tests.conftest import write_csvs


def test_user_csvs_become_canonical(tables, tmp_path):
    paths = write_csvs(tables, tmp_path / "in")
    config = load_config(overrides=[
        "data.source=files", f"data.interactions_path={paths['interactions']}",
        f"data.users_path={paths['users']}", f"data.items_path={paths['items']}",
    ])
    counts = ingest(config, tmp_path / "out")
    assert counts == {"interactions": 200, "users": 20, "items": 30}
    out = read_tables(tmp_path / "out")
    inter = out["interactions"]
    assert str(inter["user_id"].dtype) == "int64" and str(inter["item_id"].dtype) == "int64"
    assert str(inter["rating"].dtype) == "float32"
    assert str(inter["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert out["items"]["text"].str.contains("Genres").all()


def test_unix_seconds_and_iso_strings_become_utc():
    df = pd.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "rating": [1, 5], "event_timestamp": [0, 86400]})
    out = coerce_table(df, "interactions")
    assert out["event_timestamp"].iloc[1] == pd.Timestamp("1970-01-02", tz="UTC")
    df["event_timestamp"] = ["2024-01-01T10:00:00+02:00", "2024-01-01 08:00:00Z"]
    out = coerce_table(df, "interactions")
    assert (out["event_timestamp"] == pd.Timestamp("2024-01-01 08:00", tz="UTC")).all()


def test_implicit_feedback_has_null_ratings():
    df = pd.DataFrame({"user_id": [1], "item_id": [3], "event_timestamp": [0]})
    out = coerce_table(df, "interactions")
    assert out["rating"].isna().all() and str(out["rating"].dtype) == "float32"


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("user_id", ["a", "b"], r"interactions.user_id: 2 value\(s\) are not integers"),
        ("rating", ["good", 3], r"interactions.rating: 1 value\(s\) are not numbers"),
        ("event_timestamp", ["yesterday", 0], r"interactions.event_timestamp: 1 value\(s\) are not timestamps"),
        ("item_id", [1.5, 2], "non-integer ids"),
    ],
)
def test_bad_values_are_named(column, values, message):
    df = pd.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "rating": [1, 5], "event_timestamp": [0, 1]})
    df[column] = values
    with pytest.raises(SchemaError, match=message):
        coerce_table(df, "interactions")


def test_unreadable_files_are_named(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(IngestError, match="empty.csv: file is empty"):
        read_table_file(empty)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("user_id,title\n1,Am\xe9lie\n".encode("latin-1"))
    with pytest.raises(IngestError, match="not valid UTF-8"):
        read_table_file(latin)
    with pytest.raises(IngestError, match="file not found"):
        read_table_file(tmp_path / "missing.parquet")


def test_movielens_title_parsing():
    assert _split_title("Toy Story (1995)") == ("Toy Story", 1995)
    assert _split_title("Unknown") == ("Unknown", None)


@pytest.mark.integration
def test_movielens_fetch_is_verified_and_cached(tmp_path):
    folder = fetch_movielens("data")
    assert sorted(p.name for p in folder.iterdir()) == sorted(SHA256)
    assert fetch_movielens("data") == folder  # cached: no second download
    tables = movielens_to_canonical(folder)
    assert len(tables["interactions"]) == 100_000 and len(tables["users"]) == 943 and len(tables["items"]) == 1682
    toy = tables["items"].set_index("item_id").loc[1]
    assert toy["title"] == "Toy Story" and toy["year"] == 1995 and "Animation" in toy["genres"].split("|")


# ------------------------------------------------------------------ every data set shape (tests.conftest.SOURCES)
def test_ingest_and_validate_over_each_data_set(source_dataset, tmp_path):
    from components.validate import validate

    config = load_config(source_dataset.config_path)
    counts = ingest(config, tmp_path / "canonical")
    report = validate(config, tmp_path / "canonical", tmp_path / "validated", tmp_path / "docs")
    assert report.success and counts["interactions"] > 0
    out = read_tables(tmp_path / "validated")
    inter, users, items = out["interactions"], out["users"], out["items"]
    assert str(inter["user_id"].dtype) == "int64" and str(inter["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert inter["user_id"].min() >= 1 and set(inter["item_id"]) <= set(items["item_id"])
    schema = config.dataset
    assert set(schema.user_attributes) <= set(users.columns) and set(schema.item_attributes) <= set(items.columns)
    assert (tmp_path / "validated" / "id_maps" / "manifest.json").is_file()
    if source_dataset.name == "shop":
        assert inter["rating"].isin([1.0, 3.0, 5.0]).all()  # event weights
        assert items["text"].str.contains(" by brand-").all() and items["text"].str.contains("Tags: ").all()
        raw = pd.read_parquet(source_dataset.files["interactions"]).iloc[0]
        local = pd.Timestamp(raw["ts"]).tz_localize("Europe/Berlin").tz_convert("UTC")
        assert local in set(inter["event_timestamp"])  # naive times read in the declared zone


def _shop_break(change):
    def run(source):
        table, edit = change
        frame = pd.read_parquet(source.files[table])
        edit(frame).to_parquet(source.files[table], index=False)
    return run


SHOP_BAD_INPUTS = {
    "declared column missing": (_shop_break(("users", lambda f: f.drop(columns=["segment"]))),
                                "users.segment: expect_column_to_exist failed"),
    "template column missing": (_shop_break(("items", lambda f: f.drop(columns=["brand"]))),
                                "items: column 'brand' (dataset.item_attributes.brand (text_template))"),
    "value outside declared range": (_shop_break(("items", lambda f: f.assign(price=-5.0))),
                                     "items.price: expect_column_values_to_be_between failed"),
    "unknown category": (_shop_break(("users", lambda f: f.assign(country="XX"))),
                         "users.country: expect_column_values_to_be_in_set failed"),
    "unknown multi-valued category": (_shop_break(("items", lambda f: f.assign(tags="eco,weird"))),
                                      "items.tags.tags: expect_column_values_to_be_in_set failed"),
    "unknown event type": (_shop_break(("interactions", lambda f: f.assign(event_type="refund"))),
                           "interactions.event_type: event type(s) ['refund'] are not in dataset.feedback.weights"),
    "id column missing": (_shop_break(("interactions", lambda f: f.drop(columns=["ts"]))),
                          "interactions: column 'ts' (dataset.event_time.column) is not in the file"),
}


@pytest.mark.parametrize("case", sorted(SHOP_BAD_INPUTS))
def test_shop_bad_inputs_are_named_and_nothing_is_written(tmp_path, case):
    from components.errors import RecsysError
    from components.validate import validate
    from tests.conftest import shop_source

    source = shop_source(tmp_path / "shop")
    breaker, message = SHOP_BAD_INPUTS[case]
    breaker(source)
    config = load_config(source.config_path)
    with pytest.raises(RecsysError) as err:
        ingest(config, tmp_path / "canonical")
        validate(config, tmp_path / "canonical", tmp_path / "validated", tmp_path / "docs")
    assert message in str(err.value)
    assert not (tmp_path / "validated").exists() and not (tmp_path / "shop" / "data" / "id_maps").exists()
