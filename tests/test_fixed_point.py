"""Fixed-point mode: the simulator and the twin agree bit for bit, by construction."""

import pytest
import torch

import spikeconverter as sc

from nets import make, randomize_bn


def assert_bit_exact(snn, x):
    res = snn.simulate(x, record=True)
    logits, trains = snn.twin_trains(x)
    assert torch.equal(res.logits, logits), float((res.logits - logits).abs().max())
    assert torch.equal(snn(x), logits)
    for name, t in trains.items():
        assert torch.equal(res.spike_trains[name], t), name


@pytest.mark.parametrize("name", ["vgg_maxpool", "concat", "conv1d"])
@pytest.mark.parametrize("T", [3, 8])
def test_bit_exact_on_supported_graphs(name, T):
    model, shape = make(name, seed=21)
    g = torch.Generator().manual_seed(21)
    snn = sc.convert(model, torch.randn((16,) + shape, generator=g, dtype=torch.float64), timesteps=T,
                     fixed_point=True)
    assert_bit_exact(snn, torch.randn((4,) + shape, generator=g, dtype=torch.float64) * 2)


def test_bit_exact_resnet20_and_spike_input():
    torch.manual_seed(0)
    model = randomize_bn(sc.models.create("resnet20")).double()
    g = torch.Generator().manual_seed(22)
    for coding in ("analog", "spike"):
        snn = sc.convert(model, torch.randn(16, 3, 32, 32, generator=g, dtype=torch.float64), timesteps=6,
                         fixed_point=True, input_coding=coding, threshold="max")
        assert_bit_exact(snn, torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64))


def test_fixed_point_stays_close_to_float():
    model, shape = make("vgg_maxpool", seed=23, dtype=torch.float64)
    g = torch.Generator().manual_seed(23)
    calib = torch.randn((32,) + shape, generator=g, dtype=torch.float64)
    x = torch.randn((64,) + shape, generator=g, dtype=torch.float64)
    exact = sc.convert(model, calib, timesteps=8, fixed_point=True)
    plain = sc.convert(model, calib, timesteps=8)
    assert (exact(x).argmax(1) == plain(x).argmax(1)).float().mean() >= 0.95
    # thresholds carry at most 12 significant bits
    for layer in exact.layers:
        m, e = torch.frexp(torch.tensor(layer.theta, dtype=torch.float64))
        assert float(m * 2**12) == round(float(m * 2**12))


@pytest.mark.parametrize("name,fragment", [("inverted_residual", "linear bottleneck"),
                                           ("resnet_block", "power-of-two")])
def test_refuses_what_cannot_be_exact(name, fragment):
    model, shape = make(name)
    with pytest.raises(ValueError, match=fragment):
        sc.convert(model, torch.randn((8,) + shape, dtype=torch.float64), timesteps=4, fixed_point=True)
    with pytest.raises(ValueError, match="beta = 2 or 1"):
        sc.convert(make("vgg_maxpool")[0], torch.randn((8, 3, 16, 16), dtype=torch.float64), timesteps=4, beta=1.5,
                   fixed_point=True)


def test_range_check():
    model, shape = make("vgg_maxpool", seed=24)
    snn = sc.convert(model, torch.randn((8,) + shape, dtype=torch.float64), timesteps=8, fixed_point=True)
    with pytest.raises(ValueError, match="exact"):
        snn(torch.full((1,) + shape, 1e12, dtype=torch.float64))


def test_a_region_is_finer_by_the_averages_it_holds():
    """The grid of a region with a 2x2 average is finer than the same region with a 2x2 slice (no
    average) by exactly log2(4) = 2 bits; the other regions' grids are the same."""
    from torch import nn

    class Head(nn.Module):
        def __init__(self, pool):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
            self.pool, self.fc = pool, nn.Linear(4 * 4 * 4, 3)

        def forward(self, x):
            y = self.body(x)
            y = self.pool(y) if self.pool is not None else y[:, :, ::2, ::2]
            return self.fc(y.flatten(1))

    torch.manual_seed(0)
    avg = Head(nn.AvgPool2d(2)).double()
    sliced = Head(None).double()
    sliced.load_state_dict(avg.state_dict())
    x = torch.randn(16, 3, 8, 8, dtype=torch.float64)
    a = sc.convert(avg, x, timesteps=4, fixed_point=True)
    b = sc.convert(sliced, x, timesteps=4, fixed_point=True)
    ea, eb = [e for e, _, _ in a.exact_bounds], [e for e, _, _ in b.exact_bounds]
    assert ea[:-1] == eb[:-1] and ea[-1] == eb[-1] + 2
    assert_bit_exact(a, x[:3])
