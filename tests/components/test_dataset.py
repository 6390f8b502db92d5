"""The dataset declaration: presets load, bad declarations are refused with the key named."""

import pytest

from components.config import ConfigError, load_config
from components.dataset import bucket_label, bucket_labels, template_fields
from components.synth import schema as shop_schema


def test_movielens_is_the_default_preset():
    dataset = load_config().dataset
    assert dataset.name == "movielens-100k"
    assert dataset.user_id.type == "int" and dataset.feedback.kind == "explicit"
    assert (dataset.feedback.min, dataset.feedback.max) == (1, 5)
    assert set(dataset.user_attributes) == {"age", "gender", "occupation"}
    assert dataset.item_attributes["genres"].kind == "multi_categorical"
    assert dataset.filterable == {"genres": "membership", "year": "range"}
    assert dataset.fairness_groups == ["gender", "age"]
    assert dataset.replay_cohort == "age<30"
    assert template_fields(dataset.text_template) == {"title", "year", "genres"}


def test_a_schema_file_replaces_the_preset(tmp_path):
    import yaml

    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump(shop_schema()))
    dataset = load_config(overrides=[f"dataset.preset={path}"]).dataset
    assert dataset.user_id.type == "string" and dataset.feedback.kind == "events"
    assert set(dataset.user_attributes) == {"country", "segment", "tenure_days", "channel"}
    assert dataset.user_attributes["channel"].column == "signup_channel"  # a column rename
    assert dataset.replay_cohort == "segment=vip"


def test_keys_beside_the_preset_are_merged_into_it():
    dataset = load_config(overrides=["dataset.fairness_groups=[gender]"]).dataset
    assert dataset.fairness_groups == ["gender"] and dataset.name == "movielens-100k"
    dataset = load_config(overrides=["dataset.user_attributes.age.edges=[30, 60]"]).dataset
    assert dataset.user_attributes["age"].edges == [30, 60] and dataset.user_attributes["age"].max == 120


@pytest.mark.parametrize(("override", "message"), [
    ("dataset.user_attributes.age.kind=histogram", "dataset.user_attributes.age.kind"),
    ("dataset.user_attributes.gender.on_unknown=explode", "dataset.user_attributes.gender.on_unknown"),
    ("dataset.text_template='{title} by {director}'", "text_template names ['director']"),
    ("dataset.filterable={genres: range}", "'genres' is multi_categorical; use membership"),
    ("dataset.fairness_groups=[zip_code]", "'zip_code' is not a declared user attribute"),
    ("dataset.replay_cohort='zip_code=1'", "replay_cohort: 'zip_code' is not a declared user attribute"),
    ("dataset.replay_cohort='age~30'", "replay_cohort: 'age~30' is not '<attribute><op><value>'"),
    ("dataset.user_attributes.age.edges=[30, 20]", "strictly ascending edges"),
    ("dataset.feedback={kind: explicit, column: rating, min: 5, max: 1}", "min 5.0 must be below max 1.0"),
    ("dataset.feedback={kind: events, column: kind}", "events feedback needs column and weights"),
    ("dataset.user_id={column: uid, type: uuid}", "dataset.user_id.type"),
    ("dataset.preset=/nonexistent/schema.yaml", "dataset schema file not found: /nonexistent/schema.yaml"),
    ("dataset.colour=blue", "dataset.colour"),
])
def test_bad_declarations_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert message in str(err.value)


def test_bucket_labels():
    edges = [18, 25, 35, 45, 50, 56]
    assert bucket_labels(edges) == ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
    assert [bucket_label(v, edges) for v in (7, 18, 24.5, 56, None, "x")] == ["<18", "18-24", "18-24", "56+",
                                                                             None, None]
    assert bucket_labels([0.5, 2.5]) == ("<0.5", "0.5-2.5", "2.5+")
