"""Sharper post-training calibration -- per-channel thresholds, sequential calibration, bias
correction -- changes only thresholds and offsets of the twin: the SNN stays exactly equal to it."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikeconverter as sc
from spikeconverter.graph import SpikeActivation
from test_fixed_point import assert_bit_exact
from test_user_models import PATTERNS, check_copies, check_counts, pattern

from families import build
from nets import NETS, make
from test_equivalence import check_identical

ALL = dict(per_channel=True, sequential=True, bias_correction=True)
NONE = dict(per_channel=False, sequential=False, bias_correction=False)
CONFIGS = {
    "per_channel": {**NONE, "per_channel": True},
    "sequential": {**NONE, "sequential": True},
    "bias_correction": {**NONE, "bias_correction": True},
    "all": ALL,
}


def data(shape, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n,) + shape, generator=g, dtype=torch.float64)


def acts(snn):
    return {m.layer_name: m for m in snn.gm.modules() if isinstance(m, SpikeActivation)}


CASES = [(c, 2.0, 4, 0.5) for c in sorted(CONFIGS)] + [("all", 1.6, 3, 0.0)]


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("config,beta,T,phi", CASES)
def test_simulation_equals_twin(name, config, beta, T, phi):
    model, shape = make(name)
    snn = sc.convert(model, data(shape, 32), timesteps=T, beta=beta, phi=phi, **CONFIGS[config])
    x = data(shape, 3, seed=2)
    res = check_identical(snn, x)
    assert sum(c.sum() for c in res.spike_counts.values()) > 0
    check_counts(snn, x, res)
    layers = acts(snn)
    if CONFIGS[config].get("per_channel"):
        assert any(m.per_channel and m.theta.numel() > 1 and bool((m.theta != m.theta.flatten()[0]).any())
                   for m in layers.values()), "per-channel thresholds should differ between channels"
    if CONFIGS[config].get("bias_correction"):
        assert any(m.shift is not None and bool(m.shift.abs().max() > 0) for m in layers.values())


@pytest.mark.parametrize("name", ["resnet_block", "vgg_maxpool", "inverted_residual"])
def test_spike_coded_input_per_channel(name):
    model, shape = make(name, seed=3)
    snn = sc.convert(model, data(shape, 16), timesteps=5, input_coding="spike", **ALL)
    coder = acts(snn)["input"]
    assert coder.per_channel and coder.shift is None  # the input's code is not bias-corrected
    check_identical(snn, data(shape, 2, seed=4))


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_every_pattern_converts_exactly_with_all_three(name):
    model = pattern(name)
    snn = sc.convert(model, data((3, 8, 8), 16), timesteps=4, **ALL)
    x = data((3, 8, 8), 2, seed=2)
    res = check_identical(snn, x)
    check_counts(snn, x, res)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet", "googlenet"])
def test_families_convert_exactly_with_all_three(name):
    model, shape = build(name)
    snn = sc.convert(model, data(shape, 16), timesteps=4, **ALL)
    x = data(shape, 2, seed=2)
    res = check_identical(snn, x)
    check_counts(snn, x, res)
    check_copies(snn, x, res)


def channel_means(net, x, corrected: bool, absmax: dict | None = None) -> dict:
    """Per spiking layer, the per-channel mean of its pre-activation (with the bias correction's
    shift added if ``corrected``) when ``net`` runs on x; ``absmax`` collects max |z| per layer."""
    means, hooks = {}, []

    def hook(mod, inp, out):
        z = (mod.potential(inp[0]) if corrected else inp[0]).detach()
        means[mod.layer_name] = z.transpose(0, 1).flatten(1).mean(1)
        if absmax is not None:
            absmax[mod.layer_name] = float(z.abs().max())

    for m in net.modules():
        if isinstance(m, SpikeActivation):
            hooks.append(m.register_forward_hook(hook))
    net(x)
    for h in hooks:
        h.remove()
    return means


def test_bias_correction_matches_the_float_means():
    """Sequential + bias correction: on the calibration data, each layer's corrected pre-activation
    (the layers before quantized) has the float ANN's per-channel mean."""
    model, shape = make("resnet_block", seed=5)
    calib = data(shape, 64, seed=6)
    snn = sc.convert(model, calib, timesteps=3, per_channel=False, sequential=True, bias_correction=True)
    mq = channel_means(snn.quantized_ann(), calib, corrected=True)
    zmax: dict = {}
    mf = channel_means(snn.ann(), calib, corrected=False, absmax=zmax)
    corrected = 0
    for name in mq:
        assert torch.allclose(mq[name], mf[name], atol=1e-5 * zmax[name]), name
        corrected += acts(snn)[name].shift is not None
    assert corrected == len(mq)
    # without the correction the quantized layers do shift the means (the test has something to fix)
    plain = sc.convert(model, calib, timesteps=3, per_channel=False, sequential=True, bias_correction=False)
    mp = channel_means(plain.quantized_ann(), calib, corrected=False)
    assert mp
    gaps = [float((mp[n] - mf[n]).abs().max()) for n in mp if n != snn.layers[0].name]
    assert max(gaps) > 1e-3


