"""Each spike code (codes.py): its neuron, stepped, emits its twin's digits and decodes to its value."""

import pytest
import torch

from spikeconverter import neuron
from spikeconverter.codes import LEAKY, SIGNED, UNSIGNED, Params


def _run_neuron(code, z, p, slope=None):
    """Start every population from z plus the offset, as the simulator hands over an accumulated
    potential, and step it T times."""
    state = code.start(z + p.offset(z), p, slope)
    out = []
    for _ in range(p.timesteps):
        state, s = code.step(state, p)
        out.append(s.to(z.dtype))
    return torch.stack(out)


@pytest.mark.parametrize("code", [UNSIGNED, SIGNED, LEAKY], ids=lambda c: c.name)
@pytest.mark.parametrize("beta,T,phi", [(2.0, 5, 0.5), (1.6, 4, 0.0), (1.0, 6, 0.5)])
def test_neuron_emits_the_twins_digits_and_decodes_to_its_value(code, beta, T, phi):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64) * 2
    theta = torch.rand(4, 1, 1, generator=g, dtype=torch.float64) + 0.5
    slope = torch.full((4, 1, 1), 0.1, dtype=torch.float64) if code is LEAKY else None
    p = Params(theta, beta, T, phi)
    on, off = code.digit_pair(z, p, slope)
    digits = on if off is None else on - off
    assert (off is None) == (code.populations == 1)
    assert torch.equal(_run_neuron(code, z, p, slope), digits)
    value = code.value(z, p, neuron.quantize_fast, slope)
    assert torch.allclose(neuron.decode(digits, theta, beta), value, rtol=0, atol=1e-12)
    # what the populations code: z (and -z for the coder, -slope*z for leaky)
    coded = code.coded(z, slope)
    assert torch.equal(coded[0], z)
    if code is SIGNED:
        assert torch.equal(coded[1], -z)
    if code is LEAKY:
        assert torch.equal(coded[1], -slope * z)
    # ON and OFF never fire together: a train is -1, 0 or 1
    assert set(digits.unique().tolist()) <= {-1.0, 0.0, 1.0}
