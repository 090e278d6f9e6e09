"""Data-free thresholds from batch-norm statistics (bn_thresholds.py): the search on a normal
distribution's quantiles minimises the expected quantization error, the moments come from the BN
that feeds each layer (propagated through residual sums), and the networks stay exact."""

import pytest
import torch
from torch import nn

import spikeconverter as sc
from spikeconverter.bn_thresholds import thresholds_from_moments
from spikeconverter.neuron import max_value, quantize_fast

from test_equivalence import check_identical


def _expected_error(theta, mean, sd, cap, T, n=50_001):
    """E[(q(z) - act(z))^2] for z ~ N(mean, sd^2), by a dense quadrature on the density."""
    z = torch.linspace(mean - 8 * sd, mean + 8 * sd, n, dtype=torch.float64)
    w = torch.exp(-0.5 * ((z - mean) / sd) ** 2)
    w = w / w.sum()
    a = z.clamp(0, cap) if cap is not None else z.clamp_min(0)
    q = quantize_fast(z, torch.tensor(theta, dtype=torch.float64), 2.0, T, 0.5)
    return float((w * (q - a) ** 2).sum())


@pytest.mark.parametrize("mean,sd,cap,T", [(0.3, 1.0, None, 4), (-0.5, 2.0, None, 6), (1.0, 0.5, 6.0, 3),
                                           (2.0, 3.0, 6.0, 5)])
def test_thresholds_minimise_the_expected_error_of_the_normal(mean, sd, cap, T):
    theta, _ = thresholds_from_moments(torch.tensor([mean], dtype=torch.float64),
                                       torch.tensor([sd**2], dtype=torch.float64), cap, "mse", 2.0, T, 0.5)
    theta = float(theta[0])
    # direct numerical minimisation: a grid of clip values up to the distribution's far tail, then a
    # finer one around the best
    top = min(mean + 6 * sd, cap) if cap is not None else mean + 6 * sd
    grid = torch.linspace(0.01, 1.0, 200, dtype=torch.float64) * top / max_value(1.0, 2.0, T)
    errors = torch.tensor([_expected_error(float(t), mean, sd, cap, T) for t in grid])
    step = float(grid[1] - grid[0])
    grid = float(grid[int(errors.argmin())]) + torch.linspace(-2 * step, 2 * step, 201, dtype=torch.float64)
    errors = torch.tensor([_expected_error(float(t), mean, sd, cap, T) for t in grid])
    best = int(errors.argmin())
    found = _expected_error(theta, mean, sd, cap, T)
    assert found <= float(errors[best]) * 1.01, (theta, float(grid[best]), found, float(errors[best]))
    assert abs(theta - float(grid[best])) <= 0.05 * float(grid[best])


