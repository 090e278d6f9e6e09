"""Time steps per layer: each spiking layer codes with its own T; the schedule aligns trains of
different lengths at their most significant digit, and the SNN stays the quantized ANN, digit for
digit (float64), in fixed point, streamed, saved and exported."""

import pytest
import torch
from torch import nn

import spikeconverter as sc
from spikeconverter.bundle_executor import Bundle
from test_fixed_point import assert_bit_exact

from nets import NETS, make
from test_equivalence import check_identical


def _mixed(snn_layers: int, seed: int, low: int = 2, high: int = 7) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [int(t) for t in torch.randint(low, high + 1, (snn_layers,), generator=g)]


def _layers(model, shape, **kw) -> int:
    return len(sc.convert(model, torch.randn((4,) + shape, dtype=torch.float64), timesteps=2, **kw).layers)


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_T_simulation_equals_quantized_ann(name, seed):
    model, shape = make(name)
    g = torch.Generator().manual_seed(seed)
    Ts = _mixed(_layers(model, shape), seed)
    snn = sc.convert(model, torch.randn((32,) + shape, generator=g, dtype=torch.float64), timesteps=Ts)
    assert list(snn.timesteps_per_layer.values()) == Ts and snn.timesteps == max(Ts)
    res = check_identical(snn, torch.randn((3,) + shape, generator=g, dtype=torch.float64))
    for layer, T in zip(snn.layers, Ts):
        assert res.spike_trains[layer.name].shape[0] == T  # each layer's train has its own length
    assert sum(c.sum() for c in res.spike_counts.values()) > 0


