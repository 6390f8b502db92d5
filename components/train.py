"""Training of the two-tower model: next-item sampled softmax over users' recent sequences, DDP-ready.

`train_model(config, canonical_dir, examples_dir, out_dir)` is the one implementation; the CLI, the KFP
component `train_op` and `python -m components.train` (also under `torchrun --nproc_per_node=N`) call it.
"""

import argparse
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.atomic import atomic_path
from components.config import Config
from components.dataset import DatasetSchema
from components.encoders import ItemEncoder, ProfileEncoder
from components.errors import RecsysError
from components.evaluate import eval_data, evaluate_cold, evaluate_main
from components.evaluation_types import EvalData
from components.kfp_support import step
from components.metrics import per_user_metrics, rank_targets
from components.model import (
    TwoTowerModel,
    UserEncoder,
    item_event_counts,
    item_features,
    load_recommender,
    save_artifact,
)
from components.recommender import Recommender, TowerRecommender
from components.schemas import read_tables
from components.shilling_defence import defended_tables
from components.splits import Split, configured_split

log = logging.getLogger(__name__)
EVAL_K = 10
EXAMPLES_FILE = "examples.parquet"


class TrainError(RecsysError, RuntimeError):
    """Training cannot run on the given inputs; the message says what is missing."""


# ---------------------------------------------------------------- distributed helpers


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_dist(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size())


def _broadcast(value: float, dist: Dist) -> float:
    if dist.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    torch.distributed.broadcast(t, src=0)
    return float(t.item())


def _barrier(dist: Dist) -> None:
    if dist.world > 1:
        torch.distributed.barrier()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- data


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
    test: EvalData  # the metrics written with the model


def read_examples(examples_dir: str | Path) -> pd.DataFrame:
    """examples.parquet of contract C1 from a Dataset directory (or the file itself)."""
    path = Path(examples_dir)
    path = path / EXAMPLES_FILE if path.is_dir() else path
    if not path.is_file():
        raise TrainError(f"training examples not found: {path} (contract C1: <dir>/{EXAMPLES_FILE})")
    return pd.read_parquet(path)


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
    ex = examples.copy()
    ex["event_timestamp"] = ex["event_timestamp"].astype(order["event_timestamp"].dtype)
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
    return TrainData(item_ids, items, w_in, w_out, w_prof, train_count, encoder, split, users,
                     eval_data(split, items, users, "validation"), eval_data(split, items, users, "test"))


# ---------------------------------------------------------------- evaluation (the evaluator's ranking)


def ranking_metrics(rec: Recommender, stage: EvalData, config: Config, cold: bool = False) -> dict[str, float]:
    """NDCG@10 and HR@10 of `rec` on a stage's main ranking (the warm catalogue, each user's history excluded) or
    its cold-start ranking, computed by the evaluate step's own `evaluate_main` / `evaluate_cold`.
    Without targets: zeros for the main ranking, nothing for the cold one."""
    names = (f"ndcg@{EVAL_K}", f"hr@{EVAL_K}")
    if cold:
        if not len(stage.cold_targets):
            return {}
        result = evaluate_cold(rec, rec.name, "candidate", stage, config, ks=[EVAL_K], intervals=False)
    else:
        if not len(stage.targets):
            return dict.fromkeys(names, 0.0)
        result = evaluate_main(rec, rec.name, "candidate", stage, config, groups=False, ks=[EVAL_K], intervals=False)
    return {name: result.value(name) for name in names}


def in_training_recommender(model: Any, data: TrainData, device: torch.device) -> TowerRecommender:
    """The model being trained as a Recommender, scored like the saved artifact (eval mode, current weights)."""
    with torch.no_grad():
        item_emb = model.item_table(text=None)[1:].float().cpu().numpy()
    encoder = UserEncoder(model, item_emb).to(device).eval()

    @torch.no_grad()
    def tower(history: np.ndarray, profile: np.ndarray) -> np.ndarray:
        return encoder(torch.from_numpy(history).to(device), torch.from_numpy(profile).to(device)).float().cpu().numpy()

    return TowerRecommender("two_tower", tower, data.item_ids, item_emb, data.profile_encoder,
                            model.cfg["max_seq_len"], batch_size=1024)


