"""Test set-up. The Hub variables are set here, before anything imports huggingface_hub: the tests
drive the real client against tests/minihub.py on 127.0.0.1, never the real Hub."""

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
