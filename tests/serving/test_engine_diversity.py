"""Diversity on request in the request engine: without the field (or with 0) the model's ranking is served as it
is; a positive strength serves an MMR list of more varied items from the model's best; bad values are refused."""

import numpy as np
import pytest
from pydantic import ValidationError

from components.rerank import intra_list_diversity
from tests.serving.engine_world import ask, ids_and_scores


def test_default_and_zero_keep_the_models_ranking(world, engine):
    history, profile = world.user_state(3)
    ids, scores = world.expected(1, history, profile, history, 10)
    for body in ({}, {"diversity": 0}, {"diversity": 0.0}):
        got_ids, got_scores = ids_and_scores(ask(engine, user_id=3, k=10, **body))
        assert got_ids == [int(i) for i in ids] and np.allclose(got_scores, scores, atol=1e-5)


def test_diversity_serves_more_varied_lists_from_the_models_best(world, engine):
    model = engine.live.model
    served = {}
    for strength in (0.0, 0.5, 1.0):
        served[strength] = [ids_and_scores(ask(engine, user_id=u, k=10, diversity=strength))[0] for u in range(1, 21)]
    ild = {s: intra_list_diversity(np.asarray(lists), model.sorted_ids, model.unit_embeddings[model.sorted_rows])
           .mean() for s, lists in served.items()}
    assert ild[0.0] < ild[0.5] <= ild[1.0] + 1e-9
    for user, (plain, varied) in enumerate(zip(served[0.0], served[1.0], strict=True), start=1):
        history, profile = world.user_state(user)
        pool = [int(i) for i in world.expected(1, history, profile, history, 50)[0]]
        assert varied[0] == plain[0] and set(varied) <= set(pool) and len(set(varied)) == 10


@pytest.mark.parametrize("value", [-0.1, 1.5, "high", True])
def test_bad_diversity_is_refused_naming_the_field(engine, value):
    with pytest.raises(ValidationError, match="diversity"):
        engine.models.RecommendRequest.model_validate({"user_id": 1, "diversity": value})
