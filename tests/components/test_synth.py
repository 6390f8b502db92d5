"""`recsys data synth`: deterministic, of another shape than MovieLens, with sequential structure."""

import numpy as np
import pandas as pd

from components.synth import SynthSpec, generate, write_synthetic


def test_same_seed_same_data_and_string_ids():
    spec = SynthSpec(users=80, items=60, events=3_000, seed=11)
    a, b = generate(spec), generate(spec)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert a["interactions"]["customer_id"].str.match(r"^c-[0-9a-f]{8}$").all()
    assert a["items"]["sku"].str.match(r"^SKU-\d+$").all()
    assert set(a["interactions"]["event_type"]) == {"view", "cart", "purchase"}
    assert set(a["interactions"]["customer_id"]) == set(a["users"]["customer_id"])


def test_items_are_only_met_after_they_are_listed_and_some_arrive_late():
    tables = generate(SynthSpec(users=200, items=100, events=8_000, seed=5))
    items = tables["items"].set_index("sku")
    listed = items.loc[tables["interactions"]["sku"], "listed_at"].to_numpy()
    assert (tables["interactions"]["ts"].to_numpy() >= listed).all()
    assert (items["listed_at"] > items["listed_at"].min()).mean() > 0.1


def test_the_next_item_is_predictable_from_the_sequence():
    """An item's most frequent successor covers far more transitions than in time-shuffled data."""
    inter = generate(SynthSpec(users=300, items=200, events=20_000, seed=2))["interactions"]

    def top_successor_share(frame: pd.DataFrame) -> float:
        frame = frame.sort_values(["customer_id", "ts"])
        nxt = frame.groupby("customer_id")["sku"].shift(-1)
        pairs = pd.DataFrame({"a": frame["sku"], "b": nxt}).dropna()
        counts = pairs.groupby(["a", "b"]).size()
        return float(counts.groupby(level=0).max().sum() / len(pairs))

    shuffled = inter.assign(ts=np.random.default_rng(0).permutation(inter["ts"].to_numpy()))
    assert top_successor_share(inter) > 2 * top_successor_share(shuffled)


def test_writes_files_schema_and_config(tmp_path):
    import yaml

    paths = write_synthetic(SynthSpec(users=20, items=15, events=300), tmp_path)
    config = yaml.safe_load(paths["config"].read_text())
    assert config["dataset"]["preset"] == str(paths["schema"])
    assert yaml.safe_load(paths["schema"].read_text())["user_id"] == {"column": "customer_id", "type": "string"}
    assert all(paths[n].is_file() for n in ("interactions", "users", "items"))


def test_synth_command_writes_a_data_set_that_ingests(tmp_path):
    """`recsys data synth` then `recsys --config <out>/config.yaml data ingest`, as the README says."""
    from typer.testing import CliRunner

    from recsys.main import app

    runner = CliRunner()
    out = tmp_path / "shop"
    made = runner.invoke(app, ["data", "synth", "--out", str(out), "--users", "40", "--items", "30", "--events",
                               "600", "--seed", "4"])
    assert made.exit_code == 0, made.output
    ingested = runner.invoke(app, ["--config", str(out / "config.yaml"), "--set", f"paths.data_dir={tmp_path}",
                                   "data", "ingest", "--out", str(tmp_path / "canonical")])
    assert ingested.exit_code == 0, ingested.output
    assert (tmp_path / "canonical" / "id_maps" / "user_ids.parquet").is_file()
    bad = runner.invoke(app, ["data", "synth", "--out", str(out), "--users", "0"])
    assert bad.exit_code != 0 and "users" in bad.output.lower()
