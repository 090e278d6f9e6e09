"""Models as users write them: every family of tests/families.py converts exactly (or is refused by
name), reused activation modules count every call, in-place ops keep eager semantics, and a
converted network survives deepcopy and pickling."""

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikeconverter as sc
from spikeconverter.metrics import neuron_spike_counts

from families import FAMILIES, REFUSED, build
from test_equivalence import check_identical

CONVERTED = sorted(set(FAMILIES) - REFUSED)


def convert(model, shape, T=4, n_calib=16, **kw):
    g = torch.Generator().manual_seed(1)
    calib = torch.randn((n_calib,) + shape, generator=g, dtype=torch.float64)
    x = torch.randn((2,) + shape, generator=g, dtype=torch.float64)
    return sc.convert(model, calib, timesteps=T, **kw), x


def check_counts(snn, x, res):
    """Spike counts cover every layer and equal the twin's popcounts; the simulator's per-neuron
    counts of every source (max-pools included) equal the twin's word popcounts."""
    assert set(res.spike_counts) == {layer.name for layer in snn.layers}
    twin = neuron_spike_counts(snn, x)
    names = {snn.plan.layer_name(a): a for a in snn.plan.spikers}
    for name, c in res.spike_counts.items():
        assert torch.equal(c, twin[names[name]].flatten(1).sum(1).to(c.dtype)), name
    per_neuron = snn.simulate(x, neuron_counts=True).extra["neuron_counts"]
    assert set(per_neuron) == set(twin)
    for node, c in per_neuron.items():
        assert torch.equal(c.to(torch.float64), twin[node].to(torch.float64)), node.name
    rep = sc.metrics.report(snn, x)
    assert set(rep.spikes_per_layer) == set(res.spike_counts)
    assert rep.spikes == pytest.approx(float(sum(c.sum() for c in res.spike_counts.values())) / len(x))


def check_copies(snn, x, res):
    for other in (copy.deepcopy(snn), pickle.loads(pickle.dumps(snn))):
        again = other.simulate(x, record=True)
        assert torch.equal(again.logits, res.logits)
        assert again.spike_counts.keys() == res.spike_counts.keys()
        assert all(torch.equal(again.spike_counts[k], res.spike_counts[k]) for k in res.spike_counts)
        assert torch.equal(other(x), snn(x))
    buf = io.BytesIO()
    torch.save(snn, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded.simulate(x).logits, res.logits)


@pytest.mark.parametrize("name", CONVERTED)
def test_family_converts_exactly(name):
    model, shape = build(name)
    snn, x = convert(model, shape)
    assert torch.allclose(snn.ann()(x), model(x), rtol=0, atol=1e-12), "the normalised graph changed the function"
    res = check_identical(snn, x)
    assert sum(c.sum() for c in res.spike_counts.values()) > 0
    check_counts(snn, x, res)
    check_copies(snn, x, res)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_family_refused_by_name(name):
    model, shape = build(name)
    with pytest.raises(sc.UnsupportedOperationError) as e:
        convert(model, shape)
    msg = str(e.value)
    assert msg.startswith("node '") and "(call_" in msg and "spiking form" in msg, msg


@pytest.mark.parametrize("name", ["googlenet", "shufflenet_v2", "cifar_resnet_option_a"])
def test_stream_equals_batch(name):
    model, shape = build(name)
    snn, x = convert(model, shape, T=3)
    assert torch.allclose(snn.simulate(x, stream=True).logits, snn.simulate(x).logits, rtol=0, atol=1e-12)


def test_fixed_point_on_option_a_resnet():
    model, shape = build("cifar_resnet_option_a")
    snn, x = convert(model, shape, T=4, fixed_point=True)
    assert torch.equal(snn.simulate(x).logits, snn(x))


# ---------------------------------------------------------------------------------------------
# single patterns, each compared with eager PyTorch
# ---------------------------------------------------------------------------------------------