POPULARITY_WEIGHTS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)  # new items: the prior may dominate
WARM_POPULARITY_WEIGHTS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15)  # trained items: a nudge to the cosine
POPULARITY_WINDOWS = (None, 30.0, 7.0)  # days (None = all history): the feature store's rolling windows


class _Fixed:
    """Precomputed scores [users, catalogue] served through the Recommender protocol (rows by `_row`)."""

    name = "fixed"

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores

    def score(self, users: pd.DataFrame, histories: list[np.ndarray], catalogue: np.ndarray) -> np.ndarray:
        return self.scores[users["_row"].to_numpy()]


def choose_popularity_prior(cosine: np.ndarray, events: pd.DataFrame, users: pd.DataFrame,
                            histories: list[np.ndarray], targets: np.ndarray, catalogue: np.ndarray,
                            exclude: list[np.ndarray] | None, weights: tuple[float, ...],
                            prefix: str) -> tuple[float, float | None, list[dict]]:
    """(w, window days or None, curve): the prior cosine + w * log(1 + n) that ranks `targets` best, n = the
    item's interactions in `events` by other users strictly before each user's `as_of` (within the window).
    Best HR@10 wins for new items ("cold_val" prefix), NDCG@10 for trained ones ("val"); ties go to the smaller w."""
    users = users.assign(_row=np.arange(len(users)))
    first, second = (f"{prefix}_hr@{EVAL_K}", f"{prefix}_ndcg@{EVAL_K}")
    if prefix == "val":
        first, second = second, first
    curve = []
    for window in POPULARITY_WINDOWS:
        prior = np.log1p(item_event_counts(events, users, catalogue, window))
        for w in weights if window is None else weights[1:]:
            ranks, _ = rank_targets(_Fixed(cosine + w * prior), users, histories, targets, catalogue, EVAL_K,
                                    exclude=exclude)
            values = per_user_metrics(ranks, [EVAL_K])
            curve.append({"weight": w, "window_days": window,
                          **{f"{prefix}_{k}": float(values[k].mean()) for k in (f"hr@{EVAL_K}", f"ndcg@{EVAL_K}")}})
    best = max(curve, key=lambda c: (c[first], c[second], -c["weight"]))
    window = best["window_days"] if best["weight"] > 0 else None
    return float(best["weight"]), window, curve


@torch.no_grad()
def choose_new_item_popularity_weight(model: Any, data: TrainData,
                                      device: torch.device) -> tuple[float, float | None, list[dict]]:
    """Weight w and window of the new-item prior (cosine + w * log(1 + recent interactions)) chosen on the COLD
    VALIDATION items: the next-newest items, held out of training like the cold-start report's, never those.

    Each cold-validation target is ranked among the cold-validation items (text + metadata vectors, as every new
    item has), scored cosine + w * log(1 + n), n = the item's interactions by other users strictly before the
    target (within the window: all history, 30 or 7 days). Best HR@10 wins, then NDCG@10, then the smaller w.
    Returns (w, window days or None, the validation curve); (0, None, []) without cold-validation targets.
    """
    task = data.validation
    if not len(task.cold_targets):
        log.info("no cold-validation targets (evaluate.cold_validation_items=0): new-item popularity prior off")
        return 0.0, None, []
    users = task.cold_users.assign(_row=np.arange(len(task.cold_users)))
    cosine = in_training_recommender(model, data, device).score(users, task.cold_histories, task.cold_items)
    weight, window, curve = choose_popularity_prior(cosine, task.cold_interactions, task.cold_users,
                                                    task.cold_histories, task.cold_targets, task.cold_items,
                                                    task.cold_exclude, POPULARITY_WEIGHTS, "cold_val")
    log.info("new-item popularity weight %.3g, window %s days chosen on %d cold-validation targets "
             "(HR@10 %.4f; w=0: %.4f)", weight, window, len(task.cold_targets),
             max(c[f"cold_val_hr@{EVAL_K}"] for c in curve), curve[0][f"cold_val_hr@{EVAL_K}"])
    return weight, window, curve


