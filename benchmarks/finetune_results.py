"""Fine-tuned networks against post-training conversion, the rate baseline and QCFS's published
losses; and the accuracy-vs-latency picture.

    python benchmarks/finetune_results.py [--networks FILE.snn ...] [--limit N] [--write]
    python benchmarks/finetune_results.py --render     # table and plot again from the stored JSON
    python benchmarks/finetune_results.py --networks NEW.snn --reuse resnet20 --write   # keep stored rows

Each fine-tuned network file (default: the shipped ones, checkpoints/*-T*.snn) is measured as it is
(``evaluate --snn``: exact fast path, all 10,000 test images unless --limit), beside post-training
conversion of the same float ANN at the same T with the default calibration (per channel + bias
correction, 512 training images). The post-training sweep (v0.1 per-layer or default calibration, as
it was measured) and the rate baseline come from docs/results.json (``paper_table.py``). QCFS (Bu et
al., ICLR 2022) trains its own ANNs, so its published figures are shown as losses against its own ANN,
marked as published.
``--write`` fills the finetune sections of docs/results.md (paper_table.py keeps it) and the README, writes
docs/finetune.json and docs/acc_vs_latency_<model>.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from spikeconverter import load
from spikeconverter.evaluate import evaluate
from spikeconverter.models import CHECKPOINT_DIR

import _common  # noqa: F401  (puts src/ on the path)
import readme_headline

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# QCFS, Bu et al., "Optimal ANN-SNN conversion for high-accuracy and ultra-low-latency spiking neural
# networks", ICLR 2022, CIFAR-10 (their ANNs, trained with the QCFS activation; rate-coded IF, all
# layers at once, so end-to-end latency = T). Accuracy %, as published.
QCFS = {
    "resnet20": {"ann": 91.77, "T": {1: 62.43, 2: 73.20, 4: 83.75, 8: 89.55, 16: 91.62, 32: 92.24}},
    "vgg16": {"ann": 95.52, "T": {1: 88.41, 2: 91.18, 4: 93.96, 8: 94.95, 16: 95.40, 32: 95.54}},
}


# issue 11's targets (CIFAR-10 JPEG copy, loss against the shipped float ANN, 10,000 test images)
MODELS = ("resnet20", "vgg16", "mobilenet_v2")
POST_TRAINING_LOWEST_T = 4  # lowest T within 0.5 pp, beta = 2, in every calibration sample
POST_TRAINING_T8 = -0.05  # SNN - ANN at T = 8, in every calibration sample
FINETUNED = {"resnet20": {3: -0.5, 2: -1.5}, "vgg16": {3: -0.5, 2: -1.5}, "mobilenet_v2": {3: -1.0}}


def shipped_networks() -> list[Path]:
    return sorted(CHECKPOINT_DIR.glob("*-T*.snn"))


def row(r: dict, label: str) -> dict:
    return {"method": label, "timesteps": r["timesteps"], "latency_steps": r["latency_steps"],
            "accuracy": r["snn_accuracy"], "ann_accuracy": r["ann_accuracy"], "difference_pp": r["difference_pp"],
            "spikes": r["spikes"], "energy_snn_uj": r["energy_snn_uj"], "images": r["test_images"]}


def run(networks, limit, reuse=()) -> dict:
    """Measure ``networks``; the models named in ``reuse`` keep their entries from docs/finetune.json
    (each entry carries the machine and date it was measured on)."""
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = {"machine": _common.machine(), "date": now, "models": {}}
    if reuse:
        stored = json.loads((DOCS / "finetune.json").read_text())
        for model in reuse:
            if model not in stored["models"]:
                raise SystemExit(f"--reuse {model}: docs/finetune.json has no rows for it")
            out["models"][model] = {"measured": {"machine": stored["machine"], "date": stored["date"]},
                                    **stored["models"][model]}
    for path in networks:
        if load(path).source.get("model") in reuse:  # kept from the stored file: not measured again
            continue
        r = evaluate(snn=str(path), limit=limit, quiet=True)
        model = r["model"]
        entry = out["models"].setdefault(model, {"ann_accuracy": r["ann_accuracy"], "rows": [], "files": [],
                                                 "measured": {"machine": out["machine"], "date": now}})
        ft = r.get("finetune", {})
        fine = row(r, "fine-tuned")
        fine.update(file=r["snn_file"], epochs=ft.get("epochs"), config=ft.get("config"))
        entry["rows"].append(fine)
        post = evaluate(model=model, dataset=r["dataset"], timesteps=r["timesteps"], limit=limit, quiet=True)
        entry["rows"].append(row(post, "post-training (default calibration)"))
        print(f"{model} T={r['timesteps']}: fine-tuned {fine['accuracy']:.2f} %, post-training "
              f"{post['snn_accuracy']:.2f} %, ANN {r['ann_accuracy']:.2f} %", flush=True)
    return out


def _published_rows(model: str) -> list[dict]:
    """v0.1 post-training and rate rows of paper_table.py's sweep (docs/results.json)."""
    path = DOCS / "results.json"
    if not path.exists():
        return []
    sweep = json.loads(path.read_text()).get("sweeps", {}).get(model)
    if not sweep:
        return []
    # sweeps made before the calibration options were recorded used v0.1's per-layer calibration
    ours = ("post-training (default calibration)" if any((sweep.get("calibration_options") or {}).values())
            else "post-training (v0.1 per-layer)")
    return [dict(r, method={"spikeconverter": ours, "rate": "rate baseline"}[r["method"]])
            for r in sweep["rows"] if r["method"] in ("spikeconverter", "rate")]


