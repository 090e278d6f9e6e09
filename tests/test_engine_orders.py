"""The time-stepped engine's two orders -- every layer on one clock, and layer after layer with a
sink's input frames through its synapses in one batched call (multi-step) -- simulate the same
neurons on the same currents: identical trains, spike counts, neuron updates and logits, and both
equal to the twin, on every graph kind of the equivalence suite; the in-place neuron steps they
use are the pure ones, bit for bit."""

import pytest
import torch

import spikeconverter as sc
from spikeconverter import neuron

from nets import NETS, make
from test_equivalence import twin_digits
from test_leaky import CSPNet


def _both(snn, x):
    kw = dict(record=True, neuron_counts=True, events=True)
    return snn.simulate(x, clocked=True, **kw), snn.simulate(x, clocked=False, **kw)


def _assert_same(a, b):
    assert torch.allclose(a.logits, b.logits, rtol=0, atol=1e-12 * (a.logits.abs().max().item() + 1))
    assert a.spike_trains.keys() == b.spike_trains.keys()
    for k in a.spike_trains:
        assert torch.equal(a.spike_trains[k], b.spike_trains[k]), k
        assert torch.equal(a.spike_counts[k], b.spike_counts[k]), k
    assert a.extra["neuron_updates"] == b.extra["neuron_updates"] > 0
    assert a.extra["neuron_counts"].keys() == b.extra["neuron_counts"].keys()
    for n in a.extra["neuron_counts"]:
        assert torch.equal(a.extra["neuron_counts"][n], b.extra["neuron_counts"][n])
    assert (a.latency_steps, a.total_steps) == (b.latency_steps, b.total_steps)


def _check(snn, x):
    clocked, layerwise = _both(snn, x)
    _assert_same(clocked, layerwise)
    _, twin = twin_digits(snn, x)
    for name, (digits, _) in twin.items():
        assert torch.equal(layerwise.spike_trains[name], digits), name
    assert sum(int(c.sum()) for c in layerwise.spike_counts.values()) > 0


@pytest.mark.parametrize("name", sorted(NETS))
def test_layer_after_layer_equals_one_clock(name):
    model, shape = make(name, seed=2)
    g = torch.Generator().manual_seed(7)
    snn = sc.convert(model, torch.randn((32,) + shape, generator=g, dtype=torch.float64), timesteps=4)
    _check(snn, torch.randn((3,) + shape, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("name", ["resnet_block", "concat", "vgg_maxpool", "inverted_residual"])
def test_layer_after_layer_with_mixed_T_and_spike_input(name):
    model, shape = make(name, seed=3)
    g = torch.Generator().manual_seed(8)
    calib = torch.randn((32,) + shape, generator=g, dtype=torch.float64)
    n = len(sc.convert(model, calib, timesteps=2, input_coding="spike").layers)
    T = [int(t) for t in torch.randint(2, 7, (n,), generator=g)]
    snn = sc.convert(model, calib, timesteps=T, input_coding="spike", threshold="max")
    _check(snn, torch.randn((2,) + shape, generator=g, dtype=torch.float64))


def test_layer_after_layer_with_two_populations():
    torch.manual_seed(0)
    model = CSPNet().double().eval()
    x = torch.randn(16, 3, 16, 16, dtype=torch.float64)
    _check(sc.convert(model, x, timesteps=5), x[:3])


def test_streaming_is_clocked():
    model, shape = make("resnet_block")
    snn = sc.convert(model, torch.randn((8,) + shape, dtype=torch.float64), timesteps=3)
    with pytest.raises(ValueError, match="one clock"):
        snn.simulate(torch.randn((2,) + shape, dtype=torch.float64), stream=True, clocked=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta", [2.0, 1.7, 1.0])
@pytest.mark.parametrize("per_channel", [False, True])
def test_in_place_neuron_steps_are_the_pure_ones(dtype, beta, per_channel):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(4, 3, 5, 5, generator=g, dtype=dtype) * 3
    theta = (torch.rand(3, 1, 1, generator=g, dtype=dtype) + 0.5) if per_channel else 0.8
    pure, w = v, v.clone()
    for _ in range(6):
        pure, s = neuron.generate_step(pure, theta, beta)
        s_ = neuron.generate_step_(w, theta, beta, torch.empty_like(w))
        assert torch.equal(pure, w) and torch.equal(s, s_)
    current = torch.randn(4, 3, 5, 5, generator=g, dtype=dtype)
    assert torch.equal(neuron.accumulate(pure, current, beta), neuron.accumulate_(w, current, beta))
