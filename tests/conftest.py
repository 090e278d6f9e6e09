import http.server
import os
import sys
import threading

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


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server for download tests: (folder it serves, its base URL)."""
    served = tmp_path / "served"
    served.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(served), **kw)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield served, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
