"""The pipeline as a picture: what one input's time-stepped simulation actually did.

``pipeline(snn, x)`` runs ``snn.simulate(x[:1], record=True)`` and draws, on one time axis, one
band per spiking layer in depth order: its accumulate window (light) and generate window (dark)
and a raster of a sample of its neurons' spikes (rows sorted by the value their train codes, so
the most-significant-first code is visible as a binary count), the end-to-end latency marked.
Beside it: spikes per layer (bars) and each layer's threshold (per-channel: mean and range). For
the rate baseline every layer fires over the same T steps, and the picture shows that.

Everything drawn comes from the recorded run; ``fig.spike_data`` keeps it (per layer: the total
spikes, the sampled neurons and the (time, row) of every dot) so a test can check it against
``simulate().spike_counts``.
"""

from __future__ import annotations

import torch


def _sample_rows(train: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Up to k neuron indices of a train [T, N] (flattened neurons), preferring neurons that spike,
    ordered by the value of their code (largest at the top)."""
    T, N = train.shape
    active = (train != 0).any(0).nonzero().flatten()
    pool = active if len(active) >= k else torch.arange(N)
    g = torch.Generator().manual_seed(seed)
    pick = pool[torch.randperm(len(pool), generator=g)[:k]]
    if len(pick) < k and len(active):  # few active: keep all of them, fill with silent ones
        pick = pool[:k]
    place = 2.0 ** torch.arange(T - 1, -1, -1, dtype=torch.float64)
    words = (place[:, None] * train[:, pick].double()).sum(0)
    return pick[torch.argsort(words, descending=True, stable=True)]


WINDOW_ALPHA = 0.25  # accumulate (blue) and generate (orange) windows: visible, dots still readable


def _count_label(v, _pos=None) -> str:
    return f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"


def _close_up(ax, name: str, train: torch.Tensor, neurons: list, T: int, beta: float) -> dict:
    """The first layer's sampled neurons, one row each, over its generate window, drawn large in
    the empty upper right of the time axis: each row is one neuron's code, most significant spike
    first (a spike at step t weighs beta^-t), rows in the order of the value they code."""
    inset = ax.inset_axes([0.57, 0.6, 0.29, 0.33])
    sub = train[:, neurons].T.double()  # [rows, T]
    inset.imshow(sub.numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    inset.set_xticks(range(T))
    inset.set_xticklabels([f"{beta:g}^-{t + 1}" if beta != 2 else f"1/{2 ** (t + 1)}" for t in range(T)], fontsize=6)
    place = float(beta) ** -torch.arange(1, T + 1, dtype=torch.float64)
    values = (sub * place).sum(1)
    inset.set_yticks(range(len(neurons)))
    inset.set_yticklabels([f"{v:.3f}" for v in values.tolist()], fontsize=6)
    inset.set_xticks([t - 0.5 for t in range(1, T)], minor=True)
    inset.set_yticks([r - 0.5 for r in range(1, len(neurons))], minor=True)
    inset.grid(True, which="minor", color="0.75", lw=0.5)
    inset.tick_params(which="minor", length=0)
    inset.set_title(f"close-up of {name}'s generate window: one row per neuron, most significant spike first\n"
                    "(below: what a spike at that step weighs; left: the value the row codes, x theta)", fontsize=7)
    return {"layer": name, "neurons": list(neurons), "cells": sub.numpy().tolist(), "values": values.tolist()}


def _theta_summary(theta) -> tuple[float, float, float]:
    if torch.is_tensor(theta) and theta.dim() > 0:
        t = theta.detach().double().flatten()
        return float(t.mean()), float(t.min()), float(t.max())
    return float(theta), float(theta), float(theta)


def pipeline(snn, x: torch.Tensor, path=None, neurons: int | None = None, seed: int = 0, title: str | None = None):
    """Draw one input's run (the first of ``x``). ``neurons``: rows per layer band (default 12, or 8
    beyond 24 layers). Returns the matplotlib Figure; saves it to ``path`` if given."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x1 = x[:1]
    res = snn.simulate(x1, record=True)
    rate = not snn.scheme.pipelined  # all layers at once: no schedule to draw
    T = snn.timesteps
    uniform = rate or snn.uniform
    # when each layer accumulates and generates (schedule.py; with one T: windows of T steps)
    steps = {}
    if not rate:
        sch = snn.schedule
        node = {snn.plan.layer_name(a): a for a in snn.plan.spikers}
        steps = {name: (sch.acc_start.get(a), sch.acc_length.get(a), sch.gen_start[a], sch.code_length[a])
                 for name, a in node.items()}
    layers = sorted(snn.layers, key=lambda la: (steps[la.name][2] if not rate else la.depth, snn.layers.index(la)))
    k = neurons or (12 if len(layers) <= 24 else 8)
    total_steps = T if rate else snn.latency_steps

    band = k + 3  # rows of one band, with a gap
    n_bands = len(layers) + (0 if rate else 1)  # + the output layer, which only accumulates
    height = 1.6 + n_bands * (0.3 if n_bands <= 25 else 0.2)
    fig, (ax, axb, axt) = plt.subplots(1, 3, figsize=(15, height), sharey=True,
                                       gridspec_kw=dict(width_ratios=[5, 1.1, 1.1], wspace=0.05))
    data = {}
    yticks, ylabels = [], []
    for i, la in enumerate(layers):
        y0 = (n_bands - 1 - i) * band
        data[la.name] = _draw_layer(plt, (ax, axb, axt), la, res, steps.get(la.name), y0, k, seed + i)
        yticks.append(y0 + (k - 1) / 2)
        ylabels.append(la.name)
    if not rate:
        yticks.append((k - 1) / 2)
        ylabels.append("output (accumulates)")
        _draw_output(plt, ax, snn, k, band, total_steps, uniform)
    _finish_axes(ax, axb, axt, layers, yticks, ylabels, total_steps, n_bands, band, rate)
    if title is None:
        kind = ("rate-coded IF baseline: every layer fires over the same T steps" if rate else
                "two-phase pipeline: accumulate (blue) then generate (orange), most significant spike first")
        Ts = "" if uniform else f" (per layer {min(snn.timesteps_per_layer.values())}-{T})"
        title = (f"{kind}\nT = {T}{Ts}, {len(layers)} spiking layers (depth L = {snn.spiking_depth}); raster: {k} "
                 "neurons per layer (a random sample of those that spiked, sorted by the value they code)")
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.12, right=0.98, top=1 - 0.75 / height, bottom=0.85 / height)
    if not rate and layers:
        fig.close_up = _close_up(ax, layers[0].name, res.spike_trains[layers[0].name][:, 0].flatten(1),
                                 data[layers[0].name]["neurons"], steps[layers[0].name][3], layers[0].beta)
    fig.spike_data = data
    fig.spike_counts = {k_: float(v.sum()) for k_, v in res.spike_counts.items()}
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def _draw_layer(plt, axes, la, res, steps, y0: float, k: int, seed: int) -> dict:
    """One layer's band: its accumulate (blue) and generate (orange) windows, a raster of ``k``
    sampled neurons, its spike count and its threshold. Returns what was drawn (fig.spike_data)."""
    ax, axb, axt = axes
    rate = steps is None
    train = res.spike_trains[la.name][:, 0].flatten(1)  # [T, neurons]
    rows = _sample_rows(train, k, seed)
    if rate:
        gen0 = 0
    else:
        acc, acc_len, gen0, gen_len = steps
        if acc is not None:  # not the input coder, which only sends
            ax.add_patch(plt.Rectangle((acc, y0 - 0.5), acc_len, k, color="tab:blue", alpha=WINDOW_ALPHA, lw=0))
        ax.add_patch(plt.Rectangle((gen0, y0 - 0.5), gen_len, k, color="tab:orange", alpha=WINDOW_ALPHA, lw=0))
    sub = train[:, rows]
    t_idx, r_idx = (sub != 0).nonzero(as_tuple=True)
    times = gen0 + t_idx.double() + 0.5
    ys = y0 + (k - 1 - r_idx.double())
    ax.scatter(times.numpy(), ys.numpy(), s=6 if rate else 5, marker="|" if rate else "s", c="k", lw=0.8 if rate else 0)
    total = float(res.spike_counts[la.name].sum())
    axb.barh(y0 + (k - 1) / 2, total, height=k, color="tab:gray")
    mean, lo, hi = _theta_summary(la.theta)
    axt.errorbar(mean, y0 + (k - 1) / 2, xerr=[[mean - lo], [hi - mean]], fmt="o", ms=3, color="tab:purple",
                 capsize=2, lw=0.8)
    return dict(total=total, neurons=rows.tolist(), times=(gen0 + t_idx).tolist(), rows=r_idx.tolist(),
                depth=la.depth, generate_start=gen0)


