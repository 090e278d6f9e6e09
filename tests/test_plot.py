"""The pipeline picture draws what the recorded run did."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

import spikeconverter as sc  # noqa: E402
from spikeconverter.plot import pipeline  # noqa: E402
from test_cli import needs_shipped, run  # noqa: E402

from nets import make  # noqa: E402


@pytest.mark.parametrize("method,T", [("spikeconverter", 5), ("rate", 16)])
def test_picture_draws_the_recorded_spikes(tmp_path, method, T):
    model, shape = make("resnet_block", seed=2)
    g = torch.Generator().manual_seed(3)
    snn = sc.convert(model, torch.randn((16,) + shape, generator=g, dtype=torch.float64), timesteps=T, method=method)
    x = torch.randn((1,) + shape, generator=g, dtype=torch.float64)
    fig = pipeline(snn, x, tmp_path / "p.png", neurons=6)
    assert (tmp_path / "p.png").stat().st_size > 10_000
    res = snn.simulate(x, record=True)
    assert set(fig.spike_data) == set(res.spike_counts)
    drawn = 0
    for name, d in fig.spike_data.items():
        assert d["total"] == float(res.spike_counts[name].sum())  # the bar is the layer's spike count
        train = res.spike_trains[name][:, 0].flatten(1)
        start = 0 if method == "rate" else d["depth"] * T
        assert d["generate_start"] == start
        # every dot is a spike of the recorded train, and every spike of the sampled neurons is a dot
        dots = {(t - start, d["neurons"][r]) for t, r in zip(d["times"], d["rows"])}
        sampled = train[:, d["neurons"]]
        want = {(int(t), d["neurons"][int(r)]) for t, r in zip(*(sampled != 0).nonzero(as_tuple=True))}
        assert dots == want
        drawn += len(dots)
        if method == "spikeconverter":  # rows sorted by the value their code carries (MSB first)
            place = 2.0 ** torch.arange(T - 1, -1, -1, dtype=torch.float64)
            words = (place[:, None] * sampled.double()).sum(0)
            assert bool((words[:-1] >= words[1:]).all())
    assert drawn > 0


@needs_shipped
def test_show_command_draws_a_shipped_model(tmp_path):
    out = tmp_path / "pipeline.png"
    r = run("--threads", "2", "show", "--model", "resnet20", "-T", "4", "--image", "3", "--calibration", "64",
            "--no-sequential", "--no-bias-correction", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "test image 3" in r.stdout and out.stat().st_size > 50_000
    bad = run("show", "--out", str(tmp_path / "p.txt"))
    assert bad.returncode == 2 and "--out" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_close_up_shows_the_first_layers_codes_most_significant_first(tmp_path):
    model, shape = make("resnet_block", seed=2)
    g = torch.Generator().manual_seed(3)
    T = 6
    snn = sc.convert(model, torch.randn((16,) + shape, generator=g, dtype=torch.float64), timesteps=T)
    x = torch.randn((1,) + shape, generator=g, dtype=torch.float64)
    fig = pipeline(snn, x, tmp_path / "p.png", neurons=6)
    first = min(snn.layers, key=lambda la: la.depth).name
    c = fig.close_up
    assert c["layer"] == first and c["neurons"] == fig.spike_data[first]["neurons"]
    train = snn.simulate(x, record=True).spike_trains[first][:, 0].flatten(1)
    assert c["cells"] == train[:, c["neurons"]].T.double().tolist()  # the cells are the recorded spikes
    place = [2.0 ** -(t + 1) for t in range(T)]
    assert c["values"] == [sum(p * s for p, s in zip(place, row)) for row in c["cells"]]
    assert c["values"] == sorted(c["values"], reverse=True)  # larger codes on top


def test_sweep_plot_keeps_every_point_and_line_inside_its_axes(tmp_path):
    import matplotlib.pyplot as plt

    from spikeconverter import evaluate

    rows = [dict(method="spikeconverter", timesteps=t, latency_steps=20 * t, accuracy=a) for t, a in ((2, 60.0), (8, 88))]
    r = {"model": "m", "dataset": "d", "ann_accuracy": 88.0, "ann_accuracy_rate_images": 93.5, "test_images": 100,
         "rate_images": 50, "rows": rows + [dict(method="rate", timesteps=64, latency_steps=64, accuracy=91.0)]}
    drawn = {}
    real_savefig = plt.Figure.savefig

    def keep(fig, *a, **k):
        drawn["fig"] = fig
        return real_savefig(fig, *a, **k)

    plt.Figure.savefig, saved = keep, plt.Figure.savefig
    try:
        evaluate.plot_sweep(r, tmp_path / "s.png")
    finally:
        plt.Figure.savefig = saved
    for ax in drawn["fig"].axes:
        lo, hi = ax.get_ylim()
        assert lo <= 60.0 and hi >= 93.5 and ax.get_legend() is None  # the legend sits below, not on the points
    assert drawn["fig"].legends


def test_picture_with_per_layer_T_draws_each_layers_own_windows(tmp_path):
    from matplotlib.patches import Rectangle

    from test_per_layer_timesteps import T_BRANCHES, _two_branches

    snn, x = _two_branches(T_BRANCHES)
    fig = pipeline(snn, x[:1], tmp_path / "p.png", neurons=4)
    sch, plan = snn.schedule, snn.plan
    by_name = {plan.layer_name(a): a for a in plan.spikers}
    res = snn.simulate(x[:1], record=True)
    for name, d in fig.spike_data.items():
        a = by_name[name]
        assert d["generate_start"] == sch.gen_start[a]
        T = T_BRANCHES[name]
        assert all(sch.gen_start[a] <= t < sch.gen_start[a] + T for t in d["times"])
        assert len(d["times"]) == int((res.spike_trains[name][:, 0].flatten(1)[:, d["neurons"]] != 0).sum())
    ax = fig.axes[0]
    widths = sorted(round(p.get_width()) for p in ax.patches if isinstance(p, Rectangle) and p.get_alpha())
    # generate windows 6, 2, 4, 3; accumulate windows 6, 6, 6, 6; the output's 3
    assert widths == sorted([6, 2, 4, 3] + [6] * 4 + [3])
    assert ax.get_xlim()[1] >= snn.latency_steps == 27
