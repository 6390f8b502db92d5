"""Fake-profile attacks and the defence, over both data set shapes: the attack lands where the declaration says,
the defence catches it without flagging genuine accounts, and cutting the flagged accounts cuts the effect."""

import json

import numpy as np
import pandas as pd
import pytest

from components.attacks import (
    ATTACK_KINDS,
    AttackError,
    AttackSpec,
    inject_attack,
    interaction_payloads,
    target_hit_ratio,
)
from components.baselines import ItemKNN
from components.evaluate import prepare
from components.shilling_defence import REPORT_FILE, DefenceSettings, account_signals, defended_tables, robust_z
from tests.components.trust_world import SHAPES, canonical


@pytest.fixture(scope="module", params=SHAPES)
def world(request, tmp_path_factory):
    return canonical(request.param, tmp_path_factory.mktemp(request.param))


def least_consumed(config, tables: dict[str, pd.DataFrame], n: int = 3) -> tuple[int, ...]:
    """The `n` least consumed items that are recommendable (not held out as cold items)."""
    split = prepare(config, tables).split
    counts = split.train["item_id"].value_counts()
    counts = counts[~counts.index.isin(split.held_out_items)]
    return tuple(int(i) for i in counts.index[-n:])


def spec(kind: str, targets: tuple[int, ...]) -> AttackSpec:
    # a tiny catalogue (60-80 items): 10% fake accounts with short profiles, as 3% are on MovieLens-100K
    return AttackSpec(kind, targets, fake_share=0.1, filler=10, selected=5, seed=1)


@pytest.mark.parametrize("kind", ATTACK_KINDS)
def test_attack_adds_fake_accounts_that_push_the_targets(world, kind):
    config, tables = world
    targets = least_consumed(config, tables)
    attack = inject_attack(tables, config.dataset, spec(kind, targets))
    genuine = tables["users"]["user_id"].nunique()
    assert len(attack.fake_users) == round(0.1 * genuine)
    assert not np.isin(attack.fake_users, tables["users"]["user_id"]).any()
    assert set(attack.fake_users) <= set(attack.tables["users"]["user_id"])
    fake = attack.interactions
    assert (fake.groupby("user_id")["item_id"].apply(lambda s: set(targets) <= set(s))).all()
    pushed = fake[fake["item_id"].isin(targets)]
    fb = config.dataset.feedback
    if fb.kind == "explicit":
        assert (pushed["rating"] == fb.max).all() and fake["rating"].between(fb.min, fb.max).all()
    if fb.kind == "events":
        assert (pushed["event_type"] == max(fb.weights, key=fb.weights.get)).all()
    assert list(attack.tables["interactions"].columns) == list(tables["interactions"].columns)


def test_attack_spec_refuses_bad_fields(world):
    config, tables = world
    with pytest.raises(AttackError, match="fake_share"):
        AttackSpec("bandwagon", (1,), fake_share=0.9)
    with pytest.raises(AttackError, match="kind"):
        AttackSpec("sybil", (1,))  # type: ignore[arg-type]
    with pytest.raises(AttackError, match="targets"):
        inject_attack(tables, config.dataset, AttackSpec("random", (10**9,)))


@pytest.mark.parametrize("kind", ATTACK_KINDS)
def test_defence_catches_the_fakes_and_spares_genuine_accounts(world, kind):
    config, tables = world
    attack = inject_attack(tables, config.dataset, spec(kind, least_consumed(config, tables)))
    signals, suspected = account_signals(attack.tables["interactions"], config.dataset, DefenceSettings())
    fake = signals["user_id"].isin(attack.fake_users)
    assert signals.loc[fake, "flagged"].all()
    assert signals.loc[~fake, "flagged"].mean() < 0.02
    assert set(least_consumed(config, tables)) <= set(suspected.tolist())


def test_no_attack_flags_nobody(world):
    config, tables = world
    signals, _ = account_signals(tables["interactions"], config.dataset, DefenceSettings())
    assert signals["flagged"].mean() < 0.02


def test_defence_cuts_the_attack_effect(world, tmp_path):
    config, tables = world
    targets = least_consumed(config, tables)
    attack = inject_attack(tables, config.dataset, spec("bandwagon", targets))
    clean = prepare(config, tables)  # genuine users' test task
    on = config.model_copy(update={"trust": config.trust.model_copy(
        update={"defence": config.trust.defence.model_copy(update={"enabled": True})})})

    def hit_ratio(train_tables: dict[str, pd.DataFrame]) -> float:
        model = ItemKNN(50).fit(prepare(config, train_tables).split.train)
        scores = model.score(clean.users, clean.histories, clean.catalogue)
        return target_hit_ratio(scores, clean.histories, clean.catalogue, np.asarray(targets))["hit_ratio"]

    before, attacked = hit_ratio(tables), hit_ratio(attack.tables)
    defended = hit_ratio(defended_tables(on, attack.tables, tmp_path))
    assert attacked > before + 0.2
    assert defended <= before + 0.02
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert {a["user_id"] for a in report["excluded_accounts"]} >= set(attack.fake_users.tolist())
    assert defended_tables(config, attack.tables) is attack.tables  # off by default: nothing changes


def test_robust_z_survives_identical_accounts():
    z = robust_z(pd.Series([1.0] * 18 + [5.0, 5.0]))
    assert z.iloc[:18].abs().max() == 0 and z.iloc[-1] > 3


def test_fake_events_become_valid_interaction_requests(world):
    from datetime import timedelta

    from serving.api_models import RequestLimits, api_models

    config, tables = world
    attack = inject_attack(tables, config.dataset, spec("average", least_consumed(config, tables)))
    fake = attack.interactions
    rated = config.dataset.feedback.kind == "explicit"
    as_string = config.dataset.user_id.type == "string"
    users = [f"fake-{u}" if as_string else int(u) for u in fake.sort_values("event_timestamp")["user_id"]]
    items = [str(i) if config.dataset.item_id.type == "string" else int(i)
             for i in fake.sort_values("event_timestamp")["item_id"]]
    now = pd.Timestamp(fake["event_timestamp"].max()).to_pydatetime()
    limits = RequestLimits(event_max_age=timedelta(days=10**5), event_max_ahead=timedelta(days=10**5))
    model = api_models(config.dataset, limits).InteractionRequest
    bodies = list(interaction_payloads(fake, users, items, rated))
    assert len(bodies) == len(fake)
    parsed = [model.model_validate(b) for b in bodies]
    assert [p.user_id for p in parsed] == users and (parsed[0].rating is not None) == rated
    assert all(p.event_timestamp <= now for p in parsed)
