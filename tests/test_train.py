"""Training: repeatable, checkpointed every epoch, resumable without losing anything."""

import json
import subprocess
import sys

import pytest
import torch

import spikeconverter as sc
from spikeconverter.checkpoint import export_weights, load_tensors, load_weights, read_metadata
from spikeconverter.train import TrainConfig, lr_at, train

from test_data import write_folder_tree


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return write_folder_tree(tmp_path_factory.mktemp("tiny"), per_class=4)


def cfg(root, **kw):
    base = dict(model="resnet20", dataset="cifar10", epochs=3, batch_size=8, lr=0.05, seed=3, data_root=str(root),
                threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_resume_after_stop_equals_unbroken_run(tiny_root, tmp_path):
    whole = train(cfg(tiny_root), tmp_path / "a.safetensors", progress=False)
    part = train(cfg(tiny_root), tmp_path / "b.safetensors", progress=False, stop_after=1)
    assert part["epoch"] == 1 and len(part["history"]) == 1
    resumed = train(cfg(tiny_root), tmp_path / "b.safetensors", progress=False, resume=True)
    assert resumed["epoch"] == 3 and [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    a, _ = load_tensors(tmp_path / "a.safetensors")
    b, _ = load_tensors(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["loss"] for h in whole["history"]] == [h["loss"] for h in resumed["history"]]


def test_checkpoint_written_every_epoch_atomically(tiny_root, tmp_path):
    out = tmp_path / "run.safetensors"
    train(cfg(tiny_root, epochs=2), out, progress=False, stop_after=1)
    meta = read_metadata(out)
    assert meta["epoch"] == 1 and meta["arch"] == "resnet20" and meta["seed"] == 3
    assert "test_acc" in meta and "data" in meta and meta["config"]["lr"] == 0.05
    assert not list(tmp_path.glob("*.tmp"))


def test_killed_run_resumes(tiny_root, tmp_path):
    """SIGKILL in the middle of training: the last checkpoint is intact and the run continues."""
    out = tmp_path / "k.safetensors"
    def args(epochs):
        return [sys.executable, "-m", "spikeconverter.cli", "train", "--model", "resnet20", "--epochs", str(epochs),
                "--batch-size", "8", "--data", str(tiny_root), "--out", str(out), "--threads", "1", "--quiet"]

    p = subprocess.Popen(args(40))
    try:
        import time

        deadline = time.time() + 120
        while not out.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        p.kill()
        p.wait()
    done = read_metadata(out)["epoch"]
    assert 1 <= done < 40
    r = subprocess.run(args(done + 1) + ["--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert read_metadata(out)["epoch"] == done + 1


def test_export_and_load_weights(tiny_root, tmp_path):
    m = sc.models.create("resnet20")
    meta = {"arch": "resnet20", "dataset": "cifar10", "test_acc": 10.0}
    for half in (False, True):
        p = tmp_path / f"w{half}.safetensors"
        export_weights(m, p, meta, half=half)
        m2 = sc.models.create("resnet20")
        got = load_weights(m2, p)
        assert got["storage"] == ("float16" if half else "float32")
        assert json.loads(p.with_suffix(".json").read_text())["arch"] == "resnet20"
        for (k, v), v2 in zip(m.state_dict().items(), m2.state_dict().values()):
            assert torch.allclose(v.float(), v2.float(), rtol=1e-3, atol=1e-4 if half else 0), k
    with pytest.raises(ValueError, match="does not fit"):
        load_weights(sc.models.create("vgg16"), tmp_path / "wFalse.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="not a readable"):
        load_weights(m, tmp_path / "bad.safetensors")


def test_schedules():
    c = TrainConfig(lr=0.1, warmup=0.2)
    lrs = [lr_at(s, 100, c) for s in range(100)]
    assert max(lrs) == pytest.approx(0.1, rel=0.02) and lrs[-1] < 0.001 and lrs[0] < 0.01
    c.schedule = "cosine"
    assert lr_at(0, 100, c) == 0.1 and lr_at(50, 100, c) == pytest.approx(0.05)
    c.schedule = "step"
    with pytest.raises(ValueError):
        lr_at(0, 10, c)


def test_half_export_records_the_shipped_weights_accuracy(tiny_root, tmp_path):
    """fp16 export: test_acc in the shipped metadata is measured on the fp16-rounded weights."""
    from spikeconverter.data import load_dataset
    from spikeconverter.train import evaluate_accuracy

    exp = tmp_path / "shipped.safetensors"
    meta = train(cfg(tiny_root, epochs=1), tmp_path / "run.safetensors", progress=False, export=exp, half_export=True)
    shipped = json.loads(exp.with_suffix(".json").read_text())
    assert shipped["storage"] == "float16" and shipped["test_acc_float32"] == meta["test_acc"]
    m = sc.models.create("resnet20")
    load_weights(m, exp)
    assert shipped["test_acc"] == evaluate_accuracy(m, load_dataset("cifar10", "test", str(tiny_root)))