@torch.no_grad()
def choose_warm_popularity_weight(model: Any, data: TrainData,
                                  device: torch.device) -> tuple[float, float | None, list[dict]]:
    """Weight w and window of the trained items' popularity prior (cosine + w * log(1 + n), n = the item's
    interactions by other users in the window before the request), chosen on the VALIDATION targets by NDCG@10.

    The loss's logQ correction takes popularity out of the cosine; this puts back what the validation targets
    show, at the request's own time. Returns (0, None, []) without validation targets.
    """
    task = data.validation
    if not len(task.targets) or task.item_events is None:
        return 0.0, None, []
    users = task.users.assign(_row=np.arange(len(task.users)))
    cosine = in_training_recommender(model, data, device).score(users, task.histories, task.catalogue)
    weight, window, curve = choose_popularity_prior(cosine, task.item_events, task.users, task.histories,
                                                    task.targets, task.catalogue, None, WARM_POPULARITY_WEIGHTS,
                                                    "val")
    log.info("popularity weight %.3g, window %s days chosen on %d validation targets (NDCG@10 %.4f; w=0: %.4f)",
             weight, window, len(task.targets), max(c[f"val_ndcg@{EVAL_K}"] for c in curve),
             curve[0][f"val_ndcg@{EVAL_K}"])
    return weight, window, curve


# ---------------------------------------------------------------- training loop


