"""Save / load without pickle: a loaded network equals the saved one bit for bit (fast path, and
every layer's spike trains in the simulator), on every graph kind; bad files fail in one line and
run nothing; state_dict() carries the thresholds."""

import json
import pickle
import struct

import pytest
import torch

import spikeconverter as sc
from spikeconverter.serialize import SnnFileError
from test_user_models import PATTERNS, pattern

from families import FAMILIES, REFUSED, build
from nets import NETS, make

CONVERTED = sorted(set(FAMILIES) - REFUSED)
QUICK_FAMILIES = ["densenet", "shufflenet_v2"]


def round_trip(snn, x, tmp_path):
    path = tmp_path / "net.snn"
    snn.save(path, extra={"note": "test"})
    back = sc.load(path)
    assert type(back) is sc.SpikingNetwork and back is not snn
    assert torch.equal(back(x), snn(x))
    a, b = snn.simulate(x, record=True), back.simulate(x, record=True)
    assert torch.equal(a.logits, b.logits)
    assert a.spike_trains.keys() == b.spike_trains.keys()
    for k in a.spike_trains:
        assert torch.equal(a.spike_trains[k], b.spike_trains[k]), k
    assert {k: torch.equal(v, b.spike_counts[k]) for k, v in a.spike_counts.items()} == {k: True for k in a.spike_counts}
    assert [la.name for la in back.layers] == [la.name for la in snn.layers]
    for la, lb in zip(snn.layers, back.layers):
        assert (torch.equal(la.theta, lb.theta) if torch.is_tensor(la.theta) else la.theta == lb.theta)
        assert (la.beta, la.phi, la.cap, la.neurons, la.depth, la.group) == (lb.beta, lb.phi, lb.cap, lb.neurons,
                                                                             lb.depth, lb.group)
    assert (back.timesteps, back.method, back.input_shape, back.input_coding, back.latency_steps) == \
        (snn.timesteps, snn.method, snn.input_shape, snn.input_coding, snn.latency_steps)
    assert back.source == {"note": "test"}
    return back


