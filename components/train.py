"""The training loop of the two-tower model: next-item softmax over users' recent sequences, DDP-ready.

`train_model(config, canonical_dir, examples_dir, out_dir)` is the one implementation; the CLI, the KFP
component `train_op` and `python -m components.train` (also under `torchrun --nproc_per_node=N`) call it.
Its data come from `components.train_data`, its scoring and popularity priors from `components.popularity_prior`.
"""

import argparse
import contextlib
import json
import logging
import math
import multiprocessing
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.atomic import atomic_path
from components.config import Config, absolute_paths, config_from_text, config_to_text, resolved
from components.encoders import ItemEncoder
from components.item_text import recorded_item_text
from components.kfp_support import step
from components.model import (
    TwoTowerEnsemble,
    TwoTowerModel,
    item_features,
    load_model,
    load_recommender,
    new_item_prior_windows,
    reads_batch_rows,
    save_artifact,
)
from components.new_item_prior import fit_new_item_offset, fit_new_item_prior
from components.popularity_prior import (
    EVAL_K,
    choose_warm_popularity_weight,
    in_training_recommender,
    ranking_metrics,
)
from components.schemas import ITEMS, read_tables, table_path
from components.shilling_defence import defended_tables
from components.train_data import TrainData, TrainError, prepare_data, read_examples, training_columns

log = logging.getLogger(__name__)




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
    from components.text_encoder import source_to_record

    item_encoder = ItemEncoder.fit(data.items, config.dataset)
    feats = item_features(data.items, text_emb, item_encoder)
    m = config.model
    cfg = {
        "n_items": len(data.item_ids), "embedding_dim": m.embedding_dim, "max_seq_len": m.max_seq_len,
        "user_layers": m.user_layers, "user_heads": m.user_heads, "dropout": m.dropout, "id_dropout": m.id_dropout,
        "item_representation": m.item_representation,
        "temperature": m.temperature, "learn_temperature": m.learn_temperature, "text_dim": int(text_emb.shape[1]),
        "item_encoder": item_encoder.to_dict(), "item_attribute_sizes": item_encoder.sizes,
        "item_text": item_text.to_dict() if (item_text := recorded_item_text(data.items, config.dataset)) else None,
        "item_attribute_widths": item_encoder.widths,
        "profile_fields": data.profile_encoder.fields,
        "profile_sizes": [size - 1 for size in data.profile_encoder.sizes],
        "encoder_dir": source_to_record(m.encoder_source),
        "fine_tuned_encoder": m.tunes_encoder_weights,
        "encoder_tuning": m.encoder_tuning,
        "text_adapter_hidden": m.adapter_hidden if m.encoder_tuning == "adapter" else 0,
        "sparse_id_gradients": config.train.sparse_id_gradients
        and reads_batch_rows(m, len(data.item_ids), tunes_text=m.tunes_encoder_weights),
    }
    model = TwoTowerModel(cfg)
    model.set_item_features(feats, data.train_count)
    return model


def _catalogue_buffers(model: TwoTowerModel) -> set[str]:
    """The state entries that hold the catalogue's features (text vectors, attribute codes, counts), not weights."""
    return {"text", "train_count", *model.attribute_buffers}


def trained_state(model: TwoTowerModel) -> dict[str, torch.Tensor]:
    """A copy of what training changes: the state without the catalogue's feature buffers (1.5 GB at 10^6 items,
    identical at every epoch; a tuned encoder's text is re-encoded after training)."""
    static = _catalogue_buffers(model)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in static}


