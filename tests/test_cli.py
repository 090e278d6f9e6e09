"""The command line: help, errors with one-line reasons, and evaluate/sweep on the shipped checkpoint."""

import json
import subprocess
import sys

import pytest
import torch

from spikeconverter.cli import main
from spikeconverter.models import shipped_checkpoint


def run(*args):
    return subprocess.run([sys.executable, "-m", "spikeconverter.cli", *args], capture_output=True, text=True)


def test_help():
    r = run("--help")
    assert r.returncode == 0 and "evaluate" in r.stdout and "sweep" in r.stdout and "train" in r.stdout
    for cmd in ("evaluate", "sweep", "train", "demo", "convert", "finetune"):
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
    assert d["calibration_options"] == dict(per_channel=True, sequential=False, bias_correction=True)  # the default
    assert isinstance(d["layers"][0]["theta"], list)  # per channel
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
            "--rate-limit", "50", "--calibration", "64", "--plot", str(png), "--json", str(js), "--quiet",
            "--no-per-channel", "--no-bias-correction")  # the v0.1 calibration: quicker, and the flags reach sweep
    assert r.returncode == 0, r.stderr
    d = json.loads(js.read_text())
    assert d["calibration_options"] == dict(per_channel=False, sequential=False, bias_correction=False)
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
def test_sweep_resumes_from_its_progress_file(tmp_path):
    """A stopped sweep resumes: rows in the progress file are taken, missing ones computed (and equal
    to a full run's), and a file written for another setup is not used."""
    from spikeconverter.evaluate import sweep

    prog, js = tmp_path / "progress.json", tmp_path / "s.json"
    args = ["-T", "2", "3", "--rate-T", "8", "--limit", "30", "--rate-limit", "10", "--calibration", "16", "--quiet",
            "--no-compile"]
    r = run("--threads", "1", "sweep", *args, "--progress", str(prog), "--json", str(js))
    assert r.returncode == 0, r.stderr
    full = json.loads(js.read_text())["rows"]
    state = json.loads(prog.read_text())
    assert [(row["method"], row["timesteps"]) for row in state["rows"]] == [("spikeconverter", 2), ("spikeconverter", 3),
                                                                           ("rate", 8)]
    # as if stopped during T = 3, with a marker in the finished row to show it is taken, not recomputed
    state["rows"] = [dict(state["rows"][0], accuracy=-1.0)]
    prog.write_text(json.dumps(state))
    kw = dict(model="resnet20", timesteps=(2, 3), rate_timesteps=(8,), limit=30, rate_limit=10, calibration=16,
              quiet=True, compile=False, progress_file=prog)
    resumed = sweep(**kw)["rows"]
    assert resumed[0]["accuracy"] == -1.0
    assert resumed[1:] == full[1:]
    assert [(row["method"], row["timesteps"]) for row in json.loads(prog.read_text())["rows"]] == [
        ("spikeconverter", 2), ("spikeconverter", 3), ("rate", 8)]
    other = sweep(**dict(kw, limit=20, timesteps=(2,), rate_timesteps=()))["rows"]  # another setup: fresh
    assert other[0]["accuracy"] != -1.0 and other[0]["images"] == 20


@needs_shipped
def test_pretrained_loads():
    import spikeconverter as sc

    m = sc.models.create("resnet20", pretrained=True)
    assert not m.training


# ------------------------------------------------------------------ the rough edges (issue 13)


@pytest.mark.parametrize("args", [["evaluate", "--limit", "0"], ["evaluate", "--limit", "-5"],
                                  ["sweep", "--calibration", "0"], ["train", "--out", "x.safetensors", "--limit", "0"]])
