"""Conversion without data: calibration inputs synthesised from the network's own batch-norm
statistics.

A network with batch norm carries, in each BN layer's running mean and variance, what its
pre-activations look like on the data it was trained on. ``synthesize_inputs`` optimises a batch of
inputs, starting from Gaussian noise, so that every BN layer sees that batch with its running
statistics -- the batch mean and variance of each BN's input, per channel, pulled to the running
ones (Cai et al., "ZeroQ", CVPR 2020, for quantized ANNs; our SNN *is* a quantized network). The
usual calibration then runs on those inputs: thresholds, bias corrections and beta are chosen
without a single real image. Seeded and reproducible; its cost and how closely the statistics were
matched are reported.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

NO_BN = ("data-free conversion needs batch-norm statistics (running means and variances); this model has no "
         "BatchNorm layer with running statistics: convert it with calibration images instead")


def bn_layers(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats and m.running_mean is not None]


def bn_statistics(model: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per BN layer: (batch mean, batch variance, running mean, running variance) of its input on
    ``x``, per channel (eval mode: the running statistics are not updated)."""
    seen = []

    def hook(mod, inp, out):
        z = inp[0]
        dims = [0] + list(range(2, z.dim()))
        seen.append((z.mean(dims), z.var(dims, unbiased=False), mod.running_mean, mod.running_var))

    hooks = [m.register_forward_hook(hook) for m in bn_layers(model)]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _loss(stats) -> torch.Tensor:
    # ZeroQ's statistic loss: per layer the distance of the means and of the standard deviations,
    # each scaled by the running spread so that every layer counts alike
    total = 0.0
    for mean, var, rm, rv in stats:
        sd = rv.clamp_min(1e-8).sqrt()
        total = total + ((mean - rm) / sd).norm() / mean.numel() ** 0.5 \
            + (var.clamp_min(1e-8).sqrt() / sd - 1).norm() / mean.numel() ** 0.5
    return total


def synthesize_inputs(model: nn.Module, input_shape: tuple, n: int = 128, steps: int = 300, lr: float = 0.2,
                      seed: int = 0, progress: bool = False) -> tuple[torch.Tensor, dict]:
    """A batch of ``n`` inputs of shape ``input_shape`` whose BN statistics match the model's
    running statistics (module docstring), and a report: steps, seconds, the final loss and the
    largest per-channel mismatch of mean (in running standard deviations) and of standard
    deviation (relative)."""
    if not bn_layers(model):
        raise ValueError(NO_BN)
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    param = next(iter(net.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *input_shape), generator=g, dtype=dtype).to(device).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0 = time.time()
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="synthesise calibration inputs", leave=False)
    for _ in it:
        opt.zero_grad()
        loss = _loss(bn_statistics(net, x))
        loss.backward()
        opt.step()
        sched.step()
    x = x.detach()
    with torch.no_grad():
        stats = bn_statistics(net, x)
        final = float(_loss(stats))
    mean_err = max(float(((m - rm).abs() / rv.clamp_min(1e-8).sqrt()).max()) for m, v, rm, rv in stats)
    sd_err = max(float((v.clamp_min(1e-8).sqrt() / rv.clamp_min(1e-8).sqrt() - 1).abs().max())
                 for m, v, rm, rv in stats)
    return x, {"method": "synthesised from batch-norm statistics (ZeroQ)", "images": n, "steps": steps, "lr": lr,
               "seed": seed, "seconds": time.time() - t0, "bn_layers": len(stats), "final_loss": final,
               "max_mean_error_sd": mean_err, "max_sd_error_relative": sd_err}
