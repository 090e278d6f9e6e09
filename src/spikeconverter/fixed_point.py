"""Fixed-point mode: bit-exact agreement of the time-stepped simulator and the twin, by construction.

In floating point the simulator (currents summed step by step) and the twin (one conv on decoded
values) sum in different orders, so a digit can flip where z sits within rounding of a code
boundary. Here every number the network handles is made a multiple of one power of two, 2^-E, and
small enough that |value| * 2^E < 2^53. Then every product and sum in float64 is exact -- the order
no longer matters -- and the two engines agree to the last bit. What is rounded (and so changes the
function a little, identically for both engines):

- weights: 12 significant bits per tensor (a per-tensor power-of-two scale),
- thresholds: 12 significant bits (per channel: one grid per layer, 16 bits for the largest),
- leaky slopes: 12 significant bits (per channel: one grid per layer), so the OFF population's
  potential -slope * z sits on a grid as well (its own, finer by the slope's bits),
- biases: to the grid 2^-E,
- the analog input: to the grid 2^-INPUT_BITS.

Requires beta = 2 or 1 (dyadic code weights), averages over power-of-two windows, scalings by powers
of two, nearest (not bilinear) interpolation and no two weighted ops in a row without a spiking
layer between (ops.fixed_point_problem says per op). A bound on every partial sum (weight row
sums x thresholds + biases + max|input|) is checked against float64's exact range before each run.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx
from torch import nn

from . import ops
from .plan import GraphPlan, ancestors, node_values

WEIGHT_BITS = 12
THETA_BITS = 12
OWN_BITS = 12  # a code's own parameters (the leaky slope)
INPUT_BITS = 12  # fractional bits of the analog input grid
EXACT_LIMIT = 2.0**53  # integers below 2^53 are exact in float64


def round_significant(t: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """Round to multiples of 2^-F where F makes max|t| use ``bits`` significant bits. Returns (t, F)."""
    m = float(t.abs().max()) if t.numel() else 0.0
    if m == 0.0:
        return t.clone(), 0
    f = bits - 1 - math.floor(math.log2(m))
    return torch.round(t * 2.0**f) / 2.0**f, f


PER_CHANNEL_EXTRA_BITS = 4


def round_each(t: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """Per-channel thresholds (all > 0) on one grid 2^-F: the largest gets ``bits`` +
    PER_CHANNEL_EXTRA_BITS significant bits, a channel 16x smaller ``bits``, smaller ones fewer
    (never 0). One grid per layer, not one per channel's magnitude: a channel thousands of times
    smaller than the others would otherwise make every sum of the layer's sinks finer than float64
    can hold. Returns (t, F)."""
    t, f = round_significant(t, bits + PER_CHANNEL_EXTRA_BITS)
    return torch.clamp(t, min=2.0**-f), f


def _theta_max(act) -> float:
    return float(act.theta.max()) if act.per_channel else act.theta


def _signal_calls(region, env):
    """(node, its arguments' values, its keyword arguments' values) of every node of the region that
    computes a signal, not a shape. ``env``: every node's value (one pass)."""
    for n in region.nodes:
        if not n.meta.get("shape_value"):
            yield n, fx.node.map_arg(n.args, lambda a: env[a]), fx.node.map_arg(n.kwargs, lambda a: env[a])


def _problems(gm, region, env) -> None:
    """Refuse what the dyadic grid cannot hold exactly (ops.fixed_point_problem: averages over
    non-powers of two, scales, non-nearest interpolation)."""
    for n, args, kwargs in _signal_calls(region, env):
        why = ops.fixed_point_problem(gm, n, args, kwargs)
        if why:
            raise ValueError(f"fixed_point: {ops.describe(gm, n)}: {why}")


def _check_region(gm: nn.Module, region, env) -> list:
    """Weighted ops of a region; refuses what cannot be exact under different summation orders."""
    _problems(gm, region, env)
    weighted = []
    for n in region.nodes:
        if n.op != "call_module":
            continue
        mod = gm.get_submodule(n.target)
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"fixed_point needs batch norm folded into a conv/linear; '{n.target}' stands alone")
        kind = ops.kind_of(gm, n)
        if kind is not None and kind.weighted:  # carries synapses (the op table says which ops do)
            weighted.append(n)
    inside = set(region.nodes)
    for w in weighted:
        _, hit = ancestors(w.all_input_nodes, set(weighted), within=inside)
        if hit:
            n = next(iter(hit))
            raise ValueError(
                f"fixed_point: '{w.target}' takes the output of '{n.target}' with no spiking layer between "
                "(e.g. MobileNet-v2's linear bottleneck); such chains cannot be made order-independent")
    return weighted


def _averaging_bits(gm, region, env) -> int:
    """Bits an average in the region can add below its inputs' grid: log2 of its largest divisor
    (a power of two, _problems checked), summed over the region's averaging nodes (averages in
    series divide in turn)."""
    bits = 0
    for n, args, kwargs in _signal_calls(region, env):
        d = ops.averaging_divisors(gm, n, args, kwargs)
        if d is not None:
            bits += int(math.log2(float(d.max())))
    return bits


def _sources_of(node, region) -> set:
    _, reached = ancestors(node, set(region.sources), within=set(region.nodes), signals_only=True)
    return reached


