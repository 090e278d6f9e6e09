"""iLIF neuron dynamics as small pure tensor functions, and the quantizer that is their exact twin.

Units. A spike train s(1..T) of a layer with threshold theta and growth factor beta stands for the
value  theta * sum_t s(t) * beta^(-t).  The generate phase starting from potential V produces the
greedy (most significant first) beta-expansion of V/theta:

    for t in 1..T:   V <- beta*V;   s(t) = [V >= theta];   V <- V - theta*s(t)

The quantizer twin ``quantize`` runs *the same operations* on a tensor of pre-activations, so the two
agree digit for digit by construction; the tests check it on random data anyway. ``quantize_fast``
is the closed form used by the fast path (beta = 2: an integer code; beta = 1: a spike count),
corrected so that it returns exactly the greedy digits' value.

The offset phi in [0, 1) starts the potential at  phi * theta * beta^(-T)  above z: phi = 0 truncates,
phi = 0.5 rounds to the nearest code level.
"""

from __future__ import annotations

import torch

__all__ = [
    "accumulate",
    "accumulate_",
    "code_levels",
    "decode",
    "generate",
    "generate_step",
    "generate_step_",
    "if_step",
    "initial_potential",
    "max_value",
    "quantize",
    "quantize_digits",
    "quantize_fast",
    "quantize_ste",
    "binary_word",
    "popcount",
]


# A layer's code is a T-digit word; max-pools and spike counts handle it as an integer in float64
# (53-bit significand). Accuracy saturates far earlier: with float32 activations, digits beyond
# T ~ 24 resolve less than one rounding of the potential (docs/method.md). The rate baseline's T
# counts steps, not digits, and has no such bound.
MAX_TIMESTEPS = 52


def check_code_length(timesteps: int) -> None:
    if timesteps > MAX_TIMESTEPS:
        raise ValueError(f"timesteps must be <= {MAX_TIMESTEPS}, got {timesteps}: a T-step code is a T-bit integer "
                         "word (max-pools, spike counts), exact in float64 only up to 52 bits")


def check_params(theta=None, beta: float = 2.0, timesteps: int = 1, phi: float = 0.0) -> None:
    """ValueError with a one-line reason for parameters outside the model's domain."""
    if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 1:
        raise ValueError(f"timesteps must be an integer >= 1, got {timesteps!r}")
    if not (isinstance(beta, (int, float)) and 1.0 <= float(beta) <= 2.0):
        raise ValueError(f"beta must be a number in [1, 2], got {beta!r}")
    if not (0.0 <= float(phi) < 1.0):
        raise ValueError(f"phi must be in [0, 1), got {phi!r}")
    if theta is not None:
        t = torch.as_tensor(theta)
        if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
            raise ValueError("theta must be finite and > 0")


def max_value(theta, beta: float, timesteps: int):
    """The largest value a train can carry: theta * sum_{t=1..T} beta^(-t)."""
    return theta * sum(float(beta) ** (-t) for t in range(1, timesteps + 1))


def code_levels(beta: float, timesteps: int) -> int:
    """Distinct values a T-step train carries: 2^T for beta = 2, T + 1 for beta = 1."""
    if float(beta) == 1.0:
        return timesteps + 1
    if float(beta) == 2.0:
        return 2**timesteps
    # for 1 < beta < 2 the greedy expansions are the beta-admissible words; count by brute force
    # is exponential, so report the 2^T upper bound (every train is a distinct word).
    return 2**timesteps


def initial_potential(z: torch.Tensor, theta, beta: float, timesteps: int, phi: float) -> torch.Tensor:
    """The potential a generate phase starts from for pre-activation z (offset included)."""
    if phi == 0.0:
        return z
    return z + phi * theta * float(beta) ** (-timesteps)


