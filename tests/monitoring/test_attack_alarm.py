"""The live-traffic attack alarm: fake accounts posting through the API raise it (named), ordinary traffic does
not; over both data set shapes."""

import pandas as pd
import pytest

from components.attacks import AttackSpec, inject_attack
from components.evaluate import prepare
from monitoring.attack_alarm import attack_alarm
from tests.components.trust_world import SHAPES, canonical


@pytest.fixture(scope="module", params=SHAPES)
def world(request, tmp_path_factory):
    return canonical(request.param, tmp_path_factory.mktemp(request.param))


def live_genuine(tables: dict[str, pd.DataFrame], n: int = 150) -> pd.DataFrame:
    """Ordinary live traffic: the latest events of the data set, replayed."""
    return tables["interactions"].sort_values("event_timestamp").tail(n).reset_index(drop=True)


def test_fake_accounts_posting_live_raise_the_alarm(world):
    config, tables = world
    split = prepare(config, tables).split
    counts = split.train["item_id"].value_counts()
    targets = tuple(int(i) for i in counts[~counts.index.isin(split.held_out_items)].index[-3:])
    attack = inject_attack(tables, config.dataset, AttackSpec("bandwagon", targets, 0.1, filler=10, selected=5))
    live = pd.concat([live_genuine(tables), attack.interactions[live_genuine(tables).columns]], ignore_index=True)
    external = ("acct-" + live["user_id"].astype(str)).reset_index(drop=True)  # new accounts: ids the maps lack
    alarm = attack_alarm(tables["interactions"], live, external, config)
    assert alarm["fired"]
    assert set(alarm["flagged_accounts"]) == {f"acct-{u}" for u in attack.fake_users}
    assert set(targets) <= set(alarm["suspected_items"])


def test_ordinary_traffic_stays_quiet(world):
    config, tables = world
    live = live_genuine(tables)
    alarm = attack_alarm(tables["interactions"], live, live["user_id"], config)
    assert not alarm["fired"] and alarm["flagged_count"] < config.trust.alarm_min_accounts
    assert alarm["live_accounts"] == live["user_id"].nunique()
    assert not attack_alarm(tables["interactions"], live.iloc[:0], None, config)["fired"]
