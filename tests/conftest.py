import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(int(os.environ.get("SPIKECONVERTER_TEST_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Dataset caches of the tests go to a temp folder, except the shared CIFAR decode (slow)."""
    if "SPIKECONVERTER_CACHE" not in os.environ:
        monkeypatch.setenv("SPIKECONVERTER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    yield