def test_per_channel_errors_do_not_exceed_per_layer():
    """Per channel, each threshold is searched on its own channel: the layer's calibration error
    cannot be worse than with one threshold (the per-layer optimum is in each channel's grid up to
    the grid's resolution)."""
    model, shape = make("vgg_maxpool", seed=7)
    calib = data(shape, 64, seed=8)
    one = sc.convert(model, calib, timesteps=3, **CONFIGS["bias_correction"])  # same observer, one threshold
    per = sc.convert(model, calib, timesteps=3, **{**CONFIGS["bias_correction"], "per_channel": True})
    for a, b in zip(one.layers, per.layers):
        assert b.error <= a.error * 1.02 + 1e-12, (a.name, a.error, b.error)
    assert sum(b.error for b in per.layers) < 0.9 * sum(a.error for a in one.layers)


class ShuffleThenPool(nn.Module):
    """A pixel shuffle puts 4 channels into each 2x2 window of the max-pool after it."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x):
        y = F.max_pool2d(F.pixel_shuffle(F.relu(self.c(x)), 2), 2)  # [B, 2, 8, 8]
        return self.fc(F.relu(self.c2(torch.cat([y, y], 1)))[:, :2].flatten(1))


def test_layer_whose_channels_share_a_pool_window_keeps_one_threshold():
    torch.manual_seed(0)
    model = ShuffleThenPool().double()
    snn = sc.convert(model, data((3, 8, 8), 16), timesteps=4, **CONFIGS["per_channel"])
    layers = acts(snn)
    first, second = layers[snn.layers[0].name], layers[snn.layers[1].name]
    assert not first.per_channel and second.per_channel
    x = data((3, 8, 8), 2, seed=3)
    assert torch.allclose(snn.ann()(x), model(x), rtol=0, atol=1e-12)
    check_identical(snn, x)


def test_thresholds_and_shifts_follow_dtype_and_copies():
    model, shape = make("resnet_block", dtype=torch.float32)
    snn = sc.convert(model, data(shape, 32).float(), timesteps=4, **ALL)
    m = next(m for m in acts(snn).values() if m.per_channel and m.shift is not None)
    assert m.theta.dtype == torch.float32 and m.shift.dtype == torch.float32
    state = snn.state_dict()
    assert any(k.endswith("theta_map") for k in state) and any(k.endswith("shift") for k in state)
    x = data(shape, 2, seed=3)
    snn.double()
    assert m.theta.dtype == torch.float64 and m.shift.dtype == torch.float64
    res = check_identical(snn, x)
    check_copies(snn, x, res)
    buf = io.BytesIO()
    torch.save(snn, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert torch.equal(again(x), snn(x))
    assert torch.equal(copy.deepcopy(snn)(x), snn(x))


def test_compiled_kernel_takes_per_channel_thresholds():
    from spikeconverter.neuron import compiled_available

    if not compiled_available():
        pytest.skip("no compiler for torch.compile here")
    model, shape = make("vgg_maxpool", dtype=torch.float32)
    snn = sc.convert(model, data(shape, 32).float(), timesteps=6, **ALL)
    x = data(shape, 8, seed=3).float()
    eager = snn(x)
    assert torch.equal(snn.compile()(x), eager)


@pytest.mark.parametrize("name", ["vgg_maxpool", "concat", "conv1d"])
def test_fixed_point_with_per_channel_and_bias_correction(name):
    model, shape = make(name, seed=21)
    snn = sc.convert(model, data(shape, 16, seed=21), timesteps=5, fixed_point=True, **ALL)
    assert_bit_exact(snn, data(shape, 4, seed=22) * 2)


def test_staged_options_are_refused_for_the_rate_baseline():
    model, shape = make("vgg_maxpool")
    with pytest.raises(ValueError, match="two-phase"):
        sc.convert(model, data(shape, 8), method="rate", per_channel=True)


def test_beta_search_with_sequential_calibration_stays_exact():
    model, shape = make("inverted_residual", seed=9)
    snn = sc.convert(model, data(shape, 32), timesteps=4, beta="search", **ALL)
    check_identical(snn, data(shape, 2, seed=3))


@pytest.mark.parametrize("T,phi,paired,cap", [(1, 0.5, False, None), (3, 0.0, False, None), (4, 0.5, True, None),
                                              (6, 0.5, False, 6.0), (2, 0.25, True, 1.0)])
def test_binned_search_errors_match_a_float64_reference(T, phi, paired, cap):
    """The search ranks candidate thresholds by an error computed from the sorted sample's prefix
    sums; it must be the mean (a - q(z))^2 that the quantizer itself gives, element by element."""
    from spikeconverter.calibrate import _activation, _candidate_errors
    from spikeconverter.neuron import quantize_fast

    g = torch.Generator().manual_seed(T)
    C, S = 5, 4096
    sample = (torch.randn(C, S, generator=g) * torch.rand(C, 1, generator=g) * 3 + 0.5).float()
    sample[3] = -sample[3].abs()  # a dead channel: every value below the first edge
    target = sample + 0.1 * torch.randn(C, S, generator=g) if paired else sample
    a = _activation(target, cap)
    errors = _candidate_errors(sample, a, 2.0, T, phi)
    for scale in (0.05, 0.4, 1.0, 3.0):
        theta = (sample.abs().amax(1) * scale / (1 - 2.0**-T)).float()
        q = quantize_fast(sample.double(), theta.double()[:, None], 2.0, T, phi)  # exact, in float64
        ref = ((a.double() - q) ** 2).mean(1)
        assert torch.allclose(errors(theta), ref, rtol=1e-9, atol=1e-12), (scale, errors(theta), ref)


def test_channel_observer_samples_every_channel_at_the_same_uniform_positions():
    """Each element encodes where it came from: the sample of channel c holds channel c's values,
    the paired target sits at the same positions, the exact means and maxima see every element, and
    positions from each of 8 equal batches make up about 1/8 of the kept sample (uniform)."""
    from spikeconverter.calibrate import ChannelObserver

    N, C, H, W, B = 16, 3, 4, 4, 8
    obs = ChannelObserver(sample_size=3 * 512, min_per_channel=1, max_per_channel=512)
    total = torch.zeros(C, dtype=torch.float64)
    for b in range(B):
        pos = torch.arange(b * N * H * W, (b + 1) * N * H * W, dtype=torch.float64).reshape(N, 1, H, W)
        z = pos + torch.arange(C, dtype=torch.float64).reshape(1, C, 1, 1) * 1e6  # value = channel * 1e6 + position
        total += z.sum(dim=(0, 2, 3))
        obs.capture = True
        obs.update(z + 0.5)  # the float pass (paired mode)
        obs.capture = False
        obs.update(z)
    assert obs.sample.shape == (C, 512) and obs.target.shape == (C, 512)
    channel = torch.div(obs.sample, 1e6, rounding_mode="floor")
    assert torch.equal(channel, torch.arange(C, dtype=torch.float32)[:, None].expand(C, 512))
    position = obs.sample - channel * 1e6
    assert torch.equal(position, position[:1].expand(C, 512))  # the same positions in every channel
    assert torch.equal(obs.target - obs.sample, torch.full((C, 512), 0.5))
    assert position.unique().numel() == 512  # without replacement
    assert torch.allclose(obs.mean, total / (B * N * H * W)) and obs.count == B * N * H * W
    assert torch.equal(obs.max, torch.arange(C, dtype=torch.float64) * 1e6 + B * N * H * W - 1)
    per_batch = torch.bincount((position[0] // (N * H * W)).long(), minlength=B)
    assert int(per_batch.min()) > 512 / B / 2 and int(per_batch.max()) < 512 / B * 2, per_batch
