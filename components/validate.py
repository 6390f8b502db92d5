"""Step `validate`: the Great Expectations gate over the canonical tables.

One expectation suite per table (plus a per-user activity table and one per multi-valued attribute), derived
from the dataset declaration: each declared column present with its type, declared ranges and categories;
the id maps intact and covering every key. Data Docs HTML and a JSON summary with the statistics that
matter for recommenders. On failure nothing is written downstream, and the id maps are not committed.

Size: in a table longer than `validation.sample_rows`, the row-wise expectations (value sets, ranges, uniqueness,
text lengths) check a seeded sample of that many rows, while the cheap whole-table ones (columns and types, row
count, null ids, timestamp bounds) still see every row; the summary says which tables were sampled and how much.
"""

import html
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components.config import Config
from components.dataset import MULTI_VALUE_SEPARATOR, Attribute
from components.errors import RecsysError
from components.html_report import page
from components.html_report import table as html_table
from components.id_maps import IdMap, IdMapError, load_id_maps, save_id_maps
from components.ingest import id_maps_dir
from components.kfp_support import step
from components.schemas import ID_MAPS, INTERACTIONS, ITEMS, TABLES, USERS, read_tables, write_tables

log = logging.getLogger(__name__)
ACTIVITY = "user_activity"
SAMPLE = 5
NUMERIC_TYPES = ["int64", "Int64", "float64", "float32", "int32", "Int32", "Float64"]


class ValidationFailed(RecsysError):
    """At least one expectation failed; the message names each one, its column and bad values."""


@dataclass
class Failure:
    table: str
    expectation: str
    column: str | None
    observed: object
    sample: list = field(default_factory=list)

    def __str__(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        sample = f" e.g. {self.sample}" if self.sample else ""
        observed = f" observed={self.observed}" if self.observed is not None else ""
        return f"{where}: {self.expectation} failed{observed}{sample}"


@dataclass
class ValidationReport:
    success: bool
    evaluated: int
    failures: list[Failure]
    statistics: dict
    docs_index: str | None = None
    sampled: dict = field(default_factory=dict)  # table -> rows, sample_rows, seed, the expectations sampled

    def to_json(self) -> dict:
        return {**asdict(self), "failures": [{**asdict(f), "message": str(f)} for f in self.failures]}


def _attribute_expectations(table: str, name: str, attr: Attribute, frame: pd.DataFrame) -> list:
    """What the declaration says of one attribute column: present, typed, in range, in its categories."""
    import great_expectations.expectations as gxe

    out: list = [gxe.ExpectColumnToExist(column=name)]
    if name not in frame.columns:
        return out
    if attr.is_numeric:
        out.append(gxe.ExpectColumnValuesToBeInTypeList(column=name, type_list=NUMERIC_TYPES))
        if attr.min is not None or attr.max is not None:
            out.append(gxe.ExpectColumnValuesToBeBetween(column=name, min_value=attr.min, max_value=attr.max))
    elif attr.categories and attr.kind == "categorical":
        allowed = [*attr.categories, *(["other"] if attr.on_unknown == "other" else [])]
        out.append(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=allowed))
    return out


