"""Fairness and exposure figures on small constructed cases, checked by hand."""

import numpy as np
import pandas as pd
import pytest

from components.config import load_config
from components.dataset import DatasetSchema, resolve_dataset
from components.metrics import UNKNOWN_GROUP
from components.synth import schema as shop_schema
from monitoring.fairness import exposure, gini, group_quality, head_items, lorenz_curve, user_groups


def resolve_schema() -> DatasetSchema:
    """The default (MovieLens preset) declaration."""
    return load_config().dataset


def test_gini_by_hand() -> None:
    assert gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)  # 2*(4*4)/(4*4) - 5/4
    assert gini(np.array([1, 2, 3])) == pytest.approx(2 / 9)  # 2*(1+4+9)/(3*6) - 4/3
    assert gini(np.array([0, 0])) == 0.0
    x, y = lorenz_curve(np.array([0, 0, 0, 4]))
    assert list(y) == [0.0, 0.0, 0.0, 0.0, 1.0] and x[-1] == 1.0


def test_group_ratio_by_hand() -> None:
    per_request = pd.DataFrame({
        "request_id": [f"r{i}" for i in range(10)],
        "evaluable": [True] * 9 + [False],
        "hit": [1, 1, 1, 0, 1, 0, 0, 0, 1, np.nan],
        "ndcg": [1, 0.5, 0.5, 0, 1, 0, 0, 0, 1, np.nan],
    })
    genders = ["F", "F", "F", "F", "M", "M", "M", "M", None, "F"]  # r8: gender from the users table
    ages = [20, 20, 30, 30, 20, 20, 30, 30, None, 20]  # r8: age from the users table
    requests = pd.DataFrame({
        "request_id": per_request["request_id"],
        "user_id": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        "profile": [{k: v for k, v in (("gender", g), ("age", a)) if v is not None}
                    for g, a in zip(genders, ages, strict=True)],
    })
    users = pd.DataFrame({"user_id": [9], "gender": ["M"], "age": [60]})
    groups = user_groups(requests, users, resolve_schema())
    assert groups["gender"].iloc[8] == "M" and list(groups["age"].iloc[[0, 2, 8]]) == ["18-24", "25-34", "56+"]
    g = group_quality(per_request, groups, "gender", min_group_size=2)
    # F: r0-r3 -> 3/4 hits; M: r4-r8 -> 2/5 hits (r9 is not evaluable)
    assert g["groups"]["F"]["hit_rate"] == pytest.approx(0.75) and g["groups"]["M"]["requests"] == 5
    assert g["ratio"] == pytest.approx(0.4 / 0.75) and (g["worst"], g["best"]) == ("M", "F")
    a = group_quality(per_request, groups, "age", min_group_size=2)
    # 18-24: r0 r1 r4 r5 -> 3/4; 25-34: r2 r3 r6 r7 -> 1/4; 56+: one request -> shown, not counted
    assert a["groups"]["56+"]["counted"] is False
    assert a["ratio"] == pytest.approx(0.25 / 0.75) and a["worst"] == "25-34"
    assert group_quality(per_request, groups, "gender", min_group_size=5)["ratio"] is None  # only M is big enough


def test_long_tail_and_exposure_by_hand() -> None:
    catalogue = np.arange(1, 11)
    # reference popularity: item 1 (5 events) > item 2 (3) > the rest (1 each, items 3..6) -> head = {1, 2}
    reference = pd.DataFrame({"item_id": [1] * 5 + [2] * 3 + [3, 4, 5, 6]})
    assert list(head_items(reference, catalogue, 0.2)) == [1, 2]
    recs = pd.DataFrame({"item_id": [1, 2, 3, 1, 2, 7, 1, 2]})  # 2 of 8 slots on tail items (3, 7)
    e = exposure(recs, reference, catalogue, head_fraction=0.2)
    assert e["long_tail_share"] == pytest.approx(2 / 8)
    assert e["catalogue_long_tail_share"] == pytest.approx(0.8)
    assert e["reference_long_tail_share"] == pytest.approx(4 / 12)
    assert e["coverage"] == pytest.approx(4 / 10)
    counts = np.array([3, 3, 1, 0, 0, 0, 1, 0, 0, 0])
    assert e["gini"] == pytest.approx(gini(counts))
    # sorted counts 0*6,1,1,3,3: 2*(7*1+8*1+9*3+10*3)/(10*8) - 11/10 = 144/80 - 1.1 = 0.7
    assert e["gini"] == pytest.approx(0.7)


def test_groups_follow_the_declaration_of_another_data_set() -> None:
    """The shop declares segment (categorical) and tenure_days (bucketed) as its fairness groups."""
    schema = DatasetSchema.model_validate(resolve_dataset({**shop_schema(), "preset": None}))
    assert schema.fairness_groups == ["segment", "tenure_days"]
    requests = pd.DataFrame({"request_id": ["a", "b", "c"], "user_id": [1, 2, 3],
                             "profile": [{"segment": "vip", "tenure_days": 30}, {}, {"tenure_days": 4000}]})
    users = pd.DataFrame({"user_id": [2], "segment": ["regular"], "tenure_days": [400]})
    groups = user_groups(requests, users, schema)
    assert list(groups.columns) == ["request_id", "segment", "tenure_days"]
    assert groups["segment"].tolist() == ["vip", "regular", UNKNOWN_GROUP]
    assert groups["tenure_days"].tolist() == ["<90", "365-1094", "1095+"]
