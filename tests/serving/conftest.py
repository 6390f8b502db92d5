"""Fixtures for the serving tests: small real bundles and one real Triton server per test module."""

from pathlib import Path

import pytest

from benchmarks.serving_stack import make_bundle, serving_config
from tests.serving.oidc import Issuer


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """Two bundles that differ in catalogue, weights and sizes (a retrained model), one with a broken smoke file."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bundles")
    first = make_bundle(root / "v_a", n_items=300, dim=16, max_seq_len=8, seed=0)
    second = make_bundle(root / "v_b", n_items=260, dim=24, max_seq_len=6, seed=1, variant="int8")
    broken = make_bundle(root / "v_broken", n_items=200, dim=16, max_seq_len=8, seed=2)
    smoke = (broken / "smoke.json").read_text().replace('"k": 5', '"k": 4')  # expects 5 items, asks for 4
    (broken / "smoke.json").write_text(smoke)
    return {"a": first, "b": second, "broken": broken}


@pytest.fixture(scope="module")
def world(tmp_path_factory, bundles):
    """The request engine's world (tests.serving.engine_world.World): a Feast store, versions 1 and 2, a log."""
    from tests.serving.engine_world import World

    return World(tmp_path_factory.mktemp("engine"), bundles)


@pytest.fixture()
def engine(world):
    """An engine serving version 1 of `world` in process; closed after the test."""
    engine, _ = world.engine()
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    """A real tritonserver (explicit model control) on free loopback ports, stopped after the module."""
    from serving import triton_server as ts

    config = serving_config(tmp_path_factory.mktemp("triton"))
    running = [config, ts.start_server(ts.settings_from_config(config))]  # a test may restart it: [1] is replaced
    try:
        yield running
    finally:
        running[1].stop()


@pytest.fixture(scope="module")
def issuer():
    """An OIDC issuer on loopback (its JWKS over HTTP) that a module's API or verifier trusts."""
    issuer = Issuer()
    try:
        yield issuer
    finally:
        issuer.close()
