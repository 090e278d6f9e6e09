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
- the sum feeds the next layer as normal with those moments (residual blocks).
Anything else before a spiking layer (concat, pools, interpolation, scaling, ...) has no moments
here: that layer is calibrated on synthesised inputs instead (datafree.py), and the result says
which layers came from where. No bias correction: it needs observed activations.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from .activation import SpikeActivation
from .calibrate import _search

QUANTILES = 16384  # per channel: the expected error is their mean; the largest lies 4.0 sd out, beyond
# the best clip of the normals in tests/test_bn_thresholds.py (4096 reach 3.5 sd: short of it at T = 6)


def standard_quantiles(n: int = QUANTILES) -> torch.Tensor:
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.special.ndtri(u)


def _moments_of_activation(mean, var, cap):
    """Mean and variance of act(z) for z ~ N(mean, var) per channel (by quantiles)."""
    z = mean[:, None] + var.clamp_min(0).sqrt()[:, None] * standard_quantiles()[None, :]
    a = z.clamp(0.0, cap) if cap is not None else z.clamp_min(0.0)
    return a.mean(1), a.var(1, unbiased=False)


def pre_activation_moments(plan) -> dict:
    """Per spiking layer node (not the input coder), (mean [C], variance [C]) of its pre-activation
    where BN statistics determine it; layers missing from the dict have none."""
    gm = plan.gm
    memo: dict = {}

    def moments(n):
        if n in memo:
            return memo[n]
        out = None
        if isinstance(n, fx.Node) and n.op == "call_module":
            mod = gm.get_submodule(n.target)
            if getattr(mod, "bn_moments", None) is not None:  # a conv/linear with its BN folded in
                mean, sd = mod.bn_moments
                out = (mean.double(), sd.double() ** 2)
            elif isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and mod.affine:  # a BN on its own
                out = (mod.bias.detach().double(), mod.weight.detach().double() ** 2)
            elif isinstance(mod, SpikeActivation) and not mod.signed and not mod.leaky:
                inner = moments(n.args[0])
                out = None if inner is None else _moments_of_activation(*inner, mod.cap)
        elif isinstance(n, fx.Node) and n.op == "call_function" and n.target in (
                operator.add, operator.iadd, torch.add, operator.sub, torch.sub) and len(n.args) == 2 \
                and not n.kwargs:
            a, b = (moments(x) if isinstance(x, fx.Node) else None for x in n.args)
            if a is not None and b is not None and a[0].shape == b[0].shape:
                out = (a[0] + b[0] if n.target in (operator.add, operator.iadd, torch.add) else a[0] - b[0],
                       a[1] + b[1])
        memo[n] = out
        return out

    result = {}
    for a in plan.activations:
        m = gm.get_submodule(a.target)
        if m.leaky:
            continue  # two populations: not modelled here
        mom = moments(a.args[0])
        if mom is not None:
            result[a] = mom
    return result


def thresholds_from_moments(mean, var, cap, spec, beta, timesteps, phi, per_channel: bool = True):
    """(theta, expected error): the MSE search on N(mean, var)'s quantiles, per channel or pooled."""
    sample = (mean[:, None] + var.clamp_min(0).sqrt()[:, None] * standard_quantiles()[None, :]).float()
    top = sample.max(1).values
    if not per_channel:
        sample, top = sample.reshape(1, -1), top.max().reshape(1)
    theta, err = _search(sample, sample, top, cap, spec, beta, timesteps, phi)
    if not per_channel:
        return float(theta[0]), float(err.mean())
    return theta, float(err.mean())
