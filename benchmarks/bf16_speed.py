"""Training-step time of a zoo model with and without bf16 autocast on this CPU (the figure behind
docs/training.md's choice of --no-bf16 for Imagenette). Prints seconds per step and the ratio.

    python benchmarks/bf16_speed.py [--model resnet34] [--size 128] [--batch 32] [--threads 2]"""

import argparse
import time

import torch

import spikeconverter as sc


def step_time(model, x, y, bf16: bool, reps: int = 2) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    best = float("inf")
    for _ in range(reps + 1):  # the first step warms up
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet34")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = sc.models.create(a.model, dataset="imagenette").to(memory_format=torch.channels_last)
    x = torch.randn(a.batch, 3, a.size, a.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.batch,))
    f32 = step_time(model, x, y, bf16=False)
    b16 = step_time(model, x, y, bf16=True)
    print(f"{a.model} {a.size}px batch {a.batch}, {a.threads} threads: float32 {f32:.2f} s/step, "
          f"bf16 autocast {b16:.2f} s/step, bf16/float32 = {b16 / f32:.1f}x")


if __name__ == "__main__":
    main()
