"""Spikes, SOPs, MACs and energy: checked against simulation and against hand counts."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import spikeconverter as sc
from spikeconverter import metrics
from spikeconverter.metrics import CostModel
from spikeconverter.models import create, shipped_checkpoint

from nets import make


@pytest.mark.parametrize("beta", [2.0, 1.0, 1.5])  # counted from words, from burst lengths, from digits
@pytest.mark.parametrize("name", ["vgg_maxpool", "resnet_block", "inverted_residual", "concat"])
def test_twin_spike_counts_equal_simulation(name, beta):
    model, shape = make(name, seed=11)
    g = torch.Generator().manual_seed(11)
    snn = sc.convert(model, torch.randn((16,) + shape, generator=g, dtype=torch.float64), timesteps=5, beta=beta)
    x = torch.randn((3,) + shape, generator=g, dtype=torch.float64)
    twin = metrics.neuron_spike_counts(snn, x)
    sim = snn.simulate(x, neuron_counts=True).extra["neuron_counts"]
    assert set(twin) == {n for n in sim if n is not snn.plan.input}
    for node in twin:
        assert torch.equal(twin[node], sim[node]), node.name


def test_fanout_is_exact_at_borders_and_strides():
    """conv 3x3, stride 1, pad 1, 4 -> 5 channels on 6x6: a corner neuron reaches 4 positions x 5
    channels, an edge neuron 6 x 5, an interior one 9 x 5. Stride 2: fewer."""
    class Net(nn.Module):
        def __init__(self, stride):
            super().__init__()
            self.a = nn.Conv2d(1, 4, 1)
            self.b = nn.Conv2d(4, 5, 3, stride, 1)
            self.fc = nn.Linear(5 * (6 // stride) ** 2, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.b(torch.relu(self.a(x)))).flatten(1))

    snn = sc.convert(Net(1).double(), torch.randn(4, 1, 6, 6, dtype=torch.float64), timesteps=2)
    cm = metrics.CostModel(snn.plan, snn.input_shape)
    op = next(o for o in cm.ops if o.node.target == "b")
    fan = next(iter(op.fanout.values()))[0, 0]
    assert fan[0, 0] == 20 and fan[0, 3] == 30 and fan[2, 2] == 45
    snn2 = sc.convert(Net(2).double(), torch.randn(4, 1, 6, 6, dtype=torch.float64), timesteps=2)
    cm2 = metrics.CostModel(snn2.plan, snn2.input_shape)
    op2 = next(o for o in cm2.ops if o.node.target == "b")
    fan2 = next(iter(op2.fanout.values()))[0, 0]
    # output positions 0,2,4 (stride 2, pad 1): row 0 feeds output row 0 only; row 1 feeds rows 0 and 1
    assert fan2[0, 0] == 5 and fan2[1, 1] == 20 and fan2[1, 0] == 10
    # the first conv takes analog input: MACs, not SOPs
    first = next(o for o in cm.ops if o.node.target == "a")
    assert not first.spike_fed and first.macs == 4 * 36


def test_report_totals():
    model, shape = make("resnet_block", seed=2)
    g = torch.Generator().manual_seed(2)
    snn = sc.convert(model, torch.randn((16,) + shape, generator=g, dtype=torch.float64), timesteps=4)
    x = torch.randn((4,) + shape, generator=g, dtype=torch.float64)
    r = metrics.report(snn, x)
    res = snn.simulate(x)
    assert r.spikes == pytest.approx(float(res.spikes_per_sample.mean()))
    assert r.latency_steps == (snn.spiking_depth + 1) * 4 and r.steps_per_input == 4
    assert 0 < r.snn_macs < r.ann_macs and r.sops > 0
    assert r.energy_snn_uj == pytest.approx((r.snn_macs * 4.6 + r.sops * 0.9) * 1e-6)
    assert r.energy_ratio == pytest.approx(r.energy_ann_uj / r.energy_snn_uj)
    # rate baseline: counted in simulation, analog MACs every step
    rate = sc.convert(model, torch.randn((16,) + shape, generator=g, dtype=torch.float64), timesteps=8, method="rate")
    rr = metrics.report(rate, x)
    assert rr.snn_macs == pytest.approx(r.snn_macs * 8) and rr.latency_steps == 8


def test_mobilenet_bottleneck_feeds_macs():
    model, shape = make("inverted_residual")
    snn = sc.convert(model, torch.randn((4,) + shape, dtype=torch.float64), timesteps=3)
    cm = metrics.CostModel(snn.plan, snn.input_shape)
    analog = [o.node.target for o in cm.ops if not o.spike_fed]
    # the first conv (analog input) and each expand conv fed by a linear bottleneck are MACs
    assert len(analog) >= 3
    assert sum(o.macs for o in cm.ops) == sum(
        m.weight[0].numel() * s[1] * (s[2] * s[3] if len(s) == 4 else 1)
        for o in cm.ops for m, s in [(snn.gm.get_submodule(o.node.target), cm.shapes[o.node])])


@pytest.mark.slow  # ~1 min: two sweeps
@pytest.mark.skipif(shipped_checkpoint("resnet20", "cifar10") is None
                    or not (Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz").exists(),
                    reason="needs the shipped ResNet-20 and the shared CIFAR-10 copy")
def test_counting_batches_cut_to_memory_give_the_same_figures(monkeypatch):
    """Large photos at beta = 1 once ran out of memory while counting spikes on 250-image batches
    (photos at 128 px: ~10 GB). The sweep now cuts batches to a memory budget; the figures must not
    depend on where the cuts fall (per-image results, summed in order)."""
    from spikeconverter import evaluate as ev

    kw = dict(model="resnet20", timesteps=(3,), rate_timesteps=(), limit=40, calibration=16, quiet=True,
              extra_betas=(1.0,), extra_beta_timesteps=(4,), batch_size=250, compile=False)
    whole = ev.sweep(**kw)
    monkeypatch.setattr(ev, "COUNTING_MEMORY_BYTES", 48 * 2**20)  # ~8-16 images per batch
    snn = sc.convert(create("resnet20"), torch.zeros(2, 3, 32, 32), timesteps=4, beta=1.0)
    cut = ev.counting_batch(snn, CostModel(snn.plan, snn.input_shape), 250)
    assert 1 <= cut < 40
    pieces = ev.sweep(**kw)
    for a, b in zip(whole["rows"], pieces["rows"]):
        assert a["accuracy"] == b["accuracy"] and a["timesteps"] == b["timesteps"]
        assert a["spikes"] == pytest.approx(b["spikes"], rel=1e-12) and a["sops"] == pytest.approx(b["sops"], rel=1e-12)


def test_counting_batch_fits_the_budget_and_grows_with_it(monkeypatch):
    from spikeconverter import evaluate as ev

    # beta = 1.5 is counted from its digit trains; beta = 1 and 2 from their values
    snn = sc.convert(create("resnet20"), torch.zeros(2, 3, 32, 32), timesteps=8, beta=1.5)
    cost = CostModel(snn.plan, snn.input_shape)
    neurons = sum(math.prod(cost.shapes[s][1:]) for s in snn.plan.spikers)
    binary = sc.convert(create("resnet20"), torch.zeros(2, 3, 32, 32), timesteps=8)
    assert ev.counting_batch(binary, cost, 250) == 250  # CIFAR batches at beta = 2 are left alone
    monkeypatch.setattr(ev, "COUNTING_MEMORY_BYTES", 40 * neurons * 10)
    b1 = ev.counting_batch(snn, cost, 250)
    assert b1 * neurons * (16 + 8 + 4 * 8) <= ev.COUNTING_MEMORY_BYTES and b1 >= 5
    assert ev.counting_batch(binary, cost, 250) > b1  # beta = 2 holds no digits: more images fit
    burst = sc.convert(create("resnet20"), torch.zeros(2, 3, 32, 32), timesteps=8, beta=1.0)
    assert ev.counting_batch(burst, cost, 250) == ev.counting_batch(binary, cost, 250)
    monkeypatch.setattr(ev, "COUNTING_MEMORY_BYTES", 1)
    assert ev.counting_batch(snn, cost, 250) == 1
