"""The two-tower retrieval model (item tower: MiniLM text + ID + metadata; user tower: profile + recent items).

Item rows: catalogue row r (0-based, `item_ids[r]`) is model row r + 1; model row 0 is padding.
Item tower: normalize(MLP(text) + ID embedding (dropped out in training, absent for never-trained items)
+ one embedding per declared item attribute, averaged over a multi-valued attribute's values; with
`encoder_tuning` adapter, a residual MLP on the text vector first); the ablations
`item_representation` = text_only (no ID embedding) and id_only (no text or attributes: new items score 0).
User tower: a causal transformer over [profile token, recent items]
(left-padded, positions counted from the right); the user vector is the output at the most recent item,
or at the profile token when there is no history. Score = dot(user, item) of unit vectors.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from components.bundle_ops import PopularityPrior
from components.encoders import PROFILE_ENCODER_FILE, ItemEncoder, ProfileEncoder
from components.errors import RecsysError
from components.item_events import days_since, epoch_us, first_event_us
from components.onnx_export import quiet_onnx_export
from components.recommender import TowerRecommender

log = logging.getLogger(__name__)

ARTIFACT_FILES = ("model.pt", "model_config.json", "item_ids.npy", "item_embeddings.npy", PROFILE_ENCODER_FILE)


class ModelError(RecsysError, ValueError):
    """A model artifact or its inputs are unusable; the message says what and where."""


# ---------------------------------------------------------------- item features


@dataclass
class ItemFeatures:
    """Per catalogue row (0-based): text embedding and the declared item attributes as indices."""

    text: np.ndarray  # float32 [N, T]
    attributes: list[np.ndarray]  # per declared attribute (ItemEncoder order): int64 [N, width], 0 = unknown/pad


def item_features(items: pd.DataFrame, text_emb: np.ndarray, encoder: ItemEncoder) -> ItemFeatures:
    """Features of `items` rows (in their order) under the fitted attribute vocabularies."""
    return ItemFeatures(np.asarray(text_emb, dtype=np.float32), encoder.encode(items))


# ---------------------------------------------------------------- network


class _Block(nn.Module):
    """Pre-LayerNorm causal self-attention + feed-forward (hand-written so that it exports to ONNX cleanly)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ff(self.ln2(x)))


class UserTower(nn.Module):
    """Profile token + left-padded item vectors -> per-position unit user vectors [B, L+1, D]."""

    def __init__(self, dim: int, max_seq_len: int, layers: int, heads: int, dropout: float, profile_sizes: list[int]):
        super().__init__()
        if dim % heads:
            raise ModelError(f"model.embedding_dim={dim} must be divisible by model.user_heads={heads}")
        self.max_seq_len = max_seq_len
        self.profile = nn.ModuleList([nn.Embedding(size + 1, dim) for size in profile_sizes])
        self.item_in = nn.Linear(dim, dim)
        self.pos = nn.Embedding(max_seq_len + 1, dim)
        self.blocks = nn.ModuleList([_Block(dim, heads, dropout) for _ in range(layers)])
        self.ln = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, item_vecs: torch.Tensor, valid: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
        b, length, _ = item_vecs.shape
        prof = sum(emb(profile[:, j]) for j, emb in enumerate(self.profile))
        tokens = torch.cat([prof.unsqueeze(1), self.item_in(item_vecs)], dim=1)
        # positions from the right: the most recent item sits at max_seq_len whatever L is
        slots = torch.arange(length + 1, device=item_vecs.device) + (self.max_seq_len - length)
        slots = torch.where(slots < self.max_seq_len - length + 1, torch.zeros_like(slots), slots)
        x = self.drop(tokens + self.pos(slots).unsqueeze(0))
        keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=valid.device), valid], dim=1)  # [B, T]
        causal = torch.ones(length + 1, length + 1, dtype=torch.bool, device=valid.device).tril()
        allowed = (causal.unsqueeze(0) & keep.unsqueeze(1)).unsqueeze(1)  # [B, 1, T, T]
        for block in self.blocks:
            x = block(x, allowed)
        x = self.out(self.ln(x)) + prof.unsqueeze(1)
        return F.normalize(x, p=2, dim=-1)

    @staticmethod
    def last(per_position: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The user vector: output at the most recent item, or at the profile token without history."""
        has = valid[:, -1:] if valid.shape[1] else torch.zeros_like(valid[:, :1])
        return torch.where(has, per_position[:, -1], per_position[:, 0])


class TextAdapter(nn.Module):
    """A residual MLP on the (frozen) text vectors: x + up(GELU(down(x))), `up` zero-initialised so that it starts as
    the identity (`model.encoder_tuning` adapter)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x)))