def _multi_value_frames(config: Config, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """One exploded frame per multi-valued item attribute with declared categories (`items.<name>` values)."""
    frames = {}
    for name, attr in config.dataset.item_attributes.items():
        if attr.kind == "multi_categorical" and attr.categories and name in tables[ITEMS].columns:
            values = tables[ITEMS][name].fillna("").str.split(MULTI_VALUE_SEPARATOR).explode()
            frames[f"{ITEMS}.{name}"] = pd.DataFrame({name: values[values != ""].astype(str)})
    return frames


def _expectations(config: Config, tables: dict[str, pd.DataFrame]) -> dict[str, list]:
    """The suites, derived from the dataset declaration and the validation thresholds."""
    import great_expectations.expectations as gxe

    v, schema = config.validation, config.dataset
    future = datetime.now(UTC) + timedelta(seconds=v.max_future_skew_seconds)
    int_types = ["int64", "Int64"]

    def typed(column: str, types: list[str]) -> list:
        return [
            gxe.ExpectColumnToExist(column=column),
            gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=types),
        ]

    feedback = []
    if schema.feedback.kind == "explicit":
        feedback = [gxe.ExpectColumnValuesToNotBeNull(column="rating"),
                    gxe.ExpectColumnValuesToBeBetween(column="rating", min_value=schema.feedback.min,
                                                      max_value=schema.feedback.max)]
    elif schema.feedback.kind == "events":
        feedback = [gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=sorted(schema.feedback.weights))]
    suites = {
        INTERACTIONS: [
            gxe.ExpectTableRowCountToBeBetween(min_value=v.min_interactions),
            *typed("user_id", int_types),
            *typed("item_id", int_types),
            *typed("rating", ["float32", "float64"]),
            gxe.ExpectColumnToExist(column="event_timestamp"),
            gxe.ExpectColumnValuesToNotBeNull(column="user_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="event_timestamp"),
            *feedback,
            gxe.ExpectColumnMaxToBeBetween(column="event_timestamp", max_value=future),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id", "event_timestamp"]),
            gxe.ExpectColumnValuesToBeInSet(column="user_id", value_set=tables[USERS]["user_id"].tolist()),
            gxe.ExpectColumnValuesToBeInSet(column="item_id", value_set=tables[ITEMS]["item_id"].tolist()),
        ],
        USERS: [
            gxe.ExpectTableRowCountToBeBetween(min_value=v.min_users),
            *typed("user_id", int_types),
            gxe.ExpectColumnValuesToNotBeNull(column="user_id"),
            gxe.ExpectColumnValuesToBeUnique(column="user_id"),
            gxe.ExpectColumnMaxToBeBetween(column="created_timestamp", max_value=future),
            *[e for name, attr in schema.user_attributes.items()
              for e in _attribute_expectations(USERS, name, attr, tables[USERS])],
        ],
        ITEMS: [
            gxe.ExpectTableRowCountToBeBetween(min_value=v.min_items),
            *typed("item_id", int_types),
            gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
            gxe.ExpectColumnValuesToBeUnique(column="item_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="text"),
            gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1),
            gxe.ExpectColumnMaxToBeBetween(column="created_timestamp", max_value=future),
            *[e for name, attr in schema.item_attributes.items()
              for e in _attribute_expectations(ITEMS, name, attr, tables[ITEMS])],
        ],
        ACTIVITY: [
            gxe.ExpectColumnMinToBeBetween(column="interactions", min_value=v.min_interactions_per_user),
        ],
    }
    for frame_name in _multi_value_frames(config, tables):
        name = frame_name.split(".", 1)[1]
        suites[frame_name] = [gxe.ExpectColumnValuesToBeInSet(
            column=name, value_set=config.dataset.item_attributes[name].categories)]
    return suites


def whole_table(expectation: object) -> bool:
    """An expectation that always sees every row: schema, row count, null values, column bounds (one pass over a
    column each); the others (value sets, ranges, uniqueness, lengths) may run on a sample."""
    import great_expectations.expectations as gxe

    return isinstance(expectation, (gxe.ExpectColumnToExist, gxe.ExpectColumnValuesToBeInTypeList,
                                    gxe.ExpectTableRowCountToBeBetween, gxe.ExpectColumnValuesToNotBeNull,
                                    gxe.ExpectColumnMaxToBeBetween, gxe.ExpectColumnMinToBeBetween))


def _batches(name: str, expectations: list, frame: pd.DataFrame, sample_rows: int | None,
             seed: int) -> tuple[dict[str, tuple[list, pd.DataFrame]], dict | None]:
    """The suites of one table and the frames they check: all on every row, or (longer than `sample_rows`) the
    whole-table ones on every row and the rest on a seeded sample; and what was sampled (None: nothing)."""
    if sample_rows is None or len(frame) <= sample_rows:
        return {name: (expectations, frame)}, None
    rest = [e for e in expectations if not whole_table(e)]
    sample = frame.sample(n=sample_rows, random_state=seed).sort_index()
    info = {"rows": len(frame), "sample_rows": sample_rows, "seed": seed,
            "expectations": [e.expectation_type for e in rest]}
    return {name: ([e for e in expectations if whole_table(e)], frame), f"{name}.sample": (rest, sample)}, info


def id_map_failures(tables: dict[str, pd.DataFrame], maps: dict[str, IdMap], committed: dict[str, IdMap]
                    ) -> list[Failure]:
    """The id maps cover every key of the tables, and extend (never rewrite) the committed maps."""
    failures = []
    for entity, table in (("user", USERS), ("item", ITEMS)):
        keys = set(maps[entity].table["key"].tolist())
        missing = sorted(set(tables[table][f"{entity}_id"].tolist()) - keys)
        if missing:
            failures.append(Failure(ID_MAPS, "keys_in_id_map", f"{entity}_id", str(len(missing)),
                                    [str(k) for k in missing[:SAMPLE]]))
        old = committed[entity].table.reset_index(drop=True)
        head = maps[entity].table.head(len(old)).reset_index(drop=True)
        if len(head) < len(old) or not head.equals(old):
            failures.append(Failure(ID_MAPS, "extends_committed_id_map", f"{entity}_id",
                                    f"{len(old)} committed keys, {len(maps[entity])} in this dataset",
                                    ["ingest again: the committed map changed since this dataset was made"]))
    return failures


def recommender_statistics(tables: dict[str, pd.DataFrame]) -> dict:
    """What a recommender team looks at first: sizes, sparsity, activity per user, rating distribution."""
    inter = tables[INTERACTIONS]
    per_user = inter.groupby("user_id").size()
    per_item = inter.groupby("item_id").size()
    n_users, n_items = len(tables[USERS]), len(tables[ITEMS])
    ratings = inter["rating"].dropna()
    return {
        "rows": {name: len(tables[name]) for name in TABLES},
        "density": round(len(inter) / max(1, n_users * n_items), 6),
        "interactions_per_user": {
            "min": int(per_user.min()), "median": float(per_user.median()),
            "mean": round(float(per_user.mean()), 2), "max": int(per_user.max()),
        },
        "interactions_per_item": {"median": float(per_item.median()), "max": int(per_item.max())},
        "rating_distribution": {str(k): int(c) for k, c in ratings.value_counts().sort_index().items()},
        "rating_mean": round(float(ratings.mean()), 4) if len(ratings) else None,
        "time_span": [str(inter["event_timestamp"].min()), str(inter["event_timestamp"].max())],
    }


def _numpy_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame GX checks: pandas' nullable integers as NumPy dtypes (GX's type check does not know them)."""
    nullable = [c for c in frame.columns if isinstance(frame[c].dtype, pd.api.extensions.ExtensionDtype)
                and pd.api.types.is_integer_dtype(frame[c].dtype)]
    if not nullable:
        return frame
    out = frame.copy()
    for column in nullable:
        out[column] = out[column].astype("float64" if out[column].isna().any() else "int64")
    return out


def _failures(table: str, result: dict) -> list[Failure]:
    out = []
    for r in result["results"]:
        if r["success"]:
            continue
        cfg, res = r["expectation_config"], r.get("result") or {}
        kwargs = cfg.get("kwargs", {})
        column = kwargs.get("column") or (",".join(kwargs["column_list"]) if "column_list" in kwargs else None)
        sample = [str(x) for x in (res.get("partial_unexpected_list") or [])[:SAMPLE]]
        observed = res.get("observed_value", res.get("unexpected_count"))
        if r.get("exception_info", {}).get("raised_exception"):
            observed = r["exception_info"].get("exception_message")
        out.append(Failure(table, cfg["type"], column, None if observed is None else str(observed), sample))
    return out


def validate_tables(config: Config, tables: dict[str, pd.DataFrame], docs_dir: str | Path,
                    extra_failures: list[Failure] | None = None) -> ValidationReport:
    """Run every suite; build the Data Docs site into `docs_dir`; return the report (raises nothing)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    docs_dir = Path(docs_dir).resolve()
    context.add_data_docs_site(site_name="recsys_docs", site_config={
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
    })
    frames = {name: _numpy_dtypes(frame) for name, frame in tables.items()}
    frames[ACTIVITY] = tables[INTERACTIONS].groupby("user_id").size().rename("interactions").reset_index()
    frames.update(_multi_value_frames(config, tables))
    source = context.data_sources.add_pandas(name="canonical")
    failures: list[Failure] = list(extra_failures or [])
    evaluated = len(failures)
    sampled = {}
    for table, suite_expectations in _expectations(config, tables).items():
        batches, info = _batches(table, suite_expectations, frames[table], config.validation.sample_rows,
                                 config.train.seed)
        if info is not None:
            sampled[table] = info
            log.info("%s: %d row-wise expectations on a seeded sample of %d of %d rows", table,
                     len(info["expectations"]), info["sample_rows"], info["rows"])
        for name, (expectations, frame) in batches.items():
            if not expectations:
                continue
            asset = source.add_dataframe_asset(name=name.replace(".", "_"))
            batch_def = asset.add_batch_definition_whole_dataframe(name=f"{name}_all")
            suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite", expectations=expectations))
            vd = context.validation_definitions.add(gx.ValidationDefinition(name=f"{name}_vd", data=batch_def,
                                                                            suite=suite))
            checkpoint = context.checkpoints.add(gx.Checkpoint(
                name=f"{name}_checkpoint", validation_definitions=[vd],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["recsys_docs"])],
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE},
            ))
            result = checkpoint.run(batch_parameters={"dataframe": frame})
            for run_result in result.run_results.values():
                as_dict = run_result.to_json_dict()
                evaluated += len(as_dict["results"])
                failures += _failures(table, as_dict)
    context.build_data_docs(site_names=["recsys_docs"])
    return ValidationReport(
        success=not failures, evaluated=evaluated, failures=failures,
        statistics=recommender_statistics(tables), docs_index=str(docs_dir / "index.html"), sampled=sampled,
    )


