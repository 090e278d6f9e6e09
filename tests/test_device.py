"""--device: resolution and one-line refusals; the converter, both engines, save/load and fine-tuning
on every device this machine has (the CPU always; CUDA / MPS where present)."""

import pytest
import torch

import spikeconverter as sc
from spikeconverter.cli import main
from spikeconverter.device import resolve
from spikeconverter.finetune import finetune

from nets import make
from test_equivalence import check_identical

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + \
    (["mps"] if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else [])


def test_resolve():
    assert resolve("cpu") == torch.device("cpu")
    assert resolve("auto").type == ("cuda" if torch.cuda.is_available() else resolve("auto").type)
    with pytest.raises(ValueError, match="--device must be"):
        resolve("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device here"):
            resolve("cuda:0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cli_refuses_a_missing_device_in_one_line(capsys):
    assert main(["evaluate", "--device", "cuda", "--limit", "10", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device here" in err and err.count("\n") == 1


@pytest.mark.parametrize("device", DEVICES)
def test_convert_simulate_save_finetune_on_device(device, tmp_path):
    dtype = torch.float32 if device == "mps" else torch.float64  # MPS has no float64
    model, shape = make("resnet_block", dtype=dtype)
    model = model.to(device)
    g = torch.Generator().manual_seed(0)
    calib = torch.randn((16,) + shape, generator=g, dtype=dtype)  # on the host: convert moves it
    x = torch.randn((3,) + shape, generator=g, dtype=dtype)
    snn = sc.convert(model, calib, timesteps=4)
    assert all(t.device.type == device for t in snn.state_dict().values() if torch.is_tensor(t))
    if dtype == torch.float64:
        check_identical(snn, x.to(device))
    out = snn(x)  # a host input is moved to the network's device
    assert out.device.type == device
    # the same thresholds as a conversion on the CPU (statistics are taken on the host)
    cpu = sc.convert(model.to("cpu"), calib, timesteps=4)
    for a, b in zip(cpu.layers, snn.layers):
        assert torch.equal(torch.as_tensor(a.theta), torch.as_tensor(b.theta).cpu())
    snn.save(tmp_path / "n.snn")
    back = sc.load(tmp_path / "n.snn").to(device)
    assert torch.equal(back(x), out)
    data = [(x.to(device), torch.tensor([0, 1, 2], device=device))]
    ft = finetune(snn, data, epochs=1)
    assert next(ft.parameters()).device.type == device and ft(x).device.type == device