class TwoBranches(nn.Module):
    """A residual sum whose two inputs have different T, a concat of two different T and a max-pool
    over one of them: r3 takes r2 (T = 2) and the shortcut r1 (T = 6); r4 takes pool(r3) (T = 4)
    concatenated with pool(r1) (T = 6)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = (nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1),
                                     nn.Conv2d(6, 6, 3, padding=1))
        self.r1, self.r2, self.r3, self.r4 = nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.c4 = nn.Conv2d(12, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        a = self.r1(self.c1(x))
        c = self.r3(self.c3(self.r2(self.c2(a))) + a)
        e = self.r4(self.c4(torch.cat([self.pool(c), self.pool(a)], 1)))
        return self.fc(e.flatten(1))


def _two_branches(timesteps, **kw):
    torch.manual_seed(3)
    model = TwoBranches().double().eval()
    g = torch.Generator().manual_seed(3)
    snn = sc.convert(model, torch.randn(32, 3, 8, 8, generator=g, dtype=torch.float64), timesteps=timesteps, **kw)
    return snn, torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)


T_BRANCHES = {"r1": 6, "r2": 2, "r3": 4, "r4": 3}


def test_schedule_of_a_residual_and_a_concat_of_different_T():
    snn, x = _two_branches(T_BRANCHES)
    sch, plan = snn.schedule, snn.plan
    by_name = {plan.layer_name(a): a for a in plan.spikers}
    r1, r2, r3, r4 = (by_name[k] for k in ("r1", "r2", "r3", "r4"))
    # r1 accumulates the analog input for its own 6 steps, then generates 6 digits
    assert (sch.acc_start[r1], sch.acc_length[r1], sch.gen_start[r1], sch.code_length[r1]) == (0, 6, 6, 6)
    # r2 takes r1's 6-step train, generates 2
    assert (sch.acc_start[r2], sch.acc_length[r2], sch.gen_start[r2]) == (6, 6, 12)
    # r3 sums r2 (2 steps, from 12) and the shortcut r1 (6 steps, from 6, waiting 6 steps):
    # aligned at step 12, accumulated for the longer, 6
    assert (sch.acc_start[r3], sch.acc_length[r3], sch.gen_start[r3]) == (12, 6, 18)
    assert sch.reads_at(r3, r1) == 6 and sch.reads_at(r3, r2) == 0
    # r4: a concat of pool(r3) (4 steps from 18) and pool(r1) (6 steps, waiting 12)
    assert (sch.acc_start[r4], sch.acc_length[r4], sch.gen_start[r4]) == (18, 6, 24)
    assert (sch.acc_start[plan.output], sch.acc_length[plan.output]) == (24, 3)
    assert snn.latency_steps == sch.latency == 27 and snn.steps_per_input == 6
    res = check_identical(snn, x)
    assert res.latency_steps == 27


def test_mixed_T_streaming_equals_one_at_a_time():
    snn, x = _two_branches(T_BRANCHES)
    xs = torch.cat([x, -x[:1]])
    streamed = snn.simulate(xs, stream=True)
    alone = [snn.simulate(xs[i : i + 1]) for i in range(len(xs))]
    assert torch.equal(streamed.logits, torch.cat([a.logits for a in alone]))
    for layer in snn.layers:
        assert torch.equal(streamed.spike_counts[layer.name], torch.cat([a.spike_counts[layer.name] for a in alone]))
    # a new input every max T steps; the last one's logits after one more latency
    assert streamed.total_steps == (len(xs) - 1) * 6 + 27


@pytest.mark.parametrize("name", ["resnet_block", "concat", "vgg_maxpool"])
def test_mixed_T_streaming_on_the_suite(name):
    model, shape = make(name, seed=5)
    g = torch.Generator().manual_seed(4)
    Ts = _mixed(_layers(model, shape), 7)
    snn = sc.convert(model, torch.randn((16,) + shape, generator=g, dtype=torch.float64), timesteps=Ts)
    xs = torch.randn((4,) + shape, generator=g, dtype=torch.float64)
    streamed = snn.simulate(xs, stream=True)
    assert torch.equal(streamed.logits, torch.cat([snn.simulate(xs[i : i + 1]).logits for i in range(len(xs))]))


def test_uniform_T_given_per_layer_is_uniform_T():
    snn4, x = _two_branches(4)
    per_layer, _ = _two_branches([4] * len(snn4.layers))
    assert per_layer.uniform and per_layer.latency_steps == snn4.latency_steps == (snn4.spiking_depth + 1) * 4
    assert torch.equal(per_layer(x), snn4(x))
    assert torch.equal(per_layer.simulate(x).logits, snn4.simulate(x).logits)


def test_latency_is_the_longest_path_of_accumulate_lengths():
    uniform, _ = _two_branches(4)
    assert uniform.latency_steps == 20
    # the output accumulates r4's train: two steps fewer there are two steps less latency
    assert _two_branches({"r1": 4, "r2": 4, "r3": 4, "r4": 2})[0].latency_steps == 18
    # r3 sums r2 with the shortcut from r1 and accumulates the longer of the two trains: a shorter
    # r2 alone saves nothing; r1 shorter shortens r2's, r3's and r4's accumulation
    assert _two_branches({"r1": 4, "r2": 2, "r3": 4, "r4": 4})[0].latency_steps == 20
    assert _two_branches({"r1": 2, "r2": 2, "r3": 4, "r4": 4})[0].latency_steps == 2 + 2 + 2 + 4 + 4


def test_mixed_T_save_load(tmp_path):
    snn, x = _two_branches(T_BRANCHES)
    snn.save(tmp_path / "net.snn")
    back = sc.load(tmp_path / "net.snn")
    assert back.timesteps_per_layer == snn.timesteps_per_layer == T_BRANCHES
    assert back.latency_steps == 27 and back.steps_per_input == 6
    assert torch.equal(back(x), snn(x))
    a, b = snn.simulate(x, record=True), back.simulate(x, record=True)
    assert torch.equal(a.logits, b.logits)
    for k in a.spike_trains:
        assert torch.equal(a.spike_trains[k], b.spike_trains[k])


def test_mixed_T_fixed_point_and_bundle(tmp_path):
    snn, x = _two_branches(T_BRANCHES, fixed_point=True)
    assert_bit_exact(snn, x)
    d = snn.export(tmp_path / "bundle")
    logits, counts = Bundle(d).run(x.numpy())
    res = snn.simulate(x)
    assert torch.equal(torch.from_numpy(logits), res.logits)
    for k, c in res.spike_counts.items():
        assert torch.equal(torch.from_numpy(counts[k]).to(c.dtype), c), k


def test_mixed_T_spike_coded_input():
    model, shape = make("resnet_block", seed=3)
    g = torch.Generator().manual_seed(2)
    n = _layers(model, shape, input_coding="spike", threshold="max")
    snn = sc.convert(model, torch.randn((16,) + shape, generator=g, dtype=torch.float64), timesteps=_mixed(n, 3),
                     input_coding="spike", threshold="max")
    check_identical(snn, torch.randn((2,) + shape, generator=g, dtype=torch.float64))


def test_per_layer_T_refusals():
    model, shape = make("concat")
    calib = torch.randn((8,) + shape, dtype=torch.float64)
    names = list(sc.convert(model, calib, timesteps=2).timesteps_per_layer)
    with pytest.raises(ValueError, match="missing"):
        sc.convert(model, calib, timesteps={names[0]: 3})
    with pytest.raises(ValueError, match="not layers of this model: \\['nope'\\]"):
        sc.convert(model, calib, timesteps={**dict.fromkeys(names, 3), "nope": 2})
    with pytest.raises(ValueError, match=f"1 values for {len(names)} spiking layers"):
        sc.convert(model, calib, timesteps=[3])
    with pytest.raises(ValueError, match="timesteps must be an integer >= 1"):
        sc.convert(model, calib, timesteps=[0] * len(names))
    with pytest.raises(ValueError, match="rate baseline"):
        sc.convert(model, calib, timesteps=[3] * len(names), method="rate")


# -- choosing T per layer (allocate.py) ----------------------------------------------------------


def _selection(name, n=600, calib=64):
    model, shape = make(name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((n,) + shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x[calib:]).argmax(1)  # labelled by the float ANN: its own accuracy is 100 %
    return model, x[:calib], x[calib:], y


def test_auto_T_descends_from_the_shortest_uniform_T_within_the_budget():
    from spikeconverter.allocate import choose_timesteps
    from spikeconverter.calibrate_graph import beta_groups

    model, calib, x, y = _selection("concat")
    s = choose_timesteps(model, calib, x, y, max_loss=1.0)
    # the start: the smallest uniform T within 1 pp on the selection images (one less is not)
    start = s.steps[0]["timesteps"]
    T0 = set(start.values()).pop()
    assert len(set(start.values())) == 1
    worse = sc.convert(model, calib, timesteps=T0 - 1)
    with torch.no_grad():
        assert 100.0 - 100.0 * float((worse(x).argmax(1) == y).double().mean()) > 1.0
    # every accepted step is within the budget and shortens the latency
    lat = [st["latency"] for st in s.steps]
    assert all(a > b for a, b in zip(lat, lat[1:])) and len(lat) > 1
    assert all(st["loss_pp"] <= 1.0 for st in s.steps) and s.loss_pp <= 1.0
    # moves shorten whole groups (trains that meet in one neuron): members share their T
    snn = sc.convert(model, calib, timesteps=s.timesteps)
    names = {a: snn.plan.layer_name(a) for a in snn.plan.spikers}
    groups: dict = {}
    for a, gid in beta_groups(snn.plan).items():
        groups.setdefault(gid, set()).add(s.timesteps[names[a]])
    assert all(len(ts) == 1 for ts in groups.values())
    assert snn.latency_steps == s.latency < (snn.spiking_depth + 1) * T0
    check_identical(snn, x[:3])


def test_auto_T_within_a_latency_budget_and_refusals():
    from spikeconverter.allocate import choose_timesteps

    model, calib, x, y = _selection("concat")
    s = choose_timesteps(model, calib, x, y, latency=22)
    assert s.latency <= 22 and s.budget == {"latency_steps": 22}
    with pytest.raises(ValueError, match="exactly one budget"):
        choose_timesteps(model, calib, x, y)
    with pytest.raises(ValueError, match="exactly one budget"):
        choose_timesteps(model, calib, x, y, max_loss=1.0, latency=20)
    with pytest.raises(ValueError, match="reaches a latency of 3 steps"):
        choose_timesteps(model, calib, x, y, latency=3)
    with pytest.raises(ValueError, match="budgets for timesteps='auto'"):
        sc.convert(model, calib, timesteps=4, max_loss=1.0)


def test_convert_auto_records_its_search_and_judges_on_training_images_only():
    model, calib, x, y = _selection("concat")
    snn = sc.convert(model, calib, timesteps="auto", max_loss=1.0, selection=(x, y))
    rec = snn.calibration["timesteps_search"]
    assert rec["judged_on"] == "held-out training images" and rec["images"] == len(x)
    assert rec["loss_se_pp"] >= 0 and rec["loss_se_pp_converted"] >= 0
    assert rec["timesteps"] == snn.timesteps_per_layer and rec["latency"] == snn.latency_steps
    # of the searched network and the one recalibrated for the allocation, the better one is kept
    with torch.no_grad():
        kept = 100.0 - 100.0 * float((snn(x).argmax(1) == y).double().mean())
    assert kept == min(rec["loss_pp"], rec["loss_pp_converted"])
    assert rec["network"] == ("calibrated for the allocation" if rec["loss_pp_converted"] <= rec["loss_pp"]
                              else "thresholds of the uniform-T conversions (as judged)")
    check_identical(snn, x[:3])  # either way an exact spiking network
    for info, m in zip(snn.layers, snn._spikers()):
        assert info.theta is m.theta or torch.equal(torch.as_tensor(info.theta), torch.as_tensor(m.theta))
    # without held-out images: the calibration images, labelled by the float ANN
    alone = sc.convert(model, x[:256], timesteps="auto", max_loss=1.0)
    assert alone.calibration["timesteps_search"]["judged_on"].startswith("calibration images")


def test_cli_T_takes_integers_per_layer_and_auto():
    from spikeconverter.cli import build_parser

    p = build_parser()
    assert p.parse_args(["evaluate", "-T", "4"]).T == 4
    assert p.parse_args(["evaluate", "-T", "4,3,5"]).T == [4, 3, 5]
    a = p.parse_args(["evaluate", "-T", "auto", "--max-loss", "0.5"])
    assert (a.T, a.max_loss, a.latency) == ("auto", 0.5, None)
    for cmd in ("convert", "export", "show"):
        assert p.parse_args([cmd, "-T", "auto", "--latency", "60", "--out", "x"]).latency == 60
    with pytest.raises(Exception, match="integers per layer"):
        p.parse_args(["evaluate", "-T", "4,x"])
    assert p.parse_args(["evaluate", "-T", "auto", "--max-loss", "0.5", "--selection", "2048"]).selection == 2048



def test_cli_selection_is_for_auto_only(capsys):
    from spikeconverter import cli

    assert cli.main(["evaluate", "-T", "4", "--selection", "2048"]) == 2
    assert "is for -T auto" in capsys.readouterr().err


def test_the_judged_loss_comes_with_its_paired_standard_error():
    from spikeconverter.allocate import paired_loss

    labels = torch.arange(100) % 10
    ann = torch.nn.functional.one_hot(labels, 10).double()
    snn = ann.clone()
    snn[:4] = torch.nn.functional.one_hot((labels[:4] + 1) % 10, 10).double()  # 4 right answers lost
    snn[4:5] = torch.nn.functional.one_hot(labels[4:5], 10).double()  # unchanged
    loss, se = paired_loss(ann, snn, labels)
    assert loss == pytest.approx(4.0)
    assert se == pytest.approx(100 * (0.04 * 0.96 * 100 / 99) ** 0.5 / 10)
    ann[10] = torch.nn.functional.one_hot((labels[10] + 1) % 10, 10).double()  # the ANN wrong, the SNN right
    loss, se2 = paired_loss(ann, snn, labels)
    assert loss == pytest.approx(3.0) and se2 > se  # flips either way add to the error


def test_cli_finetune_takes_T_per_layer_not_auto():
    from spikeconverter import cli

    assert cli.build_parser().parse_args(["finetune", "-T", "4,3", "--out", "x.snn"]).T == [4, 3]
    with pytest.raises(ValueError, match="evaluate -T auto"):
        cli._finetune(cli.build_parser().parse_args(["finetune", "-T", "auto", "--out", "x.snn"]))


class PoolOverBranches(nn.Module):
    """GoogLeNet-style: a max-pool over the concat of two branches of different depth (and T)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b1, self.b2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        a = torch.relu(self.a(x))
        b = torch.relu(self.b2(torch.relu(self.b1(x))))
        p = nn.functional.max_pool2d(torch.cat([a, b], 1), 2)
        return self.fc(torch.relu(self.c(p)).flatten(1))