def lr_factor(config: Config, epoch: int) -> float:
    """Multiplier of the learning rate in `epoch` (1-based): linear warm-up, then constant or cosine to 0."""
    t = config.train
    if epoch <= t.warmup_epochs:
        return epoch / (t.warmup_epochs + 1)
    if t.lr_schedule == "constant":
        return 1.0
    progress = (epoch - 1 - t.warmup_epochs) / max(1, t.epochs - t.warmup_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _device(config: Config) -> torch.device:
    if config.train.device == "cuda" or (config.train.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainError("train.device=cuda but no CUDA device is available")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device(f"cuda:{local}")
    return torch.device("cpu")


def build_model(config: Config, data: TrainData, text_emb: np.ndarray):
    item_encoder = ItemEncoder.fit(data.items, config.dataset)
    feats = item_features(data.items, text_emb, item_encoder)
    m = config.model
    cfg = {
        "n_items": len(data.item_ids), "embedding_dim": m.embedding_dim, "max_seq_len": m.max_seq_len,
        "user_layers": m.user_layers, "user_heads": m.user_heads, "dropout": m.dropout, "id_dropout": m.id_dropout,
        "item_representation": m.item_representation,
        "temperature": m.temperature, "text_dim": int(text_emb.shape[1]),
        "item_encoder": item_encoder.to_dict(), "item_attribute_sizes": item_encoder.sizes,
        "item_attribute_widths": item_encoder.widths,
        "profile_fields": data.profile_encoder.fields,
        "profile_sizes": [size - 1 for size in data.profile_encoder.sizes],
        "encoder_dir": str(m.encoder_dir) if m.encoder_dir else None,
        "fine_tuned_encoder": m.fine_tune_encoder,
    }
    model = TwoTowerModel(cfg)
    model.set_item_features(feats, data.train_count)
    return model


def _text_embeddings(config: Config, items: pd.DataFrame, dist: Dist) -> np.ndarray:
    from components.text_encoder import cached_text_embeddings

    cache = Path(config.paths.data_dir) / "cache"
    texts = items["text"].fillna("").astype(str).tolist()
    if dist.main:
        emb = cached_text_embeddings(texts, config.model.encoder_dir, cache)
    _barrier(dist)
    if not dist.main:
        emb = cached_text_embeddings(texts, config.model.encoder_dir, cache, progress=False)
    return emb


def _plot_curve(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(epochs, [h["loss"] for h in history], "o-", color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [h[f"val_ndcg@{EVAL_K}"] for h in history], "s-", color="tab:orange", label="val NDCG@10")
    ax2.set_ylabel(f"validation NDCG@{EVAL_K}", color="tab:orange")
    ax1.set_title("two-tower training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_model(config: Config, canonical_dir: str | Path, examples_dir: str | Path, out_dir: str | Path,
                resume: bool = False, progress: bool = True) -> dict:
    """Train, early-stop on validation NDCG@10, write the contract-C4 artifact to `out_dir`; returns metrics."""
    from tqdm.auto import tqdm

    if config.train.refit_on_validation and config.model.fine_tune_encoder:
        raise TrainError("train.refit_on_validation=true needs model.fine_tune_encoder=false (the refit reuses the "
                         "frozen text embeddings)")
    started = time.monotonic()
    torch.set_num_threads(config.train.num_threads)
    device = _device(config)
    dist = _init_dist(device)
    seed_everything(config.train.seed)
    out = Path(out_dir)
    ckpt_path = out / "checkpoint.pt"
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    tables = read_tables(canonical_dir)
    # -- trust: with trust.defence.enabled, flagged fake accounts are excluded (<out>/excluded_accounts.json)
    tables = defended_tables(config, tables, out if dist.main else None)
    # -- end trust
    examples = read_examples(examples_dir)
    data = prepare_data(config, tables, examples)
    text_emb = _text_embeddings(config, data.items, dist)
    model = build_model(config, data, text_emb).to(device)
    text_fn = _attach_encoder(model, config, data, device) if config.model.fine_tune_encoder else None
    log_pop = torch.log(torch.from_numpy(np.concatenate([[0.0], data.train_count])).float() / data.train_count.sum()
                        + 1e-12).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    enc_ids = {id(p) for p in model.encoder.parameters()} if model.encoder is not None else set()
    groups = [{"params": [p for p in params if id(p) not in enc_ids]}]
    if enc_ids:
        groups.append({"params": [p for p in params if id(p) in enc_ids], "lr": config.model.encoder_learning_rate})
    opt = torch.optim.AdamW(groups, lr=config.train.learning_rate, weight_decay=config.train.weight_decay)
    base_lrs = [group.get("lr", config.train.learning_rate) for group in opt.param_groups]
    ddp = torch.nn.parallel.DistributedDataParallel(model) if dist.world > 1 else None
    history: list[dict] = []
    start_epoch, best, best_state, bad_epochs = 1, -1.0, None, 0
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # tensors and plain types only
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, best, best_state = ck["epoch"] + 1, ck["best_metric"], ck["best_state"]
        bad_epochs, history = ck["bad_epochs"], ck["history"]
        torch.set_rng_state(ck["torch_rng"])
        log.info("resumed from %s at epoch %d (best val NDCG@10 %.4f)", ckpt_path, ck["epoch"], best)
    bs = config.train.batch_size
    amp_dtype = torch.float16 if device.type == "cuda" and not torch.cuda.is_bf16_supported() else torch.bfloat16
    amp = torch.autocast(device.type, dtype=amp_dtype, enabled=config.model.fine_tune_encoder)
    scaler = torch.amp.GradScaler(device.type, enabled=config.model.fine_tune_encoder and amp_dtype == torch.float16)
    def step_epoch(epoch: int, model=model, ddp=ddp, opt=opt, data=data, log_pop=log_pop) -> tuple[float, np.ndarray]:
        """One pass over the windows (this rank's share); returns (mean loss over ranks, the windows used)."""
        model.train()
        for group, base_lr in zip(opt.param_groups, base_lrs, strict=True):
            group["lr"] = base_lr * lr_factor(config, epoch)
        n_win = len(data.windows_in)
        per_rank = math.ceil(n_win / dist.world)
        perm = np.random.default_rng(config.train.seed + epoch).permutation(n_win)
        perm = np.resize(perm, per_rank * dist.world)[dist.rank :: dist.world]
        losses = []
        bar = tqdm(range(0, per_rank, bs), desc=f"epoch {epoch}", disable=not (progress and dist.main), leave=False)
        for s in bar:
            idx = perm[s : s + bs]
            b_in = torch.from_numpy(data.windows_in[idx]).to(device)
            b_out = torch.from_numpy(data.windows_out[idx]).to(device)
            b_prof = torch.from_numpy(data.window_profile[idx]).to(device)
            with amp:
                loss = (ddp or model)(b_in, b_out, b_prof, log_pop, config.model, text_fn)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 5.0)
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        loss_mean = float(np.mean(losses))
        if dist.world > 1:
            t = torch.tensor([loss_mean])
            torch.distributed.all_reduce(t)
            loss_mean = float(t.item()) / dist.world
        return loss_mean, perm

    stop = False
    for epoch in range(start_epoch, config.train.epochs + 1):
        if stop:
            break
        t0 = time.monotonic()
        loss_mean, perm = step_epoch(epoch)
        epoch_s = time.monotonic() - t0
        val = {f"ndcg@{EVAL_K}": 0.0, f"hr@{EVAL_K}": 0.0}
        if dist.main:
            model.eval()
            if text_fn is not None:
                _sync_text(model, text_fn)
            val = ranking_metrics(in_training_recommender(model, data, device), data.validation, config)
        metric = _broadcast(val[f"ndcg@{EVAL_K}"], dist)
        row = {"epoch": epoch, "loss": loss_mean, f"val_ndcg@{EVAL_K}": float(metric),
               f"val_hr@{EVAL_K}": float(val[f"hr@{EVAL_K}"]),
               "epoch_seconds": epoch_s, "samples": int(len(perm)) * dist.world,
               "positions": int((data.windows_out[perm] > 0).sum()) * dist.world}
        history.append(row)
        if metric > best:
            best, bad_epochs = float(metric), 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        log.info("epoch %d: loss %.4f, val NDCG@10 %.4f (best %.4f), %.1fs", epoch, loss_mean, metric, best, epoch_s)
        elapsed_min = (time.monotonic() - started) / 60
        stop = bad_epochs >= config.train.patience or elapsed_min >= config.train.max_minutes
        if elapsed_min >= config.train.max_minutes:
            log.warning("time budget train.max_minutes=%.1f reached after epoch %d", config.train.max_minutes, epoch)
        stop = bool(_broadcast(float(stop), dist))
        if dist.main:
            # tensors and plain Python values only, so that resuming loads it with weights_only=True
            ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "best_metric": best,
                  "best_state": best_state, "bad_epochs": bad_epochs, "history": history,
                  "torch_rng": torch.get_rng_state()}
            with atomic_path(ckpt_path) as tmp:
                torch.save(ck, tmp)
    refit = None
    if config.train.refit_on_validation:
        best_epoch = max(history, key=lambda h: h[f"val_ndcg@{EVAL_K}"])["epoch"]
        seed_everything(config.train.seed)
        refit_data = prepare_data(config, tables, examples, with_validation=True)
        refit = build_model(config, refit_data, text_emb).to(device)
        refit_opt = torch.optim.AdamW(refit.parameters(), lr=config.train.learning_rate,
                                      weight_decay=config.train.weight_decay)
        refit_ddp = torch.nn.parallel.DistributedDataParallel(refit) if dist.world > 1 else None
        refit_log_pop = torch.log(torch.from_numpy(np.concatenate([[0.0], refit_data.train_count])).float()
                                  / refit_data.train_count.sum() + 1e-12).to(device)
        for epoch in range(1, best_epoch + 1):
            t0 = time.monotonic()
            loss_mean, _ = step_epoch(epoch, refit, refit_ddp, refit_opt, refit_data, refit_log_pop)
            log.info("refit epoch %d/%d on train + validation targets: loss %.4f, %.1fs", epoch, best_epoch,
                     loss_mean, time.monotonic() - t0)
    metrics: dict[str, Any] = {}
    if dist.main:
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        if text_fn is not None:
            _sync_text(model, text_fn)
            _save_encoder(model, out)
        weight, window, curve = choose_new_item_popularity_weight(model, data, device)
        model.cfg["new_item_popularity_weight"] = weight
        model.cfg["new_item_popularity_window_days"] = window
        model.cfg["new_item_popularity_validation"] = curve
        warm_weight, warm_window, warm_curve = choose_warm_popularity_weight(model, data, device)
        model.cfg["popularity_weight"] = warm_weight
        model.cfg["popularity_window_days"] = warm_window
        model.cfg["popularity_validation"] = warm_curve
        if refit is not None:  # the refit model serves, with the priors chosen on the early-stopped one
            refit.eval()
            refit.cfg.update({k: v for k, v in model.cfg.items() if "popularity" in k})
            model, data = refit, refit_data
        item_emb = in_training_recommender(model, data, device).item_embeddings
        save_artifact(model.cpu(), out, data.item_ids, item_emb, data.profile_encoder, history)
        rec = load_recommender(out)  # scored as served and evaluated: the saved artifact with its priors
        test = ranking_metrics(rec, data.test, config)
        cold = {f"cold_{k}": v for k, v in ranking_metrics(rec, data.test, config, cold=True).items()}
        metrics = {"new_item_popularity_weight": weight, "popularity_weight": warm_weight,
                   f"val_ndcg@{EVAL_K}": best, **{f"test_{k}": v for k, v in test.items()},
                   **cold, "epochs": len(history), "refit_on_validation": refit is not None,
                   "train_seconds": time.monotonic() - started, "train_positions": int((data.windows_out > 0).sum())}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        _plot_curve(history, out / "training_curve.png")
        log.info("model written to %s: %s", out, {k: round(v, 4) for k, v in metrics.items()})
    _barrier(dist)
    return metrics


def _attach_encoder(model, config: Config, data: TrainData, device: torch.device):
    """GPU path: fine-tune the text encoder; returns rows -> text embeddings computed with gradients."""
    from components.text_encoder import MAX_TOKENS, SentenceEncoder

    encoder = SentenceEncoder(config.model.encoder_dir).to(device)
    encoder.train()
    model.encoder = encoder
    tokens = encoder.tokenize(data.items["text"].fillna("").astype(str).tolist(), MAX_TOKENS)
    ids = torch.cat([torch.zeros(1, tokens["input_ids"].shape[1], dtype=torch.long), tokens["input_ids"]]).to(device)
    mask = torch.cat([torch.zeros(1, ids.shape[1], dtype=torch.long), tokens["attention_mask"]]).to(device)

    def text_fn(rows: torch.Tensor) -> torch.Tensor:
        return encoder(ids[rows], mask[rows])

    return text_fn


@torch.no_grad()
def _sync_text(model, text_fn, chunk: int = 256) -> None:
    """Fine-tuning: re-encode every item text with the current encoder into the model's text buffer."""
    rows = torch.arange(1, model.text.shape[0], device=model.text.device)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        model.text[part] = text_fn(part).float()


def _save_encoder(model, out: Path) -> None:
    """Fine-tuning: keep the tuned encoder (and tokenizer) in <out>/encoder; the artifact points at it."""
    encoder = model.encoder
    encoder.transformer.save_pretrained(out / "encoder")
    encoder.tokenizer.save_pretrained(out / "encoder")
    model.cfg["encoder_dir"] = "encoder"
    model.encoder = None


# ---------------------------------------------------------------- entry points


def main(argv: list[str] | None = None) -> None:
    """`python -m components.train` (also under torchrun): train from a config file and two dataset dirs."""
    from components.config import load_config

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--canonical", required=True)
    parser.add_argument("--examples", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    train_model(load_config(args.config, args.overrides), args.canonical, args.examples, args.out, resume=args.resume)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@step(gpu=True)
def train_op(config: str, canonical: Input[Dataset], examples: Input[Dataset], model: Output[Model],
             metrics: Output[Metrics], curve: Output[HTML]):
    """KFP: train the two-tower model; writes the contract-C4 model directory, metrics and the training curve."""
    import base64
    from pathlib import Path

    from components.config import config_from_text
    from components.train import train_model

    result = train_model(config_from_text(config), canonical.path, examples.path, model.path)
    for key, value in result.items():
        metrics.log_metric(key, float(value))
    png = base64.b64encode((Path(model.path) / "training_curve.png").read_bytes()).decode()
    Path(curve.path).write_text(f"<html><body><h2>Two-tower training</h2><img src='data:image/png;base64,{png}'/>"
                                f"<pre>{result}</pre></body></html>", encoding="utf-8")


if __name__ == "__main__":
    main()
