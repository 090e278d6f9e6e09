"""Conversion without data: inputs synthesised from the network's batch-norm statistics."""

import pytest
import torch
from torch import nn

import spikeconverter as sc
from spikeconverter.datafree import bn_statistics, synthesize_inputs

from nets import make
from test_equivalence import check_identical


def trained_statistics(model, shape):
    """BN running statistics as training leaves them: averaged over data the network saw (random
    statistics need not be reachable by any input)."""
    g = torch.Generator().manual_seed(5)
    scale = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64).view(1, 3, 1, 1)
    data = torch.randn((512,) + shape, generator=g, dtype=torch.float64) * scale + 0.2
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(data), 128):
            model(data[i : i + 128])
    return model.eval()


def test_synthesised_inputs_match_the_running_statistics():
    model, shape = make("resnet_block")
    model = trained_statistics(model, shape)
    x, info = synthesize_inputs(model, shape, n=64, steps=120, seed=0)
    assert x.shape == (64,) + shape and info["bn_layers"] == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        stats = bn_statistics(model, x)
        noise = bn_statistics(model, torch.randn_like(x))
    # the stated tolerance: every channel's batch mean within 0.05 running standard deviations of the
    # running mean, its standard deviation within 5 % of the running one (Gaussian noise: far off)
    for mean, var, rm, rv in stats:
        sd = rv.sqrt()
        assert float(((mean - rm).abs() / sd).max()) < 0.05
        assert float((var.sqrt() / sd - 1).abs().max()) < 0.05
    assert info["max_mean_error_sd"] < 0.05 and info["max_sd_error_relative"] < 0.05
    assert max(float((v.sqrt() / rv.sqrt() - 1).abs().max()) for m, v, rm, rv in noise) > 0.2


def test_data_free_conversion_is_exact_reproducible_and_recorded(tmp_path):
    model, shape = make("resnet_block")
    model = trained_statistics(model, shape)
    kw = dict(timesteps=5, input_shape=shape, data_free_images=32, data_free_steps=60)
    snn = sc.convert(model, "data-free", **kw)
    again = sc.convert(model, "data-free", **kw)
    assert all(torch.equal(torch.as_tensor(a.theta), torch.as_tensor(b.theta)) for a, b in zip(snn.layers, again.layers))
    x = torch.randn((3,) + shape, dtype=torch.float64)
    check_identical(snn, x)
    assert snn.calibration["data_free"]["images"] == 32
    snn.save(tmp_path / "df.snn")
    assert sc.load(tmp_path / "df.snn").calibration["data_free"]["steps"] == 60


def test_data_free_needs_batch_norm_and_a_shape():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(ValueError, match="needs batch-norm statistics") as e:
        sc.convert(plain, "data-free", timesteps=4, input_shape=(3, 8, 8))
    assert "\n" not in str(e.value)
    model, shape = make("resnet_block")
    with pytest.raises(ValueError, match="input_shape"):
        sc.convert(model, "data-free", timesteps=4)
    with pytest.raises(ValueError, match="'data-free'"):
        sc.convert(model, "imagenet", timesteps=4)


@pytest.mark.slow
def test_evaluate_data_free_on_the_shipped_resnet20(tmp_path):
    from spikeconverter.cli import main

    out = tmp_path / "df.json"
    assert main(["evaluate", "--data-free", "--limit", "500", "-T", "8", "--quiet", "--json", str(out)]) == 0
    import json

    r = json.loads(out.read_text())
    assert r["calibration_images"] == 0 and r["data_free"]["images"] == 128
    assert r["difference_pp"] > -1.0  # at T = 8 the data-free network keeps the ANN's accuracy (measured: docs)


def test_the_commands_take_data_free(tmp_path, monkeypatch):
    """evaluate, sweep, convert and export hand 'data-free' through (the synthesis itself is stubbed
    here: it is tested above, and on ResNet-20 it takes minutes)."""
    from spikeconverter import datafree
    from spikeconverter.cli import main
    from spikeconverter.models import shipped_checkpoint

    if shipped_checkpoint("resnet20", "cifar10") is None:
        pytest.skip("no ResNet-20 checkpoint")
    calls = []

    def stub(model, input_shape, n=128, steps=300, lr=0.2, seed=0, progress=False):
        calls.append(tuple(input_shape))
        g = torch.Generator().manual_seed(seed)
        return torch.randn((16,) + tuple(input_shape), generator=g), {"images": 16, "steps": 0, "seconds": 0.0}

    monkeypatch.setattr(datafree, "synthesize_inputs", stub)
    import json

    assert main(["sweep", "--data-free", "-T", "4", "--rate-T", "--limit", "50", "--quiet",
                 "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["calibration_images"] == 0
    assert main(["convert", "--data-free", "-T", "4", "--quiet", "--out", str(tmp_path / "n.snn")]) == 0
    assert sc.load(tmp_path / "n.snn").calibration["data_free"]["images"] == 16
    assert main(["evaluate", "--snn", str(tmp_path / "n.snn"), "--limit", "50", "--quiet", "--no-compile",
                 "--json", str(tmp_path / "f.json")]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["data_free"]["images"] == 16  # the file says no image was used
    assert main(["evaluate", "--data-free", "-T", "4", "--limit", "50", "--quiet", "--no-compile",
                 "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["data_free"]["images"] == 16
    assert calls and all(c == (3, 32, 32) for c in calls)


def test_the_commands_take_data_free_bn_statistics(tmp_path):
    """--data-free bn-statistics: no input at all on ResNet-20 (every layer is reached by its BN's
    statistics, through the residual sums), recorded as such by evaluate, sweep and convert."""
    import json

    from spikeconverter.cli import main
    from spikeconverter.models import shipped_checkpoint

    if shipped_checkpoint("resnet20", "cifar10") is None:
        pytest.skip("no ResNet-20 checkpoint")
    assert main(["evaluate", "--data-free", "bn-statistics", "-T", "6", "--limit", "50", "--quiet", "--no-compile",
                 "--json", str(tmp_path / "e.json")]) == 0
    d = json.loads((tmp_path / "e.json").read_text())["data_free"]
    assert d["method"] == "bn-statistics" and d["images"] == 0 and d["layers_from_synthesised_inputs"] == []
    assert len(d["layers_from_bn_statistics"]) == 19
    assert main(["sweep", "--data-free", "bn-statistics", "-T", "4", "--rate-T", "--limit", "50", "--quiet",
                 "--json", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["calibration_images"] == 0 and s["data_free"]["method"] == "bn-statistics"
    assert main(["convert", "--data-free", "bn-statistics", "-T", "4", "--quiet", "--out", str(tmp_path / "n.snn")]) == 0
    assert sc.load(tmp_path / "n.snn").calibration["data_free"]["images"] == 0
