"""Re-evaluate the README's headline rows with today's code and say whether they still hold.

    python benchmarks/check_headline.py [--models resnet20 ...] [--datasets CIFAR-10 Imagenette]
                                        [--rows t8 low] [--threads N]

For each row of the README's table (benchmarks/readme_headline.py) it runs ``evaluate`` as that
row was measured -- rows from docs/headline.json with every default (float64), rows still taken
from a float32 sweep with that sweep's calibration in float32 -- on the same test images, and
compares accuracy, latency, spikes and SOPs per image (to the digits the docs print). Exit status
1 if any row drifted. A drift is printed with the machine that measured the row and this one:
float64 rows should hold on any machine; float32 figures depend on the CPU's convolution kernels
(rounding can flip a quantization digit), so a few test images can differ between CPUs with the
same code and pixels. The test images' digest is printed so that a change of pixels (another JPEG
decoder) is told apart from a change of arithmetic.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from spikeconverter.evaluate import evaluate

import _common  # noqa: F401  (puts src/ on the path)
import readme_headline

DATASETS = {"CIFAR-10": ("cifar10", "results.json"), "Imagenette": ("imagenette", "imagenette.json")}


def _printed(row: dict) -> tuple:
    """A row's figures as the docs print them."""
    return (f"{row['accuracy']:.2f}", row["latency_steps"], f"{row['spikes']:,.0f}", f"{row['sops']:,.0f}")


def check(h: dict, which: str, sweep: dict) -> tuple[bool, str]:
    row = h["t8"] if which == "t8" else h["low"]
    if h["measured"] == "headline":  # the command as a user types it: every default
        kw = {}
    else:
        kw = dict(sweep.get("calibration_options") or dict(per_channel=False, sequential=False, bias_correction=False),
                  calibration=sweep.get("calibration_images", 512), precision=h["precision"])
    r = evaluate(model=h["model"], dataset=DATASETS[h["dataset"]][0], timesteps=row["timesteps"], quiet=True, **kw)
    now = dict(accuracy=r["snn_accuracy"], latency_steps=r["latency_steps"], spikes=r["spikes"], sops=r["sops"])
    same = _printed(row) == _printed(now) and r["test_images"] == row["images"]
    line = (f"{h['dataset']} {h['model']} T = {row['timesteps']} ({r['precision']}): published {_printed(row)}, "
            f"now {_printed(now)} "
            f"on {r['test_images']:,} images (pixels sha256 {r.get('data_sha256')}) -> "
            + ("same" if same else "DRIFTED"))
    return same, line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=None, help="default: every model in the table")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--rows", nargs="+", default=["t8", "low"], choices=["t8", "low"],
                    help="t8: the T = 8 column; low: the lowest T within 0.5 pp")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ok, machines = True, set()
    for h in readme_headline.headline_rows():
        if h["dataset"] not in args.datasets or (args.models and h["model"] not in args.models):
            continue
        stored = json.loads((readme_headline.DOCS / DATASETS[h["dataset"]][1]).read_text())
        sweep = stored["sweeps"][h["model"]]
        for which in args.rows:
            if (h["t8"] if which == "t8" else h["low"]) is None:
                continue
            same, line = check(h, which, sweep)
            ok &= same
            machines.add(h["machine"])
            print(line, flush=True)
    print("all rows hold" if ok else "some rows drifted (see above)")
    print(f"measured on: {'; '.join(sorted(machines))}; checked on: {_common.machine()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
