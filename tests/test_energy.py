"""The hardware cost model (energy.py): counted by hand on a two-layer net, its event counts equal
what the simulator does, and its arithmetic is the documented one."""

import math

import pytest
import torch
from torch import nn

import spikeconverter as sc
from spikeconverter.energy import EnergyParams, Events, energy_report, events_of
from spikeconverter.metrics import CostModel, report


def two_layer_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).double().eval()


@pytest.fixture(scope="module")
def converted():
    g = torch.Generator().manual_seed(1)
    snn = sc.convert(two_layer_net(), torch.randn(64, 3, 6, 6, generator=g, dtype=torch.float64), timesteps=3)
    x = torch.randn(4, 3, 6, 6, generator=g, dtype=torch.float64)
    return snn, x


def test_events_counted_by_hand(converted):
    snn, x = converted
    ev = events_of(snn, report(snn, x))
    res = snn.simulate(x, record=True)
    spikes = float(sum(c.sum() for c in res.spike_counts.values())) / len(x)
    assert ev.spikes == pytest.approx(spikes, rel=0, abs=1e-9)
    assert ev.neurons == 4 * 6 * 6 and ev.output_neurons == 5 and ev.timesteps == 3
    # every spike of the 144 spiking neurons reaches the 5 outputs: 5 synaptic events each
    assert ev.synaptic_events == pytest.approx(5 * spikes, rel=0, abs=1e-9)
    assert ev.analog_macs == 6 * 6 * 4 * 3 * 9  # the first conv on the analog image
    assert ev.ann_macs == 6 * 6 * 4 * 3 * 9 + 144 * 5
    assert ev.neuron_updates == 144 * 2 * 3 + 5 * 3  # both phases for the layer, accumulate for the output


def test_event_counts_equal_what_the_simulator_does(converted):
    snn, x = converted
    ev = events_of(snn, report(snn, x))
    res = snn.simulate(x, neuron_counts=True, events=True)
    assert res.extra["neuron_updates"] == ev.neuron_updates  # per input, counted in the engine's loops
    cost = CostModel(snn.plan, snn.input_shape)
    measured = sum(float((res.extra["neuron_counts"][src].double() * fan).sum())
                   for op in cost.ops if op.spike_fed for src, fan in op.fanout.items()) / len(x)
    assert measured == pytest.approx(ev.synaptic_events, rel=0, abs=1e-9)  # the simulator's spikes x synapses


def test_spike_coded_input_neuron_updates_equal_the_simulators():
    # the input coder's ON and OFF neurons generate for T steps: the engine counts them step by step
    g = torch.Generator().manual_seed(1)
    snn = sc.convert(two_layer_net(), torch.randn(64, 3, 6, 6, generator=g, dtype=torch.float64), timesteps=3,
                     input_coding="spike", threshold="max")
    x = torch.randn(4, 3, 6, 6, generator=g, dtype=torch.float64)
    ev = events_of(snn, report(snn, x))
    assert snn.simulate(x, events=True).extra["neuron_updates"] == ev.neuron_updates == \
        144 * 2 * 3 + 5 * 3 + 3 * 6 * 6 * 2 * 3


def test_the_arithmetic_is_the_documented_one():
    p = EnergyParams()
    ev = Events(spikes=100.0, synaptic_events=500.0, neurons=50, output_neurons=5, timesteps=4,
                analog_macs=1000.0, ann_macs=3000.0)
    bit = 20.0 / 64
    mac_in = 3.1 * 8 * 8 / 1024 + 0.1 * 24 / 32 + bit * 8 + bit * 8
    mac_t = 3.1 * 8 * 4 / 1024 + 0.1 * 24 / 32 + bit * 8 + bit * 4
    snn = (500 * (bit * 8 + 0.1 * 24 / 32 + 2 * bit * 24) + (50 * 8 + 5 * 4) * (2 * bit * 24 + 0.1 * 24 / 32)
           + 100 * 2 * bit * 32 + 1000 * mac_in)
    qann = 2000 * mac_t + 1000 * mac_in + 55 * bit * 4
    serial = 500 * (bit * 8 + 0.1 * 24 / 32) + 1000 * mac_in + 55 * bit * 4
    flt = 3000 * (3.7 + 0.9 + 2 * bit * 32) + 55 * bit * 32
    r = energy_report(ev, p)
    for key, want in (("snn", snn), ("quantized_ann", qann), ("bit_serial_twin", serial), ("float_ann", flt)):
        assert r["uj"][key] == pytest.approx(want * 1e-6, rel=1e-12), key
    # break-even: the spike count at which the SNN's energy equals the quantized twin's
    fixed = (50 * 8 + 5 * 4) * (2 * bit * 24 + 0.1 * 24 / 32) + 1000 * mac_in
    per_spike = (snn - fixed) / 100
    want_rate = (qann - fixed) / per_spike / (50 * 4)
    if want_rate > 0:
        assert r["break_even_spike_rate"] == pytest.approx(want_rate, rel=1e-12)
    else:
        assert r["break_even_spike_rate"] is None
    assert r["events"]["spike_rate"] == pytest.approx(100 / (50 * 4))


def test_parameters_from_a_file(tmp_path):
    f = tmp_path / "chip.json"
    f.write_text('{"weight_bits": 4, "sram_bit_pj": 0.1}')
    p = EnergyParams.from_file(f)
    assert p.weight_bits == 4 and p.sram_bit_pj == 0.1 and p.acc_bits == 24
    f.write_text('{"weigth_bits": 4}')
    with pytest.raises(ValueError, match="unknown energy parameters"):
        EnergyParams.from_file(f)
    t = tmp_path / "chip.toml"
    t.write_text("acc_bits = 16\n")
    assert EnergyParams.from_file(t).acc_bits == 16


def test_more_spikes_cost_the_snn_more_and_the_twin_nothing():
    base = Events(spikes=1e4, synaptic_events=1e6, neurons=10_000, output_neurons=10, timesteps=8,
                  analog_macs=1e5, ann_macs=1e7)
    more = Events(**{**base.__dict__, "spikes": 2e4, "synaptic_events": 2e6})
    a, b = energy_report(base), energy_report(more)
    assert b["uj"]["snn"] > a["uj"]["snn"] and b["uj"]["quantized_ann"] == a["uj"]["quantized_ann"]
    assert math.isclose(b["uj"]["float_ann"], a["uj"]["float_ann"])
