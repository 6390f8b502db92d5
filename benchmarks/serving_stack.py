"""A small but complete synthetic serving stack, for the API benchmark and the serving tests.

`make_bundle` builds a real serving bundle (contract C5): a tiny torch user tower exported to ONNX over a synthetic
catalogue. `build_stack` puts it behind Feast (SQLite, materialized from synthetic tables), a real Triton server
with the bundle deployed and the BentoML API, all on free loopback ports under one folder. Timings of the stack
depend on sizes only, so the benchmark runs it at MovieLens sizes and the tests at tiny ones.
"""

import json
import os
import signal
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components.config import Config, load_config
from components.features import build_feature_store, materialize
from components.processes import free_port, stop_process
from serving import triton_server as ts
from serving.api_server import api_url, auth_headers, start_api
from serving.deploy import deploy_bundle, restore_active


def serving_config(root: Path) -> Config:
    """Defaults with free loopback ports and every serving path under `root`."""
    return load_config(
        None,
        [
            "serving.host=127.0.0.1",
            f"serving.triton_http_port={free_port()}",
            f"serving.triton_grpc_port={free_port()}",
            f"serving.triton_metrics_port={free_port()}",
            f"serving.model_repository={root / 'models'}",
            f"serving.triton_build_dir={root / 'build'}",
            f"serving.triton_log_file={root / 'build' / 'tritonserver.log'}",
            "serving.grpc_timeout_s=10",
        ],
    )