class Block(nn.Module):
    """conv-BN-ReLU, a residual block (sum of a BN output and the block's input), a concat."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c3, self.b3 = nn.Conv2d(12, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        a = torch.relu(self.b1(self.c1(x)))
        r = torch.relu(self.b2(self.c2(a)) + a)
        c = torch.relu(self.b3(self.c3(torch.cat([r, a], 1))))
        return self.fc(c.flatten(1))


def _block():
    torch.manual_seed(0)
    m = Block()
    for bn in (m.b1, m.b2, m.b3):
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return m.double().eval()


def test_moments_come_from_the_bn_and_through_residual_sums():
    from spikeconverter.bn_thresholds import _moments_of_activation, pre_activation_moments

    m = _block()
    snn = sc.convert(m, "data-free", timesteps=4, input_shape=(3, 8, 8), data_free_method="bn-statistics")
    plan = snn.plan
    mom = pre_activation_moments(plan)
    by_name = {plan.layer_name(a): a for a in plan.activations}
    names = list(by_name)
    first, res, after_cat = (by_name[n] for n in names)
    # conv-BN: N(beta, gamma^2); the residual sum: its BN output plus the first layer's ReLU output
    assert torch.equal(mom[first][0], m.b1.bias.detach()) and torch.equal(mom[first][1], m.b1.weight.detach() ** 2)
    relu_mean, relu_var = _moments_of_activation(m.b1.bias.detach(), m.b1.weight.detach() ** 2, None)
    assert torch.allclose(mom[res][0], m.b2.bias.detach() + relu_mean)
    assert torch.allclose(mom[res][1], m.b2.weight.detach() ** 2 + relu_var)
    # the layer after the BN that follows the concat is reached too (the BN is right before it)
    assert after_cat in mom
    d = snn.calibration["data_free"]
    assert d["method"] == "bn-statistics" and d["images"] == 0 and d["layers_from_synthesised_inputs"] == []
    for a in plan.activations:  # each threshold is the one its moments give
        mod = plan.gm.get_submodule(a.target)
        theta, _ = thresholds_from_moments(*mom[a], None, "mse", 2.0, 4, 0.5)
        assert torch.equal(mod.theta.flatten(), theta.to(mod.theta.dtype))
    check_identical(snn, torch.randn(3, 3, 8, 8, dtype=torch.float64))


def test_layers_the_statistics_do_not_reach_fall_back_to_synthesised_inputs():
    class PoolThenRelu(nn.Module):  # a ReLU after an average pool: no BN output right before it
        def __init__(self):
            super().__init__()
            self.c, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.c2 = nn.Conv2d(4, 4, 1)
            self.fc = nn.Linear(4 * 4 * 4, 2)

        def forward(self, x):
            a = torch.relu(self.b(self.c(x)))
            a = torch.relu(self.c2(nn.functional.avg_pool2d(a, 2)))
            return self.fc(a.flatten(1))

    torch.manual_seed(1)
    snn = sc.convert(PoolThenRelu().double().eval(), "data-free", timesteps=4, input_shape=(3, 8, 8),
                     data_free_method="bn-statistics", data_free_steps=20, data_free_images=16)
    d = snn.calibration["data_free"]
    assert len(d["layers_from_bn_statistics"]) == 1 and len(d["layers_from_synthesised_inputs"]) == 1
    assert d["images"] == 16 and d["synthesis"]["steps"] == 20
    check_identical(snn, torch.randn(2, 3, 8, 8, dtype=torch.float64))


def test_bn_statistics_refusals():
    with pytest.raises(ValueError, match="batch-norm statistics"):
        sc.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), "data-free", input_shape=(3, 8, 8),
                   data_free_method="bn-statistics")
    with pytest.raises(ValueError, match="data_free_method must be"):
        sc.convert(_block(), "data-free", input_shape=(3, 8, 8), data_free_method="nope")
    with pytest.raises(ValueError, match="fixed_point"):
        sc.convert(_block(), "data-free", input_shape=(3, 8, 8), data_free_method="bn-statistics", fixed_point=True)


def test_a_max_pool_of_a_spiking_layer_is_modelled_as_the_max_of_its_window():
    """ResNet's stem: conv-BN-ReLU, max-pool 3x3, then a residual block whose shortcut is the pool.
    The pool's moments are those of ReLU(max of 9 independent draws of the stem's z) -- checked
    against sampling -- so every layer comes from the statistics and no input is synthesised."""
    from spikeconverter.bn_thresholds import _moments_of_activation, pre_activation_moments

    class Stem(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.pool = nn.MaxPool2d(3, 2, 1)
            self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 * 4 * 4, 2)

        def forward(self, x):
            p = self.pool(torch.relu(self.b1(self.c1(x))))
            return self.fc(torch.relu(self.b2(self.c2(p)) + p).flatten(1))

    torch.manual_seed(2)
    m = Stem()
    for bn in (m.b1, m.b2):
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    m = m.double().eval()
    snn = sc.convert(m, "data-free", timesteps=4, input_shape=(3, 8, 8), data_free_method="bn-statistics")
    d = snn.calibration["data_free"]
    assert d["images"] == 0 and d["layers_from_synthesised_inputs"] == [] and len(d["layers_from_bn_statistics"]) == 2
    mean1, var1 = m.b1.bias.detach(), m.b1.weight.detach() ** 2
    pooled_mean, pooled_var = _moments_of_activation(mean1, var1, None, window=9)
    g = torch.Generator().manual_seed(0)
    draws = torch.relu((mean1[:, None, None] + var1.sqrt()[:, None, None] * torch.randn(4, 200_000, 9, generator=g,
                                                                                         dtype=torch.float64)).amax(2))
    assert torch.allclose(pooled_mean, draws.mean(1), atol=0.01 * float(var1.sqrt().max()))
    assert torch.allclose(pooled_var, draws.var(1), rtol=0.02)
    res = [a for a in snn.plan.activations if snn.plan.layer_name(a) == d["layers_from_bn_statistics"][1]][0]
    mom = pre_activation_moments(snn.plan)[res]
    assert torch.allclose(mom[0], m.b2.bias.detach() + pooled_mean)
    assert torch.allclose(mom[1], m.b2.weight.detach() ** 2 + pooled_var)
    check_identical(snn, torch.randn(2, 3, 8, 8, dtype=torch.float64))


def test_moments_pass_average_pools_flatten_and_a_classifier_without_bn():
    """VGG's head: max-pool, global average pool, flatten, Linear, ReLU. The hidden layer's moments
    are the pooled ones through W (means) and W squared (variances): no input synthesised."""
    from spikeconverter.bn_thresholds import _moments_of_activation, pre_activation_moments
    from spikeconverter.plan import node_shapes

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.features = nn.Sequential(nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1))
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 2))

        def forward(self, x):
            return self.classifier(self.features(torch.relu(self.b(self.c(x)))))

    torch.manual_seed(3)
    m = Head()
    m.b.weight.data.uniform_(0.5, 1.5)
    m.b.bias.data.uniform_(-0.5, 0.5)
    m = m.double().eval()
    snn = sc.convert(m, "data-free", timesteps=4, input_shape=(3, 8, 8), data_free_method="bn-statistics")
    d = snn.calibration["data_free"]
    assert d["images"] == 0 and d["layers_from_synthesised_inputs"] == [] and len(d["layers_from_bn_statistics"]) == 2
    pooled_mean, pooled_var = _moments_of_activation(m.b.bias.detach(), m.b.weight.detach() ** 2, None, window=4)
    pooled_var = pooled_var / 16  # the global average of the 4x4 map
    w, bias = m.classifier[1].weight.detach(), m.classifier[1].bias.detach()
    plan = snn.plan
    hidden = [a for a in plan.activations if plan.layer_name(a) == d["layers_from_bn_statistics"][1]][0]
    mean, var = pre_activation_moments(plan, node_shapes(plan.gm, torch.zeros(1, 3, 8, 8, dtype=torch.float64)))[hidden]
    assert torch.allclose(mean, w @ pooled_mean + bias) and torch.allclose(var, (w * w) @ pooled_var)
    check_identical(snn, torch.randn(2, 3, 8, 8, dtype=torch.float64))


def test_bias_corrections_from_the_statistics_cancel_the_expected_error_of_the_layers_before():
    """With bias_correction=True: each layer's expected output error E[q(z)] - E[act(z)] (checked
    against sampling) is carried by the next layer's synapses; its shift is minus that (a 1x1 conv:
    exactly W @ error). The first layer, fed by the image alone, has none; the network stays exact."""
    from spikeconverter.bn_thresholds import expected_output_errors, pre_activation_moments
    from spikeconverter.neuron import quantize_fast

    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.c2, self.b2 = nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5)
            self.fc = nn.Linear(5 * 8 * 8, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))).flatten(1))

    torch.manual_seed(4)
    m = Chain()
    for bn in (m.b1, m.b2):
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    m = m.double().eval()
    plain = sc.convert(m, "data-free", timesteps=3, input_shape=(3, 8, 8), data_free_method="bn-statistics")
    assert all(a.shift is None for a in plain._acts())  # the default: no correction
    snn = sc.convert(m, "data-free", timesteps=3, input_shape=(3, 8, 8), data_free_method="bn-statistics",
                     bias_correction=True)
    plan = snn.plan
    first, second = plan.activations
    mod1, mod2 = (plan.gm.get_submodule(a.target) for a in (first, second))
    assert mod1.shift is None and mod2.shift is not None
    assert snn.calibration["data_free"]["layers_bias_corrected_from_statistics"] == [plan.layer_name(second)]
    mom = pre_activation_moments(plan)
    err = expected_output_errors(plan, mom)[first]
    g = torch.Generator().manual_seed(0)
    z = mom[first][0] + mom[first][1].sqrt() * torch.randn(400_000, 4, generator=g, dtype=torch.float64)
    sampled = (quantize_fast(z, mod1.theta.flatten()[None, :], 2.0, 3, 0.5) - z.clamp_min(0)).mean(0)
    assert torch.allclose(err, sampled, atol=2e-3 * float(mom[first][1].sqrt().max()))
    w = plan.gm.get_submodule(next(n for n in plan.regions[second].nodes if n.op == "call_module").target).weight
    assert torch.allclose(mod2.shift.flatten(), -(w.detach()[:, :, 0, 0] @ err))
    assert mod2.shift.abs().max() > 0
    check_identical(snn, torch.randn(2, 3, 8, 8, dtype=torch.float64))