@dataclass
class BatchTable:
    """Item vectors of a step's rows: `table` [len(rows) + 1, D], row 0 = padding, row k + 1 = model row rows[k]."""

    rows: torch.Tensor  # sorted distinct model rows (> 0)
    table: torch.Tensor

    def local(self, model_rows: torch.Tensor) -> torch.Tensor:
        """Rows of `table` for model rows (0, the padding, stays 0); every non-zero row must be in `rows`."""
        return torch.where(model_rows > 0, torch.searchsorted(self.rows, model_rows) + 1, 0)


class TwoTowerModel(nn.Module):
    """Both towers plus the per-item feature buffers (model row 0 = padding)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = cfg
        n, dim, text_dim = cfg["n_items"], cfg["embedding_dim"], cfg["text_dim"]
        self.register_buffer("text", torch.zeros(n + 1, text_dim))
        widths, sizes = cfg["item_attribute_widths"], cfg["item_attribute_sizes"]
        self.attribute_buffers = [f"item_attribute_{i}" for i in range(len(widths))]
        for name, width in zip(self.attribute_buffers, widths, strict=True):
            self.register_buffer(name, torch.zeros(n + 1, width, dtype=torch.long))
        self.register_buffer("train_count", torch.zeros(n + 1))  # training interactions per row (0 = cold)
        adapter = int(cfg.get("text_adapter_hidden") or 0)
        self.text_adapter = TextAdapter(text_dim, adapter) if adapter else None
        self.text_mlp = nn.Sequential(nn.Linear(text_dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        # sparse: a step's gradient holds only the rows it read (`reads_batch_rows`): a lazy Adam on large catalogues
        self.item_id = nn.Embedding(n + 1, dim, sparse=bool(cfg.get("sparse_id_gradients")))
        nn.init.normal_(self.item_id.weight, std=0.01)
        self.attribute_emb = nn.ModuleList(nn.Embedding(size, dim, padding_idx=0) for size in sizes)
        # model.learn_temperature: the softmax temperature is a trained weight (its log), starting at model.temperature
        self.log_temperature = (nn.Parameter(torch.tensor(float(np.log(cfg["temperature"]))))
                                if cfg.get("learn_temperature") else None)
        self.user = UserTower(dim, cfg["max_seq_len"], cfg["user_layers"], cfg["user_heads"], cfg["dropout"],
                              cfg["profile_sizes"])
        self.encoder: nn.Module | None = None  # set by the trainer when fine-tuning the text encoder

    def set_item_features(self, feats: ItemFeatures, train_count: np.ndarray | None = None) -> None:
        """Load catalogue features into the buffers (row r of `feats` -> model row r + 1)."""
        n = feats.text.shape[0]
        if n != self.cfg["n_items"]:
            raise ModelError(f"{n} item feature rows for a model of {self.cfg['n_items']} items")
        self.text[1:] = torch.from_numpy(feats.text)
        if len(feats.attributes) != len(self.attribute_buffers):
            raise ModelError(f"{len(feats.attributes)} item attributes for a model of {len(self.attribute_buffers)}")
        for buffer, block in zip(self.attributes(), feats.attributes, strict=True):
            width = min(block.shape[1], buffer.shape[1])
            buffer.zero_()
            buffer[1:, :width] = torch.from_numpy(block[:, :width])
        if train_count is not None:
            self.train_count[1:] = torch.from_numpy(np.asarray(train_count, dtype=np.float32))

    def item_vectors(self, rows: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """Unit item vectors of model rows; `text` overrides the cached text embeddings (fine-tuning)."""
        text = self.text[rows] if text is None else text
        parts = self.cfg.get("item_representation", "text_and_id")
        id_vec = self.item_id(rows) * (self.train_count[rows] > 0).unsqueeze(-1)  # cold items: no ID part
        if self.training and self.cfg["id_dropout"] > 0 and parts == "text_and_id":
            keep = torch.rand(rows.shape[0], 1, device=rows.device) >= self.cfg["id_dropout"]
            id_vec = id_vec * keep
        if parts == "id_only":
            return F.normalize(id_vec, p=2, dim=-1)
        content = self.content_vectors(text, [buffer[rows] for buffer in self.attributes()])
        return F.normalize(content if parts == "text_only" else content + id_vec, p=2, dim=-1)

    def attributes(self) -> list[torch.Tensor]:
        """The item attribute index buffers, [N+1, width] each."""
        return [getattr(self, name) for name in self.attribute_buffers]

    def content_vectors(self, text: torch.Tensor, attributes: list[torch.Tensor]) -> torch.Tensor:
        """The ID-free part of the item tower (all a never-trained item has), before normalization: text MLP (after
        the text adapter, when there is one) plus each attribute's embedding (the mean over its values; nothing
        for unknown)."""
        text = text.float() if self.text_adapter is None else self.text_adapter(text.float())
        out = self.text_mlp(text)
        for emb, codes in zip(self.attribute_emb, attributes, strict=True):
            out = out + emb(codes).sum(1) / (codes > 0).sum(1, keepdim=True).clamp(min=1)
        return out

    def new_item_vectors(self, text: torch.Tensor, attributes: list[torch.Tensor]) -> torch.Tensor:
        """Unit vectors of items never trained on, from their text and attribute codes alone (zeros for the
        ablation without content, which has nothing to embed them from)."""
        vec = F.normalize(self.content_vectors(text, attributes), p=2, dim=-1)
        return torch.zeros_like(vec) if self.cfg.get("item_representation") == "id_only" else vec

    def item_table(self, text: torch.Tensor | None = None) -> torch.Tensor:
        """[N+1, D] vectors of every item, row 0 = 0 (padding); `text` [N, T] overrides the cached text embeddings."""
        return self.batch_table(torch.arange(1, self.text.shape[0], device=self.text.device), text).table

    @torch.no_grad()
    def item_embeddings(self, text: torch.Tensor | None = None, chunk: int = 65_536) -> torch.Tensor:
        """[N, D] unit vectors of every catalogue row (no gradient), `chunk` rows at a time: the whole table at once
        holds ~2 GB of intermediates at 10^6 items. `text` [N, T] overrides the cached text embeddings."""
        n = self.text.shape[0] - 1
        parts = [self.item_vectors(torch.arange(start + 1, min(start + chunk, n) + 1, device=self.text.device),
                                   None if text is None else text[start : start + chunk])
                 for start in range(0, n, chunk)]
        return torch.cat(parts) if parts else torch.zeros(0, int(self.cfg["embedding_dim"]))

    def batch_table(self, rows: torch.Tensor, text: torch.Tensor | None = None) -> BatchTable:
        """The vectors of the sorted, distinct model rows `rows` (> 0) only: what a step reads, at a cost that does
        not grow with the catalogue."""
        vecs = self.item_vectors(rows, text)
        return BatchTable(rows, torch.cat([torch.zeros(1, vecs.shape[1], device=vecs.device, dtype=vecs.dtype), vecs]))

    def forward(self, history: torch.Tensor, targets: torch.Tensor, profile: torch.Tensor, log_pop: torch.Tensor,
                cfg: Any, text_fn: Any = None) -> torch.Tensor:
        """Training loss of a batch of windows (see `next_item_loss`); DDP wraps this call."""
        return next_item_loss(self, history, targets, profile, log_pop, cfg, text_fn)

    def user_positions(self, table: torch.Tensor, history: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
        """Per-position user vectors [B, L+1, D] for left-padded history rows [B, L]."""
        return self.user(table[history], history > 0, profile)


class EnsembleUserTower(nn.Module):
    """The members' user towers side by side: item vectors [B, L, k*D] (the members' unit vectors / sqrt(k)) ->
    per-position [B, L+1, k*D], each member's unit output / sqrt(k), so that a dot product with an ensemble item
    vector is the mean of the members' cosines."""

    def __init__(self, towers: list[UserTower]) -> None:
        super().__init__()
        self.towers = nn.ModuleList(towers)
        self.max_seq_len = towers[0].max_seq_len
        self.scale = float(np.sqrt(len(towers)))

    def forward(self, item_vecs: torch.Tensor, valid: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
        parts = item_vecs.chunk(len(self.towers), dim=-1)
        return torch.cat([tower(part * self.scale, valid, profile) for tower, part in zip(self.towers, parts,
                                                                                         strict=True)], -1) / self.scale


class TwoTowerEnsemble(nn.Module):
    """k trained two-towers (`model.ensemble_members`) as one: every vector is the members' unit vectors concatenated
    and divided by sqrt(k), so the served product of user and item vectors is the mean of the members' cosines
    and every consumer of a two-tower (priors, ONNX export, bundle, ANN index, new items) takes it unchanged.
    Members are trained separately (`components.train.train_ensemble`); this class scores, it is not trained."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = cfg
        member_cfg = {**cfg, "ensemble_members": 1}
        self.members = nn.ModuleList(TwoTowerModel(member_cfg) for _ in range(int(cfg["ensemble_members"])))
        for member in self.members:
            member.cfg = cfg  # one config: the priors chosen for the ensemble are the members' too
        self.scale = float(np.sqrt(len(self.members)))
        self.user = EnsembleUserTower([member.user for member in self.members])
        self.encoder: nn.Module | None = None
        self.log_temperature = None

    @property
    def text(self) -> torch.Tensor:
        return self.members[0].text

    @property
    def train_count(self) -> torch.Tensor:
        return self.members[0].train_count

    @property
    def attribute_buffers(self) -> list[str]:
        return self.members[0].attribute_buffers

    def attributes(self) -> list[torch.Tensor]:
        return self.members[0].attributes()

    def set_item_features(self, feats: ItemFeatures, train_count: np.ndarray | None = None) -> None:
        for member in self.members:
            member.set_item_features(feats, train_count)

    def _joined(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(vectors, dim=-1) / self.scale

    def item_vectors(self, rows: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        return self._joined([member.item_vectors(rows, text) for member in self.members])

    def new_item_vectors(self, text: torch.Tensor, attributes: list[torch.Tensor]) -> torch.Tensor:
        return self._joined([member.new_item_vectors(text, attributes) for member in self.members])

    def item_table(self, text: torch.Tensor | None = None) -> torch.Tensor:
        return self._joined([member.item_table(text) for member in self.members])

    @torch.no_grad()
    def item_embeddings(self, text: torch.Tensor | None = None, chunk: int = 65_536) -> torch.Tensor:
        return self._joined([member.item_embeddings(text, chunk) for member in self.members])

    def batch_table(self, rows: torch.Tensor, text: torch.Tensor | None = None) -> BatchTable:
        return BatchTable(rows, self._joined([member.batch_table(rows, text).table for member in self.members]))

    def user_positions(self, table: torch.Tensor, history: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
        return self.user(table[history], history > 0, profile)


def build_two_tower(cfg: dict[str, Any]) -> TwoTowerModel | TwoTowerEnsemble:
    """The network a model config describes: one two-tower, or an ensemble of `ensemble_members` of them."""
    return TwoTowerEnsemble(cfg) if int(cfg.get("ensemble_members", 1)) > 1 else TwoTowerModel(cfg)


def resolved_loss(cfg: Any, n_items: int) -> str:
    """The loss `model.loss` names for a catalogue of `n_items` (auto: full softmax while the catalogue fits)."""
    if cfg.loss != "auto":
        return cfg.loss
    return "full_softmax" if n_items <= cfg.full_softmax_max_items else "sampled_softmax"


def reads_batch_rows(cfg: Any, n_items: int, tunes_text: bool = False) -> bool:
    """Whether a training step runs the item tower over the rows its batch reads only (their histories, targets and
    sampled negatives) rather than over the whole catalogue: sampled softmax always; in-batch softmax without hard
    negatives from `model.batch_rows_min_items` items, or when the text encoder is tuned."""
    kind = resolved_loss(cfg, n_items)
    if kind == "sampled_softmax":
        return True
    return kind == "in_batch" and (tunes_text or (cfg.hard_negatives == 0 and n_items >= cfg.batch_rows_min_items))


def softmax_temperature(model: Any, cfg: Any) -> torch.Tensor | float:
    """The loss's temperature: the trained one (`model.learn_temperature`, kept at or above 0.01) or the configured."""
    learnt = getattr(model, "log_temperature", None)
    return cfg.temperature if learnt is None else learnt.exp().clamp(min=0.01)


def _text_of(text_fn: Any, rows: torch.Tensor) -> torch.Tensor | None:
    return None if text_fn is None else text_fn(rows)


def next_item_loss(model: Any, batch_in: torch.Tensor, batch_out: torch.Tensor, profile: torch.Tensor,
                   log_pop: torch.Tensor, cfg: Any, text_fn: Any = None) -> torch.Tensor:
    """Next-item cross-entropy of every target token of a batch of windows, under the configured `model.loss`.

    full_softmax: each target against the whole catalogue. sampled_softmax: against `sampled_negatives` items
    shared by the batch, drawn with probability q ~ count^0.75; a negative's logit is corrected by -log(S q) and
    the target's own draws are masked, so the sum estimates the full softmax's partition (importance sampling).
    in_batch: against the batch's distinct targets (+ hard negatives), logQ-corrected.
    """
    temperature = softmax_temperature(model, cfg)
    n_items = int(model.text.shape[0]) - 1
    kind = resolved_loss(cfg, n_items)
    if kind == "in_batch":
        return in_batch_softmax_loss(model, batch_in, batch_out, profile, log_pop, cfg, text_fn)
    targets = batch_out[batch_out > 0]
    if kind == "full_softmax":
        table = model.item_table(_text_of(text_fn, torch.arange(1, n_items + 1, device=batch_in.device)))
        query = model.user_positions(table, batch_in, profile)[batch_out > 0]  # [M, D]
        return F.cross_entropy(query @ table[1:].T / temperature, targets - 1)
    q = torch.exp(0.75 * log_pop[1:])
    q = q / q.sum()
    sampled = torch.multinomial(q, cfg.sampled_negatives, replacement=True) + 1
    rows = torch.unique(torch.cat([targets, sampled, batch_in[batch_in > 0]]))
    batch = model.batch_table(rows, _text_of(text_fn, rows))
    query = model.user_positions(batch.table, batch.local(batch_in), profile)[batch_out > 0]  # [M, D]
    pos = (query * batch.table[batch.local(targets)]).sum(-1, keepdim=True) / temperature
    log_sq = torch.log(cfg.sampled_negatives * q[sampled - 1].clamp(min=1e-12))
    neg = query @ batch.table[batch.local(sampled)].T / temperature - log_sq
    neg = neg.masked_fill(sampled.unsqueeze(0) == targets.unsqueeze(1), -torch.inf)  # accidental hits
    return F.cross_entropy(torch.cat([pos, neg], dim=1), torch.zeros(len(targets), dtype=torch.long,
                                                                     device=pos.device))


def in_batch_softmax_loss(model: Any, batch_in: torch.Tensor, batch_out: torch.Tensor, profile: torch.Tensor,
                          log_pop: torch.Tensor, cfg: Any, text_fn: Any = None) -> torch.Tensor:
    """Next-item sampled softmax: every target token against the batch's distinct target items (+ hard negatives).

    logQ correction subtracts log P(item among the batch's targets) = log(1 - (1 - p)^M) from the logits.
    """
    temperature = softmax_temperature(model, cfg)
    targets = batch_out[batch_out > 0]
    cands = torch.unique(targets)
    if reads_batch_rows(cfg, int(model.text.shape[0]) - 1, tunes_text=text_fn is not None):
        # only the rows this batch reads (fine-tuning: the encoder runs on these items alone)
        rows = torch.unique(torch.cat([cands, batch_in[batch_in > 0]]))
        batch = model.batch_table(rows, _text_of(text_fn, rows))
        table, history, cand_rows = batch.table, batch.local(batch_in), batch.local(cands)
    else:  # hard negatives search every item; a small catalogue costs one product
        table, history, cand_rows = model.item_table(), batch_in, cands
    query = model.user_positions(table, history, profile)[batch_out > 0]  # [M, D]
    logits = query @ table[cand_rows].T / temperature
    if cfg.logq_correction:
        m = float(targets.numel())
        p = log_pop[cands].exp()
        logits = logits - torch.log(-torch.expm1(m * torch.log1p(-p.clamp(max=1 - 1e-6)))).clamp(min=-30)
    labels = torch.searchsorted(cands, targets)
    if cfg.hard_negatives > 0 and text_fn is None:
        with torch.no_grad():
            full = query @ table[1:].T
            full[:, cands - 1] = -torch.inf  # already candidates
            hard = full.topk(min(cfg.hard_negatives, full.shape[1]), dim=1).indices + 1
        hard_logits = (query.unsqueeze(1) * table[hard]).sum(-1) / temperature
        logits = torch.cat([logits, hard_logits], dim=1)
    return F.cross_entropy(logits, labels)


class UserEncoder(nn.Module):
    """Serving form of the user tower (contract C5): (history rows+1 [B, L], profile [B, P]) -> [B, D]."""

    def __init__(self, model: TwoTowerModel | TwoTowerEnsemble, item_embeddings: np.ndarray) -> None:
        super().__init__()
        self.user = model.user
        table = np.concatenate([np.zeros((1, item_embeddings.shape[1]), np.float32), item_embeddings])
        self.register_buffer("table", torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32)))

    def forward(self, history: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
        history = history[:, -self.user.max_seq_len :]
        valid = history > 0
        # F.embedding exports as ONNX Gather, which dynamic int8 quantization covers (indexing exports as GatherND)
        return UserTower.last(self.user(F.embedding(history, self.table), valid, profile), valid)


# ---------------------------------------------------------------- artifact (contract C4) and Recommender (C3)


def save_artifact(model: TwoTowerModel | TwoTowerEnsemble, out_dir: str | Path, item_ids: np.ndarray,
                  item_embeddings: np.ndarray, profile_encoder: ProfileEncoder, history: list[dict]) -> Path:
    """Write model.pt, model_config.json, item_ids.npy, item_embeddings.npy, profile_encoder.json, history.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    torch.save(state, out / "model.pt")
    (out / "model_config.json").write_text(json.dumps(model.cfg, indent=2), encoding="utf-8")
    np.save(out / "item_ids.npy", np.asarray(item_ids, dtype=np.int64))
    np.save(out / "item_embeddings.npy", np.asarray(item_embeddings, dtype=np.float32))
    (out / PROFILE_ENCODER_FILE).write_text(json.dumps(profile_encoder.to_dict(), indent=2), encoding="utf-8")
    (out / "history.json").write_text(json.dumps(history, indent=2), encoding="utf-8")
    return out


def load_model(model_dir: str | Path) -> tuple[TwoTowerModel | TwoTowerEnsemble, ProfileEncoder]:
    """The trained network (eval mode, no text encoder: one two-tower or an ensemble) and its profile encoder."""
    folder = Path(model_dir)
    missing = [f for f in ARTIFACT_FILES if not (folder / f).is_file()]
    if missing:
        raise ModelError(f"model directory {folder} lacks {missing}")
    cfg = json.loads((folder / "model_config.json").read_text(encoding="utf-8"))
    model = build_two_tower(cfg)
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    encoder = ProfileEncoder.from_dict(json.loads((folder / PROFILE_ENCODER_FILE).read_text(encoding="utf-8")))
    return model.eval(), encoder


class TwoTowerRecommender(TowerRecommender):
    """Contract C3 over a trained artifact; `add_items` makes new items scorable from their text and metadata."""

    def __init__(self, model_dir: str | Path, batch_size: int = 512) -> None:
        self.model_dir = Path(model_dir)
        self.model, profile_encoder = load_model(model_dir)
        self.cfg = self.model.cfg
        item_embeddings = np.load(self.model_dir / "item_embeddings.npy").astype(np.float32)
        super().__init__("two_tower", self._encode, np.load(self.model_dir / "item_ids.npy"), item_embeddings,
                         profile_encoder, int(self.cfg["max_seq_len"]), batch_size)
        self._encoder = UserEncoder(self.model, self.item_embeddings).eval()
        self.new_item_popularity_windows = new_item_prior_windows(self.cfg)
        self.new_item_velocity_weight = float(self.cfg.get("new_item_velocity_weight", 0.0))
        self.new_item_never_seen_bonus = float(self.cfg.get("new_item_never_seen_bonus", 0.0))
        self.new_item_offset = float(self.cfg.get("new_item_offset", 0.0))  # new items against trained ones
        self.popularity_weight = float(self.cfg.get("popularity_weight", 0.0))
        self.popularity_window = self.cfg.get("popularity_window_days")
        self._new = self.model.train_count[1:].numpy() == 0  # per catalogue row: no trained ID embedding
        self._events: pd.DataFrame | None = None
        self._counters: dict[int, ItemEventCounter] = {}
        self.params = {"new_item_popularity_windows": [[days, float(f"{weight:.4g}")]  # as the report shows it
                                                        for days, weight in self.new_item_popularity_windows],
                       "new_item_velocity_weight": self.new_item_velocity_weight,
                       "new_item_never_seen_bonus": self.new_item_never_seen_bonus,
                       "new_item_offset": self.new_item_offset,
                       "popularity_weight": self.popularity_weight,
                       "popularity_window_days": self.popularity_window}

    @torch.no_grad()
    def _encode(self, history: np.ndarray, profile: np.ndarray) -> np.ndarray:
        return self._encoder(torch.from_numpy(history), torch.from_numpy(profile)).numpy()

    @property
    def new_item_popularity_weight(self) -> float:
        """w of the new-item prior as served (its windows' and its velocity's weights summed)."""
        return float(sum(weight for _, weight in self.new_item_popularity_windows) + self.new_item_velocity_weight)

    def popularity_prior(self) -> PopularityPrior:
        """The priors as the serving bundle carries them (`components.bundle_ops.PopularityPrior`): which items are
        new, and each prior's windows and weights (from the current attributes, so that a test or `add_items` sees
        its change)."""
        return PopularityPrior(self.index, {
            "new_item_windows": self.new_item_popularity_windows, "new_item_never_seen": self.new_item_never_seen_bonus,
            "new_item_velocity": self.new_item_velocity_weight,
            "new_item_offset": self.new_item_offset,
            "weight": self.popularity_weight, "window_days": self.popularity_window,
            "new_item_ids": self.item_ids[self._new].tolist()})

    def score(self, users: pd.DataFrame, histories: list[np.ndarray], catalogue: np.ndarray) -> np.ndarray:
        """float32 [len(users), len(catalogue)]: cosine of user and item vectors (-inf for items without one), plus
        the popularity priors (see `set_item_events`): one for items without a trained ID embedding, one for the
        trained items."""
        scores = super().score(users, histories, catalogue)
        prior = self.popularity_prior()
        if self._events is None or not prior.active:
            return scores
        catalogue = np.asarray(catalogue, dtype=np.int64)
        rows = self.index.rows(catalogue)
        for part in prior.parts:
            cols = np.flatnonzero(np.isin(rows, part.rows))
            if len(cols):
                counter = self._event_counter(catalogue[cols])
                scores[:, cols] += part.dense_boost([counter.counts(users, days) for days, _ in part.windows],
                                                    counter.ages(users) if part.velocity else None)
        return scores

    def set_item_events(self, events: pd.DataFrame) -> None:
        """Interactions (user_id, item_id, event_timestamp) the serving system has logged.

        Items then score cosine + w * log(1 + n), n = the item's interactions by other users strictly before the
        user's `as_of` (all of `events` when `users` has no `as_of`), within the last `window` days when set. Items
        without a trained ID embedding use `new_item_popularity_weight` / `_window_days` (chosen on the
        cold-validation items at training time), trained items `popularity_weight` / `_window_days` (chosen on
        the validation targets); a weight of 0 turns that prior off.
        """
        missing = {"user_id", "item_id", "event_timestamp"} - set(events.columns)
        if missing:
            raise ModelError(f"item events lack column(s) {sorted(missing)}")
        self._events = events[["user_id", "item_id", "event_timestamp"]].reset_index(drop=True)
        self._counters = {}

    def _event_counter(self, catalogue: np.ndarray) -> ItemEventCounter:
        """The prepared counter of the logged events over `catalogue` (one per catalogue: batches reuse it)."""
        key = hash(catalogue.tobytes())
        if key not in self._counters:
            self._counters[key] = ItemEventCounter(self._events, catalogue)
        return self._counters[key]

    def add_items(self, items: pd.DataFrame, text_emb: np.ndarray | None = None) -> np.ndarray:
        """Embed new items (item_id, text, the declared attributes) from text + attributes alone; returns [n, D].

        `text_emb` are precomputed encoder outputs; by default the model's text encoder encodes their texts as
        the model composes them (`model_item_texts`: its training template, else `items.text`).
        """
        from components.item_text import model_item_texts
        from components.text_encoder import load_text_encoder, recorded_encoder_source

        new = items[~items["item_id"].isin(self.item_ids)].reset_index(drop=True)
        if new.empty:
            return np.zeros((0, self.item_embeddings.shape[1]), np.float32)
        if text_emb is None:
            encoder = load_text_encoder(recorded_encoder_source(self.cfg.get("encoder_dir"), self.model_dir))
            text_emb = encoder.encode(model_item_texts(new, self.cfg.get("item_text")))
        feats = item_features(new, text_emb, ItemEncoder.from_dict(self.cfg["item_encoder"]))
        m = self.model
        attributes = []
        for buffer, block in zip(m.attributes(), feats.attributes, strict=True):
            codes = torch.zeros(len(new), buffer.shape[1], dtype=torch.long)  # the trained width
            width = min(codes.shape[1], block.shape[1])
            codes[:, :width] = torch.from_numpy(block[:, :width])
            attributes.append(codes)
        with torch.no_grad():
            emb = m.new_item_vectors(torch.from_numpy(feats.text), attributes).numpy().astype(np.float32)
        self.set_item_table(np.concatenate([self.item_ids, new["item_id"].to_numpy(dtype=np.int64)]),
                            np.concatenate([self.item_embeddings, emb]))
        self._new = np.concatenate([self._new, np.ones(len(new), dtype=bool)])
        self._encoder = UserEncoder(self.model, self.item_embeddings).eval()  # histories may hold the new items
        log.info("added %d new items (text + metadata only)", len(new))
        return emb


def new_item_prior_windows(cfg: dict) -> list[list]:
    """The new-item prior's [[window days or None, weight], ...] a model config records: the fitted blend
    (`new_item_popularity_windows`), else the one window and weight of models from before it."""
    windows = cfg.get("new_item_popularity_windows")
    if windows is None:
        return [[cfg.get("new_item_popularity_window_days"), float(cfg.get("new_item_popularity_weight", 0.0))]]
    return [[days, float(weight)] for days, weight in windows]


def item_event_counts(events: pd.DataFrame, users: pd.DataFrame, catalogue: np.ndarray,
                      window_days: float | None = None) -> np.ndarray:
    """float32 [len(users), len(catalogue)]: events on each item by other users strictly before the user's `as_of`
    (and, with `window_days`, at most that many days before it: the feature store's rolling-window popularity).

    One sweep over the events in time order (users taken by `as_of`), then each user's own events taken out:
    O(events + users x catalogue), whatever the window. Many calls over the same events: `ItemEventCounter`.
    """
    return ItemEventCounter(events, catalogue).counts(users, window_days)


class ItemEventCounter:
    """`item_event_counts` over fixed events and catalogue, prepared once (filtered, mapped to columns, sorted by
    time); each window's sweep resumes where the previous call left it when the next users' `as_of` are not earlier,
    so users given in time order, in chunks, cost one sweep over the events in all rather than one per chunk."""

    def __init__(self, events: pd.DataFrame, catalogue: np.ndarray) -> None:
        catalogue = np.asarray(catalogue, dtype=np.int64)
        col = pd.Series(np.arange(len(catalogue)), index=catalogue)
        ev = events[events["item_id"].isin(col.index)]
        ts = epoch_us(ev["event_timestamp"])
        order = np.argsort(ts, kind="stable")
        self.n_items = len(catalogue)
        self.ts, self.ev_col = ts[order], col[ev["item_id"]].to_numpy()[order]
        self.first = first_event_us(self.ev_col, self.ts, self.n_items)
        ev_user = ev["user_id"].to_numpy()[order]
        self.own = pd.Series(np.arange(len(self.ts))).groupby(ev_user).indices if len(self.ts) else {}
        self._sweeps: dict[float | None, list] = {}  # window -> [running counts, added, removed, last as_of]

    def _advance(self, running: np.ndarray, start: int, stop: int, sign: float) -> None:
        if stop - start > self.n_items // 8:  # a long stretch (a fresh sweep): one bincount
            running += sign * np.bincount(self.ev_col[start:stop], minlength=self.n_items).astype(np.float32)
        elif stop > start:
            np.add.at(running, self.ev_col[start:stop], sign)

    def counts(self, users: pd.DataFrame, window_days: float | None = None) -> np.ndarray:
        """float32 [len(users), catalogue]: see `item_event_counts`."""
        as_of = epoch_us(users["as_of"]) if "as_of" in users else np.full(len(users), np.iinfo(np.int64).max)
        span = None if window_days is None else int(window_days * 86_400 * 1_000_000)
        sweep = self._sweeps.get(window_days)
        if sweep is None or (len(as_of) and as_of.min() < sweep[3]):  # earlier users: start again
            sweep = self._sweeps[window_days] = [np.zeros(self.n_items, dtype=np.float32), 0, 0, np.iinfo(np.int64).min]
        running, added, removed, _ = sweep
        out = np.zeros((len(users), self.n_items), dtype=np.float32)
        user_ids = users["user_id"].to_numpy()
        for i in np.argsort(as_of, kind="stable"):
            t = as_of[i]
            hi = int(np.searchsorted(self.ts, t, side="left"))  # events strictly before the request
            self._advance(running, added, hi, 1.0)
            added = hi
            lo = 0 if span is None else int(np.searchsorted(self.ts, t - span, side="left"))
            if lo > removed:
                self._advance(running, removed, lo, -1.0)
                removed = lo
            out[i] = running
            mine = self.own.get(user_ids[i])
            if mine is not None:
                mine = mine[(mine >= lo) & (mine < hi)]
                np.subtract.at(out[i], self.ev_col[mine], 1.0)
        sweep[1:] = [added, removed, as_of.max() if len(as_of) else sweep[3]]
        return out

    def ages(self, users: pd.DataFrame) -> np.ndarray:
        """float32 [len(users), catalogue]: days from each item's first event (any user's) to the user's `as_of`
        (after the last event without one), 0 where the item has none before it (the velocity's denominator:
        `bundle_ops.interactions_per_day`)."""
        end = int(self.ts.max()) + 1 if len(self.ts) else 0
        as_of = epoch_us(users["as_of"]) if "as_of" in users else np.full(len(users), end, dtype=np.int64)
        return days_since(self.first[None, :], as_of[:, None])


def load_recommender(model_dir: str | Path) -> TwoTowerRecommender:
    """Contract C4 -> C3: the trained two-tower model as a Recommender."""
    return TwoTowerRecommender(model_dir)


# ---------------------------------------------------------------- ONNX (contract C5)


def _strip_debug_metadata(path: Path) -> None:
    """Drop the exporter's per-node debug records (source stack traces, FX names): a third of the file, not needed."""
    import onnx

    proto = onnx.load(str(path))
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(proto, str(path))


