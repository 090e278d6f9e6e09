"""Post-training calibration ablation: per-channel thresholds, sequential calibration and bias
correction, each on and off, on the shipped CIFAR-10 checkpoints, over several calibration samples;
and the default followed by threshold tuning (thresholds and bias corrections trained to match the
float ANN's outputs on the calibration images, weights frozen, no labels).

    python benchmarks/calibration_ablation.py [--models resnet20 ...] [--timesteps 3 4 8]
        [--seeds 0 1 2] [--limit N] [--calibration 512] [--configs NAME ...] [--write] [--merge]
    python benchmarks/calibration_ablation.py --render   # the table again from the stored JSON

Every configuration converts the same float ANN with the same calibration images (seed s draws
its own random 512 training images) and is measured through the exact fast path on the same test
images (all 10,000 unless --limit). The SNN equals its twin in every configuration (the tests show
it), so these accuracies are the SNN's. ``--write`` puts the table between the markers of
docs/results.md (kept when paper_table.py rewrites the file) and the JSON into
docs/calibration_ablation.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from spikeconverter import convert
from spikeconverter.convert import CALIBRATION_DEFAULTS
from spikeconverter.evaluate import batches_of, calibration_data, fixed_subset, load_dataset, load_model
from spikeconverter.finetune import FinetuneConfig, finetune

import _common

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIGS = {
    "per-layer (v0.1 default)": dict(per_channel=False, sequential=False, bias_correction=False),
    "per-channel": dict(per_channel=True, sequential=False, bias_correction=False),
    "sequential": dict(per_channel=False, sequential=True, bias_correction=False),
    "bias correction": dict(per_channel=False, sequential=False, bias_correction=True),
    "per-channel + bias correction": dict(per_channel=True, sequential=False, bias_correction=True),
    "per-channel + sequential": dict(per_channel=True, sequential=True, bias_correction=False),
    "all three": dict(per_channel=True, sequential=True, bias_correction=True),
    # then the thresholds and bias corrections tuned by distillation from the float ANN on the same
    # calibration images (augmented; labels unused), weights as converted: spikeconverter finetune
    # --freeze-weights --distill 1. Still post-training: no labels, no more images.
    "per-channel + bias correction + tuned thresholds": dict(per_channel=True, sequential=False, bias_correction=True,
                                                             tune=dict(epochs=30, lr=1e-3, theta_lr=2e-3)),
}


def accuracy(fn, test, batch_size=500) -> float:
    correct = 0
    with torch.no_grad():
        for x, y in batches_of(test, batch_size):
            correct += int((fn(x).argmax(1) == y).sum())
    return 100.0 * correct / len(test)


def run(models, timesteps, seeds, configs, limit, n_calib):
    out = {"machine": _common.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "calibration_images": n_calib, "configs": {k: CONFIGS[k] for k in configs}, "models": {}}
    for model in models:
        net, info = load_model(model, "cifar10")
        test = fixed_subset(load_dataset("cifar10", "test"), limit, 0)
        ann = accuracy(net, test)
        rows = []
        for seed in seeds:
            calib = calibration_data("cifar10", n_calib, seed=seed)
            for T in timesteps:
                for name in configs:
                    t0 = time.time()
                    opts = dict(CONFIGS[name])
                    tune = opts.pop("tune", None)
                    if tune is None:
                        snn = convert(net, calib, timesteps=T, **opts).compile()
                    else:  # the calibration images with their labels, which distill = 1 ignores
                        images = fixed_subset(load_dataset("cifar10", "train"), n_calib, seed + 1)  # as calibration_data
                        cfg = FinetuneConfig(lr=tune["lr"], theta_lr=tune["theta_lr"], distill=1.0, train_weights=False)
                        snn = finetune(net, images, timesteps=T, epochs=tune["epochs"], calibration=calib, config=cfg,
                                       **opts).compile()
                    seconds = time.time() - t0
                    acc = accuracy(snn, test)
                    rows.append(dict(config=name, seed=seed, timesteps=T, accuracy=acc, difference_pp=acc - ann,
                                     seconds_convert=seconds))
                    print(f"{model} seed={seed} T={T} {name:32s} {acc:.2f} ({acc - ann:+.2f} pp) "
                          f"convert {seconds:.0f} s", flush=True)
        out["models"][model] = {"checkpoint": info["checkpoint"], "ann_accuracy": ann, "test_images": len(test),
                                "rows": rows}
    return out


def merge(old: dict, new: dict) -> dict:
    """Rows of ``new`` added to ``old`` (a row of the same model, config, seed and T replaced)."""
    for model, m in new["models"].items():
        if model not in old["models"]:
            old["models"][model] = m
            continue
        o = old["models"][model]
        if (o["test_images"], o["checkpoint"]) != (m["test_images"], m["checkpoint"]) or \
                old["calibration_images"] != new["calibration_images"]:
            raise SystemExit(f"--merge: {model} was measured on other images or another checkpoint")
        key = lambda row: (row["config"], row["seed"], row["timesteps"])  # noqa: E731
        rows = {key(row): row for row in o["rows"]}
        rows.update({key(row): row for row in m["rows"]})
        o["rows"] = list(rows.values())
    old["configs"].update(new["configs"])
    old["date"] = new["date"]
    old["note"] = new.get("note") or old.get("note", "")
    old["machine"] = new["machine"]
    return old


def markdown(r: dict) -> list[str]:
    seeds = sorted({row["seed"] for m in r["models"].values() for row in m["rows"]})
    lines = [f"Last part measured {r['date']} on {r['machine']} by `python benchmarks/calibration_ablation.py --write`. "
             f"Each cell: SNN - ANN in pp, mean over {len(seeds)} calibration samples ({r['calibration_images']} "
             "random training images each, seeds " + ", ".join(map(str, seeds)) + ") and, in brackets, the worst "
             "of them (fewer samples where stated). beta = 2, phi = 1/2, threshold = mse. Convert: wall seconds, tuning included "
             "(one thread). " + r.get("note", ""), ""]
    for model, m in r["models"].items():
        Ts = sorted({row["timesteps"] for row in m["rows"]})
        lines += [f"**{model}** (ANN {m['ann_accuracy']:.2f} % on {m['test_images']:,} test images)", "",
                  "| calibration | " + " | ".join(f"T = {t}" for t in Ts) + " | convert (s) |",
                  "|---|" + "---|" * len(Ts) + "---|"]
        for name in r["configs"]:
            if not any(row["config"] == name for row in m["rows"]):
                continue  # a configuration measured on other models only
            cells = []
            for t in Ts:
                d = [row["difference_pp"] for row in m["rows"] if row["config"] == name and row["timesteps"] == t]
                n = "" if len(d) == len(seeds) else f", {len(d)} sample{'s' if len(d) > 1 else ''}"
                cells.append(f"{statistics.mean(d):+.2f} ({min(d):+.2f}{n})" if d else "")
            secs = [row["seconds_convert"] for row in m["rows"] if row["config"] == name]
            label = name + (" **(default)**" if r["configs"][name] == CALIBRATION_DEFAULTS else "")
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {statistics.mean(secs):.0f} |")
        lines.append("")
        for name in r["configs"]:
            worst = {t: min((row["difference_pp"] for row in m["rows"] if row["config"] == name and row["timesteps"] == t),
                            default=None) for t in Ts}
            ok = [t for t, w in worst.items() if w is not None and w >= -0.5]
            if any(w is not None for w in worst.values()):
                lines.append(f"- {name}: lowest measured T within 0.5 pp in every sample: "
                             f"{min(ok) if ok else 'none of ' + str(Ts)}"
                             + (f"; worst at T = 8: {worst[8]:+.2f} pp" if worst.get(8) is not None else ""))
        lines.append("")
    return lines


def write(r: dict) -> None:
    (DOCS / "calibration_ablation.json").write_text(json.dumps(r, indent=2) + "\n")
    path = DOCS / "results.md"
    _common.replace_section(path, "calibration", "\n".join(markdown(r)), heading="## Post-training calibration ablation")
    print(f"wrote {path.relative_to(ROOT)} and docs/calibration_ablation.json")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["resnet20", "vgg16", "mobilenet_v2"])
    ap.add_argument("--timesteps", type=int, nargs="+", default=[3, 4, 8])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--limit", type=int, default=None, help="test images (default all 10,000)")
    ap.add_argument("--calibration", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--render", action="store_true", help="only rewrite the table from docs/calibration_ablation.json")
    ap.add_argument("--note", default="", help="a sentence on the conditions (e.g. a job running beside)")
    ap.add_argument("--merge", action="store_true",
                    help="add these rows to docs/calibration_ablation.json (same model, test set and calibration size)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.render:
        r = json.loads((DOCS / "calibration_ablation.json").read_text())
        print("\n".join(markdown(r)))
        write(r)
        return
    r = run(a.models, a.timesteps, a.seeds, a.configs, a.limit, a.calibration)
    r["note"] = a.note
    if a.merge:
        r = merge(json.loads((DOCS / "calibration_ablation.json").read_text()), r)
    print("\n".join(markdown(r)))
    if a.write:
        write(r)


if __name__ == "__main__":
    main()