class Pattern(nn.Module):
    def __init__(self, body, c=4, classes=3, hw=8):
        super().__init__()
        self.body = body
        self.c = nn.Conv2d(3, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.bn = nn.BatchNorm2d(c)
        self.up = nn.ConvTranspose2d(c, c, 2, 2)
        self.pool1d = nn.MaxPool1d(2)
        self.amax = nn.AdaptiveMaxPool2d((3, 3))
        self.conv3d = nn.Conv3d(c, c, 3, padding=1)
        self.shuffle = nn.ChannelShuffle(2)
        self.unflatten = nn.Unflatten(1, (2, 2))
        self.fc = nn.LazyLinear(classes)

    def forward(self, x):
        return self.fc(self.body(self, x).flatten(1))


PATTERNS = {
    # the reproducer: y is ReLU'd in place, so cat([a, y]) is cat([a, a]) in eager PyTorch
    "inplace_relu_then_read": lambda s, x: torch.cat([F.relu(y := s.c(x), inplace=True), y], 1),
    "iadd_then_read": lambda s, x: _iadd_then_read(s, x),
    "relu_module_called_twice": lambda s, x: s.relu(s.c2(s.relu(s.c(x))) + s.c(x)),
    "conv_maxpool_relu": lambda s, x: F.relu(F.max_pool2d(s.c(x), 2)),
    "conv_maxpool_ceil_relu": lambda s, x: s.relu(nn.functional.max_pool2d(s.bn(s.c(x)), 3, 2, ceil_mode=True)),
    "subtract_and_scale": lambda s, x: F.relu(s.c2(F.relu(s.c(x))) - 0.5 * F.relu(s.c(x)) / 2.0),
    "negate": lambda s, x: F.relu(-s.c(x)),
    "clamp_forms": lambda s, x: torch.clamp(s.c2(s.c(x).clamp(min=0)), 0, 6),
    "clamp_min": lambda s, x: torch.clamp_min(s.c(x), 0.0),
    "maxpool1d_on_trains": lambda s, x: s.pool1d(F.relu(s.c(x)).flatten(2)),
    "adaptive_maxpool_on_trains": lambda s, x: s.amax(F.relu(s.c(x))),
    "transposed_conv": lambda s, x: F.relu(s.up(F.relu(s.c(x)))),
    "permute_then_maxpool": lambda s, x: F.max_pool2d(F.relu(s.c(x)).permute(0, 1, 3, 2), 2),
    "pad_then_maxpool": lambda s, x: F.max_pool2d(F.pad(F.relu(s.c(x)), (1, 0, 1, 0)), 3, 2),
    "nearest_upsample_then_maxpool": lambda s, x: F.max_pool2d(F.interpolate(F.relu(s.c(x)), scale_factor=2), 3),
    "slice_then_maxpool": lambda s, x: F.max_pool2d(F.relu(s.c(x))[:, 1:3, ::2], 2),
    "avgpool_3_1_1": lambda s, x: F.avg_pool2d(F.relu(s.c(x)), 3, 1, 1),
    "bn_standalone_after_relu": lambda s, x: F.relu(s.bn(F.relu(s.c(x)))),
    "pool_size_from_tensor": lambda s, x: F.avg_pool2d(r := F.relu(s.c(x)), r.size()[3]).view(r.size(0), -1),
    # every other rearrangement and linear form the op table admits, each once
    "reflect_pad_then_maxpool": lambda s, x: F.max_pool2d(F.pad(F.relu(s.c(x)), (1, 1, 1, 1), mode="reflect"), 2),
    "flip_roll_then_maxpool": lambda s, x: F.max_pool2d(torch.roll(F.relu(s.c(x)).flip(-1), 1, dims=2), 2),
    "pixel_shuffle_and_channel_shuffle": lambda s, x: F.max_pool2d(
        s.shuffle(F.pixel_unshuffle(F.pixel_shuffle(F.relu(s.c(x)), 2), 2)), 2),
    "stack_unbind_select_narrow": lambda s, x: F.relu(s.c2(torch.stack(F.relu(s.c(x)).unbind(1), 1)))
    .narrow(1, 1, 2).select(2, 3),
    "movedim_expand_repeat": lambda s, x: F.max_pool2d(F.relu(s.c(x)).movedim(1, 3).movedim(3, 1)
                                                       [:, :1].expand(-1, 2, -1, -1).repeat(1, 2, 1, 1), 2),
    "sum_and_unflatten": lambda s, x: s.unflatten(F.relu(s.c(x)).sum(dim=(2, 3))),
    "area_and_bicubic_interpolation": lambda s, x: F.relu(F.interpolate(F.relu(s.c(x)), scale_factor=0.5, mode="area")
                                                          + F.interpolate(F.relu(s.c(x)), size=(4, 4), mode="bicubic")),
    "conv3d_pools_3d": lambda s, x: _three_d(s, x),
    "constant_pad_is_a_bias": lambda s, x: F.relu(s.c2(F.pad(F.relu(s.c(x)), (1, 1, 1, 1), value=0.3))),
}


def _three_d(s, x):
    y = F.relu(s.c(x)).unsqueeze(2).expand(-1, -1, 2, -1, -1)  # [B, C, 2, H, W]
    y = F.relu(s.conv3d(y))
    return F.avg_pool3d(F.max_pool3d(y, (1, 2, 2)), (2, 1, 1))


def _iadd_then_read(s, x):
    y = s.c(x)
    z = y
    z += 1.0  # also changes y in eager PyTorch
    return torch.cat([F.relu(z), F.relu(y)], 1)


def pattern(name, seed=0):
    torch.manual_seed(seed)
    m = Pattern(PATTERNS[name]).double().eval()
    with torch.no_grad():
        m(torch.zeros(1, 3, 8, 8, dtype=torch.float64))  # materialise the lazy head
        m.bn.running_mean.normal_(0, 0.1)
        m.bn.running_var.uniform_(0.7, 1.3)
        m.bn.weight.data.uniform_(-1, 1)  # negative scales too
    return m


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_equals_eager_and_converts_exactly(name):
    model = pattern(name)
    snn, x = convert(model, (3, 8, 8), T=5)
    assert torch.allclose(snn.ann()(x), model(x), rtol=0, atol=1e-12), (snn.ann()(x) - model(x)).abs().max()
    res = check_identical(snn, x)
    check_counts(snn, x, res)
    check_copies(snn, x, res)


def test_reused_module_gets_one_name_per_call():
    snn, _ = convert(pattern("relu_module_called_twice"), (3, 8, 8))
    assert [layer.name for layer in snn.layers] == ["relu:1", "relu:2"]


def test_maxpool_relu_rewrite_is_bit_exact():
    model = pattern("conv_maxpool_ceil_relu")
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    from spikeconverter.graph import functionalize, is_activation, mark_shapes, normalize, trace

    gm = trace(model)
    mark_shapes(gm)
    rewritten = normalize(functionalize(gm))
    assert torch.equal(rewritten(x), model(x))
    pools = [n for n in rewritten.graph.nodes if n.target is F.max_pool2d]
    assert len(pools) == 1 and is_activation(rewritten, pools[0].args[0])  # the pool now acts on trains


def test_average_divisor_counts_in_sops_and_fixed_point():
    """F.avg_pool2d(x, 3, 1, 1) averages over 9: each spike reaches 9 window positions (fewer at
    borders) and fixed point refuses the division by 9."""
    model = pattern("avgpool_3_1_1")
    snn, x = convert(model, (3, 8, 8))
    cost = sc.metrics.CostModel(snn.plan, snn.input_shape)
    fc = [op for op in cost.ops if op.spike_fed]
    (fan,) = fc[0].fanout.values()
    # interior neurons reach 9 pooled positions x 3 classes; a corner reaches 4 x 3
    assert float(fan[0, 0, 4, 4]) == 27 and float(fan[0, 0, 0, 0]) == 12
    with pytest.raises(ValueError, match="averages over 9"):
        convert(model, (3, 8, 8), fixed_point=True)


def test_write_into_a_view_that_is_read_later_is_refused():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 64 * 2, 2)

        def forward(self, x):
            y = self.c(x)
            v = y.view(y.size(0), -1)
            F.relu(y, inplace=True)  # changes v as well
            return self.fc(torch.cat([v, y.flatten(1)], 1))

    with pytest.raises(sc.UnsupportedOperationError, match="in place") as e:
        convert(M().double(), (3, 8, 8))
    assert "node 'relu'" in str(e.value)


