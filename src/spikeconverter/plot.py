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
    rate = snn.method == "rate"
    T = snn.timesteps
    L = snn.spiking_depth
    layers = sorted(snn.layers, key=lambda la: (la.depth, snn.layers.index(la)))
    n_layers = len(layers)
    k = neurons or (12 if n_layers <= 24 else 8)
    total_steps = T if rate else (L + 1) * T

    band = k + 3  # rows of one band, with a gap
    n_bands = n_layers + (0 if rate else 1)  # + the output layer, which only accumulates
    height = 1.6 + n_bands * (0.3 if n_bands <= 25 else 0.2)
    fig, (ax, axb, axt) = plt.subplots(1, 3, figsize=(15, height), sharey=True,
                                       gridspec_kw=dict(width_ratios=[5, 1.1, 1.1], wspace=0.05))
    data = {}
    yticks, ylabels = [], []
    for i, la in enumerate(layers):
        y0 = (n_bands - 1 - i) * band
        train = res.spike_trains[la.name][:, 0].flatten(1)  # [T, neurons]
        rows = _sample_rows(train, k, seed + i)
        if rate:
            gen0, acc = 0, None
        else:
            gen0 = la.depth * T
            acc = (la.depth - 1) * T if la.depth > 0 else None
            if acc is not None:
                ax.add_patch(plt.Rectangle((acc, y0 - 0.5), T, k, color="tab:blue", alpha=0.08, lw=0))
            ax.add_patch(plt.Rectangle((gen0, y0 - 0.5), T, k, color="tab:orange", alpha=0.15, lw=0))
        sub = train[:, rows]
        t_idx, r_idx = (sub != 0).nonzero(as_tuple=True)
        times = gen0 + t_idx.double() + 0.5
        ys = y0 + (k - 1 - r_idx.double())
        ax.scatter(times.numpy(), ys.numpy(), s=6 if rate else 10, marker="|" if rate else "s", c="k", lw=0.8)
        total = float(res.spike_counts[la.name].sum())
        data[la.name] = dict(total=total, neurons=rows.tolist(), times=(gen0 + t_idx).tolist(),
                             rows=r_idx.tolist(), depth=la.depth, generate_start=gen0)
        yticks.append(y0 + (k - 1) / 2)
        ylabels.append(la.name)
        axb.barh(y0 + (k - 1) / 2, total, height=k, color="tab:gray")
        mean, lo, hi = _theta_summary(la.theta)
        axt.errorbar(mean, y0 + (k - 1) / 2, xerr=[[mean - lo], [hi - mean]], fmt="o", ms=3, color="tab:purple",
                     capsize=2, lw=0.8)
    if not rate:
        ax.add_patch(plt.Rectangle((L * T, -0.5), T, k, color="tab:blue", alpha=0.08, lw=0))
        ax.text(L * T + T / 2, (k - 1) / 2, "logits", ha="center", va="center", fontsize=7, color="tab:blue")
        yticks.append((k - 1) / 2)
        ylabels.append("output (accumulates)")
        ax.axvline(total_steps, color="tab:red", lw=1.2)
        ax.text(total_steps, n_bands * band * 0.98, f" latency\n (L+1)T\n = {total_steps}", color="tab:red", va="top",
                fontsize=8)
        for w in range(L + 2):
            ax.axvline(w * T, color="k", lw=0.3, alpha=0.3)
    ax.set_xlim(0, total_steps * (1.1 if not rate else 1.0))
    ax.set_ylim(-2, n_bands * band)
    ax.set_yticks(yticks)
    ax.set_yticklabels(ylabels, fontsize=7 if n_bands <= 25 else 5.5)
    ax.set_xlabel("time step")
    axb.set_xlabel("spikes (this input)")
    axb.ticklabel_format(axis="x", style="sci", scilimits=(3, 3))
    axt.set_xlabel("threshold theta\n(per channel: mean, range)" if any(
        torch.is_tensor(la.theta) and la.theta.dim() > 0 for la in layers) else "threshold theta")
    axt.set_xscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter

    axt.xaxis.set_major_locator(LogLocator(numticks=4))
    axt.xaxis.set_minor_formatter(NullFormatter())
    for a in (axb, axt):
        a.grid(True, axis="x", alpha=0.3)
    if title is None:
        kind = ("rate-coded IF baseline: every layer fires over the same T steps" if rate else
                "two-phase pipeline: accumulate (blue) then generate (orange), most significant spike first")
        title = (f"{kind}\nT = {T}, {n_layers} spiking layers (depth L = {L}); raster: {k} neurons per layer "
                 "(a random sample of those that spiked, sorted by the value they code)")
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.12, right=0.98, top=1 - 0.75 / height, bottom=0.85 / height)
    fig.spike_data = data
    fig.spike_counts = {k_: float(v.sum()) for k_, v in res.spike_counts.items()}
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
