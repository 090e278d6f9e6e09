"""The methods' facts (methods.py) are what convert() enforces and what the network does: each
option a method lacks is refused before any work, and the facts that shape running and timing
show in the converted network."""

import pytest
import torch

import spikeconverter as sc
from spikeconverter.methods import METHODS, RATE, TWO_PHASE, method_named

from nets import make

REFUSALS = {  # fact -> convert() arguments that need it
    "fixed_point": dict(fixed_point=True),
    "spike_input": dict(input_coding="spike"),
    "mse_threshold": dict(threshold="mse"),
    "calibration_options": dict(per_channel=True),
    "pipelined": dict(timesteps=[3, 4, 3]),
}


@pytest.mark.parametrize("fact", sorted(REFUSALS))
def test_an_option_a_method_lacks_is_refused(fact):
    model, shape = make("vgg_maxpool")
    calib = torch.randn((8,) + shape, dtype=torch.float64)
    for m in METHODS.values():
        kw = dict(dict(timesteps=4, method=m.name), **REFUSALS[fact])
        if getattr(m, fact):
            if fact == "pipelined":
                kw["timesteps"] = [3] * len(sc.convert(model, calib, timesteps=3).layers)
            sc.convert(model, calib, **kw)
        else:
            with pytest.raises(ValueError, match="two-phase|rate baseline"):
                sc.convert(model, calib, **kw)


def test_the_facts_show_in_the_network():
    model, shape = make("resnet_block")
    calib = torch.randn((16,) + shape, dtype=torch.float64)
    for m in (TWO_PHASE, RATE):
        snn = sc.convert(model, calib, timesteps=4, method=m.name)
        assert snn.scheme is m and snn.threshold == m.default_threshold
        L = snn.spiking_depth
        assert snn.latency_steps == ((L + 1) * 4 if m.pipelined else 4)
        assert all((layer.phi > 0) == m.uses_phi for layer in snn.layers)
        assert all(layer.beta == (2.0 if m.binary_code else 1.0) for layer in snn.layers)
        x = torch.randn((2,) + shape, dtype=torch.float64)
        assert torch.allclose(snn(x), snn.simulate(x).logits, rtol=0, atol=1e-9)  # forward = simulation, either way
    with pytest.raises(ValueError, match="unknown method 'ttfs'"):
        method_named("ttfs")
    assert RATE.threshold_code(2.0, 8, 0.5) == (1.0, 1, 0.0) and TWO_PHASE.threshold_code(2.0, 8, 0.5) == (2.0, 8, 0.5)
