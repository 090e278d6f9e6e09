"""The paper's table on real ImageNet photos: the ImageNet-shaped networks of the zoo (ResNet-34 and
MobileNet-v2, 7x7/2 + max-pool stems) on Imagenette, at the side their checkpoints were trained at.

    python benchmarks/imagenette_table.py [--models resnet34 mobilenet_v2] [--rate-images N] [--limit N]
                                          [--reuse resnet34 ... speed sj] [--skip-speed] [--render] [--fresh]
                                          [--sj-json FILE]

For each shipped Imagenette checkpoint: the same sweep as paper_table.py (our method at beta = 2 for
T = 3..10, the beta = 1 ablation, the rate baseline at T = 16..512 on a fixed random subset whose size
is printed), the lowest T within 0.1 / 0.5 / 1.0 pp with the steps and spikes at equal accuracy, and
the speed of the fast path against the ANN on batches at the trained side. Our method always runs on
all 3,925 val images (Imagenette's test split; nothing is tuned on them: calibration takes 512 training
images). Writes docs/imagenette.json, the "Imagenette" section of docs/results.md (paper_table.py keeps
it), docs/acc_vs_T_<model>_imagenette.png and the README's Imagenette lines. Imagenette is 10 ImageNet
classes: these rows are never ImageNet figures.

A full run takes hours on a CPU (ResNet-34: ~2 h on one core of the dev box), so each model's sweep
keeps its finished rows in runs/imagenette_table-<model>.progress.json and a stopped run, started
again with the same arguments, resumes there (--fresh ignores it); the files are removed once the
docs are written.

SpikingJelly 2.0 on the ResNet-34 checkpoint takes about an hour per recipe here, so it is a run of
its own: `python benchmarks/vs_spikingjelly.py --model resnet34 --dataset imagenette --images 100
--sj-timesteps 16 32 64 128 256 --recipes ... --json FILE`, then `--sj-json FILE` here puts its rows
in the docs (`--reuse sj` keeps the ones already there).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from paper_table import RATE_T, equal_accuracy_table, lowest, sj_markdown, sj_readme_lines, sweep_markdown
from spikeconverter.evaluate import format_sweep, plot_sweep, sweep
from spikeconverter.models import CHECKPOINT_TARGETS, available

import _common
import readme_headline

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DATASET = "imagenette"
PROGRESS = ROOT / "runs"
OUR_T = (3, 4, 5, 6, 8, 10)
# What a sweep costs on the 2-core dev box decides the cuts (all printed): the rate baseline is one
# 512-step simulation (~512 ANN passes per image), the beta = 1 ablation one conversion per T.
BUDGET = {
    "resnet34": dict(our_T=OUR_T, ablation_T=(4, 8), rate_images=100),
    "mobilenet_v2": dict(our_T=OUR_T, ablation_T=(4, 8), rate_images=100),
}
SPEED_T = (4, 8)
SPEED_BATCH = 64


def _stamp(t0: float, machine: str) -> dict:
    """How long a part took, when and where (kept in the JSON beside its figures)."""
    return {"seconds": round(time.time() - t0, 1), "machine": machine,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def measure(models, args, old: dict) -> dict:
    out = {"machine": _common.machine(), "dataset": DATASET, "sweeps": {}, "speed": [], "timing": {}}
    for m in models:
        if m in args.reuse:
            out["sweeps"][m] = old["sweeps"][m]
            out["timing"][m] = old["timing"].get(m, {})
            continue
        budget = BUDGET.get(m, BUDGET["resnet34"])
        print(f"== {m} / {DATASET}", flush=True)
        t0 = time.time()
        r = sweep(model=m, dataset=DATASET, timesteps=args.timesteps or budget["our_T"], rate_timesteps=RATE_T,
                  limit=args.limit, rate_limit=args.rate_images or budget["rate_images"], extra_betas=(1.0,),
                  extra_beta_timesteps=args.ablation_T or budget["ablation_T"], quiet=True, checkpoint=args.checkpoint,
                  progress_file=progress_file(m))
        out["timing"][m] = _stamp(t0, out["machine"])
        print(format_sweep(r), flush=True)
        out["sweeps"][m] = r
    if "sj" in args.reuse:
        out["sj"] = old["sj"]
    elif args.sj_json:
        out["sj"] = json.loads(Path(args.sj_json).read_text())
        if out["sj"].get("dataset") != DATASET:
            raise SystemExit(f"--sj-json: {args.sj_json} was measured on {out['sj'].get('dataset')}, not {DATASET}")
        if args.sj_note:
            out["sj"]["note"] = args.sj_note
    if "speed" in args.reuse:
        out["speed"], out["timing"]["speed"] = old["speed"], old["timing"].get("speed", {})
    elif not args.skip_speed:
        import speed

        t0 = time.time()
        out["speed"] = [speed.measure(m, batch=SPEED_BATCH, sim_batch=4, timesteps=SPEED_T, reps=3, dataset=DATASET,
                                      checkpoint=args.checkpoint) for m in models]
        out["timing"]["speed"] = _stamp(t0, out["machine"])
    return out


def progress_file(model: str) -> Path:
    return PROGRESS / f"imagenette_table-{model}.progress.json"


def _images(out: dict) -> str:
    """'all 3,925' unless --limit cut the val set."""
    n = sorted({r["test_images"] for r in out["sweeps"].values()})
    return "all 3,925" if n == [3925] else " / ".join(f"{k:,}" for k in n)


def _side(r: dict) -> str:
    return f"{r['image_size']} px" if r.get("image_size") else "?"


def _sj_ann(out: dict, sj: dict) -> float | None:
    """The ANN's accuracy on SpikingJelly's photos where they are the rate baseline's subset (same
    count: both draw evaluate.fixed_subset of the full val set with seed 0), else None."""
    r = out["sweeps"].get(sj["model"], {})
    return r.get("ann_accuracy_rate_images") if r.get("rate_images") == sj["images"] else None


def _sj_subset_words(out: dict, sj: dict) -> str:
    ann = _sj_ann(out, sj)
    return "" if ann is None else f" The {sj['images']} photos are the rate baseline's subset above (ANN {ann:.2f} % on them)."


def render(out: dict) -> str:
    md = [f"Generated by `python benchmarks/imagenette_table.py` on {out['machine']}. Data: Imagenette "
          "(`shared/datasets/imagenette-224.tar.gz`: 10 ImageNet classes, real photos), decoded once at side/0.875 and "
          f"centre-cropped to the side the checkpoint was trained at; our method on {_images(out)} val images "
          "(Imagenette's test split), calibration on 512 training images, default calibration unless stated. Rate "
          "baseline as in the CIFAR-10 tables, on the fixed random val subset named per model. These are Imagenette "
          "figures, not ImageNet's.",
          ""]
    for m, r in out["sweeps"].items():
        md += [f"### {m} (Imagenette, {_side(r)})", ""] + sweep_markdown(r)
        md += ["", "Lowest T within a given loss of the ANN, and the ratio of steps and spikes at that accuracy "
               "(rate / ours):", ""] + equal_accuracy_table(r)
        md += ["", f"![accuracy vs T](acc_vs_T_{m}_imagenette.png)", ""]
    sj = out.get("sj")
    if sj:
        md += [f"### SpikingJelly 2.0 ann2snn ({sj['model']}, Imagenette, {sj.get('image_size', '?')} px)", "",
               *sj_markdown(sj), "",
               f"Measured {sj['date']} on {sj['machine']} by `python benchmarks/vs_spikingjelly.py --model {sj['model']} "
               "--dataset imagenette` (its own run: SpikingJelly simulates every step as a whole network pass). "
               "Its T is its latency (all layers at once); ours is per phase, with the end-to-end latency beside it. "
               "Reported as measured." + _sj_subset_words(out, sj) + (" " + sj["note"] if sj.get("note") else ""), ""]
    if out.get("speed"):
        import speed

        note = out["timing"]["speed"].get("note")
        md += ["### Speed at the trained side", "", speed.format_speed(out["speed"], out["timing"]["speed"]["machine"]),
               *(["", note] if note else []), ""]
    return "\n".join(md)


def verdicts(out: dict) -> tuple[list[str], list[str]]:
    met, missed = [], []
    for m, r in out["sweeps"].items():
        t8 = next((row for row in r["rows"] if row["method"] == "spikeconverter" and row["timesteps"] == 8), None)
        if t8:
            (missed if t8["difference_pp"] < -0.1 else met).append(
                f"{m}: SNN - ANN at T = 8 is {t8['difference_pp']:+.2f} pp (target >= -0.10 pp)")
        goal = CHECKPOINT_TARGETS.get((m, DATASET))
        if goal is not None:
            (missed if r["ann_accuracy"] < goal else met).append(
                f"{m}: the shipped ANN reaches {r['ann_accuracy']:.2f} % on the val set"
                + (f", {goal - r['ann_accuracy']:.2f} pp under its {goal} % floor" if r["ann_accuracy"] < goal
                   else f" (floor {goal} %)"))
    for s in out.get("speed") or []:
        worst = max(row["compiled_ratio"] for row in s["rows"])
        (missed if worst > 1.3 else met).append(
            f"{s['model']}: compiled fast path at most {worst:.2f}x the ANN's time (target <= 1.3x)")
    return met, missed


def summary_block(out: dict) -> str:
    lines = ["Imagenette (10 ImageNet classes, real photos; not ImageNet), the ImageNet-shaped networks at the side they "
             f"were trained at, {_images(out)} val images:", "",
             "| model (side) | ANN % | ours T=8 % (latency) | ours: lowest T within 0.1 / 0.5 pp | rate T=512 % "
             "(ANN on its subset) | rate: lowest T within 0.5 pp | spikes rate/ours within 0.5 pp |",
             "|---|---|---|---|---|---|---|"]
    for m, r in out["sweeps"].items():
        rows = r["rows"]
        t8 = next((row for row in rows if row["method"] == "spikeconverter" and row["timesteps"] == 8), None)
        r512 = next((row for row in rows if row["method"] == "rate" and row["timesteps"] == max(RATE_T)), None)
        a1, a5, b5 = lowest(rows, "spikeconverter", 0.1), lowest(rows, "spikeconverter", 0.5), lowest(rows, "rate", 0.5)
        ratio = f"{b5['spikes'] / a5['spikes']:.1f}x" if a5 and b5 else "n/a"
        lines.append(
            f"| {m} ({_side(r)}) | {r['ann_accuracy']:.2f} | "
            + (f"{t8['accuracy']:.2f} ({t8['latency_steps']} steps)" if t8 else "-") + " | "
            + f"{a1['timesteps'] if a1 else 'not reached'} / {a5['timesteps'] if a5 else 'not reached'} | "
            + (f"{r512['accuracy']:.2f} ({r['ann_accuracy_rate_images']:.2f} on {r['rate_images']:,})" if r512 else "-")
            + f" | {b5['timesteps'] if b5 else 'not reached by 512'} | {ratio} |")
    sj = out.get("sj")
    if sj:
        lines += sj_readme_lines(sj, network=f"{sj['model']} on Imagenette", images="val photos", ann=_sj_ann(out, sj))
    met, missed = verdicts(out)
    lines += ["", "Imagenette targets met: " + ("; ".join(met) or "none") + ".", "",
              "Imagenette targets missed: " + ("; ".join(missed) or "none") + "."]
    return "\n".join(lines)


def write(out: dict) -> None:
    (DOCS / "imagenette.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    for m, r in out["sweeps"].items():
        plot_sweep(r, DOCS / f"acc_vs_T_{m}_imagenette.png")
    _common.replace_section(DOCS / "results.md", "imagenette", render(out),
                            heading="## Imagenette: ImageNet-shaped networks on real photos")
    _common.replace_section(DOCS / "results.md", "imagenette_summary", summary_block(out),
                            heading="## Summary and targets (Imagenette)")
    readme_headline.write()
    print("wrote docs/results.md (Imagenette sections), docs/imagenette.json, the plots and the README's table")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=None, help="default: every shipped Imagenette checkpoint")
    ap.add_argument("--rate-images", type=int, default=None, help="default: per model, see BUDGET")
    ap.add_argument("--limit", type=int, default=None, help="val images for our method (default all 3,925)")
    ap.add_argument("--timesteps", type=int, nargs="+", default=None, help="T of our rows (default per model)")
    ap.add_argument("--ablation-T", type=int, nargs="+", default=None, help="T of the beta = 1 rows (default per model)")
    ap.add_argument("--checkpoint", default=None, help="weights to measure instead of the shipped ones (one model)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--reuse", nargs="+", default=(), metavar="PART",
                    help="take these parts (model names, 'speed', 'sj') from docs/imagenette.json instead of measuring again")
    ap.add_argument("--sj-json", default=None, help="SpikingJelly's rows from a `vs_spikingjelly.py --dataset imagenette "
                                                    "--json` output (see above)")
    ap.add_argument("--speed-note", default="", help="with --render: a sentence on how the speed part was measured")
    ap.add_argument("--sj-note", default="", help="a sentence on how --sj-json was measured (e.g. jobs beside it)")
    ap.add_argument("--render", action="store_true", help="only rewrite the docs from docs/imagenette.json")
    ap.add_argument("--no-write", action="store_true", help="print, do not touch the docs (a trial run)")
    ap.add_argument("--fresh", action="store_true", help="measure every row again, ignoring a stopped run's progress")
    args = ap.parse_args()
    if args.render:
        out = json.loads((DOCS / "imagenette.json").read_text())
        if args.speed_note:
            out["timing"]["speed"]["note"] = args.speed_note
        write(out)
        return
    models = args.models or [m for m, ds in available().items() if DATASET in ds]
    if args.checkpoint and len(models) != 1:
        raise SystemExit("--checkpoint needs exactly one model (--models NAME)")
    if not models:
        raise SystemExit("no shipped Imagenette checkpoint: train one first (scripts/train_zoo.sh resnet34-imagenette)")
    old = json.loads((DOCS / "imagenette.json").read_text()) if args.reuse else {}
    for part in args.reuse:
        if part not in old.get("sweeps", {}) and not (part in ("speed", "sj") and old.get(part)):
            raise SystemExit(f"--reuse {part}: docs/imagenette.json has no '{part}' part")
    if args.fresh:
        for m in models:
            progress_file(m).unlink(missing_ok=True)
    out = measure(models, args, old)
    print(render(out))
    print(summary_block(out))
    if not args.no_write:
        write(out)
        for m in models:  # measured and written: a later run measures again
            progress_file(m).unlink(missing_ok=True)


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    main()
