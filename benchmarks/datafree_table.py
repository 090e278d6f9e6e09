"""Data-free conversion against the data-calibrated default: SNN - ANN at several T, and what each
costs; writes docs/datafree.json and the data-free section of docs/results.md.

    python benchmarks/datafree_table.py [--models resnet20:cifar10 ...] [-T 3 4 6 8] [--limit-cifar 1000]
                                        [--limit-imagenette 500] [--images 128] [--steps 300] [--render]

Per network: the calibration inputs are synthesised once from its batch-norm statistics
(datafree.py; seeded) and every T is converted from them; the default converts from 512 training
images. Both are measured on the same fixed random subset of test images (the fast path, exact).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from spikeconverter import convert
from spikeconverter.datafree import synthesize_inputs
from spikeconverter.evaluate import batches_of, calibration_data, fixed_subset, load_dataset, load_model, sized_kwargs

import _common

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NETWORKS = ("resnet20:cifar10", "vgg16:cifar10", "mobilenet_v2:cifar10", "resnet34:imagenette",
            "mobilenet_v2:imagenette")


def _accuracy(net, test) -> float:
    correct = 0
    with torch.no_grad():
        for x, y in batches_of(test, 250):
            correct += int((net(x).argmax(1) == y).sum())
    return 100.0 * correct / len(test)


def measure(networks, timesteps, limits, images, steps, stored: dict | None = None) -> dict:
    """Measure ``networks``; with ``stored`` (the JSON of an earlier run with the same synthesis
    settings), their rows replace that run's rows of the same networks and the others are kept,
    each row naming the machine it was measured on. Written after every network."""
    out = {"machine": _common.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "synthesis": {"images": images, "steps": steps}, "rows": []}
    if stored is not None:
        if stored["synthesis"] != out["synthesis"]:
            raise SystemExit(f"the stored rows used synthesis {stored['synthesis']}, not {out['synthesis']}: "
                             "pass the same --images/--steps or measure every network")
        out = stored
        out["updated"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        for r in out["rows"]:
            r.setdefault("machine", stored["machine"])
    for item in networks:
        model, dataset = item.split(":")
        net, info = load_model(model, dataset)
        sized = sized_kwargs(dataset, info)
        test = fixed_subset(load_dataset(dataset, "test", **sized), limits[dataset], 0)
        ann = _accuracy(net, test)
        t0 = time.time()
        synth, report = synthesize_inputs(net, tuple(test[0][0].shape), n=images, steps=steps, seed=0)
        t_synth = time.time() - t0
        real = calibration_data(dataset, 512, **sized)
        rows = []
        for T in timesteps:
            row = {"model": model, "dataset": dataset, "T": T, "images": len(test), "ann_accuracy": ann,
                   "machine": _common.machine()}
            for name, calib in (("default", real), ("data_free", synth)):
                t0 = time.time()
                snn = convert(net, calib, timesteps=T)
                row[name] = {"accuracy": _accuracy(snn, test), "seconds_convert": time.time() - t0}
                row[name]["difference_pp"] = row[name]["accuracy"] - ann
            row["data_free"]["seconds_synthesis"] = t_synth
            row["data_free"]["synthesis"] = report
            rows.append(row)
            print(f"{model}/{dataset} T = {T}: default {row['default']['difference_pp']:+.2f} pp, data-free "
                  f"{row['data_free']['difference_pp']:+.2f} pp (synthesis {t_synth:.0f} s)", flush=True)
        out["rows"] = [r for r in out["rows"] if (r["model"], r["dataset"]) != (model, dataset)] + rows
        if stored is not None:
            add_bn_statistics(out, [item])  # writes
    return out


def add_bn_statistics(data: dict, networks=None) -> None:
    """Beside the stored rows (of ``networks``, "model:dataset", or all): the BN-statistics method (no
    input at all where the statistics reach a layer; bn_thresholds.py), converted and measured on
    the same test images in the same precision."""
    for item in dict.fromkeys((r["model"], r["dataset"]) for r in data["rows"]):
        model, dataset = item
        if networks and f"{model}:{dataset}" not in networks:
            continue
        net, info = load_model(model, dataset)
        sized = sized_kwargs(dataset, info)
        rows = [r for r in data["rows"] if (r["model"], r["dataset"]) == item]
        test = fixed_subset(load_dataset(dataset, "test", **sized), rows[0]["images"], 0)
        for r in rows:
            t0 = time.time()
            snn = convert(net, "data-free", timesteps=r["T"], input_shape=tuple(test[0][0].shape),
                          data_free_method="bn-statistics")
            seconds = time.time() - t0
            d = snn.calibration["data_free"]
            acc = _accuracy(snn, test)
            r["bn_statistics"] = {"accuracy": acc, "difference_pp": acc - r["ann_accuracy"], "seconds_convert": seconds,
                                  "layers_from_bn_statistics": len(d["layers_from_bn_statistics"]),
                                  "layers_from_synthesised_inputs": len(d["layers_from_synthesised_inputs"])}
            print(f"{model}/{dataset} T = {r['T']}: BN statistics {acc - r['ann_accuracy']:+.2f} pp ({seconds:.0f} s)",
                  flush=True)
        data["bn_statistics_machine"] = _common.machine()
        data["updated"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        write(data)  # after every network: a stopped run keeps what it measured


def render(data: dict) -> str:
    s = data["synthesis"]
    lines = [f"SNN - ANN (pp) with the default calibration (512 training images) and data-free ({s['images']} inputs "
             f"synthesised from batch-norm statistics in {s['steps']} optimiser steps, no image used); fast path "
             f"(exact), on a fixed random subset of test images; {data['machine']}, {data['date']}"
             + (f" (rows added up to {data['updated']})" if data.get("updated") else "") + ". Regenerate: "
             "`python benchmarks/datafree_table.py` (`--render` from docs/datafree.json).", "",
             "| network | T | images | ANN % | default: SNN - ANN | data-free, synthesised: SNN - ANN | synthesised: "
             "synthesis + conversion (s) | data-free, BN statistics: SNN - ANN | BN statistics: conversion (s) "
             "| default conversion (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        d, f, b = r["default"], r["data_free"], r.get("bn_statistics")
        lines.append(f"| {r['model']} / {r['dataset']} | {r['T']} | {r['images']:,} | {r['ann_accuracy']:.2f} | "
                     f"{d['difference_pp']:+.2f} | {f['difference_pp']:+.2f} | {f['seconds_synthesis']:.0f} + "
                     f"{f['seconds_convert']:.0f} | " + (f"{b['difference_pp']:+.2f} | {b['seconds_convert']:.0f}"
                                                         if b else "- | -") + f" | {d['seconds_convert']:.0f} |")
    gaps = [r["data_free"]["difference_pp"] - r["default"]["difference_pp"] for r in data["rows"]]
    n = min(r["images"] for r in data["rows"])
    present = {f"{r['model']}:{r['dataset']}" for r in data["rows"]}
    missing = [m for m in NETWORKS if m not in present]
    lines += ["", f"Data-free minus default: {min(gaps):+.2f} to {max(gaps):+.2f} pp over these rows (on {n:,} images "
              f"one image is {100 / n:.2f} pp, so gaps of a few tenths are within the subset's noise)."
              + (f" Not measured yet: `--merge --models {' '.join(missing)}`." if missing else "")]
    by_machine: dict = {}
    for r in data["rows"]:
        by_machine.setdefault(r.get("machine", data["machine"]), set()).add(f"{r['model']}/{r['dataset']}")
    if len(by_machine) > 1:
        lines += ["", "Rows measured on different machines: " + "; ".join(
            f"{', '.join(sorted(nets))} on {m}" for m, nets in sorted(by_machine.items())) + "."]
    bn = [r for r in data["rows"] if r.get("bn_statistics")]
    if bn:
        gaps = [r["bn_statistics"]["difference_pp"] - r["data_free"]["difference_pp"] for r in bn]
        cover = {(r["model"], r["bn_statistics"]["layers_from_bn_statistics"],
                  r["bn_statistics"]["layers_from_synthesised_inputs"]) for r in bn}
        lines += ["", "BN statistics (`--data-free bn-statistics`, bn_thresholds.py): each layer's thresholds minimise "
                  "the expected quantization error of the normal N(beta, gamma^2) its BN gives, moments carried "
                  "through residual sums and max-pools of a layer's output (a window's values taken as independent); "
                  "no input at all where they reach a layer ("
                  + "; ".join(f"{m}: {k} layers from the statistics, {s_} from synthesised inputs" for m, k, s_ in
                              sorted(cover)) + "). Against the synthesised inputs it is "
                  f"{min(gaps):+.2f} to {max(gaps):+.2f} pp over these rows" + (" -- worse in every row" if max(gaps) < 0 else "")
                  + "; the normal is a poor model of the pre-activations in many channels, and worst where moments "
                  "pass many residual sums and a max-pool (ResNet-34); its bias correction from the statistics "
                  "(`bias_correction=True`) is opt-in, not better on balance. It converts in "
                  f"{min(r['bn_statistics']['seconds_convert'] for r in bn):.0f}-"
                  f"{max(r['bn_statistics']['seconds_convert'] for r in bn):.0f} s where the synthesis takes "
                  f"{min(r['data_free']['seconds_synthesis'] for r in bn):.0f}-"
                  f"{max(r['data_free']['seconds_synthesis'] for r in bn):.0f} s (networks without a BN-statistics "
                  "figure here were not measured). The synthesised method stays the default. Measured on "
                  f"{data.get('bn_statistics_machine')} (`--add-bn-statistics --models ...`)."]
    return "\n".join(lines)


def write(data: dict) -> None:
    (DOCS / "datafree.json").write_text(json.dumps(data, indent=1) + "\n")
    _common.replace_section(DOCS / "results.md", "datafree", render(data),
                            heading="## Conversion without data")
    print("wrote docs/datafree.json and the data-free section of docs/results.md")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(NETWORKS), help="model:dataset pairs")
    ap.add_argument("-T", "--timesteps", type=int, nargs="+", default=[3, 4, 6, 8])
    ap.add_argument("--limit-cifar", type=int, default=1000)
    ap.add_argument("--limit-imagenette", type=int, default=500)
    ap.add_argument("--images", type=int, default=128, help="synthesised calibration inputs")
    ap.add_argument("--steps", type=int, default=300, help="optimiser steps of the synthesis")
    ap.add_argument("--render", action="store_true")
    ap.add_argument("--merge", action="store_true",
                    help="keep the stored rows of other networks (same synthesis settings); BN statistics measured too")
    ap.add_argument("--add-bn-statistics", action="store_true",
                    help="measure the BN-statistics method beside the stored rows (same images, precision)")
    args = ap.parse_args()
    if args.add_bn_statistics:
        data = json.loads((DOCS / "datafree.json").read_text())
        add_bn_statistics(data, args.models if args.models != list(NETWORKS) else None)
        return
    if args.render:
        write(json.loads((DOCS / "datafree.json").read_text()))
        return
    stored = json.loads((DOCS / "datafree.json").read_text()) if args.merge else None
    data = measure(args.models, args.timesteps, {"cifar10": args.limit_cifar, "imagenette": args.limit_imagenette},
                   args.images, args.steps, stored)
    print(render(data))
    write(data)


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    main()
