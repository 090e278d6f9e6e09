"""Fixed-point mode: bit-exact agreement of the time-stepped simulator and the twin, by construction.

In floating point the simulator (currents summed step by step) and the twin (one conv on decoded
values) sum in different orders, so a digit can flip where z sits within rounding of a code
boundary. Here every number the network handles is made a multiple of one power of two, 2^-E, and
small enough that |value| * 2^E < 2^53. Then every product and sum in float64 is exact -- the order
no longer matters -- and the two engines agree to the last bit. What is rounded (and so changes the
function a little, identically for both engines):

- weights: 12 significant bits per tensor (a per-tensor power-of-two scale),
- thresholds: 12 significant bits,
- biases: to the grid 2^-E,
- the analog input: to the grid 2^-INPUT_BITS.

Requires beta = 2 or 1 (dyadic code weights), average pools over power-of-two areas and no two
weighted ops in a row without a spiking layer between. A bound on every partial sum (weight row
sums x thresholds + biases + max|input|) is checked against float64's exact range before each run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .graph import GraphPlan, node_shapes

WEIGHT_BITS = 12
THETA_BITS = 12
INPUT_BITS = 12  # fractional bits of the analog input grid
EXACT_LIMIT = 2.0**53  # integers below 2^53 are exact in float64


def round_significant(t: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """Round to multiples of 2^-F where F makes max|t| use ``bits`` significant bits. Returns (t, F)."""
    m = float(t.abs().max()) if t.numel() else 0.0
    if m == 0.0:
        return t.clone(), 0
    f = bits - 1 - math.floor(math.log2(m))
    return torch.round(t * 2.0**f) / 2.0**f, f


def _power_of_two(x: float) -> bool:
    return x > 0 and float(x).is_integer() and (int(x) & (int(x) - 1)) == 0


WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)


AVERAGING_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, torch.mean}
AVERAGING_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)


def _check_average(gm, n, shapes) -> None:
    """An average must divide by a power of two, the same one everywhere (no border corrections)."""
    mod = gm.get_submodule(n.target) if n.op == "call_module" else None
    averaging = (isinstance(mod, AVERAGING_MODULES) or (n.op == "call_function" and n.target in AVERAGING_FUNCTIONS)
                 or (n.op == "call_method" and n.target == "mean"))
    if not averaging:
        return
    if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d)):
        k = mod.kernel_size
        k = k if isinstance(k, tuple) else (k,) * (2 if isinstance(mod, nn.AvgPool2d) else 1)
        area = math.prod(k)
        uniform = mod.count_include_pad and getattr(mod, "divisor_override", None) is None
    else:
        src, out = shapes[n.all_input_nodes[0]], shapes[n]
        area = math.prod(src[1:]) / math.prod(out[1:])
        uniform = all(s % o == 0 for s, o in zip(src[2:], out[2:])) if len(out) == len(src) else True
    if not (uniform and _power_of_two(area) and area <= 4096):
        raise ValueError(f"fixed_point needs averages over power-of-two areas; '{n.name}' averages {area:g}")


def _check_region(gm: nn.Module, region, shapes) -> list:
    """Weighted ops of a region; refuses what cannot be exact under different summation orders."""
    weighted = []
    for n in region.nodes:
        _check_average(gm, n, shapes)
        if n.op != "call_module":
            continue
        mod = gm.get_submodule(n.target)
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            raise ValueError(f"fixed_point needs batch norm folded into a conv/linear; '{n.target}' stands alone")
        if isinstance(mod, WEIGHTED):
            weighted.append(n)
    inside = set(region.nodes)
    for w in weighted:
        stack, seen = list(w.all_input_nodes), set()
        while stack:
            n = stack.pop()
            if n in seen or n not in inside:
                continue
            seen.add(n)
            if n in weighted:
                raise ValueError(
                    f"fixed_point: '{w.target}' takes the output of '{n.target}' with no spiking layer between "
                    "(e.g. MobileNet-v2's linear bottleneck); such chains cannot be made order-independent")
            stack.extend(n.all_input_nodes)
    return weighted


def _sources_of(node, region) -> set:
    out, stack, seen, inside = set(), [node], set(), set(region.nodes)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in region.sources:
            out.add(n)
        elif n in inside:
            stack.extend(n.all_input_nodes)
    return out


def _row_abs_sum_max(mod: nn.Module) -> float:
    w = mod.weight.detach().double().abs()
    return float(w.flatten(1).sum(1).max())


def apply(plan: GraphPlan, timesteps: int, input_shape: tuple) -> list[tuple[int, float, float]]:
    """Round the converted network in place. Returns, per spiking layer and the output, (E, c, k):
    every partial sum of its potential is a multiple of 2^-E and at most c + k * max|x| in size
    (x the analog input), which ``check_bounds`` compares with the exact range of float64."""
    gm = plan.gm
    shapes = node_shapes(gm, torch.zeros((1,) + tuple(input_shape), dtype=torch.float64))
    spikers = list(plan.activations) + ([plan.coder] if plan.coder is not None else [])
    grid = {}  # source -> fractional bits of the values it sends
    for a in spikers:
        m = gm.get_submodule(a.target)
        if float(m.beta) not in (1.0, 2.0):
            raise ValueError(f"fixed_point needs beta = 2 or 1 (dyadic code weights), not {m.beta}")
        t, f = round_significant(torch.tensor([m.theta], dtype=torch.float64), THETA_BITS)
        m.theta = float(t)
        grid[a] = f + timesteps + 1  # code step theta 2^-T, and the offset phi theta 2^-T (phi = 1/2)
    grid[plan.input] = INPUT_BITS
    for p in plan.maxpools:
        grid[p] = grid[plan.root_source(p)]
    def value_bound(src) -> tuple[float, float]:  # (constant, coefficient of max|x|)
        root = plan.root_source(src)
        return (0.0, 1.0) if root is plan.input else (gm.get_submodule(root.target).theta, 0.0)

    bounds = []
    for sink, region in plan.regions.items():
        weighted = _check_region(gm, region, shapes)
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
        e += 12  # averages divide by powers of two (up to 4096 elements)
        for w in weighted:
            mod = gm.get_submodule(w.target)
            if mod.bias is not None:
                with torch.no_grad():
                    mod.bias.copy_((torch.round(mod.bias.double() * 2.0**e) / 2.0**e).to(mod.bias.dtype))
                c += float(mod.bias.detach().abs().max())
        if sink in plan.activations:
            c += gm.get_submodule(sink.target).theta  # the offset and the generate phase stay below theta
        bounds.append((e, c, k))
    return bounds


def round_input(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.double() * 2.0**INPUT_BITS) / 2.0**INPUT_BITS


def check_bounds(bounds, x: torch.Tensor) -> None:
    """Raise unless every partial sum stays inside float64's exact range for input x."""
    xmax = float(x.abs().max()) if x.numel() else 0.0
    for e, c, k in bounds:
        if (c + k * xmax) * 2.0**e >= EXACT_LIMIT:
            raise ValueError(f"fixed_point: potentials up to {c + k * xmax:.3g} on the grid 2^-{e} leave float64's exact "
                             "range; use fewer time steps or smaller inputs")
