"""Test set-up. The Hub variables are set here, before anything imports huggingface_hub: the tests
drive the real client against tests/minihub.py on 127.0.0.1, never the real Hub.

The ``variant`` fixture is every registered method variant (``quantswap.list_variants()``): tests
that take it cover each method, including ``throwaway_method`` (registered here, so that a method
added to the registry is shown to go through those tests without any test listing it). A test marked
``variants_with(NAME, every=..., in_turn=...)`` takes the argument NAME too: every variant with each
``every`` value, and the ``in_turn`` values given to the variants in turn (each variant meets one). One
marked ``variants_sample(NAME, ...)`` runs those variants by default and the rest with ``make test-sweep``."""

import os
import socket
import tempfile

import pytest
import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HUB_PORT = _free_port()
HUB_TOKEN = "hf_quantswap_test_token"
os.environ.update(
    HF_ENDPOINT=f"http://127.0.0.1:{HUB_PORT}",
    HF_HOME=tempfile.mkdtemp(prefix="quantswap-hf-home-"),
    HF_HUB_DISABLE_XET="1",
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
    HF_TOKEN=HUB_TOKEN,
)
os.environ.pop("HF_HUB_OFFLINE", None)

import throwaway_method  # noqa: E402, F401  (after the Hub variables; registers the test-only method)

import quantswap  # noqa: E402


def pytest_generate_tests(metafunc):
    if "variant" not in metafunc.fixturenames:
        return
    variants = quantswap.list_variants()
    sample = metafunc.definition.get_closest_marker("variants_sample")
    if sample is not None:  # the named variants by default, the others with the sweep
        metafunc.parametrize("variant", [pytest.param(v, id=v.name, marks=() if v.name in sample.args else
                                                      pytest.mark.sweep) for v in variants])
        return
    marker = metafunc.definition.get_closest_marker("variants_with")
    if marker is None:
        metafunc.parametrize("variant", variants, ids=[v.name for v in variants])
        return
    (name,), every, in_turn = marker.args, marker.kwargs.get("every", ()), marker.kwargs["in_turn"]
    cases = [(value, v) for value in every for v in variants]
    cases += [(in_turn[i % len(in_turn)], v) for i, v in enumerate(variants)]
    metafunc.parametrize(f"{name}, variant", cases, ids=[f"{v.name}-{value}" for value, v in cases])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def minihub():
    """The local Hub-compatible server, started once; ``HF_ENDPOINT`` points at it."""
    from minihub import MiniHub

    hub = MiniHub(port=HUB_PORT, token=HUB_TOKEN).start()
    yield hub
    hub.stop()
