"""Unsupported ops fail before any work with a named error; bad arguments give a one-line ValueError."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikeconverter as sc

from nets import make


class NoCalibration:
    """Calibration data that fails the test if anything reads it: errors must come first."""

    def __iter__(self):
        raise AssertionError("calibration data was read before the graph was checked")


def net(body):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.act = nn.GELU()
            self.silu = nn.SiLU()
            self.fc = nn.Linear(4 * 8 * 8, 2)

        def forward(self, x):
            return body(self, x)

    return Net()


CASES = {
    "gelu": (lambda s, x: s.fc(s.act(s.conv(x)).flatten(1)), "GELU 'act'", "replace it with ReLU"),
    "silu": (lambda s, x: s.fc(s.silu(s.conv(x)).flatten(1)), "silu", "SiLU"),
    "sigmoid": (lambda s, x: s.fc(torch.sigmoid(s.conv(x)).flatten(1)), "sigmoid", "sigmoid"),
    "product": (lambda s, x: s.fc((F.relu(s.conv(x)) * F.relu(s.conv(x))).flatten(1)), "mul", "product"),
    "maxpool_on_sum": (lambda s, x: s.fc(F.max_pool2d(F.relu(s.conv(x)) + F.relu(s.conv2(F.relu(s.conv(x)))), 2)
                                         .flatten(1)), "max_pool", "a max over sums"),
    "control_flow": (lambda s, x: s.fc(F.relu(s.conv(x)).flatten(1)) if x.sum() > 0 else x, "", "traced"),
    "hardtanh_not_relu6": (lambda s, x: s.fc(F.hardtanh(s.conv(x), -1.0, 1.0).flatten(1)), "F.hardtanh",
                           "clipped ReLU"),
    # leaky ReLU converts (two populations, tests/test_leaky.py); its randomised form does not
    "rrelu": (lambda s, x: s.fc(F.rrelu(s.conv(x)).flatten(1)), "rrelu", "nn.LeakyReLU((lower + upper) / 2)"),
    "layer_norm": (lambda s, x: s.fc(F.relu(F.layer_norm(s.conv(x), (4, 8, 8))).flatten(1)), "layer_norm",
                   "BatchNorm"),
    "tanh_method": (lambda s, x: s.fc(s.conv(x).tanh().flatten(1)), "tanh", "tanh"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unsupported_op_is_named_before_any_work(case):
    body, node, what = CASES[case]
    with pytest.raises(sc.UnsupportedOperationError) as e:
        sc.convert(net(body), NoCalibration(), timesteps=4)
    msg = str(e.value)
    assert node in msg and what in msg, msg
    # the refusal says why, in the table's words (or the tracer's)
    assert any(w in msg for w in ("spiking form", "synaptic form", "traced", "BatchNorm")), msg


def test_unsupported_error_is_a_value_error():
    assert issubclass(sc.UnsupportedOperationError, ValueError)


@pytest.fixture
def small():
    model, shape = make("resnet_block", dtype=torch.float32)
    return model, shape


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(timesteps=0), "timesteps"),
    (dict(timesteps=-3), "timesteps"),
    (dict(timesteps=2.5), "timesteps"),
    (dict(beta=2.5), "beta"),
    (dict(beta=0.5), "beta"),
    (dict(beta="fast"), "beta"),
    (dict(threshold="median"), "threshold"),
    (dict(threshold="percentile:101"), "threshold"),
    (dict(method="ttfs"), "method"),
    (dict(phi=1.0), "phi"),
    (dict(input_coding="poisson"), "input_coding"),
    (dict(method="rate", threshold="mse"), "rate"),
])
def test_bad_arguments(small, kwargs, fragment):
    model, shape = small
    with pytest.raises(ValueError) as e:
        sc.convert(model, torch.randn((4,) + shape), **kwargs)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_bad_calibration_data(small):
    model, shape = small
    bad = torch.randn((4,) + shape)
    bad[0, 0, 0, 0] = float("nan")
    for calib, fragment in [([], "empty"), (torch.empty((0,) + shape), "empty"), (bad, "NaN"),
                            (torch.full((2,) + shape, float("inf")), "NaN or Inf"), (None, "required"),
                            (torch.randn(4, 5, 7, 7), "shape"), (["x"], "tensors")]:
        with pytest.raises(ValueError) as e:
            sc.convert(model, calib, timesteps=4)
        assert fragment in str(e.value), (fragment, str(e.value))


def test_wrong_input_shape(small):
    model, shape = small
    snn = sc.convert(model, torch.randn((4,) + shape), timesteps=3)
    for x in [torch.randn(2, 3, 9, 9), torch.randn(3, 12, 12)]:
        with pytest.raises(ValueError, match="shape"):
            snn(x)
        with pytest.raises(ValueError, match="shape"):
            snn.simulate(x)


def test_calibration_accepts_tensors_pairs_and_loaders(small):
    model, shape = small
    xs = torch.randn((8,) + shape)
    a = sc.convert(model, xs, timesteps=3, threshold="max")
    b = sc.convert(model, [xs[:4], xs[4:]], timesteps=3, threshold="max")
    c = sc.convert(model, [(xs[:4], torch.zeros(4)), (xs[4:], torch.zeros(4))], timesteps=3, threshold="max")
    for la, lb, lc in zip(a.layers, b.layers, c.layers):  # per-channel thresholds: tensors
        assert torch.equal(la.theta, lb.theta) and torch.equal(la.theta, lc.theta), la.name
