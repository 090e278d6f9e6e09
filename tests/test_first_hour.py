"""What a new user meets in the first hour: the demo, every command's options, Ctrl-C, output
folders, slips with the calibration batch, pickled models, and the two engines' agreement."""

import ast
import inspect
import json
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from spikeconverter import cli
from spikeconverter.cli import build_parser, main
from spikeconverter.models import shipped_checkpoint

needs_shipped = pytest.mark.skipif(shipped_checkpoint("resnet20", "cifar10") is None,
                                   reason="the ResNet-20 checkpoint is not shipped")


@needs_shipped
def test_demo_runs_as_the_readme_says(capsys):
    # the README's first command (`make demo` = `spikeconverter demo`), on a subset
    assert main(["demo", "--limit", "100", "--quiet", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "100 test images" in out and "SNN accuracy" in out and "160 steps end to end" in out, out


def _subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction))
    return parser, sub.choices


def _minimal_argv(name, sp):
    """The subcommand with its required options and positionals filled in."""
    argv = [name]
    for a in sp._actions:
        if not a.option_strings and a.dest != "help":
            argv.append("x")
        elif a.required:
            argv += [a.option_strings[0], "x"]
    return argv


def _args_reads(func, seen=None) -> set:
    """Every ``args.NAME`` a handler reads, following the cli module's own helpers it calls."""
    seen = set() if seen is None else seen
    if func in seen:
        return set()
    seen.add(func)
    tree = ast.parse(inspect.cleandoc("\n" + inspect.getsource(func)))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "args":
            names.add(node.attr)
        passes_args = isinstance(node, ast.Call) and any(isinstance(x, ast.Name) and x.id == "args" for x in node.args)
        if passes_args and isinstance(node.func, ast.Name):  # a helper handed this namespace
            helper = getattr(cli, node.func.id, None)
            if inspect.isfunction(helper) and helper.__module__ == cli.__name__:
                names |= _args_reads(helper, seen)
    return names


def test_every_handler_reads_only_options_its_parser_defines():
    parser, subs = _subcommands()
    assert set(subs) >= {"train", "evaluate", "sweep", "show", "convert", "export", "finetune", "demo",
                         "import-checkpoint"}
    for name, sp in subs.items():
        ns = parser.parse_args(_minimal_argv(name, sp))
        missing = {a for a in _args_reads(ns.func) if not hasattr(ns, a)}
        assert not missing, f"{name}: its handler reads {sorted(missing)}, which its parser never sets"


def test_the_walk_catches_an_option_a_parser_lacks():
    def handler(args):
        return args.device

    assert "device" in _args_reads(handler)