def generate_step(v: torch.Tensor, theta, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One generate step: V <- beta*V; spike where V >= theta; subtract theta there. Returns (V,
    spikes as 0/1 in V's dtype). (Subtracting s * theta is the same arithmetic as a select -- V - 0
    is V -- at a third of torch.where's cost on a CPU.)"""
    v = v * beta
    s = (v >= theta).to(v.dtype)
    return v - s * theta, s


def generate_step_(v: torch.Tensor, theta, beta: float, spikes: torch.Tensor) -> torch.Tensor:
    """``generate_step`` in place, for the simulator's hot loop: V is updated and the spikes are
    written into ``spikes`` (V's dtype). The same arithmetic, bit for bit (tests/test_neuron.py):
    V - 1*theta and V - 0*theta are V - theta and V. On a CPU a fresh tensor of a layer's size
    costs several times the arithmetic on it, so the simulator steps potentials in place."""
    v.mul_(beta)
    torch.ge(v, theta, out=spikes)
    if torch.is_tensor(theta):
        v.addcmul_(spikes, theta, value=-1)
    else:
        v.sub_(spikes, alpha=theta)
    return spikes


def generate(v: torch.Tensor, theta, beta: float, timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole generate phase. Returns (spikes [T, *v.shape] as v.dtype, residual potential)."""
    spikes = []
    for _ in range(timesteps):
        v, s = generate_step(v, theta, beta)
        spikes.append(s)
    return torch.stack(spikes).to(v.dtype), v


def if_step(v: torch.Tensor, current: torch.Tensor, theta) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the rate baseline's IF neuron: integrate, spike at theta, reset by subtraction."""
    v = v + current
    s = v >= theta
    return torch.where(s, v - theta, v), s


def accumulate(v: torch.Tensor, current: torch.Tensor, beta: float) -> torch.Tensor:
    """One accumulate step: V <- beta*V + I(t). No spikes."""
    return v * beta + current


def accumulate_(v: torch.Tensor, current, beta: float) -> torch.Tensor:
    """``accumulate`` in place, bit for bit. Returns v. With beta = 2 in one pass: current + 2 V
    rounds once either way (doubling is exact), whatever the kernel fuses."""
    if beta == 2.0 and torch.is_tensor(current):
        return torch.add(current, v, alpha=2.0, out=v)
    return v.mul_(beta).add_(current)


def decode(spikes: torch.Tensor, theta, beta: float) -> torch.Tensor:
    """Value of trains [T, ...]: theta * sum_t s(t) beta^(-t)."""
    T = spikes.shape[0]
    w = torch.tensor([float(beta) ** (-t) for t in range(1, T + 1)], dtype=spikes.dtype, device=spikes.device)
    return theta * torch.tensordot(w, spikes, dims=([0], [0]))


def quantize_digits(z: torch.Tensor, theta, beta: float, timesteps: int, phi: float = 0.0) -> torch.Tensor:
    """The twin's digits: the same greedy operations as ``generate`` on the offset potential."""
    spikes, _ = generate(initial_potential(z, theta, beta, timesteps, phi), theta, beta, timesteps)
    return spikes


def quantize(z: torch.Tensor, theta, beta: float, timesteps: int, phi: float = 0.0) -> torch.Tensor:
    """q(z): the value of the greedy train of z, computed step by step (reference definition)."""
    return decode(quantize_digits(z, theta, beta, timesteps, phi), theta, beta)


def quantize_fast(z: torch.Tensor, theta, beta: float, timesteps: int, phi: float = 0.0,
                  exact: bool = True) -> torch.Tensor:
    """q(z) in closed form for beta = 2, else the step-by-step definition.

    beta = 2: the train is the binary code k of floor(2^T * V0 / theta), clipped to [0, 2^T - 1],
    with V0 = z + phi*theta*2^(-T). The greedy form is exact in floating point (doubling and
    subtracting theta from a value in [theta, 2*theta) are both exact), but the closed form's
    division rounds, which can push a quotient just below an integer up onto it. An exact check in
    float64 of the few elements where that can have happened brings k back to the greedy's count.

    Other beta (beta = 1 included) use the step-by-step form: with beta < 2 the repeated
    subtraction of theta is not exact in floating point, and the twin must round exactly as the
    neuron does, not as exact arithmetic would. (For beta = 1 the value is, up to that rounding,
    a burst of min(T, floor(V0 / theta)) spikes.)

    ``exact=False`` skips the correction step: the result may then differ from the neuron's where
    V0 is within one rounding of a code boundary. Only the threshold search uses it, to rank
    candidate thresholds, never to compute what the network outputs.
    """
    if float(beta) != 2.0:
        return quantize(z, theta, beta, timesteps, phi)
    v0 = initial_potential(z, theta, beta, timesteps, phi)
    scale = 2.0**timesteps
    # one correctly rounded division (scale is a power of two, so the product is exact). In-place
    # ops: this runs on every activation of the fast path, and allocations cost as much as arithmetic.
    t = torch.div(v0, theta).mul_(scale)
    k = t.floor()
    if exact:
        # A correctly rounded quotient is never below an integer the true quotient reaches, so
        # floor(t) can only be one too high, and only where t landed exactly on a positive integer
        # (t == max(k, 1) picks those: where k < 1, t < 1). Those few elements get the exact check
        # k * theta <= V0 * 2^T in float64 (k <= 2^T, theta has <= 24 bits when V0 is float32);
        # the rest are left alone. Converting the whole tensor to float64 cost more than the
        # quantizer's other work together.
        edge = torch.eq(t, k.clamp_min(1.0))
        if bool(edge.any()):
            idx = edge.nonzero(as_tuple=True)
            th = _theta_as_compared(theta, v0)
            th = th.double() if th.dim() == 0 else torch.broadcast_to(th, v0.shape)[idx].double()
            over = (k[idx].double() * th) > (v0[idx].double() * scale)
            k.index_put_(idx, k[idx] - over.to(k.dtype))
    return k.clamp_(0.0, scale - 1).mul_(theta / scale)


def quantize_ste(z: torch.Tensor, theta: torch.Tensor, beta: float, timesteps: int, phi: float = 0.0) -> torch.Tensor:
    """q(z) with straight-through gradients, for fine-tuning the twin. The value is ``quantize_fast``'s
    (what the neuron computes, up to the precision theta is held in); the gradients are those of
    learned step-size quantization (LSQ, Esser et al. 2020) written for any beta:

    - d/dz = 1 where the potential is inside the code's range (0, theta * sum_t beta^-t), else 0;
    - d/dtheta = (q(z) - z) / theta inside the range, q(z) / theta above it, 0 below.

    ``theta``: a tensor (0-d per layer, or per channel broadcasting over z) that may require grad."""
    with torch.no_grad():
        q = quantize_fast(z.detach(), theta.detach(), beta, timesteps, phi)
    top = max_value(1.0, beta, timesteps)
    u = torch.clamp(z / theta, 0.0, top)
    surrogate = theta * ((q / theta).detach() + u - u.detach())
    return q + (surrogate - surrogate.detach())


def _theta_as_compared(theta, v: torch.Tensor) -> torch.Tensor:
    """theta in the precision the neuron's ``v >= theta`` uses: a Python float (or a 0-d tensor)
    beside a float32 potential is rounded to float32 first; a per-channel tensor may promote."""
    if not torch.is_tensor(theta):
        return torch.tensor(theta, dtype=v.dtype)
    return theta.to(torch.result_type(v, theta))


# ---------------------------------------------------------------------------------------------
# A fused kernel for the fast path (beta = 2, float32)
# ---------------------------------------------------------------------------------------------


def _binary_code_f64(z: torch.Tensor, off: torch.Tensor, theta: torch.Tensor, scale: torch.Tensor,
                     kmax: torch.Tensor, theta_over_scale: torch.Tensor) -> torch.Tensor:
    # V0 = z + off in z's own precision (exactly as the neuron forms it), then q = V0/theta * 2^T
    # in float64. A quotient that is exactly k 2^-T comes out exact (division is correctly rounded;
    # a multiplication by a rounded 1/theta would not). A quotient that is not lies at least
    # min(2^-24, q 2^-25) away from the nearest k (V0 and theta have 24-bit mantissas), while one
    # float64 rounding moves it at most q 2^-53 -- so for T <= 27 the floor is exact and no
    # correction step is needed. The tests check it one ulp either side of code boundaries.
    v0 = z + off
    k = torch.floor(v0.double() / theta * scale)
    # minimum/clamp_min with a tensor, not clamp(0, kmax): compiled clamp kept the first call's
    # bound for later calls with other T (seen with torch 2.13; the tests run many (T, theta) pairs)
    k = torch.minimum(torch.clamp_min(k, 0.0), kmax)
    return (k * theta_over_scale).to(z.dtype)


compiled_kernel = None


def compiled_available() -> bool:
    """Whether torch.compile can build the fused kernel here (it needs a C++ compiler)."""
    return _get_kernel() is not None


def _get_kernel():
    global compiled_kernel
    if compiled_kernel is None:
        try:
            fn = torch.compile(_binary_code_f64, dynamic=True)
            fn(torch.zeros(2, 3), *_scalars(0.1, 0.5, 4.0, 3.0, 0.125))  # build it now, so failures show here
            compiled_kernel = fn
        except Exception:  # no compiler, unsupported platform: the eager path stays exact
            compiled_kernel = False
    return compiled_kernel or None


def quantize_compiled(z: torch.Tensor, theta, beta: float, timesteps: int, phi: float = 0.0) -> torch.Tensor:
    """q(z) in one fused pass where it is exact (beta = 2, float32, T <= 27); else ``quantize_fast``."""
    kernel = _get_kernel() if (float(beta) == 2.0 and z.dtype == torch.float32 and timesteps <= 27
                               and z.device.type == "cpu") else None  # the kernel is built and checked for CPU
    if kernel is None:
        return quantize_fast(z, theta, beta, timesteps, phi)
    scale = 2.0**timesteps
    if torch.is_tensor(theta) and theta.dim() > 0:  # per channel: tensors that broadcast over z
        th = _theta_as_compared(theta, z).double()
        off = (phi * theta * 2.0 ** (-timesteps)).to(z.dtype) if phi else torch.zeros((), dtype=z.dtype)
        return kernel(z, off, th, *_scalars(scale, scale - 1), th / scale)
    off = phi * theta * 2.0 ** (-timesteps) if phi else 0.0  # as initial_potential forms it
    th = float(_theta_as_compared(theta, z))  # the neuron compares with theta rounded to float32
    return kernel(z, *_scalars(off, th, scale, scale - 1, th / scale))


def _scalars(*values: float) -> list[torch.Tensor]:
    # 0-d tensors, not Python floats: torch.compile specialises on float arguments and would
    # recompile for every new T or threshold (and fall back to eager after 8 recompiles)
    return [torch.tensor(v, dtype=torch.float64) for v in values]


def binary_word(value: torch.Tensor, theta, timesteps: int) -> torch.Tensor:
    """The integer k (as float64) of beta = 2 trains from their values: value = k theta 2^-T.
    The twin's value is k theta 2^-T rounded once, so rounding recovers k exactly."""
    k = torch.round(value.double() * (2.0**timesteps / torch.as_tensor(theta, dtype=torch.float64)))
    return k.clamp_(0, 2.0**timesteps - 1)


# spikes in each byte value; popcount reads one entry per 8 bits of the word
_BYTE_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int16)


def popcount(words: torch.Tensor, timesteps: int) -> torch.Tensor:
    """Spikes of trains given as integer words (bit t-1 from the top = spike at step t), as int16:
    one byte-table lookup per 8 steps (ResNet-34's 1.16 M neurons per photo made a bit-by-bit loop
    10x slower than this, and the largest cost of counting spikes)."""
    k = words.to(torch.int64)
    table = _BYTE_POPCOUNT.to(k.device)
    c = table[k & 255 if timesteps > 8 else k]
    for shift in range(8, timesteps, 8):
        c += table[(k >> shift) & 255]
    return c


def burst_count(value: torch.Tensor, theta) -> torch.Tensor:
    """Spikes of beta = 1 trains from their values (float64): the train is a burst of n spikes from
    the first step (V never grows, so once below theta it stays there), and its value is
    theta * n rounded once, so rounding value / theta recovers n exactly."""
    return torch.round(value.double() / torch.as_tensor(theta, dtype=torch.float64))


def burst_word(counts: torch.Tensor, timesteps: int) -> torch.Tensor:
    """The integer word (float64, MSB = first step) of beta = 1 bursts of ``counts`` spikes."""
    return 2.0**timesteps - torch.pow(2.0, timesteps - counts.double())


def countable_from_value(beta: float) -> bool:
    """Whether ``word_and_count`` reads a train off its value exactly (beta = 2 or 1); other beta
    need the digits."""
    return float(beta) in (1.0, 2.0)


def word_and_count(value: torch.Tensor, theta, beta: float, timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The integer word (float64, MSB = first step) and the spike count of the twin's trains, read
    off their values: the binary word and its popcount at beta = 2, the burst at beta = 1."""
    if float(beta) == 2.0:
        word = binary_word(value, theta, timesteps)
        return word, popcount(word, timesteps)
    if float(beta) == 1.0:
        n = burst_count(value, theta)
        return burst_word(n, timesteps), n
    raise ValueError(f"beta = {beta}: trains are read off their values only at beta = 1 or 2; count the digits")


def binary_spike_count(value: torch.Tensor, theta: float, timesteps: int) -> torch.Tensor:
    """Spikes of beta = 2 trains from their values: the popcount of k = value 2^T / theta."""
    return popcount(binary_word(value, theta, timesteps), timesteps).to(value.dtype)
