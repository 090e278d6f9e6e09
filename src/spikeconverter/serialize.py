"""A converted network as one file, without pickle: ``snn.save(path)`` / ``spikeconverter.load(path)``.

The file is safetensors: the tensors (folded weights, per-channel thresholds, bias corrections) as
tensors, and in the header one JSON document with

- ``graph``: the converted fx graph as a list of ops, each ``{name, op, target, args, kwargs}``,
  where a call's target is named, never pickled: a function or method the op table
  (``ops.TABLE``) knows, shape arithmetic, or ``getattr``;
- ``modules``: for every called module its class (one the op table knows, or SpikeActivation)
  and its constructor arguments, read back from the module's attributes;
- ``network``: T, method, input coding and shape, the per-layer records, calibration options,
  fixed-point bounds.

Loading builds only those classes and functions, so a file cannot make anything else run; a file
that names anything outside the table is refused in one line. The loaded network equals the saved
one bit for bit (the tests compare the fast path and every layer's spike trains).

``save(..., half_weights=True)`` stores the weight tensors of the linear layers as float16 (half the
file; the document lists them under ``float16_tensors``) and ``load`` widens them back to float32. The
loaded network is then the saved one with its weights rounded to float16 -- a different network by
that rounding, still exact as an SNN (its twin is computed from the same rounded weights), so a
network kept that way is measured as loaded. Thresholds, shifts and biases always stay float32.
"""

from __future__ import annotations

import inspect
import json
import math
import operator
from pathlib import Path

import torch
import torch.fx as fx
from torch import nn

from . import ops
from .checkpoint import META_KEY, save_tensors

FORMAT = "spikeconverter-snn"
VERSION = 1

# the SpikeActivation attributes a file records (its theta map and shift are tensors)
_ACT_ATTRS = ("cap", "signed", "mode", "_theta", "beta", "timesteps", "phi", "layer_name", "compiled", "_slope")
_ACT_DEFAULTS = {"_slope": None}  # attributes added after files of version 1 were first written


class SnnFileError(ValueError):
    """A file that is not a readable converted network (one line says why)."""


def _functions() -> dict:
    """Name -> function, for every function a converted graph may call."""
    fns = [f for k in ops.TABLE if k.role != ops.REFUSED for f in k.functions]
    fns += list(ops.SHAPE_ARITH) + [getattr, operator.floordiv, operator.mod]
    table = {}
    for f in fns:
        if table.setdefault(_fn_name(f), f) is not f:  # two functions under one name: the file would be ambiguous
            raise AssertionError(f"two functions are named {_fn_name(f)}")
    return table


def _fn_name(f) -> str:
    # __name__, not __qualname__: F.max_pool2d and its siblings are closures of one dispatcher
    return f"{getattr(f, '__module__', None) or ''}.{getattr(f, '__name__', str(f))}"


def _methods() -> set:
    return {m for k in ops.TABLE if k.role != ops.REFUSED for m in k.methods}


def _module_classes() -> dict:
    from .activation import SpikeActivation

    classes = {m.__name__: m for k in ops.TABLE if k.role != ops.REFUSED for m in k.modules}
    classes["SpikeActivation"] = SpikeActivation
    return classes


# ---------------------------------------------------------------------------------------------
# values in args / kwargs / module configs <-> JSON
# ---------------------------------------------------------------------------------------------


def encode_value(v):
    if isinstance(v, fx.Node):
        return {"node": v.name}
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"float": repr(v)}
    if isinstance(v, tuple):
        return {"tuple": [encode_value(a) for a in v]}
    if isinstance(v, list):
        return [encode_value(a) for a in v]
    if isinstance(v, dict):
        return {"dict": {str(k): encode_value(a) for k, a in v.items()}}
    if isinstance(v, slice):
        return {"slice": [encode_value(v.start), encode_value(v.stop), encode_value(v.step)]}
    if v is Ellipsis:
        return {"ellipsis": True}
    if isinstance(v, torch.dtype):
        return {"dtype": str(v).removeprefix("torch.")}
    raise SnnFileError(f"cannot save a graph argument of type {type(v).__name__} ({v!r})")