def restore_trained_state(model: TwoTowerModel, state: dict[str, torch.Tensor]) -> None:
    """Load a `trained_state` (a full state dict from an older checkpoint too)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    static = _catalogue_buffers(model)
    if unexpected or set(missing) - static:
        raise TrainError(f"saved weights do not fit the model: missing {sorted(set(missing) - static)}, "
                         f"unexpected {sorted(unexpected)}")


def _sparse_param(model: TwoTowerModel, param: torch.nn.Parameter) -> bool:
    return param is model.item_id.weight and model.item_id.sparse


def make_optimizers(model: TwoTowerModel, config: Config) -> list[torch.optim.Optimizer]:
    """AdamW over the dense weights (the text encoder's, when tuned, at its own learning rate); with sparse ID
    gradients (`train.sparse_id_gradients` on a large catalogue) the ID-embedding table under SparseAdam, a lazy
    Adam that moves only the rows a step read, so that a step's cost does not grow with the catalogue."""
    params = [p for p in model.parameters() if p.requires_grad]
    enc_ids = {id(p) for p in model.encoder.parameters()} if model.encoder is not None else set()
    groups = [{"params": [p for p in params if id(p) not in enc_ids and not _sparse_param(model, p)]}]
    if enc_ids:
        tuning = config.model.encoder_tuning
        encoder_lr = config.model.lora_learning_rate if tuning == "lora" else config.model.encoder_learning_rate
        groups.append({"params": [p for p in params if id(p) in enc_ids], "lr": encoder_lr})
    opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(groups, lr=config.train.learning_rate,
                                                           weight_decay=config.train.weight_decay)]
    if model.item_id.sparse:
        opts.append(torch.optim.SparseAdam([model.item_id.weight], lr=config.train.learning_rate))
        log.info("sparse ID-embedding gradients: %d rows under SparseAdam (lazy; no weight decay on them)",
                 model.item_id.num_embeddings)
    return opts


