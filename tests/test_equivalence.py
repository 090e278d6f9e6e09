"""The identical relation: the time-stepped SNN equals the quantized ANN, layer by layer."""

import pytest
import torch

import spikeconverter as sc
from spikeconverter import neuron
from spikeconverter.graph import SpikeActivation

from nets import NETS, make


def twin_digits(snn, x):
    """Per layer (the twin's digits, the twin's value): the value is read by a second hook."""
    logits, trains = snn.twin_trains(x)
    qann, values, hooks = snn.quantized_ann(), {}, []
    for node in qann.graph.nodes:
        if node.op == "call_module" and isinstance(qann.get_submodule(node.target), SpikeActivation):
            name = qann.get_submodule(node.target).layer_name
            hooks.append(qann.get_submodule(node.target).register_forward_hook(
                lambda mod, inp, out, name=name: values.__setitem__(name, out)))
    assert torch.equal(qann(x), logits)
    for h in hooks:
        h.remove()
    return logits, {k: (trains[k], values[k]) for k in trains}


def check_identical(snn, x):
    res = snn.simulate(x, record=True)
    q_logits, twin = twin_digits(snn, x)
    scale = q_logits.abs().max().item() + 1e-12
    assert torch.allclose(res.logits, q_logits, rtol=0, atol=1e-9 * scale), (res.logits - q_logits).abs().max()
    assert torch.equal(snn(x), q_logits)
    names = {layer.name for layer in snn.layers}
    assert set(res.spike_trains) == names == set(twin)
    for layer in snn.layers:
        train = res.spike_trains[layer.name]
        digits, value = twin[layer.name]
        assert train.shape == digits.shape
        assert torch.equal(train, digits), f"layer {layer.name}: {int((train != digits).sum())} digits differ"
        decoded = neuron.decode(train, layer.theta, layer.beta)
        assert torch.allclose(decoded, value, rtol=1e-12, atol=1e-12)
        assert torch.equal(res.spike_counts[layer.name], train.abs().flatten(2).sum((0, 2)))
    assert res.latency_steps == snn.latency_steps
    if snn.uniform:
        assert snn.latency_steps == (snn.spiking_depth + 1) * snn.timesteps
    return res


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("beta,T,phi", [(2.0, 5, 0.5), (1.6, 4, 0.0), (1.0, 6, 0.5)])
def test_simulation_equals_quantized_ann(name, beta, T, phi):
    model, shape = make(name)
    g = torch.Generator().manual_seed(1)
    calib = torch.randn((32,) + shape, generator=g, dtype=torch.float64)
    x = torch.randn((3,) + shape, generator=g, dtype=torch.float64)
    snn = sc.convert(model, calib, timesteps=T, beta=beta, phi=phi)
    res = check_identical(snn, x)
    assert sum(c.sum() for c in res.spike_counts.values()) > 0, "a test that never spikes checks nothing"


@pytest.mark.parametrize("name", ["resnet_block", "vgg_maxpool", "inverted_residual"])
def test_spike_coded_input(name):
    model, shape = make(name, seed=3)
    g = torch.Generator().manual_seed(2)
    snn = sc.convert(model, torch.randn((16,) + shape, generator=g, dtype=torch.float64), timesteps=6,
                     input_coding="spike", threshold="max")
    assert snn.layers[-1].name == "input" or any(layer.name == "input" for layer in snn.layers)
    check_identical(snn, torch.randn((2,) + shape, generator=g, dtype=torch.float64))


def test_fast_path_is_the_quantized_graph_and_differs_from_relu():
    model, shape = make("resnet_block")
    x = torch.randn((4,) + shape, dtype=torch.float64)
    snn = sc.convert(model, x, timesteps=3)
    ann = snn.ann()(x)
    assert torch.allclose(ann, model(x), atol=1e-10), "BN folding must not change the ANN"
    assert not torch.allclose(snn(x), ann, atol=1e-6), "T=3 quantization should be visible"


@pytest.mark.parametrize("name", ["resnet_block", "inverted_residual", "concat", "vgg_maxpool"])
def test_streaming_equals_one_at_a_time(name):
    model, shape = make(name, seed=5)
    g = torch.Generator().manual_seed(4)
    snn = sc.convert(model, torch.randn((16,) + shape, generator=g, dtype=torch.float64), timesteps=4)
    xs = torch.randn((5,) + shape, generator=g, dtype=torch.float64)
    streamed = snn.simulate(xs, stream=True)
    alone = [snn.simulate(xs[i : i + 1]) for i in range(len(xs))]
    assert torch.equal(streamed.logits, torch.cat([a.logits for a in alone]))
    for layer in snn.layers:
        assert torch.equal(streamed.spike_counts[layer.name],
                           torch.cat([a.spike_counts[layer.name] for a in alone]))
    # the pipeline takes a new input every T steps
    assert streamed.total_steps == (len(xs) + snn.spiking_depth) * snn.timesteps