def _dec(v, env: dict):
    if isinstance(v, list):
        return [_dec(a, env) for a in v]
    if not isinstance(v, dict):
        return v
    (tag, a), = v.items()
    if tag == "node":
        if a not in env:
            raise SnnFileError(f"the graph refers to node {a!r} before defining it")
        return env[a]
    if tag == "float":
        return float(a)
    if tag == "tuple":
        return tuple(_dec(b, env) for b in a)
    if tag == "dict":
        return {k: _dec(b, env) for k, b in a.items()}
    if tag == "slice":
        return slice(*(_dec(b, env) for b in a))
    if tag == "ellipsis":
        return Ellipsis
    if tag == "dtype":
        dt = getattr(torch, a, None)
        if not isinstance(dt, torch.dtype):
            raise SnnFileError(f"unknown dtype {a!r}")
        return dt
    raise SnnFileError(f"unknown value tag {tag!r}")


def module_config(mod: nn.Module, path: str) -> dict:
    """A module of the table as (class, constructor arguments read from its attributes)."""
    from .activation import SpikeActivation

    cls = type(mod)
    if cls not in _module_classes().values():
        raise SnnFileError(f"cannot save module '{path}' of type {cls.__name__}: not in the op table")
    if isinstance(mod, SpikeActivation):
        return {"class": "SpikeActivation", "attrs": {k: encode_value(getattr(mod, k)) for k in _ACT_ATTRS}}
    args = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name in ("self", "device", "dtype") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name == "bias":
            args["bias"] = getattr(mod, "bias", None) is not None
        elif hasattr(mod, p.name):
            args[p.name] = encode_value(getattr(mod, p.name))
        elif p.default is p.empty:
            raise SnnFileError(f"cannot save module '{path}' ({cls.__name__}): no attribute for argument {p.name!r}")
    return {"class": cls.__name__, "args": args}


# ---------------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------------


def node_record(n, target) -> dict:
    """One graph node as JSON (the network file's and the bundle's): name, op, its target as the
    file names it, encoded arguments, whether it computes a shape."""
    return {"name": n.name, "op": n.op, "target": target, "args": encode_value(n.args),
            "kwargs": encode_value(n.kwargs), "shape_value": bool(n.meta.get("shape_value", False))}