# ---- the bundle ----------------------------------------------------------------------------------------------
PROFILE_FIELDS = ["age", "gender", "occupation"]
AGE_BANDS = [18, 25, 35, 45, 50, 56]  # exclusive upper bounds, as the MovieLens preset declares
GENDERS = ["F", "M"]
OCCUPATIONS = ["artist", "doctor", "engineer", "student", "other"]
AGE_LABELS = ["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]


class TinyUserTower(torch.nn.Module):
    """Mean of history item embeddings + profile embeddings -> linear -> user embedding."""

    def __init__(self, n_items: int, dim: int, vocab_sizes: list[int]) -> None:
        super().__init__()
        self.items = torch.nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.fields = torch.nn.ModuleList(torch.nn.Embedding(n, dim) for n in vocab_sizes)
        self.out = torch.nn.Linear(2 * dim, dim)

    def forward(self, history: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
        mask = (history > 0).unsqueeze(-1).float()
        hist = (self.items(history) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        prof = sum(emb(profile[:, i]) for i, emb in enumerate(self.fields))
        return self.out(torch.cat([hist, prof], dim=1))


def profile_vocab() -> dict[str, dict[str, int]]:
    return {
        "age": {label: i + 1 for i, label in enumerate(AGE_LABELS)},
        "gender": {g: i + 1 for i, g in enumerate(GENDERS)},
        "occupation": {o: i + 1 for i, o in enumerate(OCCUPATIONS)},
    }


def profile_encoder() -> dict:
    """The manifest's profile encoder (components.encoders.ProfileEncoder.to_dict) over profile_vocab()."""
    vocab = profile_vocab()
    return {"fields": [
        {"source": "age", "kind": "band", "vocab": vocab["age"], "edges": [float(b) for b in AGE_BANDS]},
        {"source": "gender", "kind": "value", "vocab": vocab["gender"], "edges": []},
        {"source": "occupation", "kind": "value", "vocab": vocab["occupation"], "edges": []},
    ]}


def _torch_recommend(model, item_ids, emb, max_seq_len, history_ids, profile, exclude, k):
    """Independent expected output: torch forward + full sort (not the serving ops code)."""
    row_of = {int(i): r for r, i in enumerate(item_ids)}
    rows = [row_of[i] + 1 for i in history_ids if i in row_of][-max_seq_len:]
    hist = torch.zeros(1, max_seq_len, dtype=torch.int64)
    if rows:
        hist[0, max_seq_len - len(rows) :] = torch.tensor(rows)
    with torch.no_grad():
        user = model(hist, torch.tensor([profile], dtype=torch.int64)).numpy()[0]
    scores = emb @ user
    excluded = {row_of[i] for i in exclude if i in row_of}
    order = [r for r in np.argsort(-scores, kind="stable") if r not in excluded][:k]
    return [int(item_ids[r]) for r in order], [float(scores[r]) for r in order]


def make_bundle(
    out_dir: Path, n_items: int = 300, dim: int = 16, max_seq_len: int = 8, seed: int = 0, variant: str = "fp32"
) -> Path:
    """Write user_tower.onnx, item_embeddings.npy, item_ids.npy, manifest.json and smoke.json into out_dir."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = profile_vocab()
    model = TinyUserTower(n_items, dim, [len(v) + 1 for v in vocab.values()]).eval()
    item_ids = np.sort(rng.choice(np.arange(1, 10 * n_items), size=n_items, replace=False)).astype(np.int64)
    rng.shuffle(item_ids)  # catalogue order is not id order
    emb = rng.standard_normal((n_items, dim)).astype(np.float32)
    np.save(out_dir / "item_ids.npy", item_ids)
    np.save(out_dir / "item_embeddings.npy", emb)
    example = (torch.zeros(2, max_seq_len, dtype=torch.int64), torch.ones(2, len(PROFILE_FIELDS), dtype=torch.int64))
    torch.onnx.export(
        model,
        example,
        str(out_dir / "user_tower.onnx"),
        input_names=["history", "profile"],
        output_names=["user_embedding"],
        dynamic_axes={"history": {0: "batch"}, "profile": {0: "batch"}, "user_embedding": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    manifest = {
        "model_version": f"test-{seed}",
        "variant": variant,
        "embedding_dim": dim,
        "max_seq_len": max_seq_len,
        "profile_fields": PROFILE_FIELDS,
        "profile_encoder": profile_encoder(),
        "created_at": datetime.now(UTC).isoformat(),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    smoke = []
    for j in range(3):
        history = [int(i) for i in rng.choice(item_ids, size=3 + j, replace=False)]
        exclude = history[:2]
        profile = [1 + j, 1 + j % 2, 2 + j]
        ids, scores = _torch_recommend(model, item_ids, emb, max_seq_len, history, profile, exclude, 5)
        smoke.append(
            {
                "history_item_ids": history,
                "profile": profile,
                "exclude_item_ids": exclude,
                "k": 5,
                "item_ids": ids,
                "scores": scores,
            }
        )
    (out_dir / "smoke.json").write_text(json.dumps({"requests": smoke}, indent=2), encoding="utf-8")
    return out_dir


# ---- the stack -----------------------------------------------------------------------------------------------
GENRES = ["Drama", "Comedy", "Action", "Horror", "Romance", "Sci-Fi"]
NOW = datetime.now(UTC).replace(microsecond=0)


def synthetic_tables(item_ids: np.ndarray, n_users: int = 30, per_user: int = 12, seed: int = 0) -> dict:
    """Canonical tables over the bundle's catalogue: users 1..n_users, events in the last 40 days."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(NOW - timedelta(days=40))
    rows = []
    weights = 1.0 / np.arange(1, len(item_ids) + 1) ** 0.8  # a popularity skew
    weights /= weights.sum()
    for user in range(1, n_users + 1):
        items = rng.choice(item_ids, size=per_user, replace=False, p=weights)
        times = np.sort(rng.uniform(0, 39 * 86400, size=per_user))
        for item, sec in zip(items, times, strict=True):
            rows.append((user, int(item), float(rng.integers(1, 6)), start + pd.Timedelta(seconds=float(sec))))
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "event_timestamp"])
    interactions["rating"] = interactions["rating"].astype("float32")
    interactions["event_timestamp"] = interactions["event_timestamp"].dt.floor("us").astype("datetime64[us, UTC]")
    created = (start - pd.Timedelta(days=30)).floor("us")
    users = pd.DataFrame({
        "user_id": np.arange(1, n_users + 1, dtype=np.int64),
        "age": rng.integers(15, 70, n_users),
        "gender": rng.choice(GENDERS, n_users),
        "occupation": rng.choice([*OCCUPATIONS, "writer"], n_users),  # "writer" is not in the model's vocab
        "zip_code": ["00000"] * n_users,
        "created_timestamp": created,
    })
    n = len(item_ids)
    genres = ["|".join(rng.choice(GENRES, size=int(rng.integers(1, 3)), replace=False)) for _ in range(n)]
    items = pd.DataFrame({"item_id": np.asarray(item_ids, np.int64), "title": [f"Movie {i}" for i in item_ids],
                          "year": rng.integers(1950, 2001, n), "genres": genres, "created_timestamp": created})
    items["text"] = items["title"] + ". Genres: " + items["genres"] + "."
    for frame in (users, items):
        frame["created_timestamp"] = frame["created_timestamp"].astype("datetime64[us, UTC]")
    return {"interactions": interactions, "users": users, "items": items}


@dataclass
class Stack:
    config: Config
    bundle: Path
    tables: dict
    triton: ts.TritonServer
    api_pid: int | None = None

    @property
    def url(self) -> str:
        return api_url(self.config)

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header of the admin key the API's first start created (every scope)."""
        return auth_headers(self.config)

    def restart_triton(self) -> None:
        """Start Triton again on the same ports and load the live version."""
        self.triton = ts.start_server(ts.settings_from_config(self.config))
        restore_active(self.config)

    def worker_pids(self) -> list[int]:
        """Child processes of the API server (its BentoML worker)."""
        if self.api_pid is None:
            return []
        children = Path(f"/proc/{self.api_pid}/task/{self.api_pid}/children")
        return [int(p) for p in children.read_text().split()] if children.exists() else []

    def kill_api(self) -> None:
        """SIGKILL the API server and its worker (a crash: no shutdown code runs)."""
        for pid in [*self.worker_pids(), self.api_pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(self.api_pid, 0)
        except ChildProcessError:
            pass
        self.api_pid = None

    def start_api(self) -> int:
        self.api_pid = start_api(self.config, detach=False)
        return self.api_pid

    def stop(self) -> None:
        if self.api_pid is not None:
            stop_process(self.api_pid)
            self.api_pid = None
        self.triton.stop()


def build_stack(root: Path, bundle: Path, n_users: int = 30, per_user: int = 12, api: bool = True,
                overrides: dict | None = None) -> Stack:
    """Feature store from synthetic tables over the bundle's items, Triton with the bundle deployed, the API."""
    root = Path(root)
    config = serving_config(root)
    config.features.data_dir = root / "features"
    config.features.last_n_items = 8
    config.serving.api_port = free_port()
    config.serving.request_log = root / "request_log.sqlite"
    config.serving.grpc_timeout_s = 2.0
    for dotted, value in (overrides or {}).items():  # "section.key" or deeper ("serving.auth.jwt.issuer")
        *parents, key = dotted.split(".")
        node = config
        for name in parents:
            node = getattr(node, name)
        setattr(node, key, value)
    tables = synthetic_tables(np.load(bundle / "item_ids.npy"), n_users, per_user)
    store = build_feature_store(config, tables)
    materialize(store, end=NOW)
    triton = ts.start_server(ts.settings_from_config(config))
    stack = Stack(config, bundle, tables, triton)
    try:
        deploy_bundle(config, bundle)
        if api:
            stack.start_api()
    except BaseException:
        stack.stop()
        raise
    return stack