def test_runtime_options_work_after_the_subcommand(capsys):
    parser, subs = _subcommands()
    for name, sp in subs.items():
        if name == "import-checkpoint":
            continue
        ns = parser.parse_args(_minimal_argv(name, sp) + ["--threads", "1", "--device", "cpu", "--quiet"])
        assert ns.threads == 1 and ns.device == "cpu" and ns.quiet
    assert main(["evaluate", "--threads", "1", "--model", "alexnet", "--quiet"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_python_dash_m_spikeconverter_is_the_command_line():
    # the form torchrun needs: torchrun -m spikeconverter evaluate ...
    r = subprocess.run([sys.executable, "-m", "spikeconverter", "evaluate", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--precision" in r.stdout, r.stderr


@pytest.mark.parametrize("argv,said", [
    (["sweep", "--progress", "{tmp}/p.json"], ["{tmp}/p.json", "run the same command again"]),
    (["sweep"], ["--progress FILE"]),
    (["evaluate"], ["nothing was written"]),
    (["convert", "--out", "{tmp}/n.snn"], ["nothing was written", "n.snn"]),
    (["finetune", "--out", "{tmp}/f.snn"], ["--resume"]),
])
def test_ctrl_c_says_what_is_kept(argv, said, tmp_path, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    for name in ("_sweep", "_evaluate", "_convert", "_finetune"):
        monkeypatch.setattr(cli, name, interrupted if f"_{argv[0]}" == name else getattr(cli, name))
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and all(s.replace("{tmp}", str(tmp_path)) in err for s in said), err


def _fake_sweep(**kw):
    return {"model": "resnet20", "dataset": "cifar10", "ann_accuracy": 90.0, "ann_accuracy_rate_images": 90.0,
            "test_images": 10, "rate_images": 10, "energy_convention": "e",
            "rows": [dict(method="spikeconverter", timesteps=4, latency_steps=80, accuracy=89.0, difference_pp=-1.0,
                          spikes=1.0, sops=1.0, energy_snn_uj=1.0)]}


def test_sweep_makes_its_output_folders_and_keeps_the_json_when_the_plot_fails(tmp_path, monkeypatch):
    from spikeconverter import evaluate

    monkeypatch.setattr(evaluate, "sweep", _fake_sweep)
    plot, js = tmp_path / "new" / "dir" / "x.png", tmp_path / "other" / "r.json"
    assert main(["sweep", "--plot", str(plot), "--json", str(js), "--quiet"]) == 0
    assert plot.exists() and json.loads(js.read_text())["rows"][0]["timesteps"] == 4

    def broken(r, path):
        raise OSError("disk full")

    js.unlink()
    from spikeconverter import reports

    monkeypatch.setattr(reports, "plot_sweep", broken)  # where the command line draws it from
    assert main(["sweep", "--plot", str(plot), "--json", str(js), "--quiet"]) == 2
    assert js.exists()  # measured first, written before the plot


def _small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4)).eval()


def test_one_image_without_batch_axis_is_named():
    import spikeconverter as sc

    with pytest.raises(ValueError, match="no batch axis.*unsqueeze"):
        sc.convert(_small_net(), torch.randn(3, 8, 8), timesteps=4)


def test_too_few_calibration_images_warn_and_enough_do_not():
    import spikeconverter as sc

    with pytest.warns(UserWarning, match="only 1 image"):
        sc.convert(_small_net(), torch.randn(1, 3, 8, 8), timesteps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sc.convert(_small_net(), torch.randn(64, 3, 8, 8), timesteps=4)


def test_import_checkpoint_of_a_pickled_model_says_what_to_do(tmp_path, capsys):
    src = tmp_path / "whole.pt"
    torch.save(_small_net(), src)  # the whole module, pickled: weights_only loading refuses it
    assert main(["import-checkpoint", str(src), "--out", str(tmp_path / "w.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "state_dict()" in err and "Traceback" not in err, err


def test_a_network_file_of_a_users_model_is_named_as_such():
    from spikeconverter.evaluate import format_evaluate

    r = dict(model=None, dataset="cifar10", snn_file="mine.snn (sha256 abc...)", test_images=10,
             calibration_images=None, method="spikeconverter", engine="fast", beta=2.0, threshold="mse",
             ann_accuracy=1.0, snn_accuracy=1.0, difference_pp=0.0, timesteps=4, latency_steps=8, spiking_depth=1,
             steps_per_input=4, spikes=1.0, sops=1.0, snn_macs=1.0, ann_macs=1.0, energy_snn_uj=1.0,
             energy_ann_uj=1.0, energy_ratio=1.0, energy_convention="e")
    text = format_evaluate(r)
    assert "None" not in text and "your model (mine.snn)" in text and "not recorded" in text, text


@needs_shipped
def test_in_float64_both_engines_report_the_same_figures():
    from spikeconverter.evaluate import evaluate

    kw = dict(limit=30, calibration=64, quiet=True, compile=False, precision="float64")
    fast, sim = evaluate(engine="fast", **kw), evaluate(engine="simulate", **kw)
    for key in ("snn_accuracy", "spikes", "sops", "spikes_per_layer"):
        assert fast[key] == sim[key], key
    assert fast["precision"] == "float64"



def test_measurements_default_to_float64_except_where_there_is_none():
    # float32 figures depend on the CPU's convolution kernels; evaluate and sweep measure in float64
    # unless asked otherwise, so that the README's rows hold on any machine
    from spikeconverter.evaluate import resolve_precision

    assert resolve_precision(None, torch.device("cpu")) == "float64"
    assert resolve_precision(None, torch.device("mps")) == "float32"
    assert resolve_precision("float32", torch.device("cpu")) == "float32"
    with pytest.raises(ValueError, match="MPS has no float64"):
        resolve_precision("float64", torch.device("mps"))
    with pytest.raises(ValueError, match="--precision must be one of"):
        resolve_precision("float16", torch.device("cpu"))
    from spikeconverter.cli import build_parser

    for cmd in (["evaluate"], ["sweep"]):
        assert build_parser().parse_args(cmd).precision is None


@needs_shipped
def test_sweep_and_evaluate_measure_in_float64_by_default_and_agree():
    from spikeconverter.evaluate import evaluate, sweep

    kw = dict(limit=40, calibration=64, quiet=True, compile=False)
    e = evaluate(timesteps=4, **kw)
    s = sweep(timesteps=(4,), rate_timesteps=(8,), **kw)
    assert e["precision"] == s["precision"] == "float64"
    row = next(r for r in s["rows"] if r["method"] == "spikeconverter")
    assert (row["accuracy"], row["spikes"], row["sops"]) == (e["snn_accuracy"], e["spikes"], e["sops"])
    assert s["ann_accuracy"] == e["ann_accuracy"]
