"""Measure the README's headline rows with the command a user types: `evaluate`'s defaults.

    python benchmarks/headline.py [--datasets CIFAR-10 Imagenette] [--models resnet20 ...] [--redo]

For each network of the stored sweeps (docs/results.json, docs/imagenette.json) it runs
``evaluate(model, dataset, timesteps=T)`` with every default -- per-channel calibration with bias
correction on 512 training images, float64 arithmetic, all test images -- at T = 8 and at the
lowest T within 0.5 pp of the ANN. The search for that T starts where the float32 sweep found it
and steps down while the loss stays within 0.5 pp, up while it does not (each step one full
evaluation, recorded under "tried"). Float64 because those are the figures any machine
reproduces: float32 convolution kernels round differently on different CPUs
(``benchmarks/check_headline.py`` re-evaluates the rows and fails when one drifts).

Results go to docs/headline.json after every network (a stopped run resumes: networks already
there are kept unless --redo), then the README's table is rewritten (readme_headline.py).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from spikeconverter.evaluate import evaluate

import _common
import readme_headline

LOSS = readme_headline.LOSS
SOURCES = {"CIFAR-10": ("cifar10", "results.json"), "Imagenette": ("imagenette", "imagenette.json")}
PATH = readme_headline.DOCS / "headline.json"


def _figures(r: dict) -> dict:
    return dict(timesteps=r["timesteps"], latency_steps=r["latency_steps"], accuracy=r["snn_accuracy"],
                difference_pp=r["difference_pp"], spikes=r["spikes"], sops=r["sops"], images=r["test_images"])


def measure(model: str, dataset: str, start_T: int) -> dict:
    """T = 8 and the lowest T within LOSS pp, each by one default evaluate call."""
    t0 = time.time()
    runs: dict[int, dict] = {}

    def at(T: int) -> dict:
        if T not in runs:
            r = evaluate(model=model, dataset=dataset, timesteps=T, quiet=True)
            runs[T] = r
            print(f"  {model} T = {T}: {r['snn_accuracy']:.2f} % ({r['difference_pp']:+.2f} pp), "
                  f"{time.time() - t0:.0f} s", flush=True)
        return runs[T]

    t8 = at(8)
    T = start_T
    if at(T)["difference_pp"] >= -LOSS:
        while T > 1 and at(T - 1)["difference_pp"] >= -LOSS:
            T -= 1
    else:
        while T < 8 and at(T)["difference_pp"] < -LOSS:
            T += 1
    low = at(T) if at(T)["difference_pp"] >= -LOSS else None
    return dict(model=model, dataset=dataset, ann_accuracy=t8["ann_accuracy"], precision=t8["precision"],
                calibration_images=t8["calibration_images"], calibration_options=t8["calibration_options"],
                test_images=t8["test_images"], data_sha256=t8.get("data_sha256"), t8=_figures(t8),
                low=_figures(low) if low else None, tried=sorted(runs), seconds=round(time.time() - t0),
                machine=_common.machine())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    ap.add_argument("--models", nargs="+", default=None, help="default: every network of the stored sweeps")
    ap.add_argument("--redo", action="store_true", help="measure networks already in docs/headline.json again")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    stored = json.loads(PATH.read_text()) if PATH.exists() else {"rows": {}}
    for name in args.datasets:
        dataset, source = SOURCES[name]
        for model, sweep in json.loads((readme_headline.DOCS / source).read_text())["sweeps"].items():
            key = f"{dataset}/{model}"
            if (args.models and model not in args.models) or (key in stored["rows"] and not args.redo):
                continue
            low = readme_headline.lowest(sweep["rows"], "spikeconverter", LOSS)
            print(f"{name} {model}: measuring (float32 sweep's lowest T within {LOSS} pp: "
                  f"{low['timesteps'] if low else None})", flush=True)
            stored["rows"][key] = measure(model, dataset, low["timesteps"] if low else 4)
            PATH.write_text(json.dumps(stored, indent=1) + "\n")
    readme_headline.write()
    print(f"wrote {PATH.relative_to(readme_headline.ROOT)} and the README's headline table")


if __name__ == "__main__":
    main()
