"""The validation gate: good data passes; every bad input of the catalogue fails clearly and writes nothing."""

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from components.config import load_config
from components.schemas import write_tables
from components.validate import ValidationFailed, validate
from recsys.main import app
from tests.conftest import small_tables, write_csvs

runner = CliRunner()


def _ingest_and_validate(tmp_path, tables, tamper=None) -> tuple[int, str]:
    """Run `recsys data ingest` then `recsys data validate` like a user would; return (exit code, output)."""
    paths = write_csvs(tables, tmp_path / "in")
    if tamper:
        tamper(paths)
    canonical, validated = tmp_path / "canonical", tmp_path / "validated"
    isolated = ["--set", f"paths.data_dir={tmp_path / 'data'}"]  # id maps live under the data folder
    result = runner.invoke(app, [
        *isolated, "data", "ingest", "--out", str(canonical), "--interactions", str(paths["interactions"]),
        "--users", str(paths["users"]), "--items", str(paths["items"]),
    ])
    if result.exit_code == 0:
        result = runner.invoke(app, [
            *isolated, "data", "validate", "--canonical", str(canonical), "--out", str(validated),
            "--docs", str(tmp_path / "docs"),
        ])
    assert not validated.exists() or result.exit_code == 0, "a failed gate must leave no validated output"
    return result.exit_code, " ".join(result.output.split())


def test_good_data_passes_with_docs_and_statistics(tmp_path, tables):
    code, out = _ingest_and_validate(tmp_path, tables)
    assert code == 0, out
    assert (tmp_path / "validated" / "interactions.parquet").exists()
    assert (tmp_path / "docs" / "index.html").exists()
    summary = json.loads((tmp_path / "docs" / "summary.json").read_text())
    assert summary["success"] is True and summary["failures"] == []
    assert summary["statistics"]["interactions_per_user"]["min"] == 10
    assert sum(summary["statistics"]["rating_distribution"].values()) == 200


def _edit(table, change):
    def tamper(paths):
        df = pd.read_csv(paths[table])
        change(df).to_csv(paths[table], index=False)
    return tamper


def _write(table, data: bytes):
    def tamper(paths):
        paths[table].write_bytes(data)
    return tamper


def _truncated_parquet(paths):
    target = paths["interactions"].with_suffix(".parquet")
    pq.write_table(pa.Table.from_pandas(pd.read_csv(paths["interactions"])), target)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    paths["interactions"] = target


def _future(df):
    df.loc[0, "event_timestamp"] = "2199-01-01 00:00:00+00:00"
    return df


CATALOGUE = {
    "missing column": (_edit("interactions", lambda df: df.drop(columns=["item_id"])),
                       "column 'item_id' (dataset.item_id.column) is not in the file"),
    "wrong type": (_edit("interactions", lambda df: df.assign(rating="five")), "interactions.rating"),
    "negative rating": (_edit("interactions", lambda df: df.assign(rating=-1.0)), "interactions.rating"),
    "out-of-range rating": (_edit("interactions", lambda df: df.assign(rating=9.0)), "interactions.rating"),
    "duplicate key": (_edit("users", lambda df: pd.concat([df, df.head(1)])), "users.user_id"),
    "duplicate event": (_edit("interactions", lambda df: pd.concat([df, df.head(3)])), "compound_columns_to_be_unique"),
    "unknown user": (_edit("interactions", lambda df: df.assign(user_id=df.user_id.where(df.index > 0, 999))),
                     "interactions.user_id (not in the users file)"),
    "future timestamp": (_edit("interactions", _future),
                         "interactions.event_timestamp: expect_column_max_to_be_between"),
    "empty file": (_write("items", b""), "items.csv: file is empty"),
    "non-UTF-8 bytes": (_write("items", "item_id,title,text\n1,Caf\xe9,x\n".encode("latin-1")), "not valid UTF-8"),
    "truncated parquet": (_truncated_parquet, "unreadable parquet"),
}


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_bad_input_fails_clearly_and_writes_nothing(tmp_path, case):
    tamper, message = CATALOGUE[case]
    code, out = _ingest_and_validate(tmp_path, small_tables(), tamper)
    assert code != 0, f"{case}: accepted bad input"
    assert message in out, f"{case}: message does not name the problem: {out}"
    assert "Traceback" not in out