def summary_html(report: ValidationReport) -> str:
    """A self-contained page: verdict, failed expectations, statistics (the KFP HTML artifact)."""
    verdict = "PASSED" if report.success else "FAILED"
    sections = []
    if report.failures:
        sections.append(("Failed expectations", html_table(
            ["table", "column", "expectation", "observed", "sample"],
            [[f.table, f.column or "", f.expectation, str(f.observed), ", ".join(f.sample)] for f in report.failures])))
    if report.sampled:
        sections.append(("Sampled tables", html_table(
            ["table", "rows", "sample rows (seeded)", "seed", "expectations on the sample"],
            [[name, f"{s['rows']:,}", f"{s['sample_rows']:,} ({s['sample_rows'] / s['rows']:.1%})", str(s["seed"]),
              ", ".join(s["expectations"])] for name, s in report.sampled.items()])))
    sections.append(("Statistics", f"<pre>{html.escape(json.dumps(report.statistics, indent=2))}</pre>"))
    sampled = (f" Row-wise expectations of {len(report.sampled)} table(s) ran on a seeded sample (below); every "
               "row was checked for schema, row count, null ids and timestamp bounds." if report.sampled else "")
    return page(f"Data validation: {verdict}", f"{report.evaluated} expectations evaluated, {len(report.failures)} "
                f"failed.{sampled} Full Data Docs: {report.docs_index}", sections)


