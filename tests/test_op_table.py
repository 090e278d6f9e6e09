"""The op table is complete for what its readers ask: every entry of a role carries the facts that
role's readers need, and the facts of one entry agree with each other."""

import pytest
import torch
from torch import nn

from spikeconverter import ops
from spikeconverter.activation import SpikeActivation
from spikeconverter.tracing import trace


def test_every_entry_carries_what_its_role_needs():
    for k in ops.TABLE:
        if k.role == ops.ACTIVATION:
            assert k.layer is not None, f"{k.name}: an activation builds its spiking layer"
        if k.weighted:
            assert k.macs and k.unit, f"{k.name}: a weighted op counts its MACs and synapses"
        if k.role == ops.REFUSED:
            assert k.reason, f"{k.name}: a refusal says why"
        for form in k.views:  # a view form is one of the entry's own forms
            assert form in k.modules + k.functions + k.methods, f"{k.name}: {form} is not one of its forms"


WEIGHTED = [nn.Conv1d(4, 6, 3), nn.Conv2d(4, 6, 3, stride=2, groups=2), nn.Conv3d(2, 3, (1, 2, 2)),
            nn.ConvTranspose1d(4, 6, 3, stride=2), nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2),
            nn.ConvTranspose3d(2, 3, (1, 2, 2)), nn.Linear(12, 5), nn.BatchNorm2d(4)]
SHAPES = {1: (2, 4, 9), 2: (2, 4, 9, 9), 3: (2, 2, 3, 6, 6)}


@pytest.mark.parametrize("mod", WEIGHTED, ids=lambda m: type(m).__name__)
def test_macs_equal_the_synapses_the_unit_op_reaches(mod):
    """Without padding every MAC is a synapse: the table's MAC count and its all-ones op agree."""
    if isinstance(mod, nn.Linear):
        x = torch.ones(2, 12, dtype=torch.float64)
    else:
        nd = {nn.Conv1d: 1, nn.ConvTranspose1d: 1, nn.Conv3d: 3, nn.ConvTranspose3d: 3}.get(type(mod), 2)
        x = torch.ones(SHAPES[nd], dtype=torch.float64)
    mod = mod.double().eval()
    y = mod(x)
    synapses = float(ops.ones_weighted(mod, x)[0].sum())
    assert ops.macs(mod, x.shape, y.shape) == synapses


def test_weight_rows_hold_every_weight_into_an_output_channel():
    t = nn.ConvTranspose2d(4, 6, 3)
    assert ops.weight_rows(t).shape[0] == 6 and ops.weight_rows(nn.Conv2d(4, 6, 3)).shape[0] == 6
    with pytest.raises(TypeError, match="not a weighted op"):
        ops.macs(nn.ReLU(), (1, 4), (1, 4))


class Acts(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.ReLU6(), nn.LeakyReLU(0.2), nn.Hardtanh(0.0, 3.0)

    def forward(self, x):
        return self.c(self.b(self.a(x).clamp(min=0).clamp(0, 2.5)))


def test_activation_entries_build_their_layers():
    gm = trace(Acts(), torch.zeros(1, 4))
    layers = [ops.kind_of(gm, n).layer(gm, n) for n in gm.graph.nodes if ops.role_of(gm, n) == ops.ACTIVATION]
    assert all(isinstance(m, SpikeActivation) for m in layers)
    assert [m.cap for m in layers] == [6.0, None, 2.5, None, 3.0]
    assert [m.negative_slope for m in layers] == [None, None, None, 0.2, None]
