"""Thresholds from batch-norm statistics alone: no image, not even a synthesised one.

Under BN's own assumption, a BN layer's output is, per channel, distributed with mean beta (its
bias) and standard deviation |gamma| (its weight) on the data it was trained on. A spiking layer
whose pre-activation is a (folded) BN output therefore has z ~ N(beta_c, gamma_c^2) per channel,
and its threshold can be chosen to minimise the expected quantization error E[(q(z) - act(z))^2]
under that distribution: the usual MSE search (calibrate.py) run on the distribution's quantiles
instead of observed activations.

Moments are propagated where that is standard (each step says what it assumes):
- a spiking layer's output: the moments of act(z) (ReLU, or ReLU6's clip) for normal z;
- a sum or difference of such values: means add, variances add (independent terms);
- the sum feeds the next layer as normal with those moments (residual blocks);
- an average pool (a mean of k independent values: the variance over k), flatten (each channel's
  moments for each of its positions) and a linear layer without BN (means through W, variances
  through W squared: independent inputs) -- a classifier's hidden layers;
- a max-pool of a spiking layer's output (ResNet's stem): the k values of a window taken as
  independent draws of that layer's z, so the pool gives act(max of k draws), whose quantiles are
  those of the normal at u^(1/k). Neighbouring pixels are correlated, so this overstates the
  window's maximum (an upper bound under the normal model).
Anything else before a spiking layer (concat, pools, interpolation, scaling, ...) has no moments
here: that layer is calibrated on synthesised inputs instead (datafree.py), and the result says
which layers came from where. Bias correction from the statistics (each layer's expected output
error carried through the next layer's synapses, as in data-free quantization) is opt-in,
``bias_correction=True``: measured on the shipped networks it was not better on balance.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx

from . import ops
from .activation import SpikeActivation
from .calibrate import search_thresholds

QUANTILES = 16384  # per channel: the expected error is their mean; the largest lies 4.0 sd out, beyond
# the best clip of the normals in tests/test_bn_thresholds.py (4096 reach 3.5 sd: short of it at T = 6)


def standard_quantiles(n: int = QUANTILES) -> torch.Tensor:
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.special.ndtri(u)


def _moments_of_activation(mean, var, cap, window: int = 1):
    """Mean and variance of act(z) for z ~ N(mean, var) per channel (by quantiles); with
    ``window`` = k > 1, of act(max of k independent such z) (a max-pool's output)."""
    q = standard_quantiles() if window == 1 else _max_quantiles(window)
    z = mean[:, None] + var.clamp_min(0).sqrt()[:, None] * q[None, :]
    a = z.clamp(0.0, cap) if cap is not None else z.clamp_min(0.0)
    return a.mean(1), a.var(1, unbiased=False)


def _max_quantiles(k: int, n: int = QUANTILES) -> torch.Tensor:
    """Quantiles of the maximum of k independent standard normals: Phi^-1(u^(1/k))."""
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.special.ndtri(u ** (1.0 / k))


def _max_pool_window(gm, n: fx.Node) -> int | None:
    """Values per window of a max-pool node (the op table says which nodes are), or None if n is
    not one or has no fixed kernel (adaptive pools)."""
    if ops.role_of(gm, n) != ops.MAXPOOL:
        return None
    if n.op == "call_module":
        mod = gm.get_submodule(n.target)
        name, k = type(mod).__name__, getattr(mod, "kernel_size", None)
    else:
        name, k = getattr(n.target, "__name__", ""), ops._arg(n.args, n.kwargs, 1, "kernel_size")
    if k is None or "adaptive" in name.lower():
        return None
    return math.prod(k) if isinstance(k, (tuple, list)) else int(k) ** int(name[-2])


def _window(shape_in, shape_out) -> int | None:
    """Values averaged per output of an average pool that tiles its input (adaptive or not)."""
    if shape_in is None or shape_out is None or len(shape_in) != len(shape_out):
        return None
    n_in, n_out = math.prod(shape_in[2:]), math.prod(shape_out[2:])
    return n_in // n_out if n_out and n_in % n_out == 0 else None


def pre_activation_moments(plan, shapes: dict | None = None) -> dict:
    """Per spiking layer node (not the input coder), (mean [C], variance [C]) of its pre-activation
    where BN statistics determine it; layers missing from the dict have none. ``shapes`` (node ->
    output shape, batch first; plan.node_shapes) lets moments pass average pools, flatten and
    linear layers without BN (a classifier's hidden layers)."""
    walk = _Moments(plan.gm, shapes or {})
    result = {}
    for a in plan.activations:
        if plan.gm.get_submodule(a.target).leaky:
            continue  # two populations: not modelled here
        mom = walk.of(a.args[0])
        if mom is not None:
            result[a] = mom
    return result


class _Moments:
    """(mean, variance) per channel of graph values, walked back from a node to BN statistics."""

    def __init__(self, gm, shapes: dict):
        self.gm, self.shapes, self.memo = gm, shapes, {}

    def of(self, n) -> tuple | None:
        if n not in self.memo:
            self.memo[n] = self._of(n)
        return self.memo[n]

    def _of(self, n) -> tuple | None:
        if not isinstance(n, fx.Node):
            return None
        out = self._module(n) if n.op == "call_module" else None
        if out is None and (window := _max_pool_window(self.gm, n)) and isinstance(n.args[0], fx.Node) and \
                n.args[0].op == "call_module":
            act = self.gm.get_submodule(n.args[0].target)  # a max-pool of a spiking layer's output
            if isinstance(act, SpikeActivation) and act.code.populations == 1:
                inner = self.of(n.args[0].args[0])
                return None if inner is None else _moments_of_activation(*inner, act.cap, window)
        elif n.op == "call_function" and n.target in (operator.add, operator.iadd, torch.add, operator.sub,
                                                      torch.sub) and len(n.args) == 2 and not n.kwargs:
            return self._sum(n)
        return out

    def _module(self, n) -> tuple | None:
        mod = self.gm.get_submodule(n.target)
        if getattr(mod, "bn_moments", None) is not None:  # a conv/linear with its BN folded in
            mean, sd = mod.bn_moments
            return mean.double(), sd.double() ** 2
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and mod.affine:  # a BN on its own
            return mod.bias.detach().double(), mod.weight.detach().double() ** 2
        if isinstance(mod, SpikeActivation) and mod.code.populations == 1:
            inner = self.of(n.args[0])
            return None if inner is None else _moments_of_activation(*inner, mod.cap)
        if _max_pool_window(self.gm, n) is None:
            return self._through(n, mod)
        return None

    def _sum(self, n) -> tuple | None:
        """Independent summands: means add (or subtract), variances add."""
        a, b = (self.of(x) if isinstance(x, fx.Node) else None for x in n.args)
        if a is None or b is None or a[0].shape != b[0].shape:
            return None
        return (a[0] + b[0] if n.target in (operator.add, operator.iadd, torch.add) else a[0] - b[0]), a[1] + b[1]

    def _through(self, n, mod) -> tuple | None:
        """Moments after a module without BN statistics of its own, from its input's."""
        inner = self.of(n.args[0]) if n.args and isinstance(n.args[0], fx.Node) else None
        if inner is None:
            return None
        mean, var = inner
        shapes = self.shapes
        if ops.role_of(self.gm, n) == ops.IDENTITY:  # dropout and the like in an evaluated network
            return inner
        if isinstance(mod, torch.nn.Flatten) and (shape := shapes.get(n.args[0])) is not None \
                and mod.start_dim == 1 and mod.end_dim == -1 and len(shape) > 2 and mean.numel() == shape[1]:
            per = math.prod(shape[2:])
            return mean.repeat_interleave(per), var.repeat_interleave(per)  # channel-major, as flatten lays it out
        if isinstance(mod, (torch.nn.modules.pooling._AvgPoolNd, torch.nn.modules.pooling._AdaptiveAvgPoolNd)) and \
                (k := _window(shapes.get(n.args[0]), shapes.get(n))):
            return mean, var / k  # a mean of k independent values
        if isinstance(mod, torch.nn.Linear) and mean.numel() == mod.in_features:
            w = mod.weight.detach().double()  # independent inputs: means and variances map linearly
            b = mod.bias.detach().double() if mod.bias is not None else 0.0
            return w @ mean + b, (w * w) @ var
        return None


GRID = 0.01  # mean/sd (absolute) and cap/sd (relative) are rounded to this before the search


def thresholds_from_moments(mean, var, cap, spec, beta, timesteps, phi, per_channel: bool = True,
                            cache: dict | None = None):
    """(theta, expected error): the MSE search on N(mean, var)'s quantiles, per channel or pooled.

    Per channel the search runs once per distinct shape, not per channel: q(s z; s theta) =
    s q(z; theta) and act(s z) = s act_{cap/s}(z), so the best theta / sd depends only on mean/sd and
    cap/sd. Those are rounded to GRID (a shift of at most 0.005 sd), searched on the standard
    normal's quantiles, and scaled back; ``cache`` (one per conversion) shares the results between
    layers. Channels with zero spread keep the direct search."""
    sd = var.clamp_min(0).sqrt()
    if not per_channel:
        sample = (mean[:, None] + sd[:, None] * standard_quantiles()[None, :]).float()
        theta, err = search_thresholds(sample.reshape(1, -1), sample.reshape(1, -1), sample.max().reshape(1), cap, spec, beta,
                             timesteps, phi)
        return float(theta[0]), float(err.mean())
    cache = {} if cache is None else cache
    live = sd > 0
    r = torch.where(live, torch.round(mean / torch.where(live, sd, 1.0) / GRID) * GRID, 0.0)
    c = (torch.exp(torch.round(torch.log(cap / torch.where(live, sd, 1.0)) / GRID) * GRID) if cap is not None
         else torch.zeros_like(sd))
    keys = [(float(r[i]), float(c[i]) if cap is not None else None, spec, float(beta), int(timesteps), float(phi))
            for i in range(len(sd))]
    todo: dict = {}
    for i, k in enumerate(keys):
        if live[i] and k not in cache:
            todo.setdefault(k[1], set()).add(k)
    q = standard_quantiles()[None, :]
    for c_k, ks in todo.items():  # one search per cap/sd value, every mean/sd at once
        ks = sorted(ks)
        sample = (torch.tensor([k[0] for k in ks], dtype=torch.float64)[:, None] + q).float()
        theta_k, err_k = search_thresholds(sample, sample, sample.max(1).values, c_k, spec, beta, timesteps, phi)
        cache.update({k: (float(t), float(e)) for k, t, e in zip(ks, theta_k, err_k)})
    theta = torch.empty(len(sd), dtype=torch.float32)
    err = torch.empty(len(sd), dtype=torch.float64)
    for i, k in enumerate(keys):
        if live[i]:
            theta[i] = cache[k][0] * float(sd[i])
            err[i] = cache[k][1] * float(sd[i]) ** 2
    if not bool(live.all()):  # constant channels: their own (degenerate) sample
        dead = ~live
        sample = mean[dead][:, None].float().expand(-1, 16)
        theta_d, err_d = search_thresholds(sample, sample, sample.max(1).values, cap, spec, beta, timesteps, phi)
        theta[dead], err[dead] = theta_d, err_d.double()
    return theta, float(err.mean())


def expected_output_errors(plan, moments: dict) -> dict:
    """Per spiking layer with moments: E[q(z)] - E[act(z)] per channel for z ~ N(mean, var), with
    the layer's thresholds -- the mean error its train adds to what the next layers receive."""
    from .neuron import quantize_fast

    errors = {}
    for a, (mean, var) in moments.items():
        m = plan.gm.get_submodule(a.target)
        z = mean[None, :] + var.clamp_min(0).sqrt()[None, :] * standard_quantiles()[:, None]  # [Q, C]
        theta = m.theta.detach().double().flatten()[None, :] if m.per_channel else m.theta
        act = z.clamp(0.0, m.cap) if m.cap is not None else z.clamp_min(0.0)
        errors[a] = (quantize_fast(z, theta, m.beta, m.timesteps, m.phi) - act).mean(0)
    return errors


def bias_corrections(plan, moments: dict, shapes: dict) -> dict:
    """Bias correction from the statistics (as in data-free quantization, Nagel et al. 2019): per
    spiking layer whose sources are all modelled layers (or the analog input), the shift that
    cancels the mean error its sources' trains bring: minus the per-channel spatial mean of its
    region's linear part applied to their expected errors (expected_output_errors), each a constant
    map over its channel. The thresholds were chosen for the corrected mean, so nothing else moves."""
    from .plan import run_region

    errors = expected_output_errors(plan, moments)
    shifts = {}
    for a in plan.activations:
        if a not in moments or a not in plan.regions:
            continue
        region = plan.regions[a]
        if not all(s in errors or plan.is_analog(s) for s in region.sources) or \
                not any(s in errors for s in region.sources):  # fed by the analog input alone: no error
            continue
        values = {}
        for s in region.sources:
            shape = (1,) + tuple(shapes[s][1:])
            e = errors.get(s)
            values[s] = torch.zeros(shape, dtype=torch.float64) if e is None else \
                e.reshape((1, -1) + (1,) * (len(shape) - 2)).expand(shape).contiguous()
        with torch.no_grad():
            out = run_region(plan.gm, region, {s: v.to(_dtype_of(plan.gm)) for s, v in values.items()}, with_bias=False)
        shifts[a] = -(out.double().flatten(2).mean(2)[0] if out.dim() > 2 else out.double()[0])
    return shifts


def _dtype_of(gm) -> torch.dtype:
    return next(gm.parameters()).dtype