def _measured_when(data: dict) -> str:
    """'on MACHINE (DATE)', or per model when --reuse mixed rows measured at different times."""
    groups: dict[tuple, list[str]] = {}
    for model, entry in data["models"].items():
        m = entry.get("measured", {"machine": data["machine"], "date": data["date"]})
        groups.setdefault((m["date"], m["machine"]), []).append(model)
    if len(groups) == 1:
        (date, machine), = groups
        return f"on {machine} ({date})"
    return "; ".join(f"{', '.join(models)} on {machine} ({date})" for (date, machine), models in sorted(groups.items()))


def render(data: dict) -> str:
    lines = [f"Generated by `python benchmarks/finetune_results.py --write` {_measured_when(data)}. Fine-tuned: "
             "`spikeconverter finetune` (commands in docs/training.md), measured as saved (`evaluate --snn`, "
             "exact fast path). QCFS: published figures for its own ANNs (Bu et al., ICLR 2022, "
             "CIFAR-10 original images), given as losses; its latency is T (rate coding, all layers at once).", ""]
    for model, entry in data["models"].items():
        lines += [f"### {model}", "", f"ANN: {entry['ann_accuracy']:.2f} %.", "",
                  "| method | T | latency (steps) | accuracy % | vs ANN (pp) | spikes/img | energy uJ/img |",
                  "|---|---|---|---|---|---|---|"]
        for r in sorted(entry["rows"], key=lambda r: (r["timesteps"], r["method"])):
            lines.append(f"| {r['method']} | {r['timesteps']} | {r['latency_steps']} | {r['accuracy']:.2f} | "
                         f"{r['difference_pp']:+.2f} | {r['spikes']:,.0f} | {r['energy_snn_uj']:.2f} |")
        q = QCFS.get(model)
        if q:
            lines += ["", f"QCFS, published (its own ANN, {q['ann']:.2f} %; latency = T), loss in pp: "
                      + ", ".join(f"T = {t}: {acc - q['ann']:+.2f}" for t, acc in q["T"].items()) + "."]
        lines += ["", f"![accuracy vs latency](acc_vs_latency_{model}.png)", ""]
    lines += ["Post-training figures over calibration samples: the ablation above (`calibration_ablation.py`).", "",
              *target_lines(data), ""]
    return "\n".join(lines)


