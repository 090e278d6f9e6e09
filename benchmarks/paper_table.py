"""The paper's table, reproduced for every shipped checkpoint; writes docs/results.md (+ plots, JSON)
the summary section with the targets, and (readme_headline.py) the README's table.

For each shipped CIFAR-10 checkpoint: the accuracy-vs-T sweep of our method (beta = 2, and beta = 1
as the ablation "temporal separation without iLIF"), the rate baseline at T = 16..512, the lowest T
within 0.1 / 0.5 / 1.0 pp of the ANN for both, and the ratio of steps and spikes at equal accuracy.
Then the SpikingJelly comparison (when installed) and the speed ratios.

    python benchmarks/paper_table.py [--models resnet20 ...] [--rate-images N] [--sj-images 500]
                                     [--reuse resnet20 sj speed ...]

Calibration uses 512 training images; accuracies use the JPEG CIFAR-10 test set (all 10,000 images
for our method; a fixed random subset for the rate baseline, whose simulation is ~T ANN passes;
its size per model is in BUDGET below).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from spikeconverter.evaluate import format_sweep, plot_sweep, sweep
from spikeconverter.models import CHECKPOINT_TARGETS, available

import _common
import readme_headline

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
OUR_T = (1, 2, 3, 4, 5, 6, 8, 10)
RATE_T = (16, 32, 64, 128, 256, 512)
PUBLISHED = {
    "resnet20": "QCFS (Bu et al., ICLR 2022), ResNet-20: ANN 91.77 %, SNN 89.55 % at T = 8, 91.62 % at T = 16",
    "vgg16": "QCFS (Bu et al., ICLR 2022), VGG-16: ANN 95.52 %, SNN 94.95 % at T = 8",
}
LOSSES = (0.1, 0.5, 1.0)


def checkpoint_words(checkpoint: str) -> str:
    """'runs/x.safetensors (sha256 ab..)' -> '`x.safetensors` (sha256 ab..)': file name in code, digest beside it."""
    name, _, rest = checkpoint.partition(" (")
    return f"`{Path(name).name}`" + (f" ({rest}" if rest else "")


def _keep_sections(text: str, path: Path) -> str:
    """Sections other scripts own (between <!-- name:start --> and <!-- name:end -->, with the
    heading line before them) survive a rewrite: appended if this script does not produce them."""
    if not path.exists():
        return text
    old = path.read_text()
    for m in re.finditer(r"(## [^\n]*\n\n)?<!-- (\w+):start -->.*?<!-- \2:end -->\n?", old, flags=re.S):
        if f"<!-- {m.group(2)}:start -->" not in text:
            text = text.rstrip() + "\n\n" + m.group(0)
    return text


def lowest(rows, method, loss):
    ok = [r for r in rows if r["method"] == method and r["difference_pp"] >= -loss]
    return min(ok, key=lambda r: r["timesteps"]) if ok else None


def equal_accuracy_table(r: dict) -> list[str]:
    lines = ["| within | ours: T (latency) | ours: spikes/img | rate: T | rate: spikes/img | steps rate/ours: per-phase T "
             "(latency) | spikes rate/ours |", "|---|---|---|---|---|---|---|"]
    for loss in LOSSES:
        a, b = lowest(r["rows"], "spikeconverter", loss), lowest(r["rows"], "rate", loss)
        ours = f"{a['timesteps']} ({a['latency_steps']})" if a else f"not reached by T={max(OUR_T)}"
        rate = f"{b['timesteps']}" if b else f"not reached by T={max(RATE_T)}"
        if a and b:
            ratio = f"{b['timesteps'] / a['timesteps']:.0f}x ({b['timesteps'] / a['latency_steps']:.2f}x)"
            sp = f"{b['spikes'] / a['spikes']:.1f}x"
        else:
            ratio = sp = "n/a"
        a_sp = f"{a['spikes']:,.0f}" if a else "n/a"
        b_sp = f"{b['spikes']:,.0f}" if b else "n/a"
        lines.append(f"| {loss} pp | {ours} | {a_sp} | {rate} | {b_sp} | {ratio} | {sp} |")
    return lines


def calibration_words(r: dict) -> str:
    """Which post-training calibration produced a sweep (older sweeps predate the options)."""
    opts = r.get("calibration_options")
    if not opts or not any(opts.values()):
        return ("Calibration: one threshold per layer on the float ANN's activations (v0.1; "
                "`--no-per-channel --no-sequential --no-bias-correction` reproduces it).")
    on = [k.replace("_", " ") for k, v in opts.items() if v]
    return "Calibration: " + ", ".join(on) + "."


def sweep_markdown(r: dict) -> list[str]:
    lines = [f"ANN: **{r['ann_accuracy']:.2f} %** on {r['test_images']:,} test images "
             f"({r['ann_accuracy_rate_images']:.2f} % on the {r['rate_images']:,} used for the rate baseline). "
             f"Checkpoint {checkpoint_words(r['checkpoint'])}. {calibration_words(r)}", "",
             "| method | T | latency (steps) | accuracy % | vs ANN (pp) | spikes/img | SOPs/img | energy uJ/img "
             "| ANN/SNN energy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['method']} | {row['timesteps']} | {row['latency_steps']} | {row['accuracy']:.2f} | "
                     f"{row['difference_pp']:+.2f} | {row['spikes']:,.0f} | {row['sops']:,.0f} | "
                     f"{row['energy_snn_uj']:.2f} | {row['energy_ratio']:.2f}x |")
    return lines


def sj_markdown(sj: dict) -> list[str]:
    sj_calib = sj.get("sj_calibration_images", 512)
    how = "as its own example" if sj_calib >= 50000 else "the whole training set; its own example uses 50,000"
    lines = [f"Same checkpoint, same {sj['images']} test images. Calibration: ours 512 training images; SpikingJelly's "
             f"recipes {sj_calib:,} ({how}), so that LocalThresholdBalancing, which raises its thresholds "
             "batch by batch, gets the passes it needs. SpikingJelly rows are read two ways: the output summed from step "
             "0, and its delayed readout (summed from the start step its `estimate_delay_start` gives for that T, as "
             "its example evaluates).", "",
             "| converter | T | end-to-end latency | accuracy % (from step 0) | accuracy % (delayed readout, start) "
             "| spikes/img |", "|---|---|---|---|---|---|"]
    for row in sj["spikeconverter"]:
        lines.append(f"| spikeconverter (beta=2) | {row['timesteps']} | {row['latency_steps']} | {row['accuracy']:.2f} | - | "
                     f"{row['spikes']:,.0f} |")
    for row in sj["spikingjelly"]:
        if "error" in row:
            lines.append(f"| SpikingJelly {row['recipe']} | - | - | failed: {row['error']} | - | - |")
        else:
            delayed = (f"{row['accuracy_delayed']:.2f} (from step {row['delay_start']})" if "accuracy_delayed" in row
                       else "not measured")
            lines.append(f"| SpikingJelly {row['recipe']} | {row['timesteps']} | {row['timesteps']} | "
                         f"{row['accuracy']:.2f} | {delayed} | {row['spikes']:,.0f} |")
    w = sj["wall_seconds_per_image"]
    lines += ["", f"Wall time per image ({w['images']}-image batch): ANN {w['ann'] * 1e3:.2f} ms; "
              f"SpikingJelly multi-step simulation at T={w['sj_T']}: {w['sj_multistep'] * 1e3:.2f} ms; "
              f"ours at T={w['our_T']}: fast path {w['ours_fast'] * 1e3:.2f} ms "
              f"(compiled {w['ours_fast_compiled'] * 1e3:.2f} ms), "
              f"time-stepped engine {w['ours_simulate'] * 1e3:.2f} ms."]
    return lines


# What each model's sweep costs on the 2-core dev box decides how much of it we run. Our method is
# always measured on the full test set (that is where the -0.1 pp target lives); the rate baseline
# (one 512-step simulation, ~512 ANN passes per image) and the beta = 1 ablation are cut for the
# slower networks. Every cut is printed in docs/results.md. --rate-images / --ablation-T override.
BUDGET = {
    "resnet20": dict(our_T=OUR_T, ablation_T=OUR_T, rate_images=1000),
    "vgg16": dict(our_T=OUR_T[1:], ablation_T=(4, 6, 8), rate_images=500),
    "mobilenet_v2": dict(our_T=OUR_T[1:], ablation_T=(8,), rate_images=200),
}


def old_rate_rows(old: dict, model: str, r: dict) -> list[dict]:
    """The rate baseline's rows of ``model`` from an earlier results.json, if they were measured on
    the same checkpoint and the same rate subset as the sweep ``r`` (else SystemExit)."""
    o = old.get("sweeps", {}).get(model)
    if o is None:
        raise SystemExit(f"--reuse-rate: docs/results.json has no sweep for {model}")

    def same_file(a: str, b: str) -> bool:  # older results name the file without its hash
        return a == b if "sha256" in a and "sha256" in b else a.split(" (")[0] == b.split(" (")[0]

    if not same_file(o["checkpoint"], r["checkpoint"]) or o["rate_images"] != r["rate_images"] or \
            abs(o["ann_accuracy_rate_images"] - r["ann_accuracy_rate_images"]) > 1e-9:
        raise SystemExit(f"--reuse-rate: {model}'s earlier rate rows were measured on another checkpoint or subset")
    return [row for row in o["rows"] if row["method"] == "rate"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=None, help="default: every shipped CIFAR-10 checkpoint")
    ap.add_argument("--rate-images", type=int, default=None, help="default: per model, see BUDGET")
    ap.add_argument("--ablation-T", type=int, nargs="+", default=None, help="T of the beta = 1 rows (default per model)")
    ap.add_argument("--sj-images", type=int, default=500)
    ap.add_argument("--sj-calibration", type=int, default=50000, help="training images for SpikingJelly's recipes")
    ap.add_argument("--sj-json", default=None,
                    help="take SpikingJelly's accuracy rows from this `vs_spikingjelly.py --json` output (measured while "
                         "the machine was busy, say) and measure only the wall times here")
    ap.add_argument("--limit", type=int, default=None, help="test images for our method (default all)")
    ap.add_argument("--skip-sj", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--reuse", nargs="+", default=(), metavar="PART",
                    help="take these parts from the existing docs/results.json instead of measuring them again: "
                         "model names, 'sj', 'speed' (the output says which parts were reused, and from when)")
    ap.add_argument("--reuse-rate", action="store_true",
                    help="for the models measured now, take the rate baseline's rows from docs/results.json (they do "
                         "not depend on our calibration; same checkpoint and rate subset required): our rows are then "
                         "measured in a fraction of the time")
    ap.add_argument("--render", "--readme-only", dest="readme_only", action="store_true",
                    help="only redraw the plots and rewrite the summary section and the README's headline from docs/results.json")
    args = ap.parse_args()
    if args.readme_only:
        stored = json.loads((DOCS / "results.json").read_text())
        for m, r in stored["sweeps"].items():  # the plots are drawn from the same JSON
            plot_sweep(r, DOCS / f"acc_vs_T_{m}.png")
        update_summary(stored)
        return
    models = args.models or [m for m, ds in available().items() if "cifar10" in ds]
    # a model named in --reuse keeps its stored sweep even when --models leaves it out (the document
    # is rewritten whole: leaving it out used to drop its rows)
    models += [p for p in args.reuse if p not in ("sj", "speed") and p not in models]
    zoo_order = [m for m, _ in CHECKPOINT_TARGETS]  # the same row order in every regenerated table
    models.sort(key=lambda m: zoo_order.index(m) if m in zoo_order else len(zoo_order))
    if not models:
        raise SystemExit("no shipped CIFAR-10 checkpoint: train one first (scripts/train_zoo.sh)")
    old = json.loads((DOCS / "results.json").read_text()) if args.reuse or args.reuse_rate else {}
    for part in args.reuse:
        if part in ("sj", "speed"):
            if not old.get(part):
                raise SystemExit(f"--reuse {part}: docs/results.json has no '{part}' part")
        elif part not in old.get("sweeps", {}):
            raise SystemExit(f"--reuse {part}: docs/results.json has no sweep for '{part}'")
    machine = _common.machine()
    t0 = time.time()
    out = {"machine": machine, "sweeps": {}, "sj": None, "speed": None, "timing": {}}
    reused = []

    def stamp(part, seconds):
        out["timing"][part] = {"seconds": round(seconds, 1), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "machine": machine}

    def take_old(part, value):
        out["timing"][part] = old.get("timing", {}).get(part, {"date": "before timings were recorded",
                                                               "machine": old.get("machine", "?")})
        t = out["timing"][part]
        reused.append(f"{part} (measured {t['date']} on {t['machine']})")
        return value

    # the sweeps' machine: this one if any sweep is measured now, else where the reused ones were
    sweep_machines = {machine} if any(m not in args.reuse for m in models) else {
        old.get("timing", {}).get(m, {}).get("machine") or old.get("machine", "?") for m in models}
    sweep_machine = "; ".join(sorted(sweep_machines))
    out["machine"] = sweep_machine
    md = ["# Results", "",
          "Generated by `python benchmarks/paper_table.py` -- do not edit by hand.", "",
          f"Machine: {sweep_machine}. Data: the JPEG copy of CIFAR-10 (`shared/datasets/cifar10-jpeg.tar.gz`); calibration: "
          "512 training images (fixed random subset); nothing is tuned on test images. Our method: beta = 2 unless "
          "stated, thresholds by MSE, phi = 0.5, exact fast path (identical to the time-stepped SNN, see "
          "docs/method.md), always on all 10,000 test images. Rate baseline: IF neurons, reset by subtraction, "
          "99.99th-percentile thresholds, analog input every step, on a fixed random subset of the test images "
          "(its simulation costs ~512 ANN passes per image; the subset size is given per model, with the ANN's "
          "accuracy on that same subset). Latency: per-phase T and end-to-end steps ((L+1)*T for two-phase; T for "
          "rate). Energy: 45 nm, 4.6 pJ/MAC, 0.9 pJ/AC.", ""]
    for m in models:
        budget = BUDGET.get(m, BUDGET["vgg16"])
        if m in args.reuse:
            r = take_old(m, old["sweeps"][m])
        else:
            print(f"== {m}", flush=True)
            t1 = time.time()
            r = sweep(model=m, dataset="cifar10", timesteps=budget["our_T"],
                      rate_timesteps=() if args.reuse_rate else RATE_T, limit=args.limit,
                      rate_limit=args.rate_images or budget["rate_images"], extra_betas=(1.0,),
                      extra_beta_timesteps=tuple(args.ablation_T or budget["ablation_T"]), quiet=True)
            stamp(m, time.time() - t1)
            if args.reuse_rate:
                r["rows"] += old_rate_rows(old, m, r)
                t = old.get("timing", {}).get(m, {"date": "before timings were recorded", "machine": old.get("machine")})
                out["timing"][m]["rate_rows_from"] = t
                reused.append(f"the rate baseline's rows of {m} (measured {t['date']} on {t['machine']})")
            print(format_sweep(r), flush=True)
            plot_sweep(r, DOCS / f"acc_vs_T_{m}.png")
        out["sweeps"][m] = r
        md += [f"## {m}", ""] + sweep_markdown(r) + ["", "Lowest T within a given loss of the ANN, and the ratio of "
               "steps and spikes at that accuracy (rate / ours):", ""] + equal_accuracy_table(r)
        if m in PUBLISHED:
            md += ["", f"Published anchor (their own ANN, original CIFAR-10 files): {PUBLISHED[m]}."]
        md += ["", f"![accuracy vs T]({f'acc_vs_T_{m}.png'})", ""]
    if not args.skip_sj:
        import vs_spikingjelly as vs

        md += ["## SpikingJelly 2.0 ann2snn (ResNet-20)", ""]
        why = None if "sj" in args.reuse else vs.spikingjelly_available()
        if why:
            md += [f"Not run: SpikingJelly is not installed here (`make compare` installs it). ({why})", ""]
        else:
            if "sj" in args.reuse:
                sj = take_old("sj", old["sj"])
            elif args.sj_json:
                sj = json.loads(Path(args.sj_json).read_text())
                reused.append(f"SpikingJelly accuracy rows from {args.sj_json} (vs_spikingjelly.py, {sj.get('date', '?')}, "
                              f"{sj.get('machine', '?')}); wall times measured in this run")
                t1 = time.time()
                sj["wall_seconds_per_image"] = vs.timing("resnet20")
                stamp("sj", time.time() - t1)
            else:
                t1 = time.time()
                sj = vs.compare("resnet20", images=args.sj_images, sj_calibration=args.sj_calibration, quiet=True)
                stamp("sj", time.time() - t1)
            out["sj"] = sj
            md += sj_markdown(sj) + ["", "SpikingJelly's numbers are reported as measured. Calibration size matters for "
                                     "LocalThresholdBalancing: its thresholds start at 0 and grow by twice the mean overflow "
                                     "per calibration batch, so with our 512 images (4 batches) it stayed at 10-13 % at every "
                                     "T in an earlier run of this table; with the 50,000 its example uses it converges.", ""]
    if not args.skip_speed:
        import speed

        if "speed" in args.reuse:
            res = take_old("speed", old["speed"])
        else:
            t1 = time.time()
            res = [speed.measure(m) for m in ["resnet20", "vgg16", "mobilenet_v2"]]
            stamp("speed", time.time() - t1)
        out["speed"] = res
        md += ["## Speed", "", speed.format_speed(res, out["timing"]["speed"]["machine"]), ""]
    md += [f"Total time of this run: {(time.time() - t0) / 60:.1f} min."]
    if reused:
        md += ["", "Reused from an earlier run of this script (`--reuse`, `--reuse-rate`): " + "; ".join(reused) + "."]
    (DOCS / "results.md").write_text(_keep_sections("\n".join(md) + "\n", DOCS / "results.md"))
    (DOCS / "results.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    update_summary(out)
    print(f"wrote {DOCS / 'results.md'}")


def sj_readme_lines(sj: dict | None, network: str = "ResNet-20", images: str = "test images",
                    ann: float | None = None) -> list[str]:
    """One README line per converter: our T = 8 against each SpikingJelly recipe at T = 64 / 256 / 512
    (those of them that were measured)."""
    if not sj:
        return []
    ours = next((r for r in sj["spikeconverter"] if r["timesteps"] == 8), None)
    measured = {r.get("timesteps") for r in sj["spikingjelly"]}
    cols = [8] + [t for t in (64, 256, 512) if t in measured]
    lines = ["", f"SpikingJelly 2.0 ann2snn on the same {network} ({sj['images']} {images}"
             + (f", ANN {ann:.2f} % on them" if ann is not None else "") + "; accuracy %, the better of "
             "its two readouts, spikes per image):", "",
             "| converter | " + " | ".join(f"T={t}" for t in cols) + " |", "|---|" + "---|" * len(cols)]
    if ours:
        lines.append(f"| spikeconverter (latency {ours['latency_steps']} steps at T=8) | {ours['accuracy']:.2f} "
                     f"({ours['spikes']:,.0f}) |" + " - |" * (len(cols) - 1))
    recipes = dict.fromkeys(r["recipe"] for r in sj["spikingjelly"])
    for name in recipes:
        cells = []
        for t in cols:
            row = next((r for r in sj["spikingjelly"] if r["recipe"] == name and r.get("timesteps") == t), None)
            if row is None:
                err = next((r["error"] for r in sj["spikingjelly"] if r["recipe"] == name and "error" in r), None)
                cells.append("failed" if err else "-")
            else:
                acc = max(row["accuracy"], row.get("accuracy_delayed", row["accuracy"]))
                cells.append(f"{acc:.2f} ({row['spikes']:,.0f})")
        lines.append(f"| SpikingJelly {name} | " + " | ".join(cells) + " |")
    return lines


def update_summary(out: dict) -> None:
    """docs/results.md's summary of docs/results.json (one row per model, targets met and missed)
    and the README's headline table."""
    lines = ["| model | ANN % | ours T=8 (latency) % | ours: lowest T within 0.1 pp | rate T=512 % (ANN on its subset) | "
             "rate: lowest T within 0.5 pp | published anchor |", "|---|---|---|---|---|---|---|"]
    misses, met = [], []
    for m, r in out["sweeps"].items():
        t8 = next((row for row in r["rows"] if row["method"] == "spikeconverter" and row["timesteps"] == 8), None)
        r512 = next((row for row in r["rows"] if row["method"] == "rate" and row["timesteps"] == max(RATE_T)), None)
        a, b = lowest(r["rows"], "spikeconverter", 0.1), lowest(r["rows"], "rate", 0.5)
        lines.append(f"| {m} | {r['ann_accuracy']:.2f} | {t8['accuracy']:.2f} ({t8['latency_steps']} steps) | "
                     f"{a['timesteps'] if a else 'not reached'} | {r512['accuracy']:.2f} ({r['ann_accuracy_rate_images']:.2f} on "
                     f"{r['rate_images']:,}) | "
                     f"{b['timesteps'] if b else 'not reached by 512'} | {PUBLISHED.get(m, '-')} |")
        if t8["difference_pp"] < -0.1:
            misses.append(f"{m}: SNN - ANN at T = 8 is {t8['difference_pp']:+.2f} pp (target >= -0.10 pp)")
        else:
            met.append(f"{m}: SNN - ANN at T = 8 is {t8['difference_pp']:+.2f} pp (target >= -0.10 pp)")
        goal = CHECKPOINT_TARGETS.get((m, "cifar10"))
        if goal is not None and r["ann_accuracy"] < goal:
            misses.append(f"{m}: the shipped ANN reaches {r['ann_accuracy']:.2f} %, {goal - r['ann_accuracy']:.2f} pp under "
                          f"its {goal} % target (docs/training.md)")
    if out.get("speed"):
        for s in out["speed"]:
            worst = max(row["compiled_ratio"] for row in s["rows"])
            worst_eager = max(row["fast_ratio"] for row in s["rows"])
            (misses if worst > 1.3 else met).append(
                f"{s['model']}: compiled fast path (the CLI default) at most {worst:.2f}x the ANN's time (target <= 1.3x)")
            if worst_eager > 1.3:
                misses.append(f"{s['model']}: eager fast path (no C++ compiler, or --no-compile) {worst_eager:.2f}x")
    cal = sorted({calibration_words(r) for r in out["sweeps"].values()})
    lines += ["", "Our rows: " + " / ".join(cal) + (" The new default's effect at low T is measured in "
              "[its section](#post-training-calibration-ablation)." if any("v0.1" in c for c in cal)
              else "")]
    lines += sj_readme_lines(out.get("sj"))
    body = "\n".join(lines + ["", "Targets met: " + ("; ".join(met) if met else "none") + ".", "",
                              "Targets missed: " + ("; ".join(misses) if misses else "none") + ".", "",
                              f"Machine: {out['machine']}."])
    _common.replace_section(DOCS / "results.md", "summary", body, heading="## Summary and targets (CIFAR-10)")
    readme_headline.write()  # the README's one table, from the JSON just written


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    main()
