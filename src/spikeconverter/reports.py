"""The texts and pictures of ``evaluate`` and ``sweep``: what the command line prints and draws from
their result dicts (evaluate.py measures them)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .methods import method_named


def _search_rows(search: dict | None, uniform: bool) -> list:
    """How -T auto chose: the budget, the judged loss (+- its standard error) and the search's cost;
    when one T for all layers won, say so (the search may keep it: max_loss found no move within
    budget, or a latency budget's uniform T lost less than the mixed allocation found)."""
    if not search:
        return []
    budget = (f"within {search['budget']['max_loss_pp']} pp" if "max_loss_pp" in search["budget"]
              else f"within {search['budget']['latency_steps']} steps")
    se = (f" +- {search['loss_se_pp']:.2f}", f" +- {search['loss_se_pp_converted']:.2f}") \
        if "loss_se_pp" in search else ("", "")
    mixed = [st for st in search.get("steps", []) if not st.get("uniform") and len(set(st["timesteps"].values())) > 1]
    won = ""
    if uniform:
        last = mixed[-1] if mixed else {}
        loss = min(last.get("loss_pp", 0.0), last.get("loss_pp_recalibrated", math.inf))
        won = ("; one T for all layers kept: " + (
            f"the best mixed allocation found lost more (latency {last['latency']}, {loss:+.2f} pp)"
            if mixed else "no per-layer move stayed within the budget"))
    return [("T chosen", f"automatically, {budget}, on {search['images']} {search['judged_on']}: loss "
                         f"{search['loss_pp']:+.2f}{se[0]} pp as searched, {search['loss_pp_converted']:+.2f}"
                         f"{se[1]} pp recalibrated for it (+- one standard error: an estimate from these "
                         f"images); kept: {search.get('network', 'recalibrated')}{won} "
                         f"({search['evaluations']} evaluations, {search['seconds']:.0f} s)")]


def format_evaluate(r: dict) -> str:
    name = r["model"] or (f"your model ({r['snn_file'].split(' ')[0]})" if r.get("snn_file") else "your model")
    calib = (f"{r['calibration_images']} training images" if r.get("calibration_images") is not None
             else "not recorded in the file")
    if r.get("data_free"):
        d = r["data_free"]
        if d.get("method") == "bn-statistics":
            n_bn, rest = len(d["layers_from_bn_statistics"]), d["layers_from_synthesised_inputs"]
            calib = (f"no images (data-free from BN statistics: {n_bn} of {n_bn + len(rest)} layers"
                     + (f"; the other {len(rest)} on {d['images']} synthesised inputs" if rest else "")
                     + f", {d['seconds']:.0f} s)")
        else:
            calib = (f"no images (data-free: {d['images']} inputs synthesised from batch-norm statistics, "
                     f"{d['steps']} steps, {d['seconds']:.0f} s)")
    rows = [
        ("model / data", f"{name} / {r['dataset']} ({r['test_images']} test images; calibration: {calib})"),
        ("method", f"{r['method']} (engine: {r['engine']}, beta={r['beta']:g}, threshold={r['threshold']}"
                   + "".join(f", {k.replace('_', ' ')}" for k, v in r.get("calibration_options", {}).items() if v)
                   + f", {r.get('precision', 'float32')}" + ")"),
        ("ANN accuracy", f"{r['ann_accuracy']:.2f} %"),
        ("SNN accuracy", f"{r['snn_accuracy']:.2f} %"),
        ("difference", f"{r['difference_pp']:+.2f} pp"),
    ]
    if not method_named(r["method"]).pipelined:
        rows += [("time steps", f"T = {r['timesteps']} (all layers at once)"),
                 ("latency", f"{r['latency_steps']} steps end to end"),
                 ("throughput", f"1 input / {r['steps_per_input']} steps")]
    elif r.get("timesteps_per_layer"):
        per = r["timesteps_per_layer"]
        rows += [("time steps", f"per layer, {min(per.values())}-{max(per.values())}: "
                                + " ".join(f"{k}={v}" for k, v in per.items()))]
        rows += _search_rows(r.get("timesteps_search"), uniform=False)
        rows += [("latency", f"{r['latency_steps']} steps end to end (longest path, L = {r['spiking_depth']})"),
                 ("throughput", f"1 input / {r['steps_per_input']} steps (pipelined: the longest T)")]
    else:
        rows += [("time steps", f"T = {r['timesteps']} per phase")]
        rows += _search_rows(r.get("timesteps_search"), uniform=True)
        rows += [("latency", f"{r['latency_steps']} steps end to end ((L+1)*T, L = {r['spiking_depth']})"),
                 ("throughput", f"1 input / {r['steps_per_input']} steps (pipelined)")]
    rows += [
        ("spikes / image", f"{r['spikes']:,.0f}"),
        ("SOPs / image", f"{r['sops']:,.0f}"),
        ("SNN MACs / image", f"{r['snn_macs']:,.0f} (analog-input ops)"),
        ("ANN MACs / image", f"{r['ann_macs']:,.0f}"),
        ("op-count energy", f"SNN {r['energy_snn_uj']:.2f} uJ, float ANN {r['energy_ann_uj']:.2f} uJ "
                           f"(ANN/SNN = {r['energy_ratio']:.2f}x)"),
        ("energy convention", r["energy_convention"] + " (the ops-only proxy)"),
    ]
    if r.get("energy_model"):
        from .energy import format_energy

        rows += format_energy(r["energy_model"])
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(w)}  {v}" for k, v in rows)


