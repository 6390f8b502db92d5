import pytest

from components.config import (
    ConfigError,
    absolute_paths,
    config_from_text,
    config_to_text,
    load_config,
    parse_overrides,
    write_config,
)


def _same_value(got: object, written: object, where: str) -> None:
    """`got` is `written`: same keys, same length, same scalar type (a whole number written for a float field is
    that float, nothing else is converted) and equal."""
    if isinstance(written, dict):
        assert isinstance(got, dict) and set(got) == set(written), f"{where}: keys {sorted(got)} != {sorted(written)}"
        for key, value in written.items():
            _same_value(got[key], value, f"{where}.{key}")
    elif isinstance(written, list):
        assert isinstance(got, list) and len(got) == len(written), f"{where}: {got!r} != {written!r}"
        for i, (item, value) in enumerate(zip(got, written, strict=True)):
            _same_value(item, value, f"{where}[{i}]")
    else:
        number = isinstance(written, int) and not isinstance(written, bool) and type(got) is float
        assert type(got) is type(written) or number, f"{where}: {got!r} is a {type(got).__name__}, not as written"
        assert got == written, f"{where}: {got!r} != {written!r}"


def test_defaults_are_the_documented_values():
    """Every key of components/defaults.yaml reaches the loaded config with the value and type written there."""
    import yaml

    from components.config import DEFAULTS_PATH, PROJECT_ROOT

    written = yaml.safe_load(DEFAULTS_PATH.read_text())
    written["features"]["repo_path"] = str(PROJECT_ROOT / written["features"]["repo_path"])  # anchored at the project
    dumped = load_config().dump()
    assert set(dumped) == set(written)
    for section, values in written.items():
        if section != "dataset":  # a preset name, expanded into the declaration
            _same_value(dumped[section], values, section)
    assert load_config().dataset.name == "movielens-100k"


def test_the_feature_repository_is_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (load_config().features.repo_path / "definitions.py").is_file()


