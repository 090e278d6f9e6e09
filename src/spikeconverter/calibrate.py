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

import re
from collections.abc import Iterable

import numpy as np
import torch

from .neuron import max_value, quantize_fast

SAMPLE_SIZE = 65_536  # positive values kept per layer
BETA_CANDIDATES = (1.0, 1.25, 1.5, 1.75, 2.0)


class Observer:
    """Max and a bounded uniform sample (reservoir over batches) of the positive values of z."""

    def __init__(self, sample_size: int = SAMPLE_SIZE, seed: int = 0, signed: bool = False):
        self.sample_size = sample_size
        self.signed = signed  # the input coder codes |z| with two polarities
        self.max = 0.0
        self.sample = torch.empty(0)
        self.keys = torch.empty(0)  # random keys of the sampled values (smallest kept)
        self.gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def update(self, z: torch.Tensor) -> None:
        z = z.detach().float().flatten()
        if self.signed:
            z = z.abs()
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
