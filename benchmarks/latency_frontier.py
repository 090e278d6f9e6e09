"""Accuracy loss against end-to-end latency: one T for all layers vs T chosen per layer.

    python benchmarks/latency_frontier.py --model resnet20 [--dataset cifar10]
        [--uniform 3 4 5 6 8] [--max-loss 0.25 0.5 1.0] [--judge 3 4 5 6] [--render]

Every row is one `evaluate` call with its defaults (float64, per-channel calibration with bias
correction on 512 training images, all test images): uniform rows `-T T`, per-layer rows
`-T auto --max-loss PP` (T chosen on 4,096 held-out training images, allocate.py). Rows go to
docs/latency.json as they finish (a stopped run resumes); --render rewrites the docs/results.md
section and the plot docs/latency_frontier_<model>.png from the JSON alone.

--judge T...: how well the search's judge predicts the test loss -- for each uniform T, the loss
(with its paired standard error) on the 1,024 held-out training images the search judged on before
and on the 4,096 it judges on now (`held_out_training(n)`: the next n of the fixed random order,
so the two sets overlap), beside the loss on every test image.

Published points are drawn as such -- losses their authors report for their own ANNs (trained for
conversion) and data, not measured here.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from spikeconverter.evaluate import evaluate

import _common
import readme_headline

PATH = readme_headline.DOCS / "latency.json"
# (label, model, dataset, loss pp (negative: below the ANN), end-to-end steps): as published
PUBLISHED = [
    ("QCFS (Bu et al., ICLR 2022), own quantization-trained ANN", "resnet20", "cifar10", -0.15, 16),
    ("QCFS (Bu et al., ICLR 2022), own quantization-trained ANN", "vgg16", "cifar10", -0.12, 16),
]


def _row(r: dict, kind: str, budget) -> dict:
    search = r.get("timesteps_search") or {}
    return dict(kind=kind, budget=budget, timesteps=r["timesteps"], timesteps_per_layer=r.get("timesteps_per_layer"),
                latency_steps=r["latency_steps"], accuracy=r["snn_accuracy"], ann_accuracy=r["ann_accuracy"],
                difference_pp=r["difference_pp"], spikes=r["spikes"], images=r["test_images"],
                precision=r["precision"], search_loss_pp=search.get("loss_pp"),
                search_loss_se_pp=search.get("loss_se_pp"), search_images=search.get("images"),
                search_loss_pp_converted=search.get("loss_pp_converted"), search_network=search.get("network"),
                search_seconds=search.get("seconds"),
                search_evaluations=search.get("evaluations"), seconds_convert=r["seconds_convert"])


def measure(model: str, dataset: str, uniform, losses, stored: dict) -> None:
    key = f"{dataset}/{model}"
    rows = stored["rows"].setdefault(key, [])
    done = {(r["kind"], r["budget"]) for r in rows}
    todo = [("uniform", T) for T in uniform] + [("auto max-loss", b) for b in losses]
    for kind, budget in todo:
        if (kind, budget) in done:
            continue
        t0 = time.time()
        if kind == "uniform":
            r = evaluate(model=model, dataset=dataset, timesteps=budget, quiet=True)
        else:
            r = evaluate(model=model, dataset=dataset, timesteps="auto", max_loss=budget, quiet=True)
        rows.append(_row(r, kind, budget))
        stored["machine"] = _common.machine()
        PATH.write_text(json.dumps(stored, indent=1) + "\n")
        print(f"{model} {kind} {budget}: latency {r['latency_steps']}, {r['difference_pp']:+.2f} pp "
              f"({time.time() - t0:.0f} s)", flush=True)


JUDGE_SIZES = (1024, 4096)


def judge_study(model: str, dataset: str, Ts, stored: dict) -> None:
    """Loss +- standard error on held-out training images (the judge's 1,024 before, 4,096 now) vs
    on every test image, per uniform T; evaluate()'s defaults (float64, 512 calibration images)."""
    from spikeconverter import convert
    from spikeconverter.allocate import paired_loss
    from spikeconverter.evaluate import batches_of, calibration_data, held_out_training, load_dataset, load_model, sized_kwargs

    rows = stored.setdefault("judge", {}).setdefault(f"{dataset}/{model}", [])
    net, info = load_model(model, dataset)
    net = net.double().eval()
    kw = sized_kwargs(dataset, info)
    calib = calibration_data(dataset, 512, **kw).double()
    # each size as the search draws it: the first n of the held-out order (sorted by index)
    sel = {n: held_out_training(dataset, n, 512, **kw) for n in JUDGE_SIZES}
    test_x, test_y = (torch.cat(t) for t in zip(*batches_of(load_dataset(dataset, "test", **kw), 500)))

    def logits(m, x):
        with torch.no_grad():
            return torch.cat([m(x[i : i + 250].double()) for i in range(0, len(x), 250)])

    ann_sel, ann_test = {n: logits(net, x) for n, (x, _) in sel.items()}, logits(net, test_x)
    for T in Ts:
        if any(r["T"] == T for r in rows):
            continue
        t0 = time.time()
        snn = convert(net, calib, timesteps=T)
        row = {"T": T, "test": paired_loss(ann_test, logits(snn, test_x), test_y), "test_images": len(test_y)}
        for n, (x, y) in sel.items():
            row[str(n)] = paired_loss(ann_sel[n], logits(snn, x), y)
        rows.append(row)
        stored["machine"] = _common.machine()
        PATH.write_text(json.dumps(stored, indent=1) + "\n")
        print(f"judge {model} T = {T}: " + ", ".join(f"{k} {v[0]:+.2f} +- {v[1]:.2f}" for k, v in row.items()
                                                    if isinstance(v, (list, tuple))) + f" ({time.time() - t0:.0f} s)",
              flush=True)


def _judge_lines(stored: dict) -> list:
    if not stored.get("judge"):
        return []
    lines = ["", "How well the judge predicts the test loss (`--judge`): one T for all layers, loss +- one paired "
             "standard error in pp.", "",
             "| data / model | T | 1,024 held-out training images (the search's before) | 4,096 (its default now) "
             "| all test images |", "|---|---|---|---|---|"]
    for key, rows in stored["judge"].items():
        for r in sorted(rows, key=lambda r: r["T"]):
            cells = [f"{r[k][0]:+.2f} +- {r[k][1]:.2f}" for k in ("1024", "4096", "test")]
            lines.append(f"| {key} | {r['T']} | " + " | ".join(cells) + " |")
    return lines


# issue 28's post-training targets: end-to-end steps within 0.5 pp of the ANN
TARGETS = {"cifar10/resnet20": 85, "cifar10/vgg16": 50, "cifar10/mobilenet_v2": 150, "imagenette/resnet34": 150}


def _target_lines(stored: dict, within: float = 0.5) -> list:
    out = []
    for key, target in TARGETS.items():
        rows = [r for r in stored["rows"].get(key, []) if r["difference_pp"] >= -within]
        if not stored["rows"].get(key):
            out.append(f"{key} <= {target} steps: not measured yet")
            continue
        if not rows:
            out.append(f"{key} <= {target} steps: no measured row within {within} pp yet (rows up to "
                       f"{max(r['latency_steps'] for r in stored['rows'][key])} steps)")
            continue
        best = min(rows, key=lambda r: r["latency_steps"])
        how = "uniform T" if best["kind"] == "uniform" else "T per layer"
        verdict = "met" if best["latency_steps"] <= target else f"missed by {best['latency_steps'] - target} steps"
        out.append(f"{key} <= {target} steps: {best['latency_steps']} ({how}, {best['difference_pp']:+.2f} pp): {verdict}")
    return ["", f"Targets (post-training, within {within} pp of the ANN on the test images; one calibration sample, the "
            "issue asks for the worst of three): " + "; ".join(out) + "."]


README_AFTER = "published losses: [docs/results.md](docs/results.md#fine-tuning-for-few-time-steps)."


def _readme_block(stored: dict, within: float = 0.5) -> str:
    """One line per network: the shortest measured end-to-end latency within ``within`` pp of the
    ANN on the test images, with one T for all layers and with T per layer (-T auto)."""
    def best(rows, kind):
        mine = [r for r in rows if (r["kind"] == "uniform") == (kind == "uniform")]
        ok = [r for r in mine if r["difference_pp"] >= -within]

        def what(r):
            return f"T = {r['timesteps']}" if kind == "uniform" else f"auto, budget {r['budget']} pp"

        if not ok:
            longest = max(mine, key=lambda r: r["latency_steps"])
            return (f"none of the measured within {within} pp (longest measured: {longest['latency_steps']} steps, "
                    f"{what(longest)}, {longest['difference_pp']:+.2f} pp)")
        r = min(ok, key=lambda r: r["latency_steps"])
        return f"**{r['latency_steps']} steps** ({what(r)}, {r['difference_pp']:+.2f} pp)"

    lines = [f"End-to-end latency within {within} pp of the float ANN (all test images, post-training; "
             "[docs/results.md](docs/results.md#latency-time-steps-per-layer), `python benchmarks/latency_frontier.py "
             "--render`):", ""]
    for key, rows in stored["rows"].items():
        dataset, model = key.split("/")
        auto = any(r["kind"] != "uniform" for r in rows)
        lines.append(f"- {model} ({dataset}): one T for all layers {best(rows, 'uniform')}; T per layer "
                     + (best(rows, "auto") if auto else "not measured yet"))
    return "\n".join(lines)


def render(stored: dict) -> None:
    lines = ["| data / model | T | budget (judged on training images) | latency (steps) | SNN - ANN (pp, test) "
             "| loss in the search (training images) | search cost |", "|---|---|---|---|---|---|---|"]
    for key, rows in stored["rows"].items():
        for r in sorted(rows, key=lambda r: r["latency_steps"]):
            per = r["timesteps_per_layer"]
            T = f"per layer {min(per.values())}-{max(per.values())}" if per else str(r["timesteps"])
            budget = f"<= {r['budget']} pp" if r["kind"] != "uniform" else "-"
            kept = {"calibrated for the allocation": "recalibrated"}.get(r.get("search_network"), "searched")
            se = f" +- {r['search_loss_se_pp']:.2f}" if r.get("search_loss_se_pp") is not None else ""
            search = (f"{r['search_loss_pp']:+.2f}{se} as searched, {r['search_loss_pp_converted']:+.2f} recalibrated; "
                      f"kept: {kept}; {r.get('search_images') or 1024} images" if r["search_loss_pp"] is not None else "-")
            cost = (f"{r['search_evaluations']} evaluations, {r['search_seconds']:.0f} s"
                    if r["search_seconds"] is not None else "-")
            lines.append(f"| {key} | {T} | {budget} | {r['latency_steps']} | {r['difference_pp']:+.2f} | {search} "
                         f"| {cost} |")
    auto = [r for rows in stored["rows"].values() for r in rows if r["kind"] != "uniform"]
    over = [-r["difference_pp"] - r["budget"] for r in auto]
    span = f"{min(over):+.2f}" if auto and min(over) == max(over) else (f"{min(over):+.2f} to {max(over):+.2f}" if auto else "")
    lines += ["", f"On the test images the auto rows ended {span} pp beyond their budgets (negative: within)." if auto else ""]
    lines += _target_lines(stored)
    lines += _judge_lines(stored)
    lines += ["", "Each row is `spikeconverter evaluate --model M -T T` or `-T auto --max-loss PP` with every other "
              "default (float64, all test images); the search judges its budget as accuracy loss against the float "
              "ANN on held-out *training* images (the number in the row's search column; +- one paired standard "
              "error), an estimate: the test loss can exceed the budget, and the table shows by how much. "
              "Published points (plot only): "
              + "; ".join(f"{p[0]}: {p[3]:+.2f} pp at {p[4]} steps on {p[1]}/{p[2]}" for p in PUBLISHED)
              + f". Machine: {stored.get('machine')}. Regenerate: `python benchmarks/latency_frontier.py --render`."]
    _common.replace_section(readme_headline.DOCS / "results.md", "latency", "\n".join(lines),
                            heading="## Latency: time steps per layer")
    _common.replace_section(readme_headline.ROOT / "README.md", "latency", _readme_block(stored), after=README_AFTER)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, rows in stored["rows"].items():
        dataset, model = key.split("/")
        fig, ax = plt.subplots(figsize=(6, 4.8))
        for kind, style in (("uniform", "o-"), ("auto max-loss", "s")):
            pts = sorted((r["latency_steps"], r["difference_pp"]) for r in rows if r["kind"] == kind)
            if pts:
                ax.plot(*zip(*pts), style, label="one T for all layers" if kind == "uniform" else "T per layer (auto)")
        for label, m, d, loss, steps in PUBLISHED:
            if (m, d) == (model, dataset):
                ax.plot([steps], [loss], "k^", label=f"published: {label}")
        ax.axhline(-0.5, color="tab:red", lw=0.8, ls="--", label="0.5 pp below the ANN")
        ax.set_xlabel("end-to-end latency (steps)")
        ax.set_ylabel("SNN - ANN accuracy (pp, test)")
        ax.set_title(f"{model} / {dataset}: loss vs latency", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # below: no point hidden
        fig.tight_layout()
        fig.savefig(readme_headline.DOCS / f"latency_frontier_{model}.png", dpi=110)
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--uniform", type=int, nargs="*", default=[3, 4, 5, 6, 8])
    ap.add_argument("--max-loss", type=float, nargs="*", default=[0.25, 0.5, 1.0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--judge", type=int, nargs="*", default=[], metavar="T",
                    help="also the judge study for these uniform T (see the docstring)")
    ap.add_argument("--drop-auto", action="store_true",
                    help="forget the model's stored auto rows first (re-measure them, e.g. after a change of the judge)")
    ap.add_argument("--add", nargs="*", default=[], metavar="JSON",
                    help="rows from `evaluate ... --json FILE` runs of the same commands (uniform or -T auto)")
    ap.add_argument("--render", action="store_true", help="only rewrite the docs from docs/latency.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    stored = json.loads(PATH.read_text()) if PATH.exists() else {"rows": {}}
    for f in args.add:
        r = json.loads(open(f).read())
        search = r.get("timesteps_search")
        kind, budget = ("auto max-loss", search["budget"]["max_loss_pp"]) if search else ("uniform", r["timesteps"])
        rows = stored["rows"].setdefault(f"{r['dataset']}/{r['model']}", [])
        rows[:] = [x for x in rows if (x["kind"], x["budget"]) != (kind, budget)] + [_row(r, kind, budget)]
        stored["machine"] = _common.machine()
        PATH.write_text(json.dumps(stored, indent=1) + "\n")
    if not args.render:
        if not args.model:
            ap.error("--model is required to measure")
        if args.drop_auto:
            rows = stored["rows"].get(f"{args.dataset}/{args.model}", [])
            rows[:] = [r for r in rows if r["kind"] == "uniform"]
        if args.judge:
            judge_study(args.model, args.dataset, args.judge, stored)
        measure(args.model, args.dataset, args.uniform, args.max_loss, stored)
    render(stored)
    print(f"wrote {PATH.relative_to(readme_headline.ROOT)}, the results section and the plots")


if __name__ == "__main__":
    main()