def export_user_tower_onnx(model_dir: str | Path, out_path: str | Path, atol: float = 1e-4) -> Path:
    """Export the user tower to ONNX (inputs history/profile INT64, output user_embedding FP32) and verify it."""
    import onnxruntime as ort

    rec = load_recommender(model_dir)
    encoder = rec._encoder.eval()
    length, fields = rec.max_seq_len, len(rec.cfg["profile_fields"])
    rng = np.random.default_rng(0)
    n = len(rec.item_ids)
    history = rng.integers(0, n + 1, size=(4, length)).astype(np.int64)
    history[0, :] = 0  # no history: profile only
    history[1, : length // 2] = 0  # left-padded
    profile = rng.integers(0, 2, size=(4, fields)).astype(np.int64)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad(), quiet_onnx_export():
        torch.onnx.export(
            encoder, (torch.from_numpy(history), torch.from_numpy(profile)), str(out_path),
            input_names=["history", "profile"], output_names=["user_embedding"],
            dynamic_shapes={"history": {0: batch}, "profile": {0: batch}}, external_data=False, verbose=False,
        )
        _strip_debug_metadata(out_path)
        expected = encoder(torch.from_numpy(history), torch.from_numpy(profile)).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(out_path), sess_options=options, providers=["CPUExecutionProvider"])
    got = session.run(["user_embedding"], {"history": history, "profile": profile})[0]
    diff = float(np.abs(got - expected).max())
    if diff > atol:
        raise ModelError(f"ONNX user tower {out_path} differs from torch by {diff:.2e} (> {atol})")
    log.info("user tower exported to %s (max |onnx - torch| = %.2e)", out_path, diff)
    return out_path
