"""Fine-tuning the quantized twin: the straight-through quantizer has the twin's value and LSQ's
gradients; a short run lowers the twin's training loss, converts exactly (simulate == twin, every
layer's train), its thresholds survive save/load, and a resumed run equals an unbroken one."""

import pytest
import torch

import spikeconverter as sc
from spikeconverter.finetune import FinetuneConfig, finetune, twin_accuracy
from spikeconverter.neuron import max_value, quantize_fast, quantize_ste

from nets import make
from test_equivalence import check_identical


@pytest.mark.parametrize("beta,T,phi", [(2.0, 3, 0.5), (1.5, 4, 0.0), (1.0, 5, 0.5)])
def test_straight_through_quantizer_value_and_gradients(beta, T, phi):
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    theta = torch.tensor([0.7, 1.3, 2.1], dtype=torch.float64).reshape(3, 1, 1).requires_grad_(True)
    q = quantize_ste(z, theta, beta, T, phi)
    assert torch.equal(q.detach(), quantize_fast(z.detach(), theta.detach(), beta, T, phi))
    q.sum().backward()
    top = theta.detach() * max_value(1.0, beta, T)
    inside = (z.detach() > 0) & (z.detach() < top)
    assert torch.equal(z.grad, inside.to(z.dtype))  # straight through inside the code's range, 0 outside
    # LSQ: d q / d theta = (q - z)/theta inside, q/theta above the range, 0 below
    u = z.detach() / theta.detach()
    r = q.detach() / theta.detach()
    expect = torch.where(inside, r - u, torch.where(z.detach() >= top, r, torch.zeros_like(r)))
    assert torch.allclose(theta.grad.flatten(), expect.sum((0, 2, 3)), rtol=1e-12, atol=1e-12)


