"""Build a small but real serving bundle (contract C5) for the serving tests: a tiny torch user tower in ONNX."""

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

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
