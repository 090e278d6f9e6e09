"""torchrun: a 2-process evaluation (gloo, CPU) reports exactly the numbers of one process."""

import json
import subprocess
import sys

import pytest

from spikeconverter.models import shipped_checkpoint

needs_shipped = pytest.mark.skipif(shipped_checkpoint("resnet20", "cifar10") is None,
                                   reason="the ResNet-20 checkpoint is not shipped")
ARGS = ["--threads", "1", "evaluate", "--model", "resnet20", "-T", "3", "--limit", "600", "--calibration", "64",
        "--no-per-channel", "--no-bias-correction", "--no-compile", "--quiet"]


@needs_shipped
def test_two_processes_equal_one(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    r1 = subprocess.run([sys.executable, "-m", "spikeconverter.cli", *ARGS, "--json", str(one)],
                        capture_output=True, text=True)
    assert r1.returncode == 0, r1.stderr
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                         "29517", "-m", "spikeconverter.cli", *ARGS, "--json", str(two)],
                        capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert r2.stdout.count("SNN accuracy") == 1  # one rank reports
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["processes"] == 2 and "processes" not in a
    # 600 images in batches of 250: rank 0 takes batches 0 and 2, rank 1 batch 1
    for k in a:
        if not k.startswith("seconds"):
            assert a[k] == b[k], k  # bit for bit: sums are added in batch order on rank 0


@pytest.mark.slow
@needs_shipped
def test_sweep_two_processes_equal_one(tmp_path):
    args = ["--threads", "1", "sweep", "--model", "resnet20", "-T", "3", "--rate-T", "8", "16", "--limit", "300",
            "--rate-limit", "100", "--calibration", "64", "--no-per-channel", "--no-bias-correction", "--no-compile",
            "--quiet"]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    r1 = subprocess.run([sys.executable, "-m", "spikeconverter.cli", *args, "--json", str(one)], capture_output=True,
                        text=True)
    assert r1.returncode == 0, r1.stderr
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                         "29518", "-m", "spikeconverter.cli", *args, "--json", str(two)],
                        capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert json.loads(one.read_text()) == json.loads(two.read_text())


def test_other_commands_refuse_torchrun(monkeypatch, capsys):
    from spikeconverter.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["show", "--out", "x.png"]) == 2
    assert "only evaluate, sweep and train are distributed" in capsys.readouterr().err


@pytest.mark.slow
def test_train_with_two_processes(tmp_path):
    """DDP on gloo: both ranks step together, rank 0 writes the run file; it resumes in one process."""
    out = tmp_path / "r.safetensors"
    args = ["--threads", "1", "train", "--model", "resnet20", "--limit", "256", "--test-limit", "100", "--epochs", "2",
            "--batch-size", "32", "--stop-after", "1", "--out", str(out), "--quiet"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        "29519", "-m", "spikeconverter.cli", *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    from spikeconverter.checkpoint import read_metadata

    meta = read_metadata(out)
    assert meta["epoch"] == 1 and meta["processes"] == 2 and meta["history"][0]["loss"] > 0
    r = subprocess.run([sys.executable, "-m", "spikeconverter.cli", *args[:-5], "--out", str(out), "--resume",
                        "--quiet"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert read_metadata(out)["epoch"] == 2
