"""Tests use tiny tensors: one intra-op thread avoids thread start and spin costs that
dominate small ops (up to 100x on a busy 2-core machine). Nothing times the CPU: with
``FLOWRBC_NO_MEASURE`` set, a CPU whose bf16 units its system does not list runs "auto" in
float32 (``flowrbc.precision``), here and in the subprocesses tests start."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _no_precision_measurement(monkeypatch):
    monkeypatch.setenv("FLOWRBC_NO_MEASURE", "1")