@pytest.mark.parametrize("timesteps", [4, [3, 2, 5, 4], [6, 3, 2, 2]])
def test_pool_over_branches_of_different_depth_and_T(timesteps):
    # the pool forwards when the deeper branch generates, reading the shallower one's stored train
    # (which must still be there when nothing records it), zeros once a shorter train has ended
    torch.manual_seed(4)
    model = PoolOverBranches().double().eval()
    g = torch.Generator().manual_seed(4)
    snn = sc.convert(model, torch.randn(32, 3, 8, 8, generator=g, dtype=torch.float64), timesteps=timesteps)
    x = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    res = check_identical(snn, x)
    plain = snn.simulate(x, neuron_counts=True)
    assert torch.equal(plain.logits, res.logits)
    streamed = snn.simulate(x, stream=True)
    assert torch.equal(streamed.logits, torch.cat([snn.simulate(x[i : i + 1]).logits for i in range(len(x))]))


def test_evaluate_report_shows_the_per_layer_T_and_how_they_were_chosen():
    from spikeconverter.evaluate import format_evaluate

    r = dict(model="resnet20", dataset="cifar10", test_images=10, calibration_images=512, method="spikeconverter",
             engine="fast", beta=2.0, threshold="mse", ann_accuracy=90.0, snn_accuracy=89.0, difference_pp=-1.0,
             timesteps=4, timesteps_per_layer={"a": 4, "b": 3}, latency_steps=11, spiking_depth=2, steps_per_input=4,
             spikes=1.0, sops=1.0, snn_macs=1.0, ann_macs=1.0, energy_snn_uj=1.0, energy_ann_uj=1.0,
             energy_ratio=1.0, energy_convention="e",
             timesteps_search=dict(budget={"max_loss_pp": 0.5}, images=1024, judged_on="held-out training images",
                                   loss_pp=0.4, loss_pp_converted=0.6, network="calibrated for the allocation",
                                   loss_se_pp=0.21, loss_se_pp_converted=0.23,
                                   evaluations=12, seconds=30.0))
    text = format_evaluate(r)
    assert "per layer, 3-4: a=4 b=3" in text and "11 steps end to end (longest path" in text
    assert "within 0.5 pp, on 1024 held-out training images" in text
    assert "loss +0.40 +- 0.21 pp as searched, +0.60 +- 0.23 pp recalibrated" in text
    assert "one T for all layers kept" not in text
    # a latency budget whose uniform T beat the mixed allocation found: the report says so
    del r["timesteps_per_layer"]
    r["timesteps_search"].update(budget={"latency_steps": 12}, steps=[
        dict(latency=15, loss_pp=0.1, timesteps={"a": 5, "b": 5}), dict(latency=12, loss_pp=0.9, timesteps={"a": 5, "b": 3}),
        dict(latency=12, loss_pp=0.4, timesteps={"a": 4, "b": 4}, uniform=True)])
    text = format_evaluate(r)
    assert "T = 4 per phase" in text and "within 12 steps" in text
    assert "one T for all layers kept: the best mixed allocation found lost more (latency 12, +0.90 pp)" in text


