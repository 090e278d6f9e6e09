"""The command line: help, errors with one-line reasons, and evaluate/sweep on the shipped checkpoint."""

import json
import subprocess
import sys

import pytest

from spikeconverter.cli import main
from spikeconverter.models import shipped_checkpoint


def run(*args):
    return subprocess.run([sys.executable, "-m", "spikeconverter.cli", *args], capture_output=True, text=True)


def test_help():
    r = run("--help")
    assert r.returncode == 0 and "evaluate" in r.stdout and "sweep" in r.stdout and "train" in r.stdout
    for cmd in ("evaluate", "sweep", "train", "demo"):
        assert run(cmd, "--help").returncode == 0


@pytest.mark.parametrize("args,fragment", [
    (["evaluate", "--model", "alexnet"], "unknown model"),
    (["evaluate", "-T", "0", "--limit", "10"], "timesteps"),
    (["evaluate", "--beta", "3", "--limit", "10"], "beta"),
    (["evaluate", "--beta", "fast"], "beta"),
    (["evaluate", "--model", "resnet34", "--dataset", "imagenet"], "no shipped checkpoint"),
    (["evaluate", "--checkpoint", "/nonexistent.safetensors"], "does not exist"),
    (["evaluate", "--calibration", "0"], "calibration"),
])
def test_bad_input_exits_nonzero_with_one_line(args, fragment, capsys):
    code = main(["--threads", "1", *args, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1, err


needs_shipped = pytest.mark.skipif(shipped_checkpoint("resnet20", "cifar10") is None,
                                   reason="the ResNet-20 checkpoint is not shipped yet")


@needs_shipped
def test_evaluate_on_a_subset(tmp_path):
    out = tmp_path / "e.json"
    r = run("--threads", "2", "evaluate", "--model", "resnet20", "-T", "6", "--limit", "200", "--calibration", "128",
            "--json", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    for label in ("ANN accuracy", "SNN accuracy", "difference", "latency", "throughput", "spikes / image",
                  "SOPs / image", "ANN MACs", "energy", "pJ/MAC"):
        assert label in r.stdout
    d = json.loads(out.read_text())
    assert d["test_images"] == 200 and d["latency_steps"] == 120 and d["snn_accuracy"] > 50
    assert abs(d["difference_pp"] - (d["snn_accuracy"] - d["ann_accuracy"])) < 1e-9


@needs_shipped
def test_evaluate_simulate_engine_agrees_with_fast(tmp_path):
    res = {}
    for engine in ("fast", "simulate"):
        out = tmp_path / f"{engine}.json"
        r = run("--threads", "2", "evaluate", "-T", "4", "--limit", "40", "--calibration", "64", "--engine", engine,
                "--json", str(out), "--quiet")
        assert r.returncode == 0, r.stderr
        res[engine] = json.loads(out.read_text())
    # float32 simulation can flip a rare digit; decisions on 40 images stay the same
    assert res["fast"]["snn_accuracy"] == res["simulate"]["snn_accuracy"]
    assert abs(res["fast"]["spikes"] - res["simulate"]["spikes"]) / res["fast"]["spikes"] < 1e-3


@needs_shipped
def test_sweep_table_plot_json(tmp_path):
    png, js = tmp_path / "p.png", tmp_path / "s.json"
    r = run("--threads", "2", "sweep", "-T", "2", "4", "--rate-T", "8", "16", "--also-beta", "1", "--limit", "100",
            "--rate-limit", "50", "--calibration", "64", "--plot", str(png), "--json", str(js), "--quiet")
    assert r.returncode == 0, r.stderr
    d = json.loads(js.read_text())
    assert [(row["method"], row["timesteps"]) for row in d["rows"]] == [
        ("spikeconverter", 2), ("spikeconverter", 4), ("spikeconverter beta=1", 2), ("spikeconverter beta=1", 4),
        ("rate", 8), ("rate", 16)]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rate" in r.stdout and "spikeconverter" in r.stdout


@needs_shipped
def test_sweep_ablation_at_its_own_T(tmp_path):
    js = tmp_path / "s.json"
    r = run("--threads", "1", "sweep", "-T", "2", "4", "--rate-T", "8", "--also-beta", "1", "--also-beta-T", "3",
            "--limit", "50", "--rate-limit", "20", "--calibration", "32", "--json", str(js), "--quiet", "--no-compile")
    assert r.returncode == 0, r.stderr
    rows = [(row["method"], row["timesteps"]) for row in json.loads(js.read_text())["rows"]]
    assert rows == [("spikeconverter", 2), ("spikeconverter", 4), ("spikeconverter beta=1", 3), ("rate", 8)]


@needs_shipped
def test_pretrained_loads():
    import spikeconverter as sc

    m = sc.models.create("resnet20", pretrained=True)
    assert not m.training