def _teacher_data(model, shape, n=256, batch=64, seed=0):
    """Inputs labelled by the float ANN itself: the twin at low T disagrees on some of them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n,) + shape, generator=g, dtype=next(model.parameters()).dtype)
    with torch.no_grad():
        y = model(x).argmax(1)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _loss(snn, batches) -> float:
    with torch.no_grad():
        return sum(float(torch.nn.functional.cross_entropy(snn(x), y)) * len(y) for x, y in batches) / \
            sum(len(y) for _, y in batches)


@pytest.mark.parametrize("name,kw", [("resnet_block", {}), ("vgg_maxpool", dict(per_channel=False)),
                                     ("inverted_residual", dict(beta=1.5, input_coding="spike"))])
def test_finetune_lowers_loss_and_converts_exactly(name, kw, tmp_path):
    model, shape = make(name, dtype=torch.float64)
    data = _teacher_data(model, shape)
    snn = sc.convert(model, data[0][0][:16], timesteps=2, **kw)
    before = _loss(snn, data)
    ft = finetune(snn, data, epochs=2, config=FinetuneConfig(lr=1e-3, theta_lr=1e-2))
    after = _loss(ft, data)
    assert after < before, (before, after)
    hist = ft.calibration["finetune"]["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    # the input network is untouched, the result is an ordinary exact spiking network
    assert _loss(snn, data) == before
    assert all(m.mode == "quantize" and m.train_log_theta is None for m in ft._acts())
    assert not any(p.requires_grad for p in ft.parameters())
    changed = [not torch.equal(a.theta, b.theta) if torch.is_tensor(a.theta) else a.theta != b.theta
               for a, b in zip(snn.layers, ft.layers)]
    assert any(changed)  # thresholds were learned, and the records follow them
    check_identical(ft, data[0][0][:3])
    # thresholds, shifts and weights survive save/load bit for bit
    ft.save(tmp_path / "ft.snn")
    back = sc.load(tmp_path / "ft.snn")
    x = data[1][0][:4]
    assert torch.equal(back(x), ft(x))
    assert torch.equal(back.simulate(x).logits, ft.simulate(x).logits)
    for a, b in zip(ft.layers, back.layers):
        assert torch.equal(torch.as_tensor(a.theta), torch.as_tensor(b.theta))
    assert back.source["finetune"]["history"] == hist


def test_resumed_run_equals_unbroken_run(tmp_path):
    model, shape = make("resnet_block", dtype=torch.float64)
    data = _teacher_data(model, shape, n=128)
    snn = sc.convert(model, data[0][0][:16], timesteps=2)
    cfg = FinetuneConfig(lr=1e-3, theta_lr=1e-2)
    whole = finetune(snn, data, epochs=3, config=cfg)
    out = tmp_path / "run.snn"
    first = finetune(snn, data, epochs=3, config=cfg, out=out, stop_after=1)
    assert first.calibration["finetune"]["epoch"] == 1 and out.exists()
    resumed = finetune(None, data, epochs=3, out=out, resume=True)
    x = data[0][0]
    assert torch.equal(resumed(x), whole(x))
    assert [h["loss"] for h in resumed.calibration["finetune"]["history"]] == \
        [h["loss"] for h in whole.calibration["finetune"]["history"]]


def test_finetune_from_a_model_and_refusals():
    model, shape = make("vgg_maxpool", dtype=torch.float32)
    batches = _teacher_data(model, shape, n=128)
    ft = finetune(model, batches, timesteps=3, epochs=1)  # converted first, calibrated on the training batches
    assert ft.timesteps == 3 and 0 <= twin_accuracy(ft, batches) <= 100
    with pytest.raises(ValueError, match="timesteps is required"):
        finetune(model, batches, epochs=1)
    snn = sc.convert(model, batches[0][0], timesteps=3)
    with pytest.raises(ValueError, match="converted for T = 3, not 4"):
        finetune(snn, batches, timesteps=4)
    with pytest.raises(ValueError, match="two-phase"):
        finetune(sc.convert(model, batches[0][0], timesteps=3, method="rate"), batches)
    with pytest.raises(ValueError, match="fixed-point"):
        finetune(sc.convert(make("vgg_maxpool")[0], batches[0][0].double(), timesteps=3, fixed_point=True),
                 [(x.double(), y) for x, y in batches])


def _kl_to(teacher, snn, batches) -> float:
    with torch.no_grad():
        return sum(float(torch.nn.functional.kl_div(torch.log_softmax(snn(x), 1), torch.softmax(teacher(x), 1),
                                                    reduction="sum")) for x, _ in batches) / \
            sum(len(y) for _, y in batches)


def test_distillation_pulls_the_twin_towards_the_float_ann_and_converts_exactly(tmp_path):
    model, shape = make("resnet_block", dtype=torch.float64)
    with torch.no_grad():
        model.fc.weight *= 20  # confident outputs: a distribution worth matching
    data = _teacher_data(model, shape)
    snn = sc.convert(model, data[0][0][:16], timesteps=2)
    cfg = FinetuneConfig(lr=1e-4, theta_lr=1e-3, distill=1.0)  # the labels play no part
    ft = finetune(model, data, timesteps=2, epochs=2, calibration=data[0][0][:16], config=cfg,
                  out=tmp_path / "kd.snn", stop_after=1)
    assert _kl_to(model, ft, data) < _kl_to(model, snn, data)
    check_identical(ft, data[0][0][:3])
    assert ft.calibration["finetune"]["config"]["distill"] == 1.0
    with pytest.raises(ValueError, match="pass it again"):  # the run file holds the twin, not its teacher
        finetune(None, data, epochs=2, out=tmp_path / "kd.snn", resume=True)
    done = finetune(model, data, epochs=2, out=tmp_path / "kd.snn", resume=True)
    assert done.calibration["finetune"]["epoch"] == 2
    with pytest.raises(ValueError, match=r"distill must be in \[0, 1\]"):
        finetune(snn, data, epochs=1, config=FinetuneConfig(distill=1.5))


def test_threshold_tuning_keeps_the_weights_and_needs_no_labels():
    """train_weights=False with distill=1: only thresholds and bias corrections move (the weights are
    bit-identical), the labels play no part (shuffled labels give the same result), the twin gets
    closer to the float ANN, and it converts exactly."""
    model, shape = make("resnet_block", dtype=torch.float64)
    with torch.no_grad():
        model.fc.weight *= 20
    data = _teacher_data(model, shape)
    snn = sc.convert(model, data[0][0][:16], timesteps=2)
    cfg = FinetuneConfig(lr=1e-3, theta_lr=1e-2, distill=1.0, train_weights=False)
    ft = finetune(snn, data, epochs=3, config=cfg)
    shuffled = [(x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]) for x, y in data]
    again = finetune(snn, shuffled, epochs=3, config=cfg)
    x = data[0][0]
    assert torch.equal(ft(x), again(x))
    weights = lambda n: {k: v for k, v in n.gm.named_parameters()}  # noqa: E731
    assert weights(ft).keys() == weights(snn).keys()
    assert all(torch.equal(weights(ft)[k], v) for k, v in weights(snn).items())
    assert any(not torch.equal(torch.as_tensor(a.theta), torch.as_tensor(b.theta)) for a, b in zip(snn.layers, ft.layers))
    assert _kl_to(model, ft, data) < _kl_to(model, snn, data)
    check_identical(ft, data[0][0][:3])


def test_finetune_with_per_layer_T_keeps_each_layers_T_and_converts_exactly():
    model, shape = make("resnet_block", dtype=torch.float64)
    data = _teacher_data(model, shape, n=128)
    n = len(sc.convert(model, data[0][0][:8], timesteps=2).layers)
    Ts = [2 + i % 3 for i in range(n)]  # 2, 3, 4, 2, ...
    ft = finetune(model, data, timesteps=Ts, epochs=2, config=FinetuneConfig(lr=1e-3, theta_lr=1e-2))
    assert list(ft.timesteps_per_layer.values()) == Ts
    snn = sc.convert(model, data[0][0], timesteps=Ts)
    assert _loss(ft, data) < _loss(snn, data)
    check_identical(ft, data[0][0][:3])
    assert finetune(snn, data, timesteps=Ts, epochs=1).timesteps_per_layer == snn.timesteps_per_layer
    with pytest.raises(ValueError, match="converted for T = "):
        finetune(snn, data, timesteps=max(Ts), epochs=1)