def validate(
    config: Config, canonical_dir: str | Path, validated_dir: str | Path, docs_dir: str | Path
) -> ValidationReport:
    """Validate the tables in `canonical_dir`; copy them to `validated_dir` only if every expectation holds.

    Writes `summary.json` and `summary.html` into `docs_dir` beside the Data Docs site, pass or fail.
    Raises ValidationFailed (listing each failed expectation) when the data is bad.
    """
    tables = read_tables(canonical_dir)
    docs_dir = Path(docs_dir)
    id_types = {"user": config.dataset.user_id.type, "item": config.dataset.item_id.type}
    try:
        maps = load_id_maps(Path(canonical_dir) / ID_MAPS, id_types)
        committed = load_id_maps(id_maps_dir(config), id_types)
        map_failures = id_map_failures(tables, maps, committed)
    except IdMapError as err:
        maps, map_failures = {}, [Failure(ID_MAPS, "id_map_intact", None, str(err))]
    report = validate_tables(config, tables, docs_dir, map_failures)
    (docs_dir / "summary.json").write_text(json.dumps(report.to_json(), indent=2, default=str), encoding="utf-8")
    (docs_dir / "summary.html").write_text(summary_html(report), encoding="utf-8")
    if not report.success:
        validated = Path(validated_dir)
        if validated.exists():
            shutil.rmtree(validated)
        details = "\n  ".join(str(f) for f in report.failures)
        raise ValidationFailed(
            f"{len(report.failures)} expectation(s) failed:\n  {details}\nData Docs: {report.docs_index}"
        )
    write_tables(tables, validated_dir)
    save_id_maps(Path(validated_dir) / ID_MAPS, maps)
    save_id_maps(id_maps_dir(config), maps)  # the key space grows only with data that passed
    log.info("validation passed (%d expectations); Data Docs at %s", report.evaluated, report.docs_index)
    return report


@step
def validate_op(
    config: str,
    canonical: Input[Dataset],
    validated: Output[Dataset],
    data_docs: Output[Artifact],
    summary: Output[HTML],
    metrics: Output[Metrics],
):
    """KFP: the validation gate; the task fails (and nothing downstream runs) when an expectation fails."""
    import shutil
    from pathlib import Path

    from components.config import config_from_text
    from components.validate import ValidationFailed, validate

    try:
        report = validate(config_from_text(config), canonical.path, validated.path, data_docs.path)
    except ValidationFailed as failed:
        shutil.copyfile(Path(data_docs.path) / "summary.html", summary.path)
        raise SystemExit(f"validation failed: {failed}") from failed
    shutil.copyfile(Path(data_docs.path) / "summary.html", summary.path)
    data_docs.metadata["index"] = report.docs_index
    metrics.log_metric("expectations_evaluated", report.evaluated)
    metrics.log_metric("sampled_tables", len(report.sampled))
    metrics.log_metric("interactions", report.statistics["rows"]["interactions"])
    metrics.log_metric("median_interactions_per_user", report.statistics["interactions_per_user"]["median"])