def save(snn, path, extra: dict | None = None, half_weights: bool = False) -> None:
    """Write ``snn`` (a SpikingNetwork) to ``path``. ``extra``: JSON-able notes kept in the file
    (where the network came from: model, dataset, checkpoint, fine-tuning). ``half_weights``: store
    the float32 ``weight`` tensors of non-spiking modules as float16 (see the module docstring)."""
    from .activation import SpikeActivation

    gm = snn.gm
    fns = {id(f): name for name, f in _functions().items()}
    methods = _methods()
    graph, modules, tensors = [], {}, {}
    for n in gm.graph.nodes:
        target = n.target
        if n.op == "call_function":
            if id(n.target) not in fns:
                raise SnnFileError(f"cannot save node '{n.name}': function {_fn_name(n.target)} is not in the op table")
            target = fns[id(n.target)]
        elif n.op == "call_method" and n.target not in methods:
            raise SnnFileError(f"cannot save node '{n.name}': method .{n.target}() is not in the op table")
        elif n.op == "call_module" and n.target not in modules:
            mod = gm.get_submodule(n.target)
            modules[n.target] = module_config(mod, n.target)
            for k, t in mod.state_dict().items():
                if torch.is_tensor(t):
                    tensors[f"module.{n.target}.{k}"] = t
            if isinstance(mod, SpikeActivation):
                for k in ("theta_map", "shift"):
                    if getattr(mod, k) is not None:
                        tensors[f"module.{n.target}.{k}"] = getattr(mod, k)
        elif n.op == "get_attr":
            value = gm
            for part in n.target.split("."):
                value = getattr(value, part)
            if not torch.is_tensor(value):
                raise SnnFileError(f"cannot save node '{n.name}': attribute {n.target} is not a tensor")
            tensors[f"attr.{n.target}"] = value
        graph.append(node_record(n, target))
    layers = [dict(name=la.name, theta=None if torch.is_tensor(la.theta) else la.theta, beta=la.beta, phi=la.phi,
                   cap=la.cap, neurons=la.neurons, depth=la.depth, error=la.error, group=la.group)
              for la in snn.layers]
    network = dict(method=snn.method, timesteps=snn.timesteps, input_shape=list(snn.input_shape),
                   input_coding=snn.input_coding, threshold=snn.threshold,
                   calibration=getattr(snn, "calibration", None),
                   exact_bounds=None if snn.exact_bounds is None else [list(b) for b in snn.exact_bounds],
                   class_name=type(gm).__name__ if type(gm).__name__ != "GraphModule" else gm._get_name())
    from . import __version__

    doc = {"format": FORMAT, "version": VERSION, "spikeconverter": __version__, "graph": graph, "modules": modules,
           "network": network, "layers": layers, "extra": encode_value(dict(extra or {}))}
    if half_weights:
        if snn.exact_bounds is not None:  # its weights sit on a fixed-point grid whose bounds were proven
            raise ValueError("half_weights: a fixed-point network keeps its weights as they are (float16 "
                             "rounding would leave the grid its exact bounds were derived for)")
        # spiking layers hold no "weight" (their tensors are theta_map and shift), so this takes the
        # linear layers' weights only
        halved = sorted(k for k, t in tensors.items()
                        if k.startswith("module.") and k.endswith(".weight") and t.dtype == torch.float32)
        tensors = {**tensors, **{k: tensors[k].half() for k in halved}}
        doc["float16_tensors"] = halved
    save_tensors(Path(path), tensors, doc)


# ---------------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------------


def read(path) -> tuple[dict, dict]:
    """(tensors, document) of a network file, checked for format and version."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors' own error types: truncated, bad header, ...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SnnFileError(f"{path} is not a readable network file (safetensors: {first})") from None
    try:
        doc = json.loads(header[META_KEY])
    except (KeyError, json.JSONDecodeError):
        raise SnnFileError(f"{path} is a safetensors file but holds no converted network "
                           "(a weights checkpoint? use it with --checkpoint)") from None
    if doc.get("format") != FORMAT:
        raise SnnFileError(f"{path} is not a converted network (format {doc.get('format')!r}; a weights checkpoint? "
                           "use it with --checkpoint)")
    if doc.get("version") != VERSION:
        raise SnnFileError(f"{path} is a version {doc.get('version')} network file (written by spikeconverter "
                           f"{doc.get('spikeconverter', '?')}); this spikeconverter reads version {VERSION}")
    for k in doc.get("float16_tensors", []):  # stored half, run in float32 (save(half_weights=True))
        if k not in tensors or tensors[k].dtype != torch.float16:
            raise SnnFileError(f"{path}: float16_tensors names {k!r}, which the file does not hold as float16")
        tensors[k] = tensors[k].float()
    return tensors, doc


def is_network_file(path) -> bool:
    """Whether ``path`` is a converted-network file (not a weights checkpoint)."""
    try:
        read(path)
        return True
    except (SnnFileError, FileNotFoundError):
        return False


def _build_module(path: str, cfg: dict, tensors: dict) -> nn.Module:
    classes = _module_classes()
    name = cfg.get("class")
    if name not in classes:
        raise SnnFileError(f"module '{path}' is of class {name!r}, which is not in the op table")
    prefix = f"module.{path}."
    own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if name == "SpikeActivation":
        attrs = {k: _dec(v, {}) for k, v in cfg["attrs"].items()}
        mod = classes[name](cap=attrs["cap"], signed=attrs["signed"])
        for k in _ACT_ATTRS:
            setattr(mod, k, attrs[k] if k in attrs else _ACT_DEFAULTS[k])
        if "theta_map" in own:
            mod.theta = own.pop("theta_map")
        if "slope_map" in own:
            mod.negative_slope = own.pop("slope_map")
        if "shift" in own:
            mod.shift = own.pop("shift")
        if own:
            raise SnnFileError(f"module '{path}': unexpected tensors {sorted(own)}")
        return mod
    try:
        mod = classes[name](**{k: _dec(v, {}) for k, v in cfg["args"].items()})
    except Exception as e:
        raise SnnFileError(f"module '{path}' ({name}) cannot be built from {cfg['args']}: {e}") from None
    try:
        mod.load_state_dict(own, strict=True, assign=True)
    except RuntimeError as e:
        raise SnnFileError(f"module '{path}' ({name}): {str(e).splitlines()[0]}") from None
    return mod.eval()


def load(path):
    """The SpikingNetwork saved in ``path``, bit for bit, without the model's Python class."""
    from .network import LayerInfo, SpikingNetwork
    from .plan import analyze

    tensors, doc = read(path)
    try:
        return _rebuild(tensors, doc, LayerInfo, SpikingNetwork, analyze)
    except SnnFileError as e:
        raise SnnFileError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise SnnFileError(f"{path}: the network document is malformed ({type(e).__name__}: {e})") from None


