"""A trained tiny model with both popularity priors on, and its serving bundle: shared by the parity tests and
the retrieval-graph tests."""

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from components.bundle_ops import PRIOR_KEY
from components.compress import popularity_prior_settings, write_smoke
from components.encoders import PROFILE_ENCODER_FILE
from components.model import export_user_tower_onnx


def model_with_priors(planted_model: Path, out: Path) -> Path:
    """The trained model with both popularity priors on (new items: a blend of three windows and the velocity, a
    never-seen bonus and an offset against the trained items, as training fits them) and six items made new (no
    trained ID embedding), so that both priors decide part of every ranking."""
    shutil.copytree(planted_model, out)
    cfg = json.loads((out / "model_config.json").read_text())
    cfg.update(new_item_popularity_windows=[[None, 0.03], [30, 0.02], [10, 0.05]], new_item_never_seen_bonus=0.04,
               new_item_velocity_weight=0.06, new_item_offset=-0.03, popularity_weight=0.03,
               popularity_window_days=None)
    (out / "model_config.json").write_text(json.dumps(cfg))
    state = torch.load(out / "model.pt", weights_only=True)
    for key in [k for k in state if k.split(".")[-1] == "train_count"]:  # one model's, or each ensemble member's
        state[key][1:7] = 0  # catalogue rows 0..5
    torch.save(state, out / "model.pt")
    return out


def bundle_of(model_dir: Path, out: Path) -> Path:
    """The fp32 serving bundle (contract C5) of a model: its exported user tower and its own item table."""
    out.mkdir(parents=True)
    export_user_tower_onnx(model_dir, out / "user_tower.onnx")
    for name in ("item_ids.npy", "item_embeddings.npy"):
        shutil.copyfile(model_dir / name, out / name)
    cfg = json.loads((model_dir / "model_config.json").read_text())
    width = int(np.load(out / "item_embeddings.npy", mmap_mode="r").shape[1])  # k x embedding_dim for an ensemble
    manifest = {"model_version": "m-parity", "variant": "fp32", "embedding_dim": width,
                "max_seq_len": int(cfg["max_seq_len"]), "profile_fields": list(cfg["profile_fields"]),
                "profile_encoder": json.loads((model_dir / PROFILE_ENCODER_FILE).read_text()),
                "created_at": datetime.now(UTC).isoformat(), PRIOR_KEY: popularity_prior_settings(model_dir)}
    (out / "manifest.json").write_text(json.dumps(manifest))
    ids = np.load(out / "item_ids.npy")
    write_smoke(out, [{"history_item_ids": ids[:3].tolist(), "profile": [1] * len(cfg["profile_fields"]),
                       "exclude_item_ids": [], "k": 5}])
    return out