# ---------------------------------------------------------------------------------------------



def format_sweep(r: dict) -> str:
    head = (f"{r['model']} / {r['dataset']}: ANN {r['ann_accuracy']:.2f} % on {r['test_images']} test images"
            + (f" ({r['ann_accuracy_rate_images']:.2f} % on the {r['rate_images']} used for the rate baseline)"
               if r["rate_images"] != r["test_images"] else "") + f"; {r.get('precision', 'float32')}")
    lines = [head, f"{'method':<26}{'T':>5}{'latency':>9}{'accuracy':>10}{'diff pp':>9}{'spikes/img':>12}"
                   f"{'SOPs/img':>14}{'energy uJ':>11}"]
    for row in r["rows"]:
        lines.append(f"{row['method']:<26}{row['timesteps']:>5}{row['latency_steps']:>9}{row['accuracy']:>10.2f}"
                     f"{row['difference_pp']:>+9.2f}{row['spikes']:>12,.0f}{row['sops']:>14,.0f}"
                     f"{row['energy_snn_uj']:>11.2f}")
    lines.append(f"energy: {r['energy_convention']}")
    return "\n".join(lines)


def plot_sweep(r: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    methods = []
    for row in r["rows"]:
        if row["method"] not in methods:
            methods.append(row["method"])
    for ax, key, label in ((axes[0], "timesteps", "time steps T (per phase for two-phase)"),
                           (axes[1], "latency_steps", "end-to-end latency (steps)")):
        for m in methods:
            rows = [row for row in r["rows"] if row["method"] == m]
            ax.plot([row[key] for row in rows], [row["accuracy"] for row in rows], marker="o", label=m)
        ax.axhline(r["ann_accuracy"], color="k", linestyle="--", label=f"ANN {r['ann_accuracy']:.2f} %")
        if r["rate_images"] != r["test_images"] and any(row["method"] == "rate" for row in r["rows"]):
            # the rate baseline runs on a subset: its own ANN reference, so the curves compare fairly
            ax.axhline(r["ann_accuracy_rate_images"], color="tab:green", linestyle=":",
                       label=f"ANN {r['ann_accuracy_rate_images']:.2f} % on the rate subset ({r['rate_images']:,})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.3)
        # every point and every reference line inside the axes
        refs = [r["ann_accuracy"], r["ann_accuracy_rate_images"]]
        lo, hi = min(row["accuracy"] for row in r["rows"]), max(row["accuracy"] for row in r["rows"])
        ax.set_ylim(max(0, min([lo] + refs) - 3), min(100.5, max([hi] + refs) + 1.5))
    # below the axes, not on them: a legend inside covered points
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=min(4, len(labels)), frameon=False)
    fig.suptitle(f"{r['model']} / {r['dataset']}: accuracy vs time steps")
    rows_of_legend = math.ceil(len(labels) / min(4, len(labels)))
    fig.tight_layout(rect=(0, 0.03 + 0.04 * rows_of_legend, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)



def write_json(obj, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")