def test_non_positive_counts_are_refused_up_front(args):
    r = run(*args)
    assert r.returncode == 2 and "must be >= 1" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_data_not_found_prints_every_layout_with_cli_words(tmp_path, capsys):
    code = main(["evaluate", "--dataset", "cifar10", "--data", str(tmp_path), "--limit", "10", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "expected one of these layouts:" in err
    assert "cifar-10-batches-py" in err and "class folders" in err  # the lines after the first
    assert "--data" in err and "root=..." not in err, err


def test_torch_save_checkpoint_gets_a_safe_path(tmp_path, capsys):
    import torch

    import spikeconverter as sc

    model = sc.models.create("resnet20")
    pt = tmp_path / "r20.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, pt)
    code = main(["evaluate", "--checkpoint", str(pt), "--limit", "10", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "torch.save" in err and "import-checkpoint" in err and "header" not in err, err
    out = tmp_path / "r20.safetensors"
    assert main(["import-checkpoint", str(pt), "--out", str(out)]) == 0
    again = sc.models.create("resnet20")
    from spikeconverter.checkpoint import load_weights

    load_weights(again, out)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("first_bytes", [b"\x80", b"PK"])
def test_safetensors_whose_header_length_looks_like_a_pickle_is_read(tmp_path, first_bytes):
    """A safetensors file opens with its header's length: when that length's low bytes are 0x80 or
    "PK" (a torch.save pickle's or zip's magic) it is still a safetensors file (a resumed ResNet-34
    training run was once refused this way, its run file's header 32,896 bytes long)."""
    import torch

    from spikeconverter.checkpoint import load_tensors, save_tensors

    path = tmp_path / "c.safetensors"
    for pad in range(0, 70_000, 8):
        save_tensors(path, {"w": torch.ones(3)}, {"note": "x" * pad})
        head = path.read_bytes()[:8]
        if head[:len(first_bytes)] == first_bytes:
            break
    else:
        pytest.skip("no padding gave that header length")
    tensors, meta = load_tensors(path)
    assert torch.equal(tensors["w"], torch.ones(3)) and meta["note"].startswith("x")
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="torch.save"):
        load_tensors(legacy)


def test_train_limit_is_a_class_balanced_random_subset():
    import numpy as np

    from spikeconverter.data.datasets import DATASETS, ArrayDataset
    from spikeconverter.train import balanced_subset

    labels = np.repeat(np.arange(10), 50)  # sorted by class, as the archives are
    ds = ArrayDataset(np.zeros((500, 4, 4, 3), np.uint8), labels, DATASETS["cifar10"])
    sub = balanced_subset(ds, 100, seed=0)
    assert len(sub) == 100 and sub.labels.bincount().tolist() == [10] * 10
    assert torch_equal(sub.labels, balanced_subset(ds, 100, seed=0).labels)


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


def test_large_T_is_bounded_by_precision_not_memory():
    r = run("evaluate", "-T", "60", "--limit", "10")
    assert r.returncode == 2 and "<= 52" in r.stderr, r.stderr


def test_unknown_plot_format_fails_before_the_sweep(tmp_path):
    r = run("sweep", "-T", "4", "--rate-T", "--limit", "10", "--plot", str(tmp_path / "p.xyz"))
    assert r.returncode == 2 and "unknown image format 'xyz'" in r.stderr, r.stderr


def test_resume_without_a_run_file_says_so(tmp_path):
    r = run("train", "--out", str(tmp_path / "none.safetensors"), "--resume", "--data", str(tmp_path))
    assert "starting from scratch" in r.stderr, r.stderr


def test_help_texts_are_plain_and_complete():
    for cmd in ("train", "evaluate", "sweep"):
        out = run(cmd, "--help").stdout
        assert "``" not in out
    top = run("--help").stdout
    assert "``" not in top
    train_help = run("train", "--help").stdout
    for opt in ("--dataset", "--epochs", "--lr", "--seed", "--image-size", "--test-limit"):
        line = next(ln for ln in train_help.splitlines() if opt in ln)
        assert len(train_help.split(opt, 1)[1].split("\n  -", 1)[0].split()) > 1 or line.strip() != opt, opt


def test_ctrl_c_in_train_says_what_is_kept(tmp_path):
    import signal
    import time

    out = tmp_path / "r.safetensors"
    # -X faulthandler: if the child does not stop, SIGABRT makes it print every thread's stack (below)
    # The child gets SIGINT's default disposition, as a command typed at a terminal has. Without it,
    # a test run started in the background of a non-interactive shell (`.ci/run &`, nohup) hands its
    # SIG_IGN down: Python then installs no KeyboardInterrupt handler and the child trains on (the
    # "known problem" of sessions 6-7: the child's SigIgn mask had SIGINT set).
    p = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "spikeconverter.cli", "--threads", "1", "train",
                          "--limit", "256", "--test-limit", "100", "--epochs", "50", "--batch-size", "64",
                          "--out", str(out), "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # generous waits: on a loaded 2-core CI box an epoch and the shutdown each took over a minute
        deadline = time.time() + 300
        while not out.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert out.exists(), "no epoch finished in time"
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        try:
            _, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            # its signal state (ignored / blocked / caught / pending masks), then its stacks
            sig = [ln for ln in open(f"/proc/{p.pid}/status").read().splitlines() if ln.startswith("Sig")]
            p.send_signal(signal.SIGABRT)
            _, err = p.communicate(timeout=60)
            pytest.fail(f"the interrupted child did not exit within 240 s; {sig}; its stacks on SIGABRT:\n{err[-6000:]}")
    finally:
        p.kill()
    assert p.returncode == 130 and "interrupted" in err and "after epoch" in err and "--resume" in err, err


def test_first_compiled_call_is_announced(monkeypatch, capsys):
    from spikeconverter import neuron

    monkeypatch.setattr(neuron, "compiled_kernel", None)
    monkeypatch.setattr(neuron, "_get_kernel", lambda: None)  # do not spend the 25 s here
    assert main(["--threads", "1", "evaluate", "--limit", "10", "--calibration", "16", "--precision", "float32"]) == 0
    assert "compiling the fused quantizer once" in capsys.readouterr().out
    # the kernel serves float32 only: a float64 run (the default) compiles nothing and says nothing of it
    assert main(["--threads", "1", "evaluate", "--limit", "10", "--calibration", "16"]) == 0
    assert "compiling" not in capsys.readouterr().out


def test_make_passes_the_torch_choice_to_pip():
    r = subprocess.run(["make", "-n", "-B", ".venv/.installed", "TORCH_INDEX=https://download.pytorch.org/whl/cpu"],
                       capture_output=True, text=True, cwd=str(__import__("pathlib").Path(__file__).parent.parent))
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in r.stdout, r.stdout + r.stderr


def test_unsupported_op_message_points_to_the_docs_in_one_short_line(capsys):
    import torch.nn.functional as F
    from torch import nn

    import spikeconverter as sc

    class M(nn.Module):
        def forward(self, x):
            return F.relu(x).exp()

    with pytest.raises(sc.UnsupportedOperationError) as e:
        sc.convert(M(), None)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300 and "docs/method.md" in msg and "node 'exp'" in msg, msg


def test_readme_api_snippet_defines_x_before_using_it():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = text.split("## The API in one screen", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert block.index("x, y = ") < block.index("snn(x)")
    # test images of more than one class (the split is stored class by class), no undefined names
    assert "shuffle=True" in block.split("x, y = ", 1)[1].split("\n", 1)[0] and "xs" not in block


@needs_shipped
def test_convert_saves_a_file_that_evaluate_measures_unchanged(tmp_path):
    net = tmp_path / "r20.snn"
    fast = ["--no-per-channel", "--no-bias-correction", "--calibration", "64", "--quiet"]
    r = run("--threads", "1", "convert", "--model", "resnet20", "-T", "4", "--out", str(net), *fast)
    assert r.returncode == 0 and "evaluate --snn" in r.stdout, r.stderr
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert run("--threads", "1", "evaluate", "--snn", str(net), "--limit", "100", "--json", str(a),
               "--quiet", "--no-compile").returncode == 0
    assert run("--threads", "1", "evaluate", "--model", "resnet20", "-T", "4", "--limit", "100", "--json", str(b),
               "--no-compile", *fast).returncode == 0
    da, db = json.loads(a.read_text()), json.loads(b.read_text())
    for k in ("snn_accuracy", "ann_accuracy", "spikes", "sops", "latency_steps", "timesteps", "model", "dataset"):
        assert da[k] == db[k], k  # the file is the network the same command would convert
    assert da["snn_file"].startswith("r20.snn (sha256") and "/" not in da["snn_file"]
    r = run("--threads", "1", "evaluate", "--snn", str(net), "-T", "8", "--limit", "10", "--quiet")
    assert r.returncode == 2 and "converted for T = 4" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.slow
@needs_shipped
def test_finetune_cli_writes_a_network_that_evaluate_reads(tmp_path):
    out = tmp_path / "ft.snn"
    r = run("--threads", "1", "finetune", "--model", "resnet20", "-T", "2", "--epochs", "1", "--train-limit", "256",
            "--limit", "100", "--calibration", "64", "--no-per-channel", "--no-bias-correction", "--out", str(out),
            "--distill", "0.5", "--freeze-weights", "--quiet")
    assert r.returncode == 0 and "fine-tuned at T = 2" in r.stdout, r.stderr
    assert out.exists() and (tmp_path / "ft.snn.optim").exists()
    import spikeconverter as sc

    config = sc.load(out).source["finetune"]["config"]
    assert config["distill"] == 0.5 and config["train_weights"] is False, config
    j = tmp_path / "ft.json"
    r = run("--threads", "1", "evaluate", "--snn", str(out), "--limit", "100", "--json", str(j), "--quiet",
            "--no-compile")
    assert r.returncode == 0, r.stderr
    d = json.loads(j.read_text())
    assert d["timesteps"] == 2 and d["finetune"]["epochs"] == 1 and len(d["finetune"]["train_loss"]) == 1
    assert d["model"] == "resnet20" and d["latency_steps"] == 2 * (d["spiking_depth"] + 1)


def test_evaluate_seed_draws_another_calibration_sample(monkeypatch):
    """--seed reaches evaluate(): another seed, other calibration images (the judge of -T auto and a
    --limit subset follow the same seed); the JSON records it."""
    from spikeconverter import cli
    from spikeconverter import evaluate as ev
    from spikeconverter.workload import calibration_data

    seen = {}

    class Stop(Exception):
        pass

    def fake(**kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(ev, "evaluate", fake)
    with pytest.raises(Stop):
        cli._evaluate(cli.build_parser().parse_args(["evaluate", "--model", "resnet20", "--seed", "2"]))
    assert seen["seed"] == 2
    a, b = (calibration_data("cifar10", 8, seed=s) for s in (0, 2))
    assert not torch.equal(a, b)