def test_maxpool_over_layers_mixed_in_one_window_is_refused():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 2, 3, padding=1)
            self.b = nn.Conv2d(3, 2, 3, padding=1)
            self.fc = nn.Linear(2 * 7 * 3, 2)

        def forward(self, x):
            y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 2)  # along height: windows mix layers
            return self.fc(F.max_pool2d(y, 3, 2).flatten(1))

    with pytest.raises(sc.UnsupportedOperationError, match="mix the spike trains"):
        convert(M().double(), (3, 8, 8))


def test_batchnorm_without_running_stats_is_refused():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 2, 3)
            self.bn = nn.BatchNorm2d(2, track_running_stats=False)
            self.fc = nn.Linear(2 * 36, 2)

        def forward(self, x):
            return self.fc(F.relu(self.bn(self.c(x))).flatten(1))

    with pytest.raises(sc.UnsupportedOperationError, match="track_running_stats=False") as e:
        convert(M().double(), (3, 8, 8))
    assert "node 'bn' (call_module BatchNorm2d 'bn')" in str(e.value)


def test_stream_with_a_squeezing_head():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)
            self.head = nn.Conv2d(4, 3, 1)

        def forward(self, x):
            return self.head(F.adaptive_avg_pool2d(F.relu(self.c(x)), 1)).squeeze()

    snn, x = convert(M().double(), (3, 8, 8))
    assert torch.allclose(snn.simulate(x, stream=True).logits, snn(x), rtol=0, atol=1e-12)


def test_docs_list_every_op_kind_of_the_table():
    """docs/method.md's supported-ops list is generated from the table (scripts/op_table.py)."""
    from pathlib import Path

    from spikeconverter.ops import supported_ops_markdown

    doc = (Path(__file__).resolve().parent.parent / "docs" / "method.md").read_text()
    assert supported_ops_markdown() in doc, "docs/method.md is out of date: run python scripts/op_table.py"


def test_bad_inputs_are_refused_the_same_by_both_engines():
    model = pattern("negate").float()
    snn = sc.convert(model, torch.randn(8, 3, 8, 8), timesteps=4)
    x = torch.randn(2, 3, 8, 8)
    for bad, what in ((x.clone().index_put_((torch.tensor([0]),), torch.tensor(float("nan"))), "NaN/Inf"),
                      (x.clone().index_put_((torch.tensor([1]),), torch.tensor(float("inf"))), "NaN/Inf"),
                      ((x * 100).to(torch.uint8), "floating-point")):
        for engine in (snn, snn.simulate):
            with pytest.raises(ValueError, match=what):
                engine(bad)
    # another float precision is run in the network's own
    assert torch.equal(snn(x.double()), snn(x))
