"""Activation observers and the per-layer threshold (and optional beta) search.

An observer sees a layer's pre-activation z on calibration data and keeps its exact maximum and a
uniform random sample of its positive values (negative z give 0 both in the ANN and in q, so they
add nothing to the conversion error). Thresholds are then chosen on that sample:

- "max":          the largest code equals the largest activation,
- "percentile:P": the largest code equals the P-th percentile of the positive activations,
- "mse":          minimise mean (a - q(z))^2, a = ReLU(z) (clipped at 6 for ReLU6), over a
                  log-spaced grid of clip values, then a finer grid around the best.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import numpy as np
import torch

from .neuron import max_value, quantize_fast

SAMPLE_SIZE = 65_536  # positive values kept per layer
BETA_CANDIDATES = (1.0, 1.25, 1.5, 1.75, 2.0)


class Observer:
    """Max and a bounded uniform sample (reservoir over batches) of the positive values of z."""

    def __init__(self, sample_size: int = SAMPLE_SIZE, seed: int = 0):
        self.sample_size = sample_size
        self.max = 0.0
        self.sample = torch.empty(0)
        self.keys = torch.empty(0)  # random keys of the sampled values (smallest kept)
        self.gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def update(self, z: torch.Tensor) -> None:
        z = z.detach().float().flatten().cpu()  # statistics live on the host: the same thresholds on any device
        if not bool(torch.isfinite(z).all()):
            raise ValueError("calibration produced NaN/Inf activations (check the calibration data and the model)")
        pos = z[z > 0]
        if pos.numel() == 0:
            return
        self.max = max(self.max, float(pos.max()))
        # reservoir sampling by random keys: keep the sample_size smallest keys seen so far
        n_new = pos.numel()
        keys_new = torch.rand(n_new, generator=self.gen)
        vals = torch.cat([self.sample, pos])
        keys = torch.cat([self.keys, keys_new])
        if vals.numel() > self.sample_size:
            idx = torch.topk(keys, self.sample_size, largest=False).indices
            vals, keys = vals[idx], keys[idx]
        self.sample, self.keys = vals, keys


class ChannelObserver:
    """Per channel (dim 1 of z): the exact mean and maximum of z, and a bounded uniform sample of
    z itself, negative values included -- a bias correction shifts z, which moves values across 0.

    The sample is drawn by position: one random key per position of z (batch and spatial index),
    the positions with the smallest keys kept, and every channel sampled at those positions. So
    each channel's sample is a uniform sample of that channel, and their union a uniform sample of
    the layer, while the bookkeeping (keys, the top-k that keeps the reservoir bounded, the
    gathering) is per position, not per element: C times less work than keying every element.

    Paired mode (sequential calibration): a first pass of the float ANN hands the observer its
    pre-activations (``capture``); the second pass, with the layers before quantized, samples z at
    the same positions beside them, so a threshold can be judged against the float ANN's output."""

    def __init__(self, sample_size: int = 2**20, seed: int = 0,
                 min_per_channel: int = 4096, max_per_channel: int = 65_536, means_only: bool = False):
        self.budget = (sample_size, min_per_channel, max_per_channel)
        self.means_only = means_only  # a bias correction's quantized pass needs only the means
        self.per_channel = 0  # sample size per channel, fixed at the first batch
        self.sum = self.count = self.max = None
        self.target_sum = None
        self.sample = self.target = self.keys = None
        self.capture = False  # the next update is the float ANN's z for the pairs
        self._captured = None
        self.gen = torch.Generator().manual_seed(seed)

    def _positions(self, z: torch.Tensor) -> torch.Tensor:
        """z as [positions N, C, R] on the host (statistics live there: the same thresholds on any device)."""
        z = z.detach().cpu()
        if not bool(torch.isfinite(z).all()):
            raise ValueError("calibration produced NaN/Inf activations (check the calibration data and the model)")
        if z.dim() < 2:
            return z.reshape(1, 1, -1)
        return z.reshape(z.shape[0], z.shape[1], -1)

    @torch.no_grad()
    def update(self, z: torch.Tensor) -> None:
        if self.capture:
            self._captured = self._positions(z)
            return
        z = self._positions(z)
        tz, self._captured = self._captured, None
        N, C, R = z.shape
        if self.sum is None:
            total, lo, hi = self.budget
            self.per_channel = max(lo, min(hi, total // C))
            self.sum, self.count = torch.zeros(C, dtype=torch.float64), 0
            self.max = torch.full((C,), -math.inf, dtype=torch.float64)
            self.sample, self.keys = torch.empty(C, 0), torch.empty(0)
            if tz is not None:
                self.target, self.target_sum = torch.empty(C, 0), torch.zeros(C, dtype=torch.float64)
        self.sum += z.sum(dim=(0, 2), dtype=torch.float64)
        self.count += N * R
        self.max = torch.maximum(self.max, z.amax(dim=(0, 2)).double())
        if self.target is not None:
            if tz is None or tz.shape != z.shape:
                raise AssertionError("paired calibration: the float pass and the quantized pass disagree")
            self.target_sum += tz.sum(dim=(0, 2), dtype=torch.float64)
        if self.means_only:
            return
        keys = torch.rand(N * R, generator=self.gen)
        if self.keys.numel() >= self.per_channel:  # full: only keys below the largest kept can enter
            cand = (keys < self.keys.max()).nonzero().squeeze(1)
        else:
            cand = torch.arange(N * R)
        n, r = cand // R, cand % R
        keys = torch.cat([self.keys, keys[cand]])
        vals = torch.cat([self.sample, z[n, :, r].T.float()], dim=1)
        tgts = None if self.target is None else torch.cat([self.target, tz[n, :, r].T.float()], dim=1)
        if keys.numel() > self.per_channel:
            idx = torch.topk(keys, self.per_channel, largest=False).indices
            keys, vals = keys[idx], vals[:, idx]
            tgts = None if tgts is None else tgts[:, idx]
        self.sample, self.keys, self.target = vals, keys, tgts

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)

    @property
    def target_mean(self) -> torch.Tensor:
        return self.target_sum / max(self.count, 1)


def choose_channel_thresholds(obs: ChannelObserver, cap, spec, beta, timesteps, phi,
                              shift: torch.Tensor | None = None, per_channel: bool = True):
    """Thresholds from a ChannelObserver's sample after adding ``shift`` (the bias correction) to
    it, judged against the ANN's activation of the same z -- or, paired, of the float ANN's z at the
    same position. Returns (theta, error): theta a float32 tensor [C] (per channel) or a float (per
    layer: the channels' samples pooled); error the mean squared error of q over the sample."""
    sample = obs.sample.double()
    top = obs.max.clone()
    if shift is not None:
        sample = sample + shift.double()[:, None]
        top = top + shift.double()
    sample = sample.float()
    target = sample if obs.target is None else obs.target
    if not per_channel:
        sample, target, top = sample.reshape(1, -1), target.reshape(1, -1), top.max().reshape(1)
    theta, err = search_thresholds(sample, target, top.float(), cap, spec, beta, timesteps, phi)
    if not per_channel:
        return float(theta[0]), float(err.mean())
    return theta, float(err.mean())


def search_thresholds(sample, target, top, cap, spec, beta, timesteps, phi):
    """Per row of sample [C, S]: theta (float32 [C]) and its error [C]. See the module docstring."""
    kind, p = parse_threshold(spec)
    levels_sum = max_value(1.0, beta, timesteps)
    top = top.clamp(min=0.0)
    if cap is not None:
        top = top.clamp(max=cap)
    if kind == "max":
        clip = top
    elif kind == "percentile":
        clip = torch.stack([torch.tensor(_percentile(row[row > 0], p), dtype=torch.float32) for row in sample])
        clip = torch.minimum(clip, top)
    else:
        best_err = torch.full(top.shape, math.inf, dtype=torch.float64)
        best_clip = top.clone()
        grid = top[None, :] * torch.from_numpy(np.geomspace(1e-2, 1.0, 48)).float()[:, None]
        errors = _candidate_errors(sample, _activation(target, cap), beta, timesteps, phi)
        for _ in range(2):  # coarse then fine, every channel at once
            for c in grid:
                err = errors((c / levels_sum).float())
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_clip = torch.where(better, c, best_clip)
            lo, hi = best_clip / 1.1, torch.minimum(top, best_clip * 1.1)
            grid = lo[None, :] + (hi - lo)[None, :] * torch.linspace(0, 1, 21)[:, None]
        clip = best_clip
    dead = clip <= 0  # a dead channel: any threshold gives zero spikes and zero error
    theta = (torch.where(dead, torch.ones_like(clip), clip) / levels_sum).float()
    return theta, _errors(sample, target, cap, theta, beta, timesteps, phi)


def _candidate_errors(sample: torch.Tensor, a: torch.Tensor, beta, timesteps, phi):
    """A function theta [C] -> per-row mean (a - q(z))^2 over the sample [C, S], for ranking the
    search's 69 candidates (the chosen one's error is then computed element by element).

    beta = 2 (when the code has fewer levels than a row has values): q is a staircase in z with
    known steps -- code k = clamp(floor((z / theta + phi 2^-T) 2^T), 0, 2^T - 1), value k * d,
    d = theta / 2^T -- so the sample is sorted once and each candidate costs one ``searchsorted`` of
    its 2^T - 1 step edges, not a pass over every value. With n_k values and sums A1_k, A2_k of a
    and a^2 in step k, the error sum is  sum(a^2) - 2 d sum_k k A1_k + d^2 sum_k k^2 n_k, and summing
    by parts turns both sums into sums over the edges' positions i_k in prefix sums P (K = 2^T):
        sum_k k A1_k = (K - 1) P1[S] - sum_{k=1}^{K-1} P1[i_k],
        sum_k k^2 n_k = (K - 1)^2 S - sum_{k=1}^{K-1} (2k - 1) i_k.
    Computed in float64, it matches a float64 element-wise error to rounding (tests check it) --
    closer than the element-wise path below, whose float32 q - a loses digits where q is large."""
    C, S = sample.shape
    K = 2**timesteps
    if S == 0:
        return lambda theta: torch.zeros(C, dtype=torch.float64)
    # a search of one edge costs ~30 times a value's pass here (2-core CPU, measured): bin only
    # when the edges are that much fewer than the values
    if float(beta) != 2.0 or 32 * (K - 1) > S:
        return lambda theta: _errors(sample, a, None, theta, beta, timesteps, phi, a=a)
    z, order = sample.sort(dim=1)  # float32 sorts faster; its values are exact in float64
    z = z.double()
    a = a.double().gather(1, order)
    zero = torch.zeros(C, 1, dtype=torch.float64)
    p1 = torch.cat([zero, a.cumsum(1)], dim=1)
    sum_a2 = a.square().sum(1)
    k = torch.arange(1, K, dtype=torch.float64)
    edge_at = (k - phi)[None, :]  # in units of d
    odd = (2 * k - 1)[None, :]

    def errors(theta: torch.Tensor) -> torch.Tensor:
        d = theta.double()[:, None] / K  # exact: K is a power of two
        i = torch.searchsorted(z, edge_at * d, side="left")  # values below edge k sit in steps < k
        ka = (K - 1) * p1[:, S] - p1.gather(1, i).sum(1)
        kkn = float((K - 1) ** 2 * S) - (odd * i).sum(1)
        d = d[:, 0]
        return (sum_a2 - 2 * d * ka + d * d * kkn) / S

    return errors


def _activation(target: torch.Tensor, cap) -> torch.Tensor:
    return target.clamp(min=0.0) if cap is None else target.clamp(0.0, cap)


def _errors(sample: torch.Tensor, target: torch.Tensor, cap, theta: torch.Tensor, beta, timesteps, phi,
            a: torch.Tensor | None = None) -> torch.Tensor:
    """Per row, mean (a - q(z))^2 over the sample [C, S]; a = the ANN's activation of ``target``
    (``_activation(target, cap)``, passed in when the caller has it)."""
    if sample.shape[1] == 0:
        return torch.zeros(sample.shape[0], dtype=torch.float64)
    q = quantize_fast(sample, theta[:, None], beta, timesteps, phi, exact=False)
    d = q.sub_(_activation(target, cap) if a is None else a).double()  # (q - a)^2 = (a - q)^2 exactly
    return d.mul_(d).mean(1)  # in place: this runs 69 times per layer on up to 2^21 values


def parse_threshold(spec) -> tuple[str, float | None]:
    if isinstance(spec, str):
        if spec in ("mse", "max"):
            return spec, None
        m = re.fullmatch(r"percentile:(\d+(?:\.\d+)?)", spec)
        if m and 0 < float(m.group(1)) <= 100:
            return "percentile", float(m.group(1))
    raise ValueError(f"unknown threshold spec {spec!r}; use 'mse', 'max' or 'percentile:P' with 0 < P <= 100")


def _percentile(sample: torch.Tensor, p: float) -> float:
    return float(np.percentile(sample.numpy(), p)) if sample.numel() else 0.0


def _target(sample: torch.Tensor, cap: float | None) -> torch.Tensor:
    return sample if cap is None else sample.clamp(max=cap)


def quantization_error(sample, cap, theta, beta, timesteps, phi) -> float:
    """Mean squared error between the ANN activation and q on the sample (positive z only)."""
    if sample.numel() == 0:
        return 0.0
    q = quantize_fast(sample, theta, beta, timesteps, phi, exact=False)
    return float(((_target(sample, cap) - q) ** 2).mean())


def _f32(x: float) -> float:
    """Thresholds are kept float32-representable: the closed-form quantizer's exactness relies on it."""
    return float(np.float32(x))


def choose_threshold(obs: Observer, cap, spec, beta, timesteps, phi) -> tuple[float, float]:
    """Returns (theta, error). theta is the threshold; the largest code is theta*sum beta^-t."""
    kind, p = parse_threshold(spec)
    levels_sum = max_value(1.0, beta, timesteps)
    top = obs.max if cap is None else min(obs.max, cap)
    if top <= 0:  # a dead layer: any threshold gives zero spikes and zero error
        theta = _f32(1.0 / levels_sum)
        return theta, 0.0
    sample = obs.sample
    if kind == "max":
        clip = top
    elif kind == "percentile":
        clip = min(top, _percentile(sample, p))
    else:
        best = None
        grid = top * np.geomspace(1e-2, 1.0, 48)
        for _ in range(2):  # coarse then fine
            for c in grid:
                theta = _f32(c / levels_sum)
                err = quantization_error(sample, cap, theta, beta, timesteps, phi)
                if best is None or err < best[1]:
                    best = (theta, err, c)
            c = best[2]
            grid = np.linspace(c / 1.1, min(top, c * 1.1), 21)
        return best[0], best[1]
    theta = _f32(clip / levels_sum)
    return theta, quantization_error(sample, cap, theta, beta, timesteps, phi)


def iterate_calibration(calibration) -> Iterable[torch.Tensor]:
    """Tensors from a tensor batch, or an iterable of tensors or (input, label) pairs."""
    if torch.is_tensor(calibration):
        yield calibration
        return
    if calibration is None:
        raise ValueError("calibration data is required (a tensor batch or an iterable of batches)")
    try:
        it = iter(calibration)
    except TypeError:
        raise ValueError(f"calibration must be a tensor or an iterable of tensors, got {type(calibration).__name__}") from None
    for item in it:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not torch.is_tensor(x):
            raise ValueError(f"calibration items must be tensors or (input, label) pairs, got {type(x).__name__}")
        yield x


def check_batch(x: torch.Tensor, where: str = "calibration data") -> None:
    if x.numel() == 0:
        raise ValueError(f"{where} is empty")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{where} contains NaN or Inf")
