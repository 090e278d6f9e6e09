"""The integer deployment bundle: ``snn.export(dir)`` / ``spikeconverter export``.

A fixed-point network (``convert(..., fixed_point=True)``) holds only dyadic numbers: weights with
12 significant bits, thresholds, biases and bias corrections on power-of-two grids. The bundle
writes each of them as an integer array and an exponent (value = int * 2^-exp), with the graph, the
regions (which layers feed which neuron), the window schedule and a reference executor in plain
NumPy (``run.py``, a copy of bundle_executor.py) whose logits and spike counts equal the fixed-point
engine's bit for bit. docs/deploy.md describes the layout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from .fixed_point import INPUT_BITS
from .serialize import module_config, node_record


def dyadic(t) -> tuple[np.ndarray, int]:
    """An exactly dyadic tensor as (int64 array, e) with t = a * 2^-e, e as small as it can be."""
    t = torch.as_tensor(t, dtype=torch.float64).detach().cpu()
    if not bool(torch.isfinite(t).all()):
        raise ValueError("a non-finite value cannot be exported")
    e = 0
    while not bool(torch.equal(torch.round(t * 2.0**e), t * 2.0**e)):
        e += 1
        if e > 200:
            raise ValueError("a value is not dyadic (export needs a fixed-point network)")
    a = (t * 2.0**e)
    if a.numel() and float(a.abs().max()) >= 2.0**62:
        raise ValueError("an exported integer needs more than 62 bits")
    while e > 0 and a.numel() and bool(torch.all(torch.remainder(a, 2) == 0)):
        a, e = a / 2, e - 1
    return a.to(torch.int64).numpy(), e


def _check_ops(snn) -> None:
    """Refuse, before writing anything, every op the torch-free executor does not implement (its
    own list, beside its implementations in bundle_executor.py)."""
    from .bundle_executor import FUNCTIONS, METHODS, MODULES

    gm = snn.gm
    for n in gm.graph.nodes:
        if n.op == "call_module":
            cls = type(gm.get_submodule(n.target)).__name__
            if cls not in MODULES:
                raise ValueError(f"export: the reference executor does not implement {cls} ('{n.target}') yet")
        elif n.op == "call_function":
            name = getattr(n.target, "__name__", str(n.target))
            if name not in FUNCTIONS:
                raise ValueError(f"export: the reference executor does not implement {name} (node '{n.name}') yet")
        elif n.op == "call_method" and n.target not in METHODS:
            raise ValueError(f"export: the reference executor does not implement .{n.target}() (node '{n.name}') yet")
        elif n.op == "get_attr":
            raise ValueError(f"export: constant tensors (node '{n.name}') are not exported yet")


def export(snn, directory) -> Path:
    """Write the integer bundle of a fixed-point SpikingNetwork to ``directory``; returns it."""
    plan, gm = snn.plan, snn.gm
    beta = _check_exportable(snn)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = _Tensors()
    graph, modules = _graph_records(gm, tensors)
    x1 = torch.zeros((1,) + tuple(snn.input_shape), dtype=torch.float64, device=next(gm.parameters()).device)
    from .plan import node_shapes

    shapes = {n.name: list(s[1:]) for n, s in node_shapes(gm, x1).items()}

    def region(r):
        return {"sources": [s.name for s in r.sources], "nodes": [n.name for n in r.nodes], "value": r.value.name}

    doc = {
        "format": "spikeconverter-bundle", "version": 1, "timesteps": snn.timesteps, "beta": beta,
        "input": plan.input.name, "input_shape": list(snn.input_shape), "input_bits": INPUT_BITS,
        "graph": graph, "modules": modules, "shapes": shapes,
        "regions": {s.name: region(r) for s, r in plan.regions.items()},
        "pools": {p.name: region(r) for p, r in plan.pools.items()},
        "layers": _layer_records(snn, x1, tensors), "order": _order(plan), "schedule": _schedule_record(snn),
        "bounds": [list(b) for b in snn.exact_bounds],
    }
    (directory / "bundle.json").write_text(json.dumps(doc, indent=1) + "\n")
    np.savez(directory / "tensors.npz", **tensors.arrays)
    shutil.copyfile(Path(__file__).with_name("bundle_executor.py"), directory / "run.py")
    return directory


class _Tensors:
    """The bundle's arrays: every value as a dyadic pair, integer mantissas and one exponent."""

    def __init__(self):
        self.arrays: dict = {}

    def put(self, key: str, value) -> None:
        a, e = dyadic(value)
        self.arrays[key + ".int"], self.arrays[key + ".exp"] = a, np.array(e, dtype=np.int64)


