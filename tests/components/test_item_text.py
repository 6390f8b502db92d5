"""The item text: one composition from the declared template, for ingest, training, evaluation and compression."""

from pathlib import Path

import numpy as np
import pandas as pd

from components.config import load_config
from components.item_text import ItemText, model_item_texts, recorded_item_text
from tests.conftest import planted_tables, tiny_config, write_dataset


def test_ingested_texts_are_the_templates_and_a_model_records_it_only_when_it_composed_them(
        source_dataset, tmp_path: Path) -> None:
    from components.ingest import ingest
    from components.schemas import read_tables

    config = load_config(source_dataset.config_path)
    ingest(config, tmp_path / "canonical")
    items = read_tables(tmp_path / "canonical")["items"]
    declared = ItemText.of(config.dataset)
    assert declared.compose(items) == items["text"].tolist()
    recorded = recorded_item_text(items, config.dataset)
    assert recorded is not None and recorded.to_dict() == declared.to_dict()
    assert ItemText.from_dict(recorded.to_dict()).compose(items) == items["text"].tolist()  # the stored form

    titles_only = config.dataset.model_copy(update={"text_template": "{title}"})
    assert recorded_item_text(items, titles_only) is None  # the text column was composed another way
    assert model_item_texts(items, ItemText.of(titles_only).to_dict()) == items["title"].astype(str).tolist()
    assert model_item_texts(items, None) == items["text"].tolist()
    assert model_item_texts(items[["item_id", "text"]], declared.to_dict()) == items["text"].tolist()  # no fields


def test_a_new_item_is_embedded_from_the_template_the_model_was_trained_with(tmp_path: Path) -> None:
    """Evaluating a model on tables ingested under another template (an ablation of templates) embeds the new
    items as the model's training items were composed, not from the other template's text column."""
    from components.model import TwoTowerRecommender
    from components.train import train_model

    tables = planted_tables()
    items = tables["items"]
    items["genres"] = items["title"].str.split().str[0] + "|Story"  # the planted group, as a genre
    config = tiny_config(tmp_path / "data", **{"train.epochs": 1})
    template = ItemText.of(config.dataset)
    items["text"] = template.compose(items)
    canonical, examples = write_dataset(tmp_path / "data", tables)
    train_model(config, canonical, examples, tmp_path / "model", progress=False)

    new = pd.DataFrame({"item_id": [1000], "title": ["Starship"], "year": [1990], "genres": ["Space|Story"]})
    as_trained = new.assign(text=template.compose(new))
    other = new.assign(text=["Starship, a film"])
    vectors = {}
    for name, frame in (("as trained", as_trained), ("other text column", other)):
        vectors[name] = TwoTowerRecommender(tmp_path / "model").add_items(frame)[0]
    np.testing.assert_allclose(vectors["other text column"], vectors["as trained"], atol=1e-6)
    untemplated = TwoTowerRecommender(tmp_path / "model")
    assert untemplated.cfg["item_text"]["template"] == config.dataset.text_template
    untemplated.cfg["item_text"] = None  # a model that records no template reads the text column as given
    assert not np.allclose(untemplated.add_items(other)[0], vectors["as trained"], atol=1e-3)
