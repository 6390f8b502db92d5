"""Attribute encoders: one vocabulary per declared attribute, the same indices from frames, dicts and manifests."""

import numpy as np
import pandas as pd

from components.config import load_config
from components.encoders import ItemEncoder, ProfileEncoder
from components.synth import SynthSpec, generate
from tests.conftest import small_tables

MOVIELENS = load_config().dataset


def test_movielens_profile_matches_bands_and_categories():
    users = small_tables()["users"]
    encoder = ProfileEncoder.fit(users, MOVIELENS)
    assert encoder.fields == ["age", "gender", "occupation"]
    assert list(encoder.codes[0].vocab) == ["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]
    assert encoder.codes[1].vocab == {"F": 1, "M": 2}
    rows = [{"age": 30, "gender": "M", "occupation": "engineer"}, {"age": None, "gender": "X"}, {}]
    got = encoder.encode(rows)
    assert got.tolist()[0] == [3, 2, encoder.codes[2].vocab["engineer"]]
    assert got.tolist()[1:] == [[0, 0, 0], [0, 0, 0]]  # unknown and unseen values -> 0
    frame = pd.DataFrame(rows)
    assert np.array_equal(encoder.encode(frame), got)
    assert np.array_equal(ProfileEncoder.from_dict(encoder.to_dict()).encode(rows), got)  # through a manifest
    assert [encoder.encode_one(row) for row in rows] == got.tolist()  # one profile (the API's hot path)


def test_movielens_items_year_as_category_genres_padded():
    items = small_tables()["items"]
    encoder = ItemEncoder.fit(items, MOVIELENS)
    year, genres = encoder.encode(items)
    assert year.shape == (len(items), 1) and genres.shape == (len(items), 2)  # "Action|Thriller" is the widest
    assert set(encoder.codes[1].vocab) == {"Action", "Comedy", "Drama", "Thriller"}
    row = items.index[items["genres"] == "Action|Thriller"][0]
    assert sorted(genres[row]) == sorted([encoder.codes[1].vocab["Action"], encoder.codes[1].vocab["Thriller"]])
    assert encoder.codes[0].kind == "value" and year[0, 0] == encoder.codes[0].vocab[str(items["year"].iloc[0])]


def test_shop_attributes_prices_in_quantile_bands_and_tags():
    from components.dataset import DatasetSchema
    from components.synth import schema

    tables = generate(SynthSpec(users=50, items=120, events=2_000, seed=1))
    dataset = DatasetSchema.model_validate(schema())
    items = tables["items"].rename(columns={"name": "title"})
    items["tags"] = items["tags"].str.replace(",", "|")
    encoder = ItemEncoder.fit(items, dataset)
    kinds = {c.source: c.kind for c in encoder.codes}
    assert kinds == {"category": "value", "brand": "value", "tags": "multi", "price": "band"}
    blocks = dict(zip([c.source for c in encoder.codes], encoder.encode(items), strict=True))
    assert len(np.unique(blocks["price"])) > 8  # continuous prices spread over the bands
    assert (np.diff(blocks["price"][np.argsort(items["price"].to_numpy()), 0]) >= 0).all()  # bands keep order
    users = tables["users"].rename(columns={"signup_channel": "channel"})
    profile = ProfileEncoder.fit(users, dataset).encode(users)
    assert profile.shape == (len(users), 4) and (profile > 0).all()

