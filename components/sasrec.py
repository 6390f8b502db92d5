"""SASRec baseline (Kang & McAuley, 2018) trained the "SASRec+" way (Klenitskiy & Vasilev, 2023).

ID-only item embeddings plus learned positional embeddings, a stack of causal self-attention blocks, and a
full-softmax cross-entropy over every training item at every position of a window (each position's next item is
a target). Adam, dropout, and early stopping on a validation callback (the best epoch's weights are kept).

A user's score for an item is the dot product of the last position's hidden state with the item's (tied)
embedding. History items the model was not trained on are skipped; a user without any known history item scores
every item 0 (like the other baselines); catalogue items not seen in training get UNSEEN_SCORE.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from components.item_index import BaselineError, _ItemIndex
from components.recommender import catalogue_positions

log = logging.getLogger(__name__)


class _Block(nn.Module):
    """Pre-norm causal self-attention block with a position-wise feed-forward layer."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, h, attn_mask=blocked, need_weights=False)[0])
        return x + self.drop(self.ffn(self.norm2(x)))


class _Network(nn.Module):
    """Item sequence (left-padded with 0) -> hidden state per position; logits against every item."""

    def __init__(self, n_items: int, max_len: int, dim: int, blocks: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.positions = nn.Embedding(max_len, dim)
        nn.init.normal_(self.items.weight, std=dim**-0.5)
        nn.init.normal_(self.positions.weight, std=dim**-0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)
        self.scale = math.sqrt(dim)

    def hidden(self, seq: torch.Tensor) -> torch.Tensor:
        n, length = seq.shape
        real = seq > 0
        pos = torch.arange(length, device=seq.device)
        causal = pos[None, :] <= pos[:, None]  # [query, key]
        allowed = (causal[None] & real[:, None, :]) | torch.eye(length, dtype=torch.bool, device=seq.device)[None]
        blocked = (~allowed).repeat_interleave(self.heads, dim=0)  # every query keeps at least itself
        x = self.items(seq) * self.scale + self.positions(pos)[None]
        x = self.drop(x) * real[..., None]
        for block in self.blocks:
            x = block(x, blocked) * real[..., None]
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.items.weight[1:].T


class SASRec(_ItemIndex):
    """Causal self-attention next-item model trained with full-softmax cross-entropy."""

    name = "sasrec-ce"

    def __init__(
        self,
        max_seq_len: int = 200,
        embedding_dim: int = 64,
        blocks: int = 2,
        heads: int = 1,
        dropout: float = 0.2,
        epochs: int = 200,
        patience: int = 10,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        max_minutes: float = 15.0,
        seed: int = 0,
        num_threads: int = 1,
    ) -> None:
        checks = {"max_seq_len": max_seq_len, "embedding_dim": embedding_dim, "blocks": blocks, "heads": heads,
                  "epochs": epochs, "patience": patience, "batch_size": batch_size, "num_threads": num_threads}
        for key, value in checks.items():
            if value < 1:
                raise BaselineError(f"{self.name}: {key} must be >= 1, got {value}")
        if embedding_dim % heads:
            raise BaselineError(f"{self.name}: embedding_dim={embedding_dim} must be divisible by heads={heads}")
        if not 0.0 <= dropout < 1.0 or learning_rate <= 0 or max_minutes <= 0:
            raise BaselineError(f"{self.name}: need 0 <= dropout < 1, learning_rate > 0 and max_minutes > 0")
        self.max_seq_len, self.embedding_dim, self.blocks, self.heads = max_seq_len, embedding_dim, blocks, heads
        self.dropout, self.epochs, self.patience, self.batch_size = dropout, epochs, patience, batch_size
        self.learning_rate, self.max_minutes = learning_rate, max_minutes
        self.seed, self.num_threads = seed, num_threads

    # --------------------------------------------------------------------------------------------- data
    def _encode(self, items: np.ndarray) -> np.ndarray:
        """Item ids -> 1-based model indices, unknown items dropped."""
        idx = catalogue_positions(self.item_ids, np.asarray(items, dtype=np.int64)) + 1
        return idx[idx > 0]

    def _windows(self, train: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded (inputs, targets) int64 [W, max_seq_len]: each user's sequence cut from its end."""
        length = self.max_seq_len
        inputs, targets = [], []
        for seq in train.groupby("user_id", sort=True)["item_id"]:
            s = self._encode(seq[1].to_numpy())
            end = len(s) - 1  # inputs s[a:end] predict s[a+1:end+1]
            while end > 0:
                start = max(0, end - length)
                row_in, row_tgt = np.zeros(length, dtype=np.int64), np.zeros(length, dtype=np.int64)
                row_in[length - (end - start):] = s[start:end]
                row_tgt[length - (end - start):] = s[start + 1:end + 1]
                inputs.append(row_in)
                targets.append(row_tgt)
                end = start
        if not inputs:
            raise BaselineError(f"{self.name}: no user has two training interactions")
        return np.stack(inputs), np.stack(targets)

    def _sequences(self, histories: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(histories), self.max_seq_len), dtype=np.int64)
        for i, hist in enumerate(histories):
            s = self._encode(hist)[-self.max_seq_len:]
            if len(s):
                out[i, -len(s):] = s
        return out

    # --------------------------------------------------------------------------------------------- fit
    def fit(self, train: pd.DataFrame, validate: Callable[[SASRec], float] | None = None) -> SASRec:
        """Train on `train` (chronological within each user); `validate(self)` -> metric drives early stopping."""
        self._index(train)
        inputs, targets = self._windows(train)
        threads = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self._train(torch.from_numpy(inputs), torch.from_numpy(targets), validate)
        finally:
            torch.set_num_threads(threads)
        return self

    def _train(self, inputs: torch.Tensor, targets: torch.Tensor, validate: Callable[[SASRec], float] | None) -> None:
        self.network = _Network(len(self.item_ids), self.max_seq_len, self.embedding_dim, self.blocks, self.heads,
                                self.dropout)
        optimiser = torch.optim.Adam(self.network.parameters(), lr=self.learning_rate)
        rng = np.random.default_rng(self.seed)
        started = time.perf_counter()
        best_value, best_state, best_epoch, stale = -np.inf, None, 0, 0
        self.tuning: list[tuple[float, float]] = []
        for epoch in range(1, self.epochs + 1):
            self.network.train()
            total, count = 0.0, 0
            for batch in np.array_split(rng.permutation(len(inputs)), max(1, math.ceil(len(inputs) / self.batch_size))):
                seq, tgt = inputs[batch], targets[batch]
                keep = tgt > 0
                hidden = self.network.hidden(seq)[keep]
                loss = nn.functional.cross_entropy(self.network.logits(hidden), tgt[keep] - 1)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * int(keep.sum())
                count += int(keep.sum())
            value = validate(self) if validate is not None else -total / max(count, 1)
            self.tuning.append((float(epoch), float(value)))
            log.info("%s epoch %d: loss %.4f, validation %.4f", self.name, epoch, total / max(count, 1), value)
            if value > best_value:
                best_value, best_epoch, stale = value, epoch, 0
                best_state = copy.deepcopy(self.network.state_dict())
            else:
                stale += 1
            if stale >= self.patience or (time.perf_counter() - started) / 60 > self.max_minutes:
                break
        if best_state is not None:
            self.network.load_state_dict(best_state)
        self.network.eval()
        self.params = {"max_seq_len": float(self.max_seq_len), "embedding_dim": float(self.embedding_dim),
                       "blocks": float(self.blocks), "dropout": float(self.dropout), "best_epoch": float(best_epoch)}

    # --------------------------------------------------------------------------------------------- score
    def score(self, users: pd.DataFrame, histories: list[np.ndarray], catalogue: np.ndarray) -> np.ndarray:
        seqs = self._sequences(histories)
        out = np.zeros((len(histories), len(self.item_ids)), dtype=np.float32)
        threads = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        was_training = self.network.training
        self.network.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(seqs), 256):
                    part = torch.from_numpy(seqs[start:start + 256])
                    known = (part > 0).any(dim=1).numpy()
                    if known.any():
                        last = self.network.hidden(part[known])[:, -1]
                        rows = np.flatnonzero(known) + start
                        out[rows] = self.network.logits(last).numpy()
        finally:
            self.network.train(was_training)
            torch.set_num_threads(threads)
        return self._to_catalogue(out, catalogue)