def test_failed_gate_removes_stale_output_and_names_sample(tmp_path, tables):
    tables["interactions"].loc[:2, "rating"] = 42.0
    canonical, validated = tmp_path / "c", tmp_path / "v"
    from components.ingest import coerce_table

    write_tables({k: coerce_table(v, k) for k, v in tables.items()}, canonical)
    validated.mkdir()
    (validated / "stale.parquet").write_text("old")
    with pytest.raises(ValidationFailed, match=r"interactions.rating: expect_column_values_to_be_between .*42"):
        validate(load_config(overrides=[f"paths.data_dir={tmp_path}"]), canonical, validated, tmp_path / "docs")
    assert not validated.exists()
    assert not (tmp_path / "id_maps").exists(), "a failed gate must not commit id maps"


def test_summary_page_names_the_verdict_and_each_failed_expectation() -> None:
    from components.validate import Failure, ValidationReport, summary_html

    failed = Failure("interactions", "values_between", "rating", "3 rows outside [1, 5]", ["<7>", "9"])
    page = summary_html(ValidationReport(False, 12, [failed], {"users": 3}, "docs/index.html"))
    assert "<title>Data validation: FAILED</title>" in page and "12 expectations evaluated, 1 failed" in page
    assert "<td>values_between</td>" in page and "<td>&lt;7&gt;, 9</td>" in page  # cells escaped
    assert "Failed expectations" not in summary_html(ValidationReport(True, 12, [], {}, None))


def _ingested(tmp_path, tables, *overrides: str):
    """(config, canonical folder) of `tables` ingested from CSV files, with their id maps."""
    from components.ingest import ingest

    paths = write_csvs(tables, tmp_path / "in")
    config = load_config(overrides=[f"paths.data_dir={tmp_path / 'data'}", "data.source=files",
                                    *[f"data.{k}_path={v}" for k, v in paths.items()], *overrides])
    ingest(config, tmp_path / "canonical")
    return config, tmp_path / "canonical"


def test_long_tables_check_row_wise_expectations_on_a_seeded_sample(tmp_path, tables):
    """Above validation.sample_rows the row-wise expectations of a table see a seeded sample; the summary says
    which table, how much and which expectations; the same expectations are evaluated as without sampling."""
    config, canonical = _ingested(tmp_path, tables, "validation.sample_rows=50")
    report = validate(config, canonical, tmp_path / "v", tmp_path / "docs")
    assert report.success and set(report.sampled) == {"interactions"}  # 200 rows; users 20, items 30
    info = json.loads((tmp_path / "docs" / "summary.json").read_text())["sampled"]["interactions"]
    assert (info["rows"], info["sample_rows"], info["seed"]) == (200, 50, config.train.seed)
    assert "expect_compound_columns_to_be_unique" in info["expectations"]
    assert not {"expect_column_values_to_not_be_null", "expect_column_max_to_be_between"} & set(info["expectations"])
    page = (tmp_path / "docs" / "summary.html").read_text()
    assert "Sampled tables" in page and "50 (25.0%)" in page
    every_row = config.model_copy(deep=True)
    every_row.validation.sample_rows = None
    whole = validate(every_row, canonical, tmp_path / "w", tmp_path / "docs_whole")
    assert whole.sampled == {} and whole.evaluated == report.evaluated


def test_whole_table_checks_see_every_row_of_a_sampled_table(tmp_path, tables):
    """With a sample of one row, a future timestamp in another row still fails the gate (timestamp bounds see
    every row), and a bad value in every row fails through the sample."""
    tables["interactions"].loc[7, "event_timestamp"] = pd.Timestamp("2199-01-01", tz="UTC")
    tables["interactions"]["rating"] = 42.0
    config, canonical = _ingested(tmp_path, tables, "validation.sample_rows=1")
    with pytest.raises(ValidationFailed) as failed:
        validate(config, canonical, tmp_path / "v", tmp_path / "docs")
    assert "interactions.event_timestamp: expect_column_max_to_be_between" in str(failed.value)
    assert "interactions.rating: expect_column_values_to_be_between" in str(failed.value)
    assert json.loads((tmp_path / "docs" / "summary.json").read_text())["sampled"]["interactions"]["sample_rows"] == 1