def test_a_latency_budget_that_a_uniform_T_fits_exactly_still_tries_mixed_T():
    """Budget = uniform T = 3's latency: the descent starts over it (uniform T = 4), mixes T to get
    within it, and the result is whichever of that and uniform T = 3 loses less on the selection."""
    from spikeconverter.allocate import choose_timesteps

    model, calib, x, y = _selection("concat")
    budget = sc.convert(model, calib, timesteps=3).latency_steps
    s = choose_timesteps(model, calib, x, y, latency=budget)
    descent = [st for st in s.steps if not st.get("uniform")]
    assert set(descent[0]["timesteps"].values()) == {4} and descent[0]["latency"] > budget
    assert descent[-1]["latency"] <= budget and len(set(descent[-1]["timesteps"].values())) > 1
    uniform = [st for st in s.steps if st.get("uniform")]
    assert len(uniform) == 1 and set(uniform[0]["timesteps"].values()) == {3}
    mixed = min(descent[-1]["loss_pp"], descent[-1]["loss_pp_recalibrated"])  # as searched, or calibrated for itself
    kept = uniform[0] if uniform[0]["loss_pp"] <= mixed else descent[-1]
    assert s.timesteps == kept["timesteps"] and s.loss_pp == kept["loss_pp"] and s.latency <= budget
    # a kept mixed allocation hands convert() the network calibrated for it: the one convert() makes
    assert (s.calibrated is not None) == (kept is descent[-1])
    if s.calibrated is not None:
        with torch.no_grad():
            assert torch.equal(s.calibrated(x[:4]), sc.convert(model, calib, timesteps=s.timesteps)(x[:4]))