def test_file_then_overrides_layering(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("train:\n  epochs: 7\n  batch_size: 64\n")
    config = load_config(user, ["train.epochs=3", "model.fine_tune_encoder=true"])
    assert config.train.epochs == 3  # override beats file
    assert config.train.batch_size == 64  # file beats defaults
    assert config.model.fine_tune_encoder is True


def test_encoder_tuning_and_the_earlier_fine_tune_switch():
    from components.config import config_from_text, config_to_text

    default = load_config().model
    assert default.encoder_tuning == "frozen" and default.fine_tune_encoder is False
    assert load_config(overrides=["model.fine_tune_encoder=true"]).model.encoder_tuning == "full"
    full = load_config(overrides=["model.encoder_tuning=full"]).model
    assert full.fine_tune_encoder is True and full.needs_gpu is False  # tuning the default token table: a CPU job
    minilm = load_config(overrides=["model.encoder_tuning=full", "model.text_encoder=all-MiniLM-L6-v2"]).model
    assert minilm.needs_gpu is True and default.needs_gpu is False  # what the pipelines read to ask for a GPU node
    lora = load_config(overrides=["model.encoder_tuning=lora", "model.text_encoder=all-MiniLM-L6-v2"])
    assert lora.model.fine_tune_encoder is False
    assert config_from_text(config_to_text(lora)).model.encoder_tuning == "lora"
    with pytest.raises(ConfigError, match="contradicts encoder_tuning=adapter"):
        load_config(overrides=["model.encoder_tuning=adapter", "model.fine_tune_encoder=true"])
    with pytest.raises(ConfigError, match="model.encoder_tuning"):
        load_config(overrides=["model.encoder_tuning=partial"])


def test_the_text_encoder_is_a_shipped_one_and_fits_the_tuning(tmp_path):
    default = load_config().model
    assert default.text_encoder == "wordllama-l2-256" and default.encoder_source == "wordllama-l2-256"
    transformer = load_config(overrides=["model.text_encoder=all-MiniLM-L6-v2"]).model
    assert transformer.encoder_source == "all-MiniLM-L6-v2"
    assert load_config(overrides=["model.text_encoder=all-MiniLM-L6-v2",
                                  "model.encoder_tuning=lora"]).model.encoder_tuning == "lora"
    assert load_config(overrides=[f"model.encoder_dir={tmp_path}"]).model.encoder_source == tmp_path  # a folder wins
    with pytest.raises(ConfigError, match="model.text_encoder"):
        load_config(overrides=["model.text_encoder=bert-large"])
    with pytest.raises(ConfigError, match="encoder_tuning=lora .* model.text_encoder=wordllama-l2-256 is a static"):
        load_config(overrides=["model.text_encoder=wordllama-l2-256", "model.encoder_tuning=lora"])
    for tuning in ("frozen", "adapter", "full"):
        assert load_config(overrides=["model.text_encoder=wordllama-l2-256",
                                      f"model.encoder_tuning={tuning}"]).model.encoder_tuning == tuning


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'train.epochz'"):
        load_config(overrides=["train.epochz=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian:\n  epochs: 1\n")
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        load_config(bad)


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"train.epochs: .*greater than or equal to 1"):
        load_config(overrides=["train.epochs=0"])
    with pytest.raises(ConfigError, match="features.online_store"):
        load_config(overrides=["features.online_store=cassandra"])


def test_files_source_needs_paths():
    with pytest.raises(ConfigError, match="data.source=files needs"):
        load_config(overrides=["data.source=files"])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        parse_overrides(["epochs"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_text_round_trip_and_absolute_paths(tmp_path):
    config = load_config(overrides=["train.epochs=2"])
    assert config_from_text(config_to_text(config)) == config
    anchored = absolute_paths(config, tmp_path)
    assert anchored.paths.data_dir == tmp_path / "data"
    assert anchored.train.epochs == 2


def test_a_declared_data_set_survives_the_round_trips_to_pipeline_steps(tmp_path):
    """A step reloads the resolved config over the defaults: the default preset must not leak back in."""
    from components.synth import SynthSpec, write_synthetic

    paths = write_synthetic(SynthSpec(users=30, items=20, events=200, days=10), tmp_path / "shop")
    config = load_config(paths["config"])
    assert config.dataset.name == "synthetic-shop"
    for again in (config_from_text(config_to_text(config)), load_config(write_config(config, tmp_path / "c.yaml"))):
        assert again.dataset == config.dataset
        assert "gender" not in again.dataset.user_attributes


def test_request_log_is_a_path_or_a_postgres_url_without_password(tmp_path):
    from pathlib import Path

    assert load_config().serving.request_log == Path("artifacts/request_log.sqlite")
    url = "postgresql://recsys@db.example:5432/recsys"
    config = load_config(overrides=[f"serving.request_log={url}"])
    assert config.serving.request_log == url and absolute_paths(config, tmp_path).serving.request_log == url
    assert config_from_text(config_to_text(config)).serving.request_log == url
    for leaky in ("postgresql://recsys:hunter2@db.example/recsys", "postgresql://db.example/recsys?password=hunter2"):
        with pytest.raises(ConfigError, match="carries a password") as err:
            load_config(overrides=[f"serving.request_log={leaky}"])
        assert "hunter2" not in str(err.value)
    with pytest.raises(ConfigError, match="request_log_retention_days"):
        load_config(overrides=["serving.request_log_retention_days=0"])


def test_several_api_workers_need_the_shared_postgres_log():
    url = "postgresql://recsys@db.example:5432/recsys"
    assert load_config(overrides=[f"serving.request_log={url}", "serving.api_workers=4"]).serving.api_workers == 4
    with pytest.raises(ConfigError, match=r"api_workers=2 needs a request log the workers share.*postgresql://"):
        load_config(overrides=["serving.api_workers=2"])  # the default SQLite file has one writer process