def _draw_output(plt, ax, snn, k: int, band: int, total_steps: int, uniform: bool) -> None:
    """The output's accumulate window, the latency line and (one T) the window grid."""
    sch = snn.schedule
    out0, out_len = sch.acc_start[snn.plan.output], sch.acc_length[snn.plan.output]
    ax.add_patch(plt.Rectangle((out0, -0.5), out_len, k, color="tab:blue", alpha=WINDOW_ALPHA, lw=0))
    ax.text(out0 + out_len / 2, (k - 1) / 2, "logits", ha="center", va="center", fontsize=7, color="tab:blue")
    ax.axvline(total_steps, color="tab:red", lw=1.2)
    # at the bottom, beside the output's window: the top right holds the close-up
    ax.text(total_steps, band * 1.5, f" latency\n {'(L+1)T' if uniform else 'longest path'}\n = {total_steps}",
            color="tab:red", va="bottom", fontsize=8)
    if uniform:
        for w in range(snn.spiking_depth + 2):
            ax.axvline(w * snn.timesteps, color="k", lw=0.3, alpha=0.3)


def _finish_axes(ax, axb, axt, layers, yticks, ylabels, total_steps, n_bands, band, rate) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.set_xlim(0, total_steps * (1.1 if not rate else 1.0))
    ax.set_ylim(-2, n_bands * band)
    ax.set_yticks(yticks)
    ax.set_yticklabels(ylabels, fontsize=7 if n_bands <= 25 else 5.5)
    ax.set_xlabel("time step")
    axb.set_xlabel("spikes (this input)")
    axb.xaxis.set_major_locator(MaxNLocator(3))
    axb.xaxis.set_major_formatter(FuncFormatter(_count_label))
    axt.set_xlabel("threshold theta\n(per channel: mean, range)" if any(
        torch.is_tensor(la.theta) and la.theta.dim() > 0 for la in layers) else "threshold theta")
    axt.set_xlim(left=0)  # linear: thresholds span one or two decades, and every tick gets a label
    axt.xaxis.set_major_locator(MaxNLocator(4))
    for a in (axb, axt):
        a.grid(True, axis="x", alpha=0.3)