def test_delays_follow_the_graph():
    model, shape = make("resnet_block")
    snn = sc.convert(model, torch.randn((4,) + shape, dtype=torch.float64), timesteps=2)
    plan = snn.plan
    delays = {(s.name, src.name): plan.delay(s, src) for s, r in plan.regions.items() for src in r.sources}
    assert max(delays.values()) == 1, "the shortcut skips exactly one spiking layer"
    assert snn.spiking_depth == 5 and snn.latency_steps == 12


def test_large_T_matches_float_ann():
    """beta = 2, T = 16: the SNN's decision equals the float ANN's on >= 99% of random inputs."""
    agree, n = 0, 0
    for name in ["resnet_block", "vgg_maxpool", "inverted_residual"]:
        model, shape = make(name, seed=7, dtype=torch.float32)
        g = torch.Generator().manual_seed(8)
        snn = sc.convert(model, torch.randn((64,) + shape, generator=g), timesteps=16, beta=2.0)
        x = torch.randn((300,) + shape, generator=g)
        agree += int((snn(x).argmax(1) == model(x).argmax(1)).sum())
        n += len(x)
        xs = x[:4].double()
        snn64 = snn.double()
        assert torch.equal(snn64.simulate(xs).logits.argmax(1), snn64(xs).argmax(1))
    assert agree / n >= 0.99, agree / n


def test_float32_simulation_agrees_with_twin_almost_always():
    """In float32 a digit can flip where z sits within rounding error of a code boundary."""
    model, shape = make("vgg_maxpool", seed=9, dtype=torch.float32)
    g = torch.Generator().manual_seed(9)
    snn = sc.convert(model, torch.randn((32,) + shape, generator=g), timesteps=8)
    x = torch.randn((8,) + shape, generator=g)
    res = snn.simulate(x, record=True)
    _, twin = twin_digits(snn, x)
    flips = sum(int((res.spike_trains[k] != twin[k][0]).sum()) for k in twin)
    total = sum(twin[k][0].numel() for k in twin)
    assert flips / total < 1e-3


def test_mixed_betas_per_group_stay_identical():
    """Groups (layers whose spikes meet in one neuron) may use different beta: every neuron must
    accumulate with its senders' beta and generate with its own."""
    from spikeconverter.calibrate_graph import beta_groups

    model, shape = make("resnet_block", seed=12)
    g = torch.Generator().manual_seed(12)
    snn = sc.convert(model, torch.randn((16,) + shape, generator=g, dtype=torch.float64), timesteps=4)
    groups = beta_groups(snn.plan)
    assert len(set(groups.values())) >= 3
    choice = {gid: b for gid, b in zip(sorted(set(groups.values())), [1.5, 2.0, 1.25, 1.0, 1.75, 2.0])}
    for node, gid in groups.items():
        snn.gm.get_submodule(node.target).beta = choice[gid]
    # the residual sum's two sources (block input and conv2 output) must share one group
    add_sinks = [s for s, r in snn.plan.regions.items() if len([x for x in r.sources if x is not snn.plan.input]) > 1]
    for s in add_sinks:
        assert len({groups[x] for x in snn.plan.regions[s].sources if x in groups}) == 1
    assert [la.beta for la in snn.layers] == [snn.gm.get_submodule(n.target).beta for n in snn.plan.activations]
    check_identical(snn, torch.randn((2,) + shape, generator=g, dtype=torch.float64))


def test_beta_search_reports_its_choice():
    model, shape = make("vgg_maxpool", seed=13)
    g = torch.Generator().manual_seed(13)
    snn = sc.convert(model, torch.randn((32,) + shape, generator=g, dtype=torch.float64), timesteps=3, beta="search")
    assert snn.betas and all(b in (1.0, 1.25, 1.5, 1.75, 2.0) for b in snn.betas.values())
    # with a fixed T the binary code has the most levels: the search should not do worse than beta=2
    fixed = sc.convert(model, torch.randn((32,) + shape, generator=g, dtype=torch.float64), timesteps=3, beta=2.0)
    assert sum(la.error for la in snn.layers) <= sum(la.error for la in fixed.layers) * 1.05
    check_identical(snn, torch.randn((2,) + shape, generator=g, dtype=torch.float64))


def test_rate_baseline_converges_with_T():
    model, shape = make("resnet_block", seed=14, dtype=torch.float32)
    g = torch.Generator().manual_seed(14)
    calib = torch.randn((64,) + shape, generator=g)
    x = torch.randn((64,) + shape, generator=g)
    with torch.no_grad():
        ann = model(x)
    err = {}
    for T in (8, 64, 512):
        rate = sc.convert(model, calib, timesteps=T, method="rate")
        assert rate.latency_steps == T
        err[T] = float((rate(x) - ann).abs().mean())
    assert err[512] < err[64] < err[8]
    assert err[512] < 0.1 * float(ann.abs().mean())