class WeightAverage:
    """An exponential moving average of a model's trained weights, updated after every step, with a time constant
    of `epochs` epochs of `steps_per_epoch` steps (Polyak averaging: a flatter, better-generalising point than the
    last step's weights at a constant learning rate). `swapped()` puts the average in the model for a while."""

    def __init__(self, model: torch.nn.Module, epochs: float, steps_per_epoch: int) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.params]
        self.weight = 1.0 / max(epochs * steps_per_epoch, 1.0)

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], self.weight)

    @torch.no_grad()
    def apply(self) -> None:
        """Put the averaged weights in the model."""
        for p, a in zip(self.params, self.average, strict=True):
            p.copy_(a)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The averaged weights in the model inside the block, the trained ones back after it."""
        current = [p.detach().clone() for p in self.params]
        self.apply()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, c in zip(self.params, current, strict=True):
                    p.copy_(c)

    def state_dict(self) -> list[torch.Tensor]:
        return [a.detach().cpu().clone() for a in self.average]

    def load_state_dict(self, state: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for a, s in zip(self.average, state, strict=True):
                a.copy_(s)


def _weight_average(model: torch.nn.Module, config: Config, n_windows: int, world: int) -> WeightAverage | None:
    epochs = config.train.weight_average_epochs
    steps = math.ceil(math.ceil(n_windows / world) / config.train.batch_size)
    return WeightAverage(model, epochs, steps) if epochs > 0 else None


def _text_embeddings(config: Config, items: pd.DataFrame, dist: Dist) -> np.ndarray:
    from components.text_encoder import cached_text_embeddings, encoder_workers

    cache = Path(config.paths.data_dir) / "cache"
    texts = items["text"].fillna("").astype(str).tolist()
    if dist.main:
        emb = cached_text_embeddings(texts, config.model.encoder_source, cache,
                                     workers=encoder_workers(config.model.encoder_workers))
    _barrier(dist)
    if not dist.main:
        emb = cached_text_embeddings(texts, config.model.encoder_source, cache, progress=False)
    return emb


def _plot_curve(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax2 = ax1.twinx()
    members = sorted({h.get("member", 0) for h in history})
    for member in members:  # an ensemble's members, one curve each
        rows = [h for h in history if h.get("member", 0) == member]
        epochs = [h["epoch"] for h in rows]
        suffix = f" (member {member})" if len(members) > 1 else ""
        ax1.plot(epochs, [h["loss"] for h in rows], "o-", color="tab:blue", alpha=0.5 + 0.5 / len(members),
                 label="train loss" + suffix)
        ax2.plot(epochs, [h[f"val_ndcg@{EVAL_K}"] for h in rows], "s-", color="tab:orange",
                 alpha=0.5 + 0.5 / len(members), label="val NDCG@10" + suffix)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    ax2.set_ylabel(f"validation NDCG@{EVAL_K}", color="tab:orange")
    ax1.set_title("two-tower training" if len(members) == 1 else f"ensemble of {len(members)} two-towers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_model(config: Config, canonical_dir: str | Path, examples_dir: str | Path, out_dir: str | Path,
                resume: bool = False, progress: bool = True, finish: bool = True) -> dict:
    """Train, early-stop on validation NDCG@10, write the contract-C4 artifact to `out_dir`; returns metrics.
    `model.ensemble_members` > 1 trains an ensemble (`train_ensemble`); `finish=False` (an ensemble's member)
    leaves out the priors and the test metrics."""
    from tqdm.auto import tqdm

    if ensemble_size(config, canonical_dir) > 1:
        return train_ensemble(config, canonical_dir, examples_dir, out_dir, resume, progress)
    tuning = config.model.encoder_tuning
    if config.train.refit_on_validation and config.model.tunes_encoder_weights:
        raise TrainError(f"train.refit_on_validation=true needs model.encoder_tuning frozen or adapter, not {tuning} "
                         "(the refit reuses the frozen text embeddings)")
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
    examples = read_examples(examples_dir, training_columns(config.dataset))
    data = prepare_data(config, tables, examples)
    if not config.train.refit_on_validation:  # only the refit reads them again
        del tables, examples
    text_emb = _text_embeddings(config, data.items, dist)
    model = build_model(config, data, text_emb).to(device)
    if not config.train.refit_on_validation:  # the model holds its own copy
        del text_emb
    text_fn = _attach_encoder(model, config, data, device) if config.model.tunes_encoder_weights else None
    log_pop = torch.log(torch.from_numpy(np.concatenate([[0.0], data.train_count])).float() / data.train_count.sum()
                        + 1e-12).to(device)
    opts = make_optimizers(model, config)
    base_lrs = [group.get("lr", config.train.learning_rate) for opt in opts for group in opt.param_groups]
    ddp = torch.nn.parallel.DistributedDataParallel(model) if dist.world > 1 else None
    average = _weight_average(model, config, len(data.windows_in), dist.world)
    history: list[dict] = []
    start_epoch, best, best_state, bad_epochs = 1, -1.0, None, 0
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # tensors and plain types only
        model.load_state_dict(ck["model"])
        states = ck["optimizer"] if isinstance(ck["optimizer"], list) else [ck["optimizer"]]
        for opt, state in zip(opts, states, strict=True):
            opt.load_state_dict(state)
        start_epoch, best, best_state = ck["epoch"] + 1, ck["best_metric"], ck["best_state"]
        bad_epochs, history = ck["bad_epochs"], ck["history"]
        if average is not None and ck.get("weight_average") is not None:
            average.load_state_dict(ck["weight_average"])
        torch.set_rng_state(ck["torch_rng"])
        log.info("resumed from %s at epoch %d (best val NDCG@10 %.4f)", ckpt_path, ck["epoch"], best)
    bs = config.train.batch_size
    amp_dtype = torch.float16 if device.type == "cuda" and not torch.cuda.is_bf16_supported() else torch.bfloat16
    mixed = tuning == "full" or (tuning == "lora" and device.type == "cuda")  # a CPU runs LoRA in float32
    amp = torch.autocast(device.type, dtype=amp_dtype, enabled=mixed)
    scaler = torch.amp.GradScaler(device.type, enabled=mixed and amp_dtype == torch.float16)
    deadline = started + 60 * config.train.max_minutes

    def step_epoch(epoch: int, model=model, ddp=ddp, opts=opts, data=data, log_pop=log_pop,
                   deadline: float | None = deadline, average=average) -> tuple[float, np.ndarray]:
        """One pass over the windows (this rank's share), cut short at `deadline` (the time budget); returns (mean
        loss over ranks, the windows used)."""
        model.train()
        groups = [group for opt in opts for group in opt.param_groups]
        for group, base_lr in zip(groups, base_lrs, strict=True):
            group["lr"] = base_lr * lr_factor(config, epoch)
        dense = [p for p in model.parameters() if p.requires_grad and not _sparse_param(model, p)]
        n_win = len(data.windows_in)
        per_rank = math.ceil(n_win / dist.world)
        perm = np.random.default_rng(config.train.seed + epoch).permutation(n_win)
        perm = np.resize(perm, per_rank * dist.world)[dist.rank :: dist.world]
        losses = []
        starts = range(0, per_rank, bs)
        bar = tqdm(starts, desc=f"epoch {epoch}", disable=not (progress and dist.main), leave=False)
        for s in bar:
            if deadline is not None and losses and bool(_broadcast(float(time.monotonic() >= deadline), dist)):
                log.warning("time budget train.max_minutes=%.1f reached in epoch %d after %d of %d steps",
                            config.train.max_minutes, epoch, len(losses), len(starts))
                perm = perm[:s]
                break
            idx = perm[s : s + bs]
            b_in = torch.from_numpy(data.windows_in[idx]).to(device)
            b_out = torch.from_numpy(data.windows_out[idx]).to(device)
            b_prof = torch.from_numpy(data.window_profile[idx]).to(device)
            with amp:
                loss = (ddp or model)(b_in, b_out, b_prof, log_pop, config.model, text_fn)
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            for opt in opts:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(dense, 5.0)
            for opt in opts:
                scaler.step(opt)
            scaler.update()
            if average is not None:
                average.update()
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
        averaged = average.swapped() if average is not None else contextlib.nullcontext()
        with averaged:  # validated, and kept as the best epoch, with the averaged weights
            if dist.main:
                model.eval()
                if text_fn is not None:
                    _sync_text(model, text_fn)
                val = ranking_metrics(in_training_recommender(model, data, device), data.validation, config)
            metric = _broadcast(val[f"ndcg@{EVAL_K}"], dist)
            if metric > best:
                best_state = trained_state(model)
        row = {"epoch": epoch, "loss": loss_mean, f"val_ndcg@{EVAL_K}": float(metric),
               f"val_hr@{EVAL_K}": float(val[f"hr@{EVAL_K}"]),
               "epoch_seconds": epoch_s, "samples": int(len(perm)) * dist.world,
               "positions": int((data.windows_out[perm] > 0).sum()) * dist.world}
        history.append(row)
        if metric > best:
            best, bad_epochs = float(metric), 0
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
            ck = {"model": model.state_dict(), "optimizer": [opt.state_dict() for opt in opts], "epoch": epoch,
                  "best_metric": best, "best_state": best_state, "bad_epochs": bad_epochs, "history": history,
                  "torch_rng": torch.get_rng_state(),
                  "weight_average": average.state_dict() if average is not None else None}
            with atomic_path(ckpt_path) as tmp:
                torch.save(ck, tmp)
    refit = None
    if config.train.refit_on_validation:
        best_epoch = max(history, key=lambda h: h[f"val_ndcg@{EVAL_K}"])["epoch"]
        seed_everything(config.train.seed)
        refit_data = prepare_data(config, tables, examples, with_validation=True)
        refit = build_model(config, refit_data, text_emb).to(device)
        refit_opts = make_optimizers(refit, config)
        refit_ddp = torch.nn.parallel.DistributedDataParallel(refit) if dist.world > 1 else None
        refit_average = _weight_average(refit, config, len(refit_data.windows_in), dist.world)
        refit_log_pop = torch.log(torch.from_numpy(np.concatenate([[0.0], refit_data.train_count])).float()
                                  / refit_data.train_count.sum() + 1e-12).to(device)
        for epoch in range(1, best_epoch + 1):
            t0 = time.monotonic()
            loss_mean, _ = step_epoch(epoch, refit, refit_ddp, refit_opts, refit_data, refit_log_pop, None,
                                      refit_average)
            log.info("refit epoch %d/%d on train + validation targets: loss %.4f, %.1fs", epoch, best_epoch,
                     loss_mean, time.monotonic() - t0)
    metrics: dict[str, Any] = {}
    if dist.main:
        if best_state is not None:
            restore_trained_state(model, best_state)
        model.eval()
        if text_fn is not None:
            _sync_text(model, text_fn)
            _save_encoder(model, out)
        if not finish:  # an ensemble member: the ensemble chooses the priors and is tested as a whole
            save_artifact(model.cpu(), out, data.item_ids, model.item_embeddings().numpy(), data.profile_encoder,
                          history)
            metrics = {f"val_ndcg@{EVAL_K}": best, "epochs": len(history),
                       "train_seconds": time.monotonic() - started}
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        else:
            if refit is not None and refit_average is not None:
                refit_average.apply()  # the averaged weights are the refit's result
            metrics = _finish(model, data, config, out, history, best, started, device, refit=refit,
                              refit_data=refit_data if refit is not None else None)
    _barrier(dist)
    return metrics


PRIOR_CONFIG_KEYS = ("new_item_popularity_windows", "new_item_velocity_weight", "new_item_never_seen_bonus",
                     "new_item_popularity_weight",
                     "new_item_popularity_window_days", "new_item_popularity_validation", "popularity_weight",
                     "popularity_window_days", "popularity_validation", "new_item_offset",
                     "new_item_offset_validation")  # what the model's priors record, fitted on validation


def _served_mix_offset(model: Any, data: TrainData, config: Config, device: torch.device
                       ) -> tuple[float, list[dict]]:
    """The new-item offset fitted on the validation stage's served mix (`components.served_mix`), the model scored
    exactly as served: saved with its priors to a scratch folder and loaded back."""
    with tempfile.TemporaryDirectory(prefix="served-mix-") as scratch:
        item_emb = in_training_recommender(model, data, device).item_embeddings
        save_artifact(model, scratch, data.item_ids, item_emb, data.profile_encoder, [])
        return fit_new_item_offset(load_recommender(scratch), data.validation, data.users, config.train.seed)


def _finish(model: Any, data: TrainData, config: Config, out: Path, history: list[dict], best: float,
            started: float, device: torch.device, refit: Any = None, refit_data: TrainData | None = None,
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """After training: choose both popularity priors on validation, write the artifact (the refit model when
    there is one, with the priors chosen on the early-stopped one), score it as served on the test users, write
    metrics.json and the curve; returns the metrics."""
    prior = fit_new_item_prior(model, data, device, config.train.seed)
    weight = prior.weight
    model.cfg["new_item_popularity_windows"] = prior.windows
    model.cfg["new_item_velocity_weight"] = prior.velocity
    model.cfg["new_item_never_seen_bonus"] = prior.never_seen
    model.cfg["new_item_popularity_weight"] = weight  # w as served: the windows' and the velocity's weights summed
    model.cfg["new_item_popularity_window_days"] = None
    model.cfg["new_item_popularity_validation"] = prior.record
    warm_weight, warm_window, warm_curve = choose_warm_popularity_weight(model, data, device)
    model.cfg["popularity_weight"] = warm_weight
    model.cfg["popularity_window_days"] = warm_window
    model.cfg["popularity_validation"] = warm_curve
    offset, offset_curve = _served_mix_offset(model, data, config, device)
    model.cfg["new_item_offset"] = offset
    model.cfg["new_item_offset_validation"] = offset_curve
    if refit is not None:  # the refit model serves, with the priors chosen on the early-stopped one
        refit.eval()
        refit.cfg.update({k: v for k, v in model.cfg.items() if k in PRIOR_CONFIG_KEYS})
        model, data = refit, refit_data
    item_emb = in_training_recommender(model, data, device).item_embeddings
    save_artifact(model.cpu(), out, data.item_ids, item_emb, data.profile_encoder, history)
    rec = load_recommender(out)  # scored as served and evaluated: the saved artifact with its priors
    test = ranking_metrics(rec, data.test, config)
    cold = {f"cold_{k}": v for k, v in ranking_metrics(rec, data.test, config, cold=True).items()}
    metrics = {"new_item_popularity_weight": weight, "popularity_weight": warm_weight, "new_item_offset": offset,
               f"val_ndcg@{EVAL_K}": best, **{f"test_{k}": v for k, v in test.items()},
               **cold, "epochs": max((h["epoch"] for h in history), default=0),
               "refit_on_validation": refit is not None,
               "train_seconds": time.monotonic() - started, "train_positions": int((data.windows_out > 0).sum()),
               "validation_users": len(data.validation.users),  # ranked per epoch and per prior grid point
               "validation_users_total": data.validation.users_total or len(data.validation.users),
               **(extra or {})}
    if model.log_temperature is not None:
        metrics["learnt_temperature"] = float(model.log_temperature.exp())
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    _plot_curve(history, out / "training_curve.png")
    log.info("model written to %s: %s", out, {k: round(v, 4) for k, v in metrics.items()
                                              if isinstance(v, int | float)})
    return metrics


# ---------------------------------------------------------------- ensembles of two-towers


def available_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a pod's CPU limit), at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text(encoding="utf-8").split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(cpus, 1)


def ensemble_size(config: Config, canonical_dir: str | Path) -> int:
    """How many two-towers `train_model` trains: `model.ensemble_members`, or one (said in the log) where an
    ensemble does not apply: a tuned text encoder (each member would tune its own), the refit, or a catalogue above
    `model.ensemble_max_items` (the members train at once, each holding the catalogue's features)."""
    k = config.model.ensemble_members
    if k == 1:
        return 1
    items = pq.ParquetFile(table_path(canonical_dir, ITEMS)).metadata.num_rows
    reason = (f"model.encoder_tuning={config.model.encoder_tuning} (each member would tune its own encoder)"
              if config.model.tunes_encoder_weights else
              "train.refit_on_validation=true" if config.train.refit_on_validation else
              f"{items:,} catalogue items > model.ensemble_max_items={config.model.ensemble_max_items:,}"
              if items > config.model.ensemble_max_items else None)
    if reason is not None:
        log.warning("model.ensemble_members=%d ignored: one two-tower is trained with %s", k, reason)
        return 1
    return k


def member_config(config: Config, member: int, deadline: float | None = None) -> Config:
    """Member `member` of an ensemble: the same settings, seed train.seed + member, one two-tower; its time budget
    ends at `deadline` (time.time()), the ensemble's: train.max_minutes bounds the whole ensemble."""
    data = resolved(absolute_paths(config))
    data["train"]["seed"] = config.train.seed + member
    data["model"]["ensemble_members"] = 1
    if deadline is not None:
        data["train"]["max_minutes"] = max((deadline - time.time()) / 60, 1e-3)
    return config_from_text(json.dumps(data))


MEMBER_MIN_BUDGET = 0.25  # a member is started only with this share of train.max_minutes left


def _train_member(config_text: str, member: int, deadline: float, canonical_dir: str, examples_dir: str,
                  out_dir: str, resume: bool, progress: bool = False) -> dict | None:
    """One member (in a worker process, spawned: the parent's torch threads and state are not inherited); it starts
    when a process is free, with what is left of the ensemble's time budget, or (all but the first) not at all
    (None) when less than MEMBER_MIN_BUDGET of it is left: a member stopped long before its early-stopping point
    would weaken the mean."""
    config = config_from_text(config_text)
    if multiprocessing.parent_process() is not None:  # a worker: its epochs go to <member>/train.log
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(Path(out_dir) / "train.log", mode="a" if resume else "w")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    if member > 0 and deadline - time.time() < MEMBER_MIN_BUDGET * 60 * config.train.max_minutes:
        log.warning("ensemble member %d not trained: less than %.0f%% of train.max_minutes=%.1f left", member,
                    100 * MEMBER_MIN_BUDGET, config.train.max_minutes)
        return None
    return train_model(member_config(config, member, deadline), canonical_dir, examples_dir, out_dir, resume=resume,
                       progress=progress, finish=False)


def _member_done(folder: Path) -> bool:
    return (folder / "metrics.json").is_file() and (folder / "model.pt").is_file()


def train_ensemble(config: Config, canonical_dir: str | Path, examples_dir: str | Path, out_dir: str | Path,
                   resume: bool = False, progress: bool = True) -> dict:
    """`model.ensemble_members` two-towers from seeds train.seed, +1, ..., each trained and early-stopped on its
    own in <out>/members/<i> (at once in `train.member_processes` processes), then joined into one
    `TwoTowerEnsemble` whose priors are chosen and whose test metrics are taken like a single model's. With
    `resume`, finished members are kept and unfinished ones resume from their checkpoints."""
    started, deadline = time.monotonic(), time.time() + 60 * config.train.max_minutes
    k = config.model.ensemble_members
    out = Path(out_dir)
    folders = [out / "members" / str(i) for i in range(k)]
    if not resume and (out / "members").exists():  # an earlier run's members are not this run's
        shutil.rmtree(out / "members")
    todo = [i for i in range(k) if not (resume and _member_done(folders[i]))]
    processes = min(config.train.member_processes or available_cpus(), len(todo))
    log.info("ensemble of %d two-towers: training %d member(s) in %d process(es); each member's epochs are logged "
             "in %s/<i>/train.log", k, len(todo), max(processes, 1), out / "members")
    if processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(processes, mp_context=context) as pool:
            jobs = {pool.submit(_train_member, config_to_text(config), i, deadline, str(canonical_dir),
                                str(examples_dir), str(folders[i]), resume): i for i in todo}
            for job in as_completed(jobs):
                member = job.result()
                if member is None:
                    log.warning("member %d/%d not trained: less than %.0f%% of train.max_minutes was left for it",
                                jobs[job] + 1, k, 100 * MEMBER_MIN_BUDGET)
                    continue
                log.info("member %d/%d trained: val NDCG@10 %.4f, %d epochs, %.1f min", jobs[job] + 1, k,
                         member[f"val_ndcg@{EVAL_K}"], member["epochs"], member["train_seconds"] / 60)
    else:  # one after another (also under torchrun: each member is a DDP run)
        for i in todo:
            _train_member(config_to_text(config), i, deadline, str(canonical_dir), str(examples_dir), str(folders[i]),
                          resume, progress)
    device = _device(config)
    dist = _init_dist(device)
    metrics: dict[str, Any] = {}
    if dist.main:
        done = [i for i in range(k) if _member_done(folders[i])]
        if not done:
            raise TrainError("no member of the ensemble was trained within "
                             f"train.max_minutes={config.train.max_minutes}")
        folders = [folders[i] for i in done]
        members = [json.loads((folder / "metrics.json").read_text(encoding="utf-8")) for folder in folders]
        tables = defended_tables(config, read_tables(canonical_dir), out)
        data = prepare_data(config, tables, read_examples(examples_dir, training_columns(config.dataset)))
        trained = [load_model(folder)[0] for folder in folders]
        if len(trained) == 1:  # the others found no time left: one two-tower
            model = trained[0]
        else:
            model = TwoTowerEnsemble({**trained[0].cfg, "ensemble_members": len(trained),
                                      "member_seeds": [config.train.seed + i for i in done]})
            for slot, member in zip(model.members, trained, strict=True):
                slot.load_state_dict(member.state_dict())
        model.eval()
        history = [{**row, "member": i} for i, folder in enumerate(folders)
                   for row in json.loads((folder / "history.json").read_text(encoding="utf-8"))]
        best = ranking_metrics(in_training_recommender(model, data, device), data.validation,
                               config)[f"ndcg@{EVAL_K}"]
        log.info("ensemble of %d: val NDCG@10 %.4f (members %s)", len(trained), best,
                 ", ".join(f"{m[f'val_ndcg@{EVAL_K}']:.4f}" for m in members))
        metrics = _finish(model, data, config, out, history, best, started, device, extra={
            "ensemble_members": len(trained), f"member_val_ndcg@{EVAL_K}": [m[f"val_ndcg@{EVAL_K}"] for m in members],
            "member_epochs": [m["epochs"] for m in members]})
    _barrier(dist)
    return metrics


def _attach_encoder(model, config: Config, data: TrainData, device: torch.device):
    """Tune the text encoder (`model.encoder_tuning` full: every weight; lora: adapters on the top layers over
    cached lower-layer token states); returns rows -> text embeddings computed with gradients."""
    from components.text_encoder import MAX_TOKENS, EncoderError, LoraTextEncoder, SentenceEncoder, load_text_encoder

    encoder = load_text_encoder(config.model.encoder_source).to(device)
    texts = data.items["text"].fillna("").astype(str).tolist()
    m = config.model
    if m.encoder_tuning == "lora":
        if not isinstance(encoder, SentenceEncoder):
            raise EncoderError(f"model.encoder_tuning=lora needs a transformer; {m.encoder_source} is a static "
                               "token table (encoder_tuning full tunes it)")
        tuner = LoraTextEncoder(encoder, texts, m.lora_layers, m.lora_rank, m.lora_alpha).train()
        model.encoder = tuner
        log.info("LoRA (rank %d) on the top %d of %d text-encoder layers: %d trainable weights", m.lora_rank,
                 m.lora_layers, len(encoder.layers()), sum(p.numel() for p in tuner.parameters() if p.requires_grad))

        def encode(rows: torch.Tensor) -> torch.Tensor:
            return tuner(rows - 1)  # model row r + 1 holds text r
    else:
        encoder.train()
        model.encoder = encoder
        tokens = encoder.tokenize(texts, MAX_TOKENS)
        ids = torch.cat([torch.zeros(1, tokens["input_ids"].shape[1], dtype=torch.long), tokens["input_ids"]])
        mask = torch.cat([torch.zeros(1, ids.shape[1], dtype=torch.long), tokens["attention_mask"]]).to(device)
        ids = ids.to(device)

        def encode(rows: torch.Tensor) -> torch.Tensor:
            return encoder(ids[rows], mask[rows])

    limit = m.encoder_items_per_step

    def text_fn(rows: torch.Tensor) -> torch.Tensor:
        """The rows' text vectors; in training at most `encoder_items_per_step` of them (drawn at random) through the
        encoder with gradients, the others from the text buffer (re-encoded after every epoch)."""
        if limit is None or not model.training or len(rows) <= limit:
            return encode(rows)
        pick = torch.randperm(len(rows), device=rows.device)[:limit]
        return model.text[rows].index_put((pick,), encode(rows[pick]).to(model.text.dtype))

    return text_fn


@torch.no_grad()
def _sync_text(model, text_fn, chunk: int = 256) -> None:
    """Fine-tuning: re-encode every item text with the current encoder into the model's text buffer."""
    rows = torch.arange(1, model.text.shape[0], device=model.text.device)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        model.text[part] = text_fn(part).float()


def _save_encoder(model, out: Path) -> None:
    """Fine-tuning: keep the tuned encoder (LoRA merged into its weights) and its tokenizer in <out>/encoder; the
    artifact points at it, so the serving bundle exports it and new items are embedded by it."""
    from components.text_encoder import LoraTextEncoder

    encoder = model.encoder.merged() if isinstance(model.encoder, LoraTextEncoder) else model.encoder
    encoder.save(out / "encoder")
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
    from pathlib import Path

    from components.config import config_from_text
    from components.train import train_model, training_page

    result = train_model(config_from_text(config), canonical.path, examples.path, model.path)
    for key, value in result.items():  # an ensemble's per-member lists as one metric per member
        for name, number in ([(f"{key}_member_{i}", v) for i, v in enumerate(value)] if isinstance(value, list)
                             else [(key, value)]):
            metrics.log_metric(name, float(number))
    Path(curve.path).write_text(training_page(Path(model.path), result), encoding="utf-8")


def training_page(model_dir: Path, metrics: dict[str, Any]) -> str:
    """The training step's HTML page: the curve, the metrics and the popularity priors chosen on validation."""
    from components.html_report import page, png_img, table

    cfg = json.loads((model_dir / "model_config.json").read_text(encoding="utf-8"))
    priors = [(f"new items (fitted on cold validation), {'all history' if days is None else f'{days:g} days'}",
               weight, days) for days, weight in new_item_prior_windows(cfg)]
    priors += [("new items: velocity (all-history interactions per day since first met)",
                cfg.get("new_item_velocity_weight", 0.0), ""),
               ("new items nobody has met yet: bonus", cfg.get("new_item_never_seen_bonus", 0.0), ""),
               ("new items against trained ones: offset (the validation mix)", cfg.get("new_item_offset", 0.0), ""),
               ("trained items (validation NDCG@10)", cfg.get("popularity_weight"), cfg.get("popularity_window_days"))]
    sections = [("Validation NDCG@10 and training loss per epoch",
                 png_img((model_dir / "training_curve.png").read_bytes(), "training curve")),
                ("Metrics", table(["metric", "value"], sorted(metrics.items()))),
                ("Popularity priors (w * log(1 + recent interactions by other users))",
                 table(["items", "weight w", "window (days; empty = all history)"], priors))]
    return page("Two-tower training", f"Model directory: {model_dir}", sections)

if __name__ == "__main__":
    main()
