"""Training data of the two-tower model: examples (contract C1) -> next-item windows, item counts, and the
validation/test tasks the training loop stops early on and reports."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import Config
from components.dataset import DatasetSchema
from components.encoders import ProfileEncoder
from components.errors import RecsysError
from components.evaluate import eval_data, sample_task
from components.evaluation_types import EvalData
from components.splits import Split, configured_split

log = logging.getLogger(__name__)
EXAMPLES_FILE = "examples.parquet"


class TrainError(RecsysError, RuntimeError):
    """Training cannot run on the given inputs; the message says what is missing."""


@dataclass
class TrainData:
    item_ids: np.ndarray  # catalogue (all items of the items table), row r -> model row r + 1
    items: pd.DataFrame
    windows_in: np.ndarray  # int64 [W, L] left-padded model rows (inputs)
    windows_out: np.ndarray  # int64 [W, L+1] targets per token (0 = none); token 0 = profile token
    window_profile: np.ndarray  # int64 [W, P]
    train_count: np.ndarray  # float [N] training interactions per catalogue row
    profile_encoder: ProfileEncoder
    split: Split
    users: pd.DataFrame
    validation: EvalData  # early stopping and the new-item prior
    test: EvalData  # the metrics written with the model (a seeded sample above train.validation_max_users)


def read_examples(examples_dir: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """examples.parquet of contract C1 from a Dataset directory (or the file itself); with `columns`, only those of
    them the file has (training needs keys and profiles, not the recent-item lists: a third of 10^7 rows' memory)."""
    path = Path(examples_dir)
    path = path / EXAMPLES_FILE if path.is_dir() else path
    if not path.is_file():
        raise TrainError(f"training examples not found: {path} (contract C1: <dir>/{EXAMPLES_FILE})")
    if columns is not None:
        import pyarrow.parquet as pq

        present = set(pq.read_schema(path).names)
        columns = [c for c in columns if c in present]
    return pd.read_parquet(path, columns=columns)


def training_columns(schema: DatasetSchema) -> list[str]:
    """The example columns `prepare_data` reads: the event keys and the declared user attributes."""
    return ["user_id", "item_id", "event_timestamp", *schema.user_attributes]


def examples_from_tables(tables: dict[str, pd.DataFrame], last_n: int, schema: DatasetSchema) -> pd.DataFrame:
    """C1-shaped examples straight from canonical tables (no feature store): profile + recent items strictly before.

    The path for `recsys train --interactions FILE`; the pipeline's `features` step (Feast) is the reference.
    """
    inter = tables["interactions"].sort_values(["user_id", "event_timestamp"], kind="stable").reset_index(drop=True)
    users = tables["users"]
    profile = [name for name in schema.user_attributes if name in users]  # missing values stay missing
    df = inter.merge(users[["user_id", *profile]], on="user_id", how="left")
    recent, counts = [], []
    for _, g in df.groupby("user_id", sort=False):
        items, ts = g["item_id"].to_numpy(np.int64), g["event_timestamp"].to_numpy()
        first_at = np.searchsorted(ts, ts, side="left")  # events strictly before each one
        recent += [items[max(0, f - last_n) : f].tolist() for f in first_at]
        counts += first_at.tolist()
    df["user_interaction_count"] = np.asarray(counts, dtype=np.int64)
    df["recent_item_ids"] = recent
    return df


def training_rows(examples: pd.DataFrame, split: Any, with_validation: bool = False) -> pd.DataFrame:
    """Examples of the split's train rows only (no validation/test targets, no cold items), in split order; with
    `with_validation` each user's validation row too (after their train rows: it is later in time)."""
    keys = ["user_id", "item_id", "event_timestamp"]
    missing = [c for c in keys if c not in examples]
    if missing:
        raise TrainError(f"examples lack column(s) {missing} (contract C1)")
    order = split.train[keys].copy()
    if with_validation:
        order = pd.concat([order.assign(_stage=0), split.validation[keys].assign(_stage=1)])
        order = order.sort_values(["user_id", "_stage"], kind="stable").drop(columns="_stage")
    order["_pos"] = np.arange(len(order))
    ex = examples.assign(event_timestamp=examples["event_timestamp"].astype(order["event_timestamp"].dtype))
    merged = order.merge(ex.drop_duplicates(keys), on=keys, how="inner")
    if len(merged) < len(order):
        log.warning("%d of %d train interactions have no training example; they are skipped",
                    len(order) - len(merged), len(order))
    return merged.sort_values("_pos", kind="stable").drop(columns="_pos").reset_index(drop=True)


def make_windows(rows: pd.DataFrame, row_of: pd.Series, profile: np.ndarray, max_len: int):
    """Cut each user's chronological sequence into next-item windows (every training item is a target once)."""
    seqs = rows.groupby("user_id", sort=True)["item_id"].apply(lambda s: row_of.loc[s.to_numpy()].to_numpy() + 1)
    first = rows.groupby("user_id", sort=True).head(1)  # profile as of the user's first training example
    prof_of = dict(zip(first["user_id"], profile[first.index.to_numpy()], strict=True))
    ins, outs, profs = [], [], []
    for user, seq in seqs.items():
        end = len(seq)
        while end > 0:
            start = max(0, end - max_len - 1)
            w = seq[start:end]
            x, y = np.zeros(max_len, np.int64), np.zeros(max_len + 1, np.int64)
            if len(w) > 1:
                x[max_len - (len(w) - 1) :] = w[:-1]
                y[max_len + 1 - (len(w) - 1) :] = w[1:]
            if start == 0:
                y[0] = w[0]  # the profile token predicts the user's first item
            ins.append(x)
            outs.append(y)
            profs.append(prof_of[user])
            end = start + 1 if start > 0 else 0
    return np.stack(ins), np.stack(outs), np.stack(profs)


def prepare_data(config: Config, tables: dict[str, pd.DataFrame], examples: pd.DataFrame,
                 with_validation: bool = False) -> TrainData:
    """Training windows, item counts and the validation/test tasks; `with_validation` also trains on the
    validation targets (the refit after early stopping)."""
    split = configured_split(tables["interactions"], config)
    items = tables["items"].sort_values("item_id").reset_index(drop=True)
    item_ids = items["item_id"].to_numpy(dtype=np.int64)
    row_of = pd.Series(np.arange(len(item_ids)), index=item_ids)
    rows = training_rows(examples, split, with_validation)
    rows = rows[rows["item_id"].isin(row_of.index)].reset_index(drop=True)
    if rows.empty:
        raise TrainError("no training examples left after removing validation/test targets and cold items")
    users = tables["users"]
    declared = list(config.dataset.user_attributes)
    if not set(declared) <= set(rows.columns):  # examples without point-in-time profiles: the users table's
        rows = rows.drop(columns=[c for c in declared if c in rows]).merge(
            users[["user_id", *[c for c in declared if c in users]]], on="user_id", how="left")
    encoder = ProfileEncoder.fit(users, config.dataset)
    profile = encoder.encode(rows)
    w_in, w_out, w_prof = make_windows(rows, row_of, profile, config.model.max_seq_len)
    counts = rows["item_id"].map(row_of).value_counts()
    train_count = np.zeros(len(item_ids))
    train_count[counts.index.to_numpy()] = counts.to_numpy()
    cap, seed = config.train.validation_max_users, config.train.seed
    validation = sample_task(eval_data(split, items, users, "validation"), cap, seed)
    test = sample_task(eval_data(split, items, users, "test"), cap, seed)  # indicative: the evaluate step reports
    return TrainData(item_ids, items, w_in, w_out, w_prof, train_count, encoder, split, users, validation, test)
