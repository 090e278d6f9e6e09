"""The integer deployment bundle: the NumPy reference executor (no torch) equals the fixed-point
engine bit for bit -- logits and every layer's spike counts -- on the fixed-point suite's graphs."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import spikeconverter as sc
from spikeconverter.bundle_executor import Bundle

from nets import make, randomize_bn


def check(snn, x, tmp_path):
    d = snn.export(tmp_path / "bundle")
    logits, counts = Bundle(d).run(x.numpy())
    res = snn.simulate(x)
    assert torch.equal(torch.from_numpy(logits), res.logits)
    assert set(counts) == set(res.spike_counts)
    for k, c in res.spike_counts.items():
        assert torch.equal(torch.from_numpy(counts[k]).to(c.dtype), c), k
    return d


@pytest.mark.parametrize("name", ["vgg_maxpool", "concat", "conv1d"])
@pytest.mark.parametrize("T", [3, 8])
def test_executor_equals_fixed_point_engine(name, T, tmp_path):
    model, shape = make(name, seed=21)
    g = torch.Generator().manual_seed(21)
    snn = sc.convert(model, torch.randn((16,) + shape, generator=g, dtype=torch.float64), timesteps=T,
                     fixed_point=True)
    check(snn, torch.randn((4,) + shape, generator=g, dtype=torch.float64) * 2, tmp_path)


@pytest.mark.slow
def test_executor_on_resnet20(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(sc.models.create("resnet20")).double()
    g = torch.Generator().manual_seed(22)
    calib = torch.randn(16, 3, 32, 32, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
    for coding in ("analog", "spike"):
        check(sc.convert(model, calib, timesteps=6, fixed_point=True, threshold="max", input_coding=coding), x,
              tmp_path / coding)


def test_executor_with_per_channel_thresholds_and_bias_correction(tmp_path):
    g = torch.Generator().manual_seed(22)
    vgg, shape = make("vgg_maxpool", seed=3)
    check(sc.convert(vgg, torch.randn((16,) + shape, generator=g, dtype=torch.float64), timesteps=5,
                     fixed_point=True, per_channel=True, bias_correction=True),
          torch.randn((3,) + shape, generator=g, dtype=torch.float64), tmp_path)


def test_bundle_layout_and_run_py_without_torch(tmp_path):
    model, shape = make("vgg_maxpool", seed=4)
    g = torch.Generator().manual_seed(4)
    snn = sc.convert(model, torch.randn((16,) + shape, generator=g, dtype=torch.float64), timesteps=4,
                     fixed_point=True)
    x = torch.randn((3,) + shape, generator=g, dtype=torch.float64)
    d = check(snn, x, tmp_path)
    doc = json.loads((d / "bundle.json").read_text())
    assert doc["timesteps"] == 4 and doc["beta"] == 2.0 and doc["schedule"]["latency_steps"] == snn.latency_steps
    with np.load(d / "tensors.npz") as z:
        ints = [k for k in z.files if k.endswith(".int")]
        assert ints and all(z[k].dtype == np.int64 for k in ints)
        assert all(z[k[:-4] + ".exp"].shape == () for k in ints)
    np.save(tmp_path / "x.npy", x.numpy())
    # run.py in a Python where importing torch fails: the executor never needs it
    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['run.py', sys.argv[1], sys.argv[2], '--out', "
            "sys.argv[3]]; exec(open(sys.argv[1] + '/run.py').read())")
    r = subprocess.run([sys.executable, "-c", code, str(d), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.load(tmp_path / "y.npy"), snn.simulate(x).logits.numpy())


@pytest.mark.parametrize("name", ["vgg_maxpool", "concat"])
def test_executor_with_spike_coded_input(name, tmp_path):
    model, shape = make(name, seed=5)
    g = torch.Generator().manual_seed(5)
    snn = sc.convert(model, torch.randn((16,) + shape, generator=g, dtype=torch.float64), timesteps=5,
                     fixed_point=True, input_coding="spike", threshold="max")
    check(snn, torch.randn((3,) + shape, generator=g, dtype=torch.float64), tmp_path)


def test_export_refusals(tmp_path):
    model, shape = make("vgg_maxpool")
    calib = torch.randn((8,) + shape, dtype=torch.float64)
    with pytest.raises(ValueError, match="fixed_point=True"):
        sc.convert(model, calib, timesteps=3).export(tmp_path)
    with pytest.raises(ValueError, match="does not implement ConvTranspose2d"):
        up = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.ConvTranspose2d(4, 2, 2, 2),
                                 torch.nn.ReLU()).double()
        sc.convert(up, calib, timesteps=3, fixed_point=True).export(tmp_path)


class DarknetTiny(torch.nn.Module):
    """YOLO-style conv + BN + LeakyReLU blocks with a residual sum and a concat (no chunk: the
    executor does not split tensors yet)."""

    def __init__(self):
        super().__init__()
        from test_leaky import cbl

        self.stem, self.down = cbl(3, 8), cbl(8, 8, stride=2)
        self.res = torch.nn.Sequential(cbl(8, 4), cbl(4, 8, slope=0.2))
        self.side = cbl(8, 8)
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x):
        x = self.down(self.stem(x))
        x = x + self.res(x)
        x = torch.cat([x, self.side(x)], 1)
        return self.head(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.mark.parametrize("name", ["darknet", "prelu"])
@pytest.mark.parametrize("T", [3, 6])
def test_executor_runs_leaky_layers_as_two_populations(name, T, tmp_path):
    """Leaky ReLU / PReLU (one slope, per channel, functional): the executor's ON - OFF trains give
    the fixed-point engine's logits and spike counts (both populations) bit for bit."""
    from test_leaky import PReLUNet, build

    model, side = (build(DarknetTiny), 16) if name == "darknet" else (build(PReLUNet), 8)
    g = torch.Generator().manual_seed(T)
    snn = sc.convert(model, torch.randn(32, 3, side, side, generator=g, dtype=torch.float64), timesteps=T,
                     fixed_point=True)
    x = torch.randn(4, 3, side, side, generator=g, dtype=torch.float64) * 2
    d = check(snn, x, tmp_path)
    doc = json.loads((d / "bundle.json").read_text())
    assert all(rec.get("slope") for rec in doc["layers"].values())
    assert bool((snn.twin_trains(x)[1][snn.layers[0].name] < 0).any()), "the OFF population fired"