def _data(shape, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n,) + shape, generator=g, dtype=torch.float64), torch.randn((2,) + shape, generator=g,
                                                                                    dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("kw", [dict(), dict(per_channel=False, bias_correction=False, beta=1.6, phi=0.0),
                                dict(input_coding="spike"), dict(method="rate")], ids=["default", "per-layer-b1.6",
                                                                                       "spike-input", "rate"])
def test_round_trip_equivalence_nets(name, kw, tmp_path):
    model, shape = make(name)
    calib, x = _data(shape)
    round_trip(sc.convert(model, calib, timesteps=4, **kw), x, tmp_path)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_round_trip_user_patterns(name, tmp_path):
    calib, x = _data((3, 8, 8))
    round_trip(sc.convert(pattern(name), calib, timesteps=3), x, tmp_path)


@pytest.mark.parametrize("name", QUICK_FAMILIES + [pytest.param(n, marks=pytest.mark.slow)
                                                   for n in CONVERTED if n not in QUICK_FAMILIES])
def test_round_trip_families(name, tmp_path):
    model, shape = build(name)
    calib, x = _data(shape, n=4)
    round_trip(sc.convert(model, calib, timesteps=3), x, tmp_path)


def test_round_trip_fixed_point_and_float32(tmp_path):
    model, shape = make("vgg_maxpool")
    calib, x = _data(shape)
    snn = sc.convert(model, calib, timesteps=4, fixed_point=True)
    back = round_trip(snn, x, tmp_path)
    assert back.exact_bounds == snn.exact_bounds
    with pytest.raises(ValueError, match="exact range"):  # the bounds are enforced after loading too
        back(x * 1e12)
    snn32 = sc.convert(make("vgg_maxpool", dtype=torch.float32)[0], calib.float(), timesteps=5)
    back32 = round_trip(snn32, x.float(), tmp_path)
    assert next(back32.parameters()).dtype == torch.float32
    assert torch.equal(back32.compile()(x.float()), snn32(x.float()))


def test_state_dict_carries_thresholds():
    model, shape = make("resnet_block")
    calib, x = _data(shape)
    a = sc.convert(model, calib, timesteps=4)  # per-channel thresholds + bias correction
    b = sc.convert(model, calib * 3 + 1, timesteps=4, per_channel=False, bias_correction=False)
    assert not torch.equal(a(x), b(x))
    b.load_state_dict(a.state_dict())
    assert torch.equal(b(x), a(x))
    assert torch.equal(b.simulate(x).logits, a.simulate(x).logits)
    assert all(torch.equal(la.theta, lb.theta) for la, lb in zip(a.layers, b.layers))  # the records follow
    c = sc.convert(model, calib * 3 + 1, timesteps=4)  # and back to per-layer thresholds
    a2 = sc.convert(model, calib, timesteps=4, per_channel=False, bias_correction=False)
    c.load_state_dict(a2.state_dict())
    assert torch.equal(c(x), a2(x)) and all(not m.per_channel and m.shift is None for m in c._acts())


def test_bad_files_fail_in_one_line(tmp_path):
    model, shape = make("concat")
    calib, x = _data(shape)
    snn = sc.convert(model, calib, timesteps=3)
    good = tmp_path / "net.snn"
    snn.save(good)
    raw = good.read_bytes()

    truncated = tmp_path / "truncated.snn"
    truncated.write_bytes(raw[: len(raw) // 2])
    garbage = tmp_path / "garbage.snn"
    garbage.write_bytes(b"\x00" * 64)
    pickled = tmp_path / "pickled.snn"
    pickled.write_bytes(pickle.dumps(snn))
    for bad, words in [(truncated, "not a readable network file"), (garbage, "not a readable network file"),
                       (pickled, "not a readable network file")]:
        with pytest.raises(SnnFileError, match=words) as e:
            sc.load(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError):
        sc.load(tmp_path / "missing.snn")

    def rewrite(name, change):
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        doc = json.loads(header["__metadata__"]["spikeconverter"])
        change(doc)
        header["__metadata__"]["spikeconverter"] = json.dumps(doc)
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        p = tmp_path / name
        p.write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n:])
        return p

    newer = rewrite("newer.snn", lambda d: d.update(version=99))
    with pytest.raises(SnnFileError, match="version 99 network file.*reads version 1"):
        sc.load(newer)

    def evil_function(d):
        d["graph"][2]["op"], d["graph"][2]["target"] = "call_function", "os.system"

    with pytest.raises(SnnFileError, match="'os.system', which is not in the op table"):
        sc.load(rewrite("evil.snn", evil_function))

    def evil_module(d):
        first = next(iter(d["modules"]))
        d["modules"][first]["class"] = "Subprocess"

    with pytest.raises(SnnFileError, match="'Subprocess', which is not in the op table"):
        sc.load(rewrite("evil_module.snn", evil_module))

    def evil_method(d):
        node = next(r for r in d["graph"] if r["op"] == "call_module")
        node["op"], node["target"] = "call_method", "__reduce__"

    with pytest.raises(SnnFileError, match="method '__reduce__'"):
        sc.load(rewrite("evil_method.snn", evil_method))

    # a weights checkpoint is not a network, and says so
    from spikeconverter.checkpoint import export_weights

    export_weights(model, tmp_path / "weights.safetensors", {"arch": "concat"})
    with pytest.raises(SnnFileError, match="holds no converted network|not a converted network"):
        sc.load(tmp_path / "weights.safetensors")


def test_a_network_file_where_weights_are_expected_says_what_to_do(tmp_path):
    from spikeconverter.evaluate import load_model

    model, shape = make("concat")
    calib, _ = _data(shape)
    path = tmp_path / "net.snn"
    sc.convert(model, calib, timesteps=3).save(path)
    with pytest.raises(ValueError, match="is a converted network, not float weights: measure it with evaluate --snn"):
        load_model("resnet20", "cifar10", str(path))


@pytest.mark.parametrize("name", ["vgg_maxpool", "resnet_block"])
def test_half_weights_file_is_the_rounded_network_and_still_exact(name, tmp_path):
    """save(half_weights=True): the layers' weights go to the file as float16 (a smaller file) and
    come back as float32 equal to the saved weights rounded to float16; thresholds, shifts and biases
    come back bit for bit; the loaded network is exact (simulator == twin, every layer's train) and
    equals the original network with its weights rounded the same way."""
    import copy

    from test_equivalence import check_identical

    model, shape = make(name, dtype=torch.float32)
    calib, x = _data(shape)
    snn = sc.convert(model, calib.float(), timesteps=4)
    full, half = tmp_path / "full.snn", tmp_path / "half.snn"
    snn.save(full)
    snn.save(half, half_weights=True)
    assert half.stat().st_size < 0.75 * full.stat().st_size
    back = sc.load(half)
    orig, loaded = snn.state_dict(), back.state_dict()
    assert orig.keys() == loaded.keys()
    halved = [k for k in orig if k.endswith(".weight")]
    assert halved, "no weight tensor was halved"
    for k, v in orig.items():
        if not torch.is_tensor(v):  # a spiking layer's extra state (T, beta, phi, mode)
            assert loaded[k] == v, k
            continue
        assert loaded[k].dtype == v.dtype, k
        assert torch.equal(loaded[k], v.half().float() if k in halved else v), k
    rounded = copy.deepcopy(snn)
    rounded.load_state_dict({k: (v.half().float() if k in halved else v) for k, v in orig.items()})
    assert torch.equal(back(x.float()), rounded(x.float()))
    check_identical(copy.deepcopy(back).double(), x[:2])
    assert not torch.equal(back(x.float()), snn(x.float())) or all(
        torch.equal(orig[k], orig[k].half().float()) for k in halved)


def test_half_weights_listing_checked(tmp_path):
    from safetensors.torch import save_file

    from spikeconverter.checkpoint import META_KEY
    from spikeconverter.serialize import read

    model, shape = make("vgg_maxpool", dtype=torch.float32)
    calib, _ = _data(shape)
    path = tmp_path / "half.snn"
    sc.convert(model, calib.float(), timesteps=3).save(path, half_weights=True)
    tensors, doc = read(path)
    doc["float16_tensors"].append("module.nowhere.weight")
    save_file({k: (v.half() if k in doc["float16_tensors"] else v) for k, v in tensors.items()}, str(path),
              metadata={META_KEY: json.dumps(doc)})
    with pytest.raises(SnnFileError, match="nowhere"):
        sc.load(path)
    with pytest.raises(ValueError, match="fixed-point"):
        sc.convert(model, calib.float(), timesteps=3, fixed_point=True).save(path, half_weights=True)


def test_layer_records_read_their_own_network_s_modules(tmp_path):
    """LayerInfo reads theta/beta/phi/cap from the layer module: a copy's and a loaded network's
    records point at their own modules, and a change to a module shows in its record only."""
    import copy

    model, shape = make("vgg_maxpool", seed=5)
    snn = sc.convert(model, torch.randn((16,) + shape, dtype=torch.float64), timesteps=4)
    snn.save(tmp_path / "n.snn")
    for other in (copy.deepcopy(snn), sc.load(tmp_path / "n.snn")):
        mods = set(other.gm.modules())
        assert all(la.module in mods for la in other.layers)
        other.layers[0].module.beta = 1.5
        assert other.layers[0].beta == 1.5 and snn.layers[0].beta == 2.0
