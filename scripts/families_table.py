"""The model families users bring, built in-house at small size (tests/families.py), converted at
T = 8 (beta = 2, float64, random weights): exact or refused, and why. Writes docs/model_families.md.

Usage: python scripts/families_table.py"""

import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import spikeconverter as sc  # noqa: E402

from families import FAMILIES, build  # noqa: E402
from test_leaky import CSPNet, PReLUNet  # noqa: E402
from test_leaky import build as build_leaky  # noqa: E402
from test_library_patterns import PATTERNS  # noqa: E402
from test_library_patterns import build as build_pattern  # noqa: E402

LEAKY = {"csp_leaky_relu": (CSPNet, (3, 12, 12)), "prelu_and_leaky": (PReLUNet, (3, 8, 8))}


def _build_leaky(name):
    cls, shape = LEAKY[name]
    return build_leaky(cls), shape

T = 8


def row(name: str, builder=build) -> str:
    model, shape = builder(name)
    g = torch.Generator().manual_seed(1)
    calib = torch.randn((32,) + shape, generator=g, dtype=torch.float64)
    x = torch.randn((4,) + shape, generator=g, dtype=torch.float64)
    try:
        snn = sc.convert(model, calib, timesteps=T)
    except sc.UnsupportedOperationError as e:
        reason = str(e).split(" is not supported: ")[-1].split(";")[0].split(":")[0]
        node = str(e).split(" is not supported")[0]
        count = re.search(r"the first of (\d+) unsupported ops", str(e))
        more = f" (the first of {count.group(1)} unsupported ops)" if count else ""
        return f"| {name} | refused: {node}: {reason}{more} | - | - | - | - |"
    res = snn.simulate(x, record=True)
    logits, twin = snn.twin_trains(x)
    flipped = sum(int((res.spike_trains[k] != twin[k]).sum()) for k in twin)
    gap = float((res.logits - logits).abs().max())
    with torch.no_grad():
        eager = float((snn.ann()(x) - model(x)).abs().max())
    status = "converted exactly" if flipped == 0 else f"converted, {flipped} digits differ"
    return (f"| {name} | {status} | {len(snn.layers)} | {snn.spiking_depth} | {snn.latency_steps} | "
            f"{gap:.1e} / {eager:.1e} |")


def main() -> int:
    lines = [
        "# Model families: converted exactly, or refused and why",
        "",
        "Each family is written in-house at small size the way its public definition is written (tests/families.py:",
        "reused ReLU modules, in-place ops, functional calls, sizes read from tensors), with random weights and",
        f"batch-norm statistics, converted at T = {T} (beta = 2) in float64 on 32 random calibration inputs and run",
        "on 4 random inputs. *Exact* means the time-stepped simulation's spike trains equal the quantized twin's",
        "digits in every layer. Regenerate with `python scripts/families_table.py`.",
        "",
        "| family | result | spiking layers | spiking depth L | latency at T = 8 (steps) "
        "| max abs logit gap: simulation vs twin / folded ANN vs eager model |",
        "|---|---|---|---|---|---|",
    ]
    lines += [row(name) for name in FAMILIES]
    lines += ["", "## Library code patterns", "",
              "The patterns library code writes around the layers (tests/test_library_patterns.py): a `torch._assert` on "
              "`ndim` inside a BatchNorm+ReLU subclass and an `assert` on the input size; a head that pools only when "
              "the feature map is smaller than its kernel; a decoder that resizes to its skip's size when they differ "
              "(and compares whole shapes); an anti-aliasing blur kept as a buffer and a weight-standardised conv "
              "(weights computed in forward()); a GhostNet-style channel split written with `torch.narrow` and a row kept with "
              "`torch.select`. The graph is traced specialised to the calibration input's shape: "
              "asserts are checked once, branches take the branch that shape takes, constant filters become layers.",
              "",
              "| pattern | result | spiking layers | spiking depth L | latency at T = 8 (steps) "
              "| max abs logit gap: simulation vs twin / folded ANN vs eager model |",
              "|---|---|---|---|---|---|"]
    lines += [row(name, build_pattern) for name in PATTERNS]
    lines += ["", "## Leaky ReLU backbones", "",
              "LeakyReLU(0.1) in a CSP block (split the channels, residual Conv-BN-LeakyReLU on one half, concat, "
              "fuse), and PReLU (per channel and single) with a functional leaky_relu after a residual sum "
              "(tests/test_leaky.py): two spiking populations per layer. Also bit-exact in fixed point (slopes rounded to "
              "12 significant bits) and in the integer bundle (tests/test_leaky.py, tests/test_export.py).", "",
              "| network | result | spiking layers | spiking depth L | latency at T = 8 (steps) "
              "| max abs logit gap: simulation vs twin / folded ANN vs eager model |",
              "|---|---|---|---|---|---|"]
    lines += [row(name, _build_leaky) for name in LEAKY]
    (ROOT / "docs" / "model_families.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
