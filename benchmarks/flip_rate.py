"""float32 vs float64: how often does the time-stepped simulation's digit differ from the twin's?

The simulator sums input currents step by step (V <- beta V + I(t)); the twin convolves the decoded
activation. In exact arithmetic they are equal; in floating point the two orders of summation can
put z on different sides of a code boundary. This script measures the rate of such flips per
emitted digit on a trained network, in float32 and in float64.

    python benchmarks/flip_rate.py [--model resnet20] [--images 64] [-T 8]
"""

from __future__ import annotations

import argparse

import torch

from spikeconverter import convert
from spikeconverter.data import load_dataset
from spikeconverter.evaluate import calibration_data, fixed_subset, load_model

import _common


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("-T", type=int, default=8)
    args = ap.parse_args()
    ckpt = _common.checkpoint_for(args.model, override=args.checkpoint)
    net, _ = load_model(args.model, "cifar10", ckpt)
    calib = calibration_data("cifar10", 256)
    test = fixed_subset(load_dataset("cifar10", "test"), args.images, 0)
    x = test.normalize(test.images)
    print(f"machine: {_common.machine()}")
    print(f"{args.model}, T={args.T}, beta=2, {args.images} test images (JPEG CIFAR-10)")
    for dtype in (torch.float32, torch.float64):
        snn = convert(net.to(dtype), calib.to(dtype), timesteps=args.T)
        res = snn.simulate(x.to(dtype), record=True)
        logits, twin = snn.twin_trains(x.to(dtype))
        flips = sum(int((res.spike_trains[k] != twin[k]).sum()) for k in twin)
        digits = sum(twin[k].numel() for k in twin)
        changed = int((res.logits.argmax(1) != logits.argmax(1)).sum())
        print(f"{str(dtype):>14}: {flips} of {digits:,} digits differ ({flips / digits:.2e}); "
              f"max |logit difference| {float((res.logits - logits).abs().max()):.2e}; "
              f"decisions changed: {changed} of {len(x)}")


if __name__ == "__main__":
    main()