def _row_abs_sum_max(mod: nn.Module) -> float:
    """Largest sum of |weights| into one output neuron (a bound for a transposed conv: per output
    channel, all its weights)."""
    w = ops.weight_rows(mod).detach().double().abs()
    return float(w.flatten(1).sum(1).max())


def apply(plan: GraphPlan, input_shape: tuple) -> list[tuple[int, float, float]]:
    """Round the converted network in place. Returns, per spiking layer and the output, (E, c, k):
    every partial sum of its potential is a multiple of 2^-E and at most c + k * max|x| in size
    (x the analog input), which ``check_bounds`` compares with the exact range of float64."""
    gm = plan.gm
    dev = next(gm.parameters()).device
    env = node_values(gm, torch.zeros((1,) + tuple(input_shape), dtype=torch.float64, device=dev))
    spikers = plan.spikers
    grid = {}  # source -> fractional bits of the values it sends
    own_bits = {}  # layer -> fractional bits of its code's own parameters (the leaky slope)
    for a in spikers:
        m = gm.get_submodule(a.target)
        if float(m.beta) not in (1.0, 2.0):
            raise ValueError(f"fixed_point needs beta = 2 or 1 (dyadic code weights), not {m.beta}")
        if m.per_channel:  # each channel its own 12 significant bits; the layer's grid is the finest
            t, f = round_each(m.theta.double(), THETA_BITS)
            m.theta = t.to(m.theta.dtype)
        else:
            t, f = round_significant(torch.tensor([m.theta], dtype=torch.float64), THETA_BITS)
            m.theta = float(t)
        grid[a] = f + m.timesteps + 1  # code step theta 2^-T, and the offset phi theta 2^-T (phi = 1/2)
        if m.code.own_params(m):
            own_bits[a] = _round_own_params(m)
    grid[plan.input] = INPUT_BITS
    for p in gm.graph.nodes:
        if p in plan.pools:
            grid[p] = max(grid[s] for s in plan.pools[p].sources)

    def value_bound(src) -> tuple[float, float]:  # (constant, coefficient of max|x|)
        if plan.is_analog(src):
            return (0.0, 1.0)
        return (max(_theta_max(gm.get_submodule(r.target)) for r in plan.roots(src)), 0.0)

    bounds = []
    for sink, region in plan.regions.items():
        weighted = _check_region(gm, region, env)
        e = max(grid[s] for s in region.sources)  # identity paths (shortcuts, concat)
        c, k = 0.0, 0.0
        direct = _sources_of(region.value, region) - {s for w in weighted for s in _sources_of(w.args[0], region)}
        for s in direct:
            c, k = c + value_bound(s)[0], k + value_bound(s)[1]
        for w in weighted:
            mod = gm.get_submodule(w.target)
            with torch.no_grad():
                wt, f = round_significant(mod.weight.double(), WEIGHT_BITS)
                mod.weight.copy_(wt.to(mod.weight.dtype))
            srcs = _sources_of(w.args[0], region)
            e = max(e, f + max(grid[s] for s in srcs))
            r = _row_abs_sum_max(mod)
            for s in srcs:
                c, k = c + r * value_bound(s)[0], k + r * value_bound(s)[1]
        e += _averaging_bits(gm, region, env)  # averages divide by powers of two: as many bits finer
        for w in weighted:
            mod = gm.get_submodule(w.target)
            if mod.bias is not None:
                with torch.no_grad():
                    mod.bias.copy_((torch.round(mod.bias.double() * 2.0**e) / 2.0**e).to(mod.bias.dtype))
                c += float(mod.bias.detach().abs().max())
        if sink in plan.activations:
            act = gm.get_submodule(sink.target)
            c += _theta_max(act)  # the offset and the generate phase stay below theta
            if act.shift is not None:  # the bias correction is a bias: on the same grid
                act.shift = torch.round(act.shift.double() * 2.0**e).div(2.0**e).to(act.shift.dtype)
                c += float(act.shift.abs().max())
        bounds.append((e, c, k))
        if sink in own_bits:  # e.g. the leaky OFF potential -slope (v - offset) + offset: factors below 1, a finer grid
            bounds.append((e + own_bits[sink], c, k))
    return bounds


def _round_own_params(act) -> int:
    """Round each of the layer code's own parameters (codes.py; a float, or per channel: the leaky
    slope) to OWN_BITS significant bits on one grid 2^-F per parameter; returns the largest F.
    Every such parameter is a factor in [0, 1) (the code's contract)."""
    rounded, bits = {}, 0
    for name, s in act.code.own_params(act).items():
        t = s.double() if torch.is_tensor(s) else torch.tensor([s], dtype=torch.float64)
        t, f = round_significant(t, OWN_BITS)
        rounded[name], bits = (t.to(s.dtype) if torch.is_tensor(s) else float(t[0])), max(bits, f)
    act.code.set_own_params(act, rounded)
    return bits


def round_input(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.double() * 2.0**INPUT_BITS) / 2.0**INPUT_BITS


def check_bounds(bounds, x: torch.Tensor) -> None:
    """Raise unless every partial sum stays inside float64's exact range for input x."""
    xmax = float(x.abs().max()) if x.numel() else 0.0
    for e, c, k in bounds:
        if (c + k * xmax) * 2.0**e >= EXACT_LIMIT:
            raise ValueError(f"fixed_point: potentials up to {c + k * xmax:.3g} on the grid 2^-{e} leave float64's exact "
                             "range; use fewer time steps or smaller inputs")
