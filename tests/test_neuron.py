"""The quantizer twin against the neuron, digit for digit (hypothesis property tests)."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikeconverter import neuron

floats = st.floats(min_value=-4.0, max_value=4.0, allow_nan=False, width=64)
thetas = st.floats(min_value=1e-3, max_value=3.0, allow_nan=False).map(lambda v: float(np.float32(v)))
betas = st.one_of(st.sampled_from([1.0, 2.0]), st.floats(min_value=1.0, max_value=2.0))
phis = st.one_of(st.sampled_from([0.0, 0.5]), st.floats(min_value=0.0, max_value=0.999))
steps = st.integers(min_value=1, max_value=12)


def scalar_neuron(z, theta, beta, T, phi):
    """An independent, element-by-element iLIF neuron in plain Python floats."""
    v = z + phi * theta * beta ** (-T) if phi else z
    out = []
    for _ in range(T):
        v = v * beta
        if v >= theta:
            out.append(1.0)
            v = v - theta
        else:
            out.append(0.0)
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(floats, min_size=1, max_size=16), thetas, betas, steps, phis)
def test_twin_digits_equal_neuron_generate_phase(zs, theta, beta, T, phi):
    z = torch.tensor(zs, dtype=torch.float64)
    digits = neuron.quantize_digits(z, theta, beta, T, phi)
    ref = torch.tensor([scalar_neuron(v, theta, beta, T, phi) for v in zs], dtype=torch.float64).T
    assert torch.equal(digits, ref)
    # the value is the decoded train, and lies in [0, theta * sum beta^-t]
    q = neuron.quantize(z, theta, beta, T, phi)
    assert torch.equal(q, neuron.decode(digits, theta, beta))
    assert bool((q >= 0).all()) and bool((q <= neuron.max_value(theta, beta, T) * (1 + 1e-12)).all())
    # the fast form is the same function (closed form for beta = 2, the same loop otherwise)
    assert torch.equal(neuron.quantize_fast(z, theta, beta, T, phi), q)


@settings(max_examples=300, deadline=None)
@given(st.lists(floats, min_size=1, max_size=16), thetas, steps, phis,
       st.sampled_from([torch.float32, torch.float64]))
def test_beta2_closed_form_is_exact(zs, theta, T, phi, dtype):
    """q(z) = theta * clamp(floor(2^T V0/theta), 0, 2^T - 1) / 2^T, V0 = z + phi*theta*2^-T,
    checked against exact rational arithmetic on the same V0, in float32 and float64."""
    z = torch.tensor(zs, dtype=dtype)
    v0 = neuron.initial_potential(z, theta, 2.0, T, phi)
    q = neuron.quantize_fast(z, theta, 2.0, T, phi)
    greedy = neuron.quantize(z, theta, 2.0, T, phi)
    assert torch.equal(q, greedy)
    for v, got in zip(v0.tolist(), q.tolist()):
        k = math.floor(Fraction(v) * 2**T / Fraction(theta))
        k = min(max(k, 0), 2**T - 1)
        expect = torch.tensor(k, dtype=torch.float64) * (theta / 2**T)
        assert got == float(expect.to(dtype))


def test_beta2_matches_textbook_formula_away_from_boundaries():
    g = torch.Generator().manual_seed(0)
    z = torch.rand(100_000, generator=g, dtype=torch.float64) * 3 - 0.5
    theta, T, phi = 1.7, 6, 0.5
    ref = theta * torch.clamp(torch.floor(2**T * z / theta + phi), 0, 2**T - 1) / 2**T
    assert torch.allclose(neuron.quantize_fast(z, theta, 2.0, T, phi), ref, rtol=0, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-2, max_value=10, allow_nan=False), min_size=1, max_size=16), thetas, steps, phis)
def test_beta1_is_a_burst_count(zs, theta, T, phi):
    """beta = 1: clamp(floor(z/theta + phi), 0, T) spikes, all at the start of the window."""
    z = torch.tensor(zs, dtype=torch.float64)
    digits = neuron.quantize_digits(z, theta, 1.0, T, phi)
    count = digits.sum(0)
    for v, c in zip(zs, count.tolist()):
        x = (v + phi * theta) / theta
        if abs(x - round(x)) > 1e-9:  # within rounding of a boundary the neuron's float subtraction decides
            assert c == min(max(math.floor(x), 0), T)
    # a burst: once silent, silent for the rest of the window
    assert bool((digits[1:] <= digits[:-1]).all())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 1), min_size=1, max_size=12), thetas, betas)
def test_accumulate_decodes_a_train(bits, theta, beta):
    """V <- beta V + I(t) with I(t) = theta beta^-T s(t) ends at the decoded value."""
    T = len(bits)
    s = torch.tensor(bits, dtype=torch.float64)[:, None]
    v = torch.zeros(1, dtype=torch.float64)
    for t in range(T):
        v = neuron.accumulate(v, s[t] * theta * beta ** (-T), beta)
    assert torch.allclose(v, neuron.decode(s, theta, beta), rtol=1e-12, atol=1e-15)


def test_code_levels_and_monotonicity():
    z = torch.linspace(-1, 3, 20001, dtype=torch.float64)
    for beta, T in [(2.0, 4), (1.0, 4), (1.5, 5)]:
        q = neuron.quantize(z, 1.0, beta, T, 0.0)
        assert bool((q[1:] >= q[:-1]).all()), "q must be monotone (max-pool exactness rests on it)"
    assert len(torch.unique(neuron.quantize(z, 0.2, 2.0, 4, 0.5))) == 16
    assert len(torch.unique(neuron.quantize(z, 0.2, 1.0, 4, 0.5))) == 5
    assert neuron.code_levels(2.0, 8) == 256 and neuron.code_levels(1.0, 8) == 9


def test_lexicographic_order_of_greedy_codes():
    """MSB-first greedy trains compare lexicographically like their values (beta in [1, 2])."""
    g = torch.Generator().manual_seed(1)
    for beta in (2.0, 1.7, 1.3):
        z = torch.rand(400, generator=g, dtype=torch.float64) * 2
        d = neuron.quantize_digits(z, 1.0, beta, 7, 0.0).T.tolist()
        q = neuron.quantize(z, 1.0, beta, 7, 0.0).tolist()
        order_by_code = sorted(range(400), key=lambda i: d[i])
        vals = [q[i] for i in order_by_code]
        assert vals == sorted(vals)


def test_check_params_rejects_bad_values():
    for kw in [dict(timesteps=0), dict(timesteps=2.5), dict(beta=2.5), dict(beta=0.9), dict(phi=1.0)]:
        with pytest.raises(ValueError):
            neuron.check_params(**kw)
    with pytest.raises(ValueError):
        neuron.check_params(theta=0.0)


def _boundary_inputs(theta, T, phi, g, n=20_000):
    """Inputs whose V0 sits on code boundaries, one ulp either side of them, and random ones."""
    edge = torch.randint(0, 2**T, (n,), generator=g).float() * (theta / 2**T) - phi * theta * 2.0 ** (-T)
    return edge, torch.nextafter(edge, edge + 1), torch.nextafter(edge, edge - 1), torch.randn(n, generator=g) * theta


# thresholds a float32 can hold (what calibration produces) and ones it cannot (a user's 1.2345678):
# the neuron compares a float32 potential with theta rounded to float32, and so must the twin
BOUNDARY_THETAS = (0.37109375, float(np.float32(1.2345678)), 1.2345678, 0.001234, 3.3, 5.9)


@pytest.mark.parametrize("path", ["eager", "compiled"])
def test_beta2_twin_is_exact_at_code_boundaries(path):
    """The closed-form fast path (eager, and the fused float32 kernel) equals the greedy neuron,
    also one ulp either side of every code boundary (where a careless closed form flips a digit)."""
    if path == "compiled" and not neuron.compiled_available():
        pytest.skip("torch.compile has no C++ compiler here; the eager path is used")
    f = neuron.quantize_compiled if path == "compiled" else neuron.quantize_fast
    g = torch.Generator().manual_seed(0)
    for theta in BOUNDARY_THETAS:
        for T in (1, 4, 8, 12):
            for phi in (0.0, 0.5, 0.3):
                for z in _boundary_inputs(theta, T, phi, g):
                    ref = neuron.quantize(z, theta, 2.0, T, phi)
                    assert torch.equal(f(z, theta, 2.0, T, phi), ref), (theta, T, phi)
                    assert torch.equal(neuron.binary_spike_count(ref, theta, T),
                                       neuron.quantize_digits(z, theta, 2.0, T, phi).sum(0))


def test_beta2_twin_is_exact_at_code_boundaries_per_channel_theta():
    g = torch.Generator().manual_seed(1)
    for T in (1, 4, 8, 12):
        for dtype in (torch.float32, torch.float64):
            theta = (torch.rand(8, 1, generator=g) * 2 + 0.01).to(dtype)
            edge = (torch.randint(0, 2**T, (8, 5000), generator=g) * theta / 2**T).to(dtype)
            noise = torch.randn(8, 5000, generator=g).to(dtype)
            for z in (edge, torch.nextafter(edge, edge + 1), torch.nextafter(edge, edge - 1), noise):
                assert torch.equal(neuron.quantize_fast(z.float(), theta, 2.0, T), neuron.quantize(z.float(), theta, 2.0, T))
                assert torch.equal(neuron.quantize_fast(z, theta, 2.0, T), neuron.quantize(z, theta, 2.0, T))


def test_compiled_network_equals_eager():
    import spikeconverter as sc

    from nets import make

    model, shape = make("resnet_block", seed=4, dtype=torch.float32)
    x = torch.randn((64,) + shape)
    snn = sc.convert(model, x, timesteps=6)
    eager = snn(x)
    assert torch.equal(snn.compile()(x), eager)
    assert torch.equal(snn.compile(False)(x), eager)


def test_compiled_kernel_across_many_T_and_thresholds():
    """One process, many (T, theta, phi, rank) in shuffled order: a compiled kernel must not keep
    values from an earlier call (torch.compile specialisation / guards)."""
    import random

    if not neuron.compiled_available():
        pytest.skip("torch.compile has no C++ compiler here")
    rnd = random.Random(0)
    g = torch.Generator().manual_seed(0)
    cases = [(T, th, phi) for T in range(1, 17) for th in (0.3, 0.7, 1.9, 0.0123, 4.4) for phi in (0.0, 0.5)]
    rnd.shuffle(cases)
    for T, th, phi in cases:
        th = float(np.float32(th))
        z = torch.randn(3000, generator=g) * th * 1.2
        for shape in [(3000,), (30, 100), (3, 10, 10, 10)]:
            zz = z.reshape(shape)
            assert torch.equal(neuron.quantize_compiled(zz, th, 2.0, T, phi), neuron.quantize(zz, th, 2.0, T, phi))


def test_popcount_and_burst_counts():
    """popcount's byte table against Python's bit count, across byte borders; beta = 1 counts and
    words read from values equal the greedy neuron's digits."""
    g = torch.Generator().manual_seed(3)
    for T in (1, 5, 8, 9, 16, 17, 30, 40):
        words = torch.randint(0, 2**T, (4000,), generator=g, dtype=torch.int64)
        want = torch.tensor([bin(int(w)).count("1") for w in words])
        assert torch.equal(neuron.popcount(words.double(), T).long(), want), T
    for T in (1, 4, 8):
        for theta in BOUNDARY_THETAS:
            z = torch.rand(3000, generator=g) * theta * (T + 2) - theta
            d = neuron.quantize_digits(z, theta, 1.0, T, 0.5)
            n = neuron.burst_count(neuron.quantize(z, theta, 1.0, T, 0.5), theta)
            assert torch.equal(n, d.sum(0).double())
            place = 2.0 ** torch.arange(T - 1, -1, -1, dtype=torch.float64)
            assert torch.equal(neuron.burst_word(n, T), torch.tensordot(place, d.double(), dims=([0], [0])))
    with pytest.raises(ValueError, match="digits"):  # 1 < beta < 2 cannot be read off values
        neuron.word_and_count(torch.ones(3), 1.0, 1.5, 4)