def plot(data: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for model, entry in data["models"].items():
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        series, swept = {}, set()
        for r in _published_rows(model):
            series.setdefault(r["method"], []).append((r["latency_steps"], r["difference_pp"]))
            swept.add(r["method"])
        for r in entry["rows"]:  # a post-training point the sweep's line already carries is not drawn twice
            if r["method"] not in swept:
                series.setdefault(r["method"], []).append((r["latency_steps"], r["difference_pp"]))
        style = {"post-training (v0.1 per-layer)": ("C0", "o", "-"), "post-training (default calibration)":
                 ("C2", "s", "-" if "post-training (default calibration)" in swept else ""),
                 "fine-tuned": ("C3", "*", ""), "rate baseline": ("C1", "^", "-")}
        for name, pts in series.items():
            pts.sort()
            c, m, ls = style.get(name, ("C7", "x", "-"))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=c, marker=m, linestyle=ls or "none",
                    markersize=9 if m == "*" else 6, label=f"ours: {name}" if name != "rate baseline" else name)
        q = QCFS.get(model)
        if q:
            ax.plot(list(q["T"]), [a - q["ann"] for a in q["T"].values()], color="C4", marker="D", linestyle="--",
                    label="QCFS (published, own ANN)")
        ax.set_xscale("log", base=2)
        ax.set_ylim(-30, 1.5)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("end-to-end latency (time steps until the logits are final)")
        ax.set_ylabel("SNN - ANN accuracy (pp)")
        ax.set_title(f"{model}, CIFAR-10: accuracy loss vs latency")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = DOCS / f"acc_vs_latency_{model}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def targets(data: dict, ablation: dict | None) -> tuple[list[str], list[str]]:
    """Issue 11's targets, met and missed, each with its measured size: post-training from
    calibration_ablation.py's default-calibration rows (every seed), fine-tuned from ``data``."""
    met, missed = [], []
    default = None
    if ablation:
        from spikeconverter.convert import CALIBRATION_DEFAULTS

        default = next((name for name, c in ablation["configs"].items() if c == CALIBRATION_DEFAULTS), None)
    for model in MODELS:
        rows = [r for r in ((ablation or {}).get("models", {}).get(model, {}).get("rows", [])) if r["config"] == default]
        if not rows:
            missed.append(f"{model}: post-training not measured over calibration samples (calibration_ablation.py)")
        else:
            seeds = len({r["seed"] for r in rows})
            worst = {t: min(r["difference_pp"] for r in rows if r["timesteps"] == t) for t in {r["timesteps"] for r in rows}}
            ok = [t for t, w in sorted(worst.items()) if w >= -0.5]
            lowest_t = min(ok) if ok else None
            words = (f"{model}: post-training lowest measured T within 0.5 pp in all {seeds} calibration samples is "
                     + (f"{lowest_t}" if lowest_t else f"none of {sorted(worst)}")
                     + f" (target <= {POST_TRAINING_LOWEST_T}; worst at T = {min(worst)} / 4: "
                     + " / ".join(f"{worst[t]:+.2f}" for t in sorted(worst) if t <= 4) + " pp)")
            (met if lowest_t and lowest_t <= POST_TRAINING_LOWEST_T else missed).append(words)
            if 8 in worst:
                (met if worst[8] >= POST_TRAINING_T8 else missed).append(
                    f"{model}: post-training SNN - ANN at T = 8 is {worst[8]:+.2f} pp in the worst of {seeds} calibration "
                    f"samples (target >= {POST_TRAINING_T8:+.2f})")
        fine = {r["timesteps"]: r for r in data["models"].get(model, {}).get("rows", []) if r["method"] == "fine-tuned"}
        for t, goal in FINETUNED[model].items():
            if t not in fine:
                missed.append(f"{model}: no fine-tuned network at T = {t} (target within {-goal:.1f} pp)")
                continue
            d = fine[t]["difference_pp"]
            (met if d >= goal else missed).append(
                f"{model}: fine-tuned T = {t} is {d:+.2f} pp (target within {-goal:.1f} pp"
                + (f", missed by {goal - d:.2f} pp)" if d < goal else ")"))
    return met, missed


def _ablation() -> dict | None:
    path = DOCS / "calibration_ablation.json"
    return json.loads(path.read_text()) if path.exists() else None


def target_lines(data: dict) -> list[str]:
    met, missed = targets(data, _ablation())
    return ["Few-time-step targets met: " + ("; ".join(met) or "none") + ".", "",
            "Few-time-step targets missed: " + ("; ".join(missed) or "none") + "."]


def _zoo_order(data: dict) -> dict:
    """``data`` with its models in the zoo's order (as paper_table's tables), whatever order they were
    measured or reused in."""
    order = {m: i for i, m in enumerate(MODELS)}
    return {**data, "models": dict(sorted(data["models"].items(), key=lambda kv: order.get(kv[0], len(order))))}


def write(data: dict) -> None:
    data = _zoo_order(data)
    (DOCS / "finetune.json").write_text(json.dumps(data, indent=2) + "\n")
    md = DOCS / "results.md"
    _common.replace_section(md, "finetune", render(data), heading="## Fine-tuning for few time steps")
    readme_headline.write()
    for p in plot(data):
        print(f"wrote {p.relative_to(ROOT)}")
    print(f"wrote {md.relative_to(ROOT)} and docs/finetune.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", nargs="*", default=None, help="fine-tuned network files (default: the shipped ones)")
    ap.add_argument("--limit", type=int, default=None, help="test images (default: all 10,000)")
    ap.add_argument("--write", action="store_true", help="write docs/results.md's section, the JSON and the plots")
    ap.add_argument("--render", action="store_true", help="only re-render from docs/finetune.json")
    ap.add_argument("--reuse", nargs="+", default=(), metavar="MODEL",
                    help="keep these models' rows from docs/finetune.json instead of measuring them again")
    args = ap.parse_args()
    if args.render:
        write(json.loads((DOCS / "finetune.json").read_text()))
        return
    networks = [Path(p) for p in args.networks] if args.networks else shipped_networks()
    if not networks:
        raise SystemExit("no fine-tuned network files (pass --networks or ship some in the checkpoints folder)")
    data = run(networks, args.limit, tuple(args.reuse))
    print(render(data))
    if args.write:
        write(data)


if __name__ == "__main__":
    main()