def _check_exportable(snn) -> float:
    """Refuse what the bundle cannot run; returns the one beta of all layers."""
    if not snn.scheme.fixed_point or snn.exact_bounds is None:
        raise ValueError("export needs a fixed-point two-phase network: convert(..., fixed_point=True)")
    acts = [snn.gm.get_submodule(a.target) for a in snn.plan.spikers]
    betas = {float(m.beta) for m in acts}
    if len(betas) != 1:
        raise ValueError(f"export: every layer must share one beta (got {sorted(betas)})")
    phis = {float(m.phi) for m in acts}
    if not phis <= {0.0, 0.5}:
        raise ValueError(f"export: phi must be 0 or 0.5 (got {sorted(phis)})")
    _check_ops(snn)
    return betas.pop()


def _graph_records(gm, tensors: _Tensors) -> tuple[list, dict]:
    """Every graph node as JSON (op, target, arguments) and every module's configuration; the
    weights of every module but the spiking layers go into ``tensors``."""
    from .activation import SpikeActivation

    graph, modules = [], {}
    for n in gm.graph.nodes:
        target = n.target
        if n.op == "call_function":
            target = f"{getattr(n.target, '__module__', '')}.{getattr(n.target, '__name__', str(n.target))}"
        elif n.op == "call_module":
            mod = gm.get_submodule(n.target)
            modules[n.target] = module_config(mod, n.target)
            if not isinstance(mod, SpikeActivation):
                for k, t in mod.state_dict().items():
                    tensors.put(f"{n.target}.{k}", t)
        graph.append(node_record(n, target))
    return graph, modules


def _layer_records(snn, x1: torch.Tensor, tensors: _Tensors) -> dict:
    """Per spiking layer its code (the thresholds, per neuron as the simulator uses them, into
    ``tensors``); the max-pools of trains' threshold maps too."""
    from .engine import TwoPhaseSimulator
    from .plan import node_shapes

    plan, gm = snn.plan, snn.gm
    shapes = node_shapes(gm, x1)
    zeros = {n: torch.zeros(shapes[n], dtype=torch.float64, device=x1.device)
             for n in list(plan.spikers) + [p for p in plan.pools] + [plan.input]}
    theta_maps = TwoPhaseSimulator(plan)._theta_maps(zeros)
    layers = {}
    for a in plan.spikers:
        m = gm.get_submodule(a.target)
        tensors.put(f"{a.name}.theta", m.theta if torch.is_tensor(m.theta) else torch.tensor(m.theta))
        tensors.put(f"{a.name}.theta_map", theta_maps[a])
        rec = {"layer_name": m.layer_name, "phi": float(m.phi), "timesteps": int(m.timesteps), "depth": plan.depth[a],
               "accumulate_window": plan.accumulate_window.get(a), "per_channel": m.per_channel,
               "signed": bool(m.signed)}
        if m.shift is not None:
            tensors.put(f"{a.name}.shift", m.shift)
            rec["shift"] = True
        for name, value in m.code.own_shaped(m, zeros[a]).items():  # the code's own parameters (codes.py)
            tensors.put(f"{a.name}.{name}", value)
            rec[name] = True
        layers[a.name] = rec
    for p in plan.pools:
        if not plan.is_analog(p):
            tensors.put(f"{p.name}.theta_map", theta_maps[p])
    return layers


def _order(plan) -> list:
    """The order the executor visits sources and sinks in (the graph's)."""
    order = [{"kind": "coder", "name": plan.coder.name}] if plan.coder is not None else []
    for n in plan.gm.graph.nodes:
        if n in plan.pools:
            order.append({"kind": "analog_pool" if plan.is_analog(n) else "train_pool", "name": n.name})
        elif n in plan.regions:
            order.append({"kind": "output" if n is plan.output else "layer", "name": n.name})
    return order


def _schedule_record(snn) -> dict:
    plan, sch = snn.plan, snn.schedule
    return {"spiking_depth": plan.spiking_depth, "latency_steps": snn.latency_steps,
            "steps_per_input": snn.steps_per_input,
            "steps": {a.name: {"accumulate_start": sch.acc_start.get(a), "accumulate_length": sch.acc_length.get(a),
                               "generate_start": sch.gen_start[a], "generate_length": sch.code_length[a]}
                      for a in plan.spikers},
            "output_accumulate": [sch.acc_start[plan.output], sch.acc_length[plan.output]]}

