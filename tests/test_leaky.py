"""Leaky ReLU and PReLU as two spiking populations: ON codes z > 0, OFF codes -slope * z with the
layer's threshold; the layer's value is ON - OFF. Exact like every other layer: the simulation's
signed trains equal the twin's digits in every layer, both populations' spikes are counted."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikeconverter as sc
from spikeconverter.metrics import neuron_spike_counts

from nets import randomize_bn
from test_equivalence import check_identical


def cbl(cin, cout, stride=1, slope=0.1):
    """Conv + BN + LeakyReLU, the YOLO/CSP building block."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(slope, inplace=True))


class CSPBlock(nn.Module):
    """Cross-stage partial block: split the channels, one half through residual CBLs, concat, fuse."""

    def __init__(self, c):
        super().__init__()
        self.part = nn.Sequential(cbl(c // 2, c // 2), cbl(c // 2, c // 2))
        self.res = cbl(c // 2, c // 2)
        self.fuse = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.LeakyReLU(0.1))

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        a = a + self.res(self.part(a))
        return self.fuse(torch.cat([a, b], dim=1))


class CSPNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbl(3, 8)
        self.down = cbl(8, 16, stride=2)
        self.csp = CSPBlock(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.csp(self.down(self.stem(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class PReLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.a1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.PReLU(6, init=0.2)
        self.c2, self.a2 = nn.Conv2d(6, 6, 3, padding=1), nn.PReLU(init=0.05)
        self.fc = nn.Linear(6 * 8 * 8, 4)

    def forward(self, x):
        x = self.a1(self.b1(self.c1(x)))
        x = F.leaky_relu(self.c2(x) + x, 0.3)  # functional form, after a residual sum
        return self.fc(self.a2(x).flatten(1))


def build(cls, seed=0):
    torch.manual_seed(seed)
    model = randomize_bn(cls()).double()
    for m in model.modules():
        if isinstance(m, nn.PReLU):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, dtype=torch.float64) * 0.4)
    return model


@pytest.mark.parametrize("T", [4, 8])
def test_csp_leaky_backbone_converts_exactly(T):
    model = build(CSPNet)
    g = torch.Generator().manual_seed(1)
    snn = sc.convert(model, torch.randn(32, 3, 12, 12, generator=g, dtype=torch.float64), timesteps=T)
    x = torch.randn(3, 3, 12, 12, generator=g, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(snn.ann()(x), model(x), rtol=0, atol=1e-12)
    assert all(m.leaky for m in snn._acts())
    res = check_identical(snn, x)
    # both populations fire: some trains carry OFF (-1) spikes
    assert any(bool((t < 0).any()) for t in res.spike_trains.values())
    # the counts of the fast path's counter equal the simulation's, per layer and in total
    twin = neuron_spike_counts(snn, x)
    names = {snn.plan.layer_name(a): a for a in snn.plan.spikers}
    for name, c in res.spike_counts.items():
        assert torch.equal(c, twin[names[name]].flatten(1).sum(1).to(c.dtype)), name
    # and the quantized network approaches the float one as T grows (the code's resolution)
    if T == 8:
        with torch.no_grad():
            assert float((snn(x) - model(x)).abs().max()) < 0.1 * float(model(x).abs().max())


def test_prelu_per_channel_and_functional_leaky_convert_exactly():
    model = build(PReLUNet)
    g = torch.Generator().manual_seed(2)
    snn = sc.convert(model, torch.randn(32, 3, 8, 8, generator=g, dtype=torch.float64), timesteps=6)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(snn.ann()(x), model(x), rtol=0, atol=1e-12)
    slopes = [m.negative_slope for m in snn._acts()]
    assert torch.is_tensor(slopes[0]) and slopes[0].numel() == 6 and slopes[1] == pytest.approx(0.3)
    check_identical(snn, x)


def test_leaky_network_saves_loads_and_draws(tmp_path):
    model = build(CSPNet)
    snn = sc.convert(model, torch.randn(16, 3, 12, 12, dtype=torch.float64), timesteps=5)
    snn.save(tmp_path / "csp.snn")
    same = sc.load(tmp_path / "csp.snn")
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    assert torch.equal(same(x), snn(x)) and torch.equal(same.simulate(x).logits, snn.simulate(x).logits)
    prelu = sc.convert(build(PReLUNet), torch.randn(16, 3, 8, 8, dtype=torch.float64), timesteps=5)
    prelu.save(tmp_path / "p.snn")
    y = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert torch.equal(sc.load(tmp_path / "p.snn")(y), prelu(y))
    fig = sc.plot.pipeline(snn, x, tmp_path / "csp.png", neurons=6)
    assert (tmp_path / "csp.png").stat().st_size > 10_000 and fig.spike_data


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.99])
def test_the_two_populations_never_fire_for_the_same_neuron(phi):
    # ON needs z + phi*theta*beta^-T >= theta*beta^-T, i.e. z > 0 (phi < 1); OFF needs z < 0: the
    # signed train loses nothing, and ON + OFF spikes = |ON - OFF|
    act = sc.graph.SpikeActivation(negative_slope=0.25)
    act.theta, act.beta, act.timesteps, act.phi = 1.0, 2.0, 4, phi
    z = torch.linspace(-5, 5, 20001, dtype=torch.float64)[None, :]
    on, off = act.digit_pair(z)
    assert not bool((on * off).any())
    assert torch.equal(on + off, (on - off).abs())
    assert bool(off.any()) and bool(on.any())


def test_leaky_is_refused_by_the_rate_baseline():
    with pytest.raises(ValueError, match="rate baseline"):
        sc.convert(build(CSPNet), torch.randn(8, 3, 12, 12, dtype=torch.float64), timesteps=4, method="rate")


@pytest.mark.parametrize("cls,side", [(CSPNet, 16), (PReLUNet, 8)])
@pytest.mark.parametrize("T", [3, 6])
def test_leaky_in_fixed_point_is_bit_exact(cls, side, T):
    """Slopes rounded to a dyadic grid: the OFF population's -slope * z is exact, so simulator and
    twin agree bit for bit in both populations of every layer."""
    from test_fixed_point import assert_bit_exact

    g = torch.Generator().manual_seed(T)
    model = build(cls)
    snn = sc.convert(model, torch.randn(32, 3, side, side, generator=g, dtype=torch.float64), timesteps=T,
                     fixed_point=True)
    for m in snn.gm.modules():
        if isinstance(m, sc.graph.SpikeActivation) and m.leaky:  # 12 significant bits on one grid per layer
            s = m.negative_slope if torch.is_tensor(m.negative_slope) else torch.tensor([m.negative_slope])
            assert bool((s > 0).all()) and bool((s < 1).all())
            f = 11 - int(torch.floor(torch.log2(s.double().abs().max())))
            assert torch.equal(s.double() * 2.0**f, torch.round(s.double() * 2.0**f))
    x = torch.randn(4, 3, side, side, generator=g, dtype=torch.float64) * 2
    assert_bit_exact(snn, x)
    assert bool((snn.twin_trains(x)[1][snn.layers[0].name] < 0).any()), "the OFF population fired"


def test_max_pool_after_leaky_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 2)).double()
    with pytest.raises(sc.UnsupportedOperationError, match="max-pools the output of leaky ReLU"):
        sc.convert(model, torch.randn(8, 3, 8, 8, dtype=torch.float64), timesteps=4)


def test_a_codes_own_parameters_are_named_by_the_code_and_handled_by_name(tmp_path):
    """The leaky slope is the leaky code's own parameter: the code names it, fixed point rounds
    what the code names (and nothing on a one-population layer), export writes it by name."""
    from spikeconverter.codes import LEAKY, UNSIGNED

    g = torch.Generator().manual_seed(0)
    model = build(PReLUNet)
    calib = torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64)
    snn = sc.convert(model, calib, timesteps=3)
    acts = [m for m in snn.gm.modules() if isinstance(m, sc.graph.SpikeActivation) and not m.signed]
    leaky = [m for m in acts if m.code is LEAKY]
    assert leaky and all(set(m.code.own_params(m)) == {"slope"} for m in leaky)
    assert all(m.code.own_params(m) == {} and m.code.argument(m, calib) is None for m in acts if m.code is UNSIGNED)
    for m in leaky:  # what export writes is what the code's methods take, shaped over z
        slope = m.code.own_params(m)["slope"]
        z = torch.zeros(2, slope.numel() if torch.is_tensor(slope) else 4, 8, 8, dtype=torch.float64)
        shaped = m.code.own_shaped(m, z)["slope"]
        assert torch.equal(shaped, torch.as_tensor(m.code.argument(m, z)).to(shaped.dtype))
    # fixed point rounds exactly the named parameters onto a grid of 12 significant bits
    fp = sc.convert(model, calib, timesteps=3, fixed_point=True)
    fp_leaky = [m for m in fp.gm.modules() if isinstance(m, sc.graph.SpikeActivation) and m.leaky]
    for m, orig in zip(fp_leaky, leaky):
        s, s0 = (torch.as_tensor(v.code.own_params(v)["slope"], dtype=torch.float64) for v in (m, orig))
        f = 11 - int(torch.floor(torch.log2(s0.abs().max())))
        assert torch.equal(s * 2.0**f, torch.round(s * 2.0**f)) and float((s - s0).abs().max()) <= 2.0 ** -f
    # export: one tensor per named parameter of each leaky layer, a flag in its record
    import json

    import numpy as np

    out = fp.export(tmp_path / "b")
    layers = json.loads((out / "bundle.json").read_text())["layers"]
    keys = set(np.load(out / "tensors.npz").files)
    named = {m.layer_name for m in fp_leaky}
    assert named and {k for k, r in layers.items() if r.get("slope")} == {k for k, r in layers.items()
                                                                          if r["layer_name"] in named}
    assert all((f"{k}.slope.int" in keys) == bool(r.get("slope")) for k, r in layers.items())
