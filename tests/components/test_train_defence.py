"""Training's defence hook: with `trust.defence.enabled` the flagged fake accounts' interactions never reach
training, and the excluded accounts are reported beside the model."""

import json

import numpy as np

from components.attacks import AttackSpec, inject_attack
from components.config import load_config
from components.shilling_defence import REPORT_FILE
from components.train import train_model
from tests.components.trust_world import canonical
from tests.conftest import tiny_config, write_dataset


def test_flagged_accounts_are_excluded_before_training(tmp_path):
    _, tables = canonical("movielens", tmp_path / "source")
    counts = tables["interactions"]["item_id"].value_counts()
    targets = tuple(int(i) for i in counts.index[len(counts) // 2: len(counts) // 2 + 3])
    attack = inject_attack(tables, load_config().dataset, AttackSpec("bandwagon", targets, 0.1, filler=10,
                                                                     selected=5, seed=2))
    canonical_dir, examples = write_dataset(tmp_path / "data", attack.tables)
    runs = {}
    for defended in (False, True):
        config = tiny_config(tmp_path / "data", **{"train.epochs": 1, "trust.defence.enabled": defended})
        runs[defended] = train_model(config, canonical_dir, examples, tmp_path / f"model_{defended}", progress=False)
    report = json.loads((tmp_path / "model_True" / REPORT_FILE).read_text())
    excluded = {a["user_id"] for a in report["excluded_accounts"]}
    assert set(attack.fake_users.tolist()) <= excluded
    assert len(excluded - set(attack.fake_users.tolist())) <= 0.02 * tables["users"]["user_id"].nunique()
    assert runs[True]["train_positions"] < runs[False]["train_positions"]
    assert not (tmp_path / "model_False" / REPORT_FILE).exists()
    assert np.isfinite(runs[True]["test_ndcg@10"])