def _rebuild(tensors, doc, LayerInfo, SpikingNetwork, analyze):
    fns, methods = _functions(), _methods()
    root = {p: _build_module(p, cfg, tensors) for p, cfg in doc["modules"].items()}
    graph = fx.Graph()
    env = {}
    for rec in doc["graph"]:
        op, target = rec["op"], rec["target"]
        if op == "call_function":
            if target not in fns:
                raise SnnFileError(f"node {rec['name']!r} calls {target!r}, which is not in the op table")
            target = fns[target]
        elif op == "call_method" and target not in methods:
            raise SnnFileError(f"node {rec['name']!r} calls method {target!r}, which is not in the op table")
        elif op == "call_module" and target not in root:
            raise SnnFileError(f"node {rec['name']!r} calls module {target!r}, which the file does not define")
        elif op == "get_attr":
            key = f"attr.{target}"
            if key not in tensors:
                raise SnnFileError(f"node {rec['name']!r} reads {target!r}, which the file does not hold")
            root[target] = tensors[key]
        elif op not in ("placeholder", "output", "call_function", "call_method", "call_module"):
            raise SnnFileError(f"node {rec['name']!r} has unknown op {op!r}")
        node = graph.create_node(op, target, _dec(rec["args"], env), _dec(rec["kwargs"], env), name=rec["name"])
        if node.name != rec["name"]:
            raise SnnFileError(f"node name {rec['name']!r} repeats")
        node.meta["shape_value"] = bool(rec.get("shape_value", False))
        env[rec["name"]] = node
    net = doc["network"]
    gm = fx.GraphModule(root, graph, net.get("class_name") or "GraphModule")
    plan = analyze(gm)
    acts = {m.layer_name: m for m in gm.modules() if hasattr(m, "layer_name") and hasattr(m, "theta_map")}
    layers = []
    for la in doc["layers"]:  # theta, beta, phi and cap are the layer module's (LayerInfo reads them)
        layers.append(LayerInfo(la["name"], acts[la["name"]], la["neurons"], la["depth"], la["error"], la["group"]))
    snn = SpikingNetwork(plan, net["method"], net["timesteps"], layers, tuple(net["input_shape"]),
                         net["input_coding"], net["threshold"])
    for p, cfg in doc["modules"].items():  # the constructor set every mode; the file's modes win
        if cfg["class"] == "SpikeActivation":
            gm.get_submodule(p).mode = _dec(cfg["attrs"]["mode"], {})
    if net.get("calibration") is not None:
        snn.calibration = net["calibration"]
    if net.get("exact_bounds") is not None:
        snn.exact_bounds = [tuple(b) for b in net["exact_bounds"]]
    snn.source = _dec(doc.get("extra", {"dict": {}}), {})
    return snn
