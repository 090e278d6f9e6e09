"""Spikes, synaptic operations, MACs, energy and latency of a converted network.

Conventions (stated in every report):

- Spikes: total spikes per image, per layer and in all. Two-phase: the popcount of each neuron's
  code, read off the exact twin (identical to the simulator's trains). Rate: counted in simulation.
- SOPs (synaptic operations, one accumulate each): for every weighted op (conv/linear) whose input
  is spike trains -- directly or through sums, concats, reshapes and average pools -- each spike
  costs the number of synapses it reaches in that op: the output positions x output channels its
  value feeds, computed exactly from the graph (borders, strides, groups) by propagating ones
  through the op's transpose.
- MACs: weighted ops whose input is analog: the first layer when the input is analog, and ops fed
  by another weighted op without a spiking layer in between (MobileNet-v2's linear bottleneck
  feeding the next block). The two-phase scheme needs them once per input (nothing fires during
  accumulation, so only the window's total current matters); the rate baseline, every step.
- Energy (45 nm, Horowitz 2014): 4.6 pJ per MAC, 0.9 pJ per AC (SOP).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .graph import GraphPlan, Region, node_shapes
from .neuron import binary_spike_count, quantize_digits

E_MAC_PJ = 4.6
E_AC_PJ = 0.9
ENERGY_CONVENTION = "45 nm CMOS (Horowitz 2014): 4.6 pJ/MAC, 0.9 pJ/AC (SOP)"
WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


def _macs(mod: nn.Module, out_shape) -> int:
    """MACs per sample of one weighted op."""
    numel = 1
    for d in out_shape[1:]:
        numel *= int(d)
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        k = 1
        for d in mod.kernel_size:
            k *= d
        return numel * (mod.in_channels // mod.groups) * k
    if isinstance(mod, nn.Linear):
        return numel * mod.in_features
    return numel  # batch norm on its own: one multiply per element


@dataclass
class OpCost:
    node: fx.Node
    sink: fx.Node
    macs: int  # ANN MACs per sample
    spike_fed: bool  # its input is spike trains (SOPs), else analog (MACs)
    fanout: dict = field(default_factory=dict)  # source -> per-neuron synapse count [1, ...]


class CostModel:
    """Per-op MACs and exact per-neuron fan-outs for a prepared graph (computed once)."""

    def __init__(self, plan: GraphPlan, input_shape: tuple, input_coding: str = "analog"):
        self.plan, self.gm = plan, plan.gm
        self.input_shape = tuple(input_shape)
        self.spike_input = input_coding == "spike"
        self.shapes = self._shapes()
        self.ops: list[OpCost] = []
        for sink, region in plan.regions.items():
            self.ops += self._region_ops(sink, region)

    def _shapes(self) -> dict:
        dtype = next(self.gm.parameters()).dtype
        return node_shapes(self.gm, torch.zeros((1,) + self.input_shape, dtype=dtype))

    def _is_spiking_source(self, src) -> bool:
        root = self.plan.root_source(src)
        return root is not self.plan.input

    def _region_ops(self, sink, region: Region) -> list[OpCost]:
        in_region = set(region.nodes)
        weighted = [n for n in region.nodes if n.op == "call_module" and isinstance(self.gm.get_submodule(n.target), WEIGHTED)]
        out = []
        for w in weighted:
            # which sources reach w's input without crossing another weighted op
            reach, stack, analog = set(), [w.args[0]], False
            seen = set()
            while stack:
                n = stack.pop()
                if not isinstance(n, fx.Node) or n in seen:
                    continue
                seen.add(n)
                if n in region.sources:
                    if self._is_spiking_source(n):
                        reach.add(n)
                    else:
                        analog = True
                    continue
                if n not in in_region:
                    continue
                if n in weighted:
                    analog = True  # fed by another weighted op's (analog) output
                    continue
                stack.extend(n.all_input_nodes)
            cost = OpCost(w, sink, _macs(self.gm.get_submodule(w.target), self.shapes[w]), spike_fed=bool(reach) and not analog)
            if reach and not analog:
                cost.fanout = {s: self._fanout(region, w, s) for s in reach}
            out.append(cost)
        return out

    def _fanout(self, region: Region, w: fx.Node, src: fx.Node) -> torch.Tensor:
        """Synapses reached in op ``w`` by each neuron of ``src``: the transpose of (w with all
        weights 1) after (the unweighted path with average pools as sums), applied to ones."""
        s = torch.zeros(self.shapes[src], dtype=torch.float64, requires_grad=True)
        env = {src: s}
        for other in region.sources:
            if other is not src:
                env[other] = torch.zeros(self.shapes[other], dtype=torch.float64)
        needed = _ancestors(w.args[0], set(region.nodes))
        for n in region.nodes:
            if n not in needed:
                continue
            args = fx.node.map_arg(n.args, lambda a: env[a])
            kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a])
            env[n] = _structural(self.gm, n, args, kwargs)
        x = env[w.args[0]]
        y = _ones_op(self.gm.get_submodule(w.target), x)
        y.sum().backward()
        return s.grad.detach().float()


def _ancestors(node, allowed: set) -> set:
    out, stack = set(), [node]
    while stack:
        n = stack.pop()
        if isinstance(n, fx.Node) and n in allowed and n not in out:
            out.add(n)
            stack.extend(n.all_input_nodes)
    return out


def _structural(gm, n, args, kwargs):
    """Evaluate an unweighted op with average pooling replaced by summing (a connection is one)."""
    if n.op == "call_module":
        mod = gm.get_submodule(n.target)
        if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d)):
            k = mod.kernel_size if isinstance(mod.kernel_size, tuple) else (mod.kernel_size,) * (args[0].ndim - 2)
            area = 1
            for d in k:
                area *= d
            return mod(*args) * area
        if isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            y = mod(*args)
            return y * (args[0][0, 0].numel() / y[0, 0].numel())
        return mod(*args, **kwargs)
    if n.op == "call_function":
        if n.target in (F.avg_pool2d, F.adaptive_avg_pool2d, F.avg_pool1d, F.adaptive_avg_pool1d):
            y = n.target(*args, **kwargs)
            return y * (args[0][0, 0].numel() / y[0, 0].numel())
        if n.target is torch.mean:
            y = n.target(*args, **kwargs)
            return y * (args[0].numel() / y.numel())
        return n.target(*args, **kwargs)
    if n.target == "mean":
        x = args[0]
        y = x.mean(*args[1:], **kwargs)
        return y * (x.numel() / y.numel())
    return getattr(args[0], n.target)(*args[1:], **kwargs)


def _ones_op(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        return mod._conv_forward(x, torch.ones_like(mod.weight, dtype=x.dtype), None)
    if isinstance(mod, nn.Linear):
        return F.linear(x, torch.ones_like(mod.weight, dtype=x.dtype))
    return x  # batch norm: one synapse per neuron


# ---------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Per-image figures, averaged over the images given."""

    spikes_per_layer: dict[str, float]
    spikes: float
    sops: float
    snn_macs: float
    ann_macs: float
    energy_snn_uj: float
    energy_ann_uj: float
    timesteps: int
    latency_steps: int
    steps_per_input: int
    method: str
    convention: str = ENERGY_CONVENTION

    @property
    def energy_ratio(self) -> float:
        """ANN energy / SNN energy (> 1: the SNN is cheaper)."""
        return self.energy_ann_uj / self.energy_snn_uj if self.energy_snn_uj else float("inf")

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["energy_ratio"] = self.energy_ratio
        return d


def neuron_spike_counts(snn, x: torch.Tensor, return_logits: bool = False):
    """Per-neuron spike counts of every source (layers, max-pools, input coder) for inputs x,
    read off the exact twin: the popcount of each neuron's code (identical to the simulator's
    counts; tested). With ``return_logits``, also the twin's logits (same pass): (counts, logits)."""
    plan, gm = snn.plan, snn.gm
    values, zs, hooks = {}, {}, []
    spikers = list(plan.activations) + ([plan.coder] if plan.coder is not None else [])
    for node in spikers:
        def grab(mod, inp, out, node=node):
            values[node] = out
            if mod.beta != 2.0 or mod.signed:
                zs[node] = inp[0]
        hooks.append(gm.get_submodule(node.target).register_forward_hook(grab))
    for node in plan.maxpools:
        hooks.append(gm.get_submodule(node.target).register_forward_hook(
            lambda mod, inp, out, node=node: values.__setitem__(node, out)))
    try:
        with torch.no_grad():
            logits = gm(x)
    finally:
        for h in hooks:
            h.remove()
    counts = {}
    for node, v in values.items():
        root = plan.root_source(node)
        if root is plan.input:
            continue
        m = gm.get_submodule(root.target)
        if m.beta == 2.0 and not m.signed:
            counts[node] = binary_spike_count(v, m.theta, m.timesteps)
            continue
        # other beta: a max-pool forwards the train of q(max z) (q is monotone), so pool z
        chain = [node]
        while chain[-1] in plan.maxpools:
            chain.append(plan.maxpools[chain[-1]])
        z = zs[root]
        with torch.no_grad():
            for pool in reversed(chain[:-1]):
                z = gm.get_submodule(pool.target)(z)
        d = quantize_digits(z, m.theta, m.beta, m.timesteps, m.phi).sum(0)
        if m.signed:
            d = d + quantize_digits(-z, m.theta, m.beta, m.timesteps, m.phi).sum(0)
        counts[node] = d
    return (counts, logits) if return_logits else counts


def report(snn, x: torch.Tensor, neuron_counts: dict | None = None, cost: CostModel | None = None) -> Report:
    """Spikes, SOPs, MACs and energy per image of ``snn`` on inputs ``x``."""
    cost = cost or CostModel(snn.plan, snn.input_shape, snn.input_coding)
    B = x.shape[0]
    if neuron_counts is None:
        if snn.method == "rate":
            res = snn.simulate(x, neuron_counts=True)
            neuron_counts = res.extra["neuron_counts"]
        else:
            neuron_counts = neuron_spike_counts(snn, x)
    steps = snn.timesteps if snn.method == "rate" else 1
    sops = 0.0
    snn_macs = 0.0
    ann_macs = 0.0
    for op in cost.ops:
        ann_macs += op.macs
        if op.spike_fed:
            for src, fan in op.fanout.items():
                sops += float((neuron_counts[src].double() * fan.double()).sum()) / B
        else:
            snn_macs += op.macs * steps
    names = {a: a.meta.get("layer_name", a.name) for a in snn.plan.activations}
    if snn.plan.coder is not None:
        names[snn.plan.coder] = "input"
    per_layer = {names[a]: float(neuron_counts[a].sum()) / B for a in names if a in neuron_counts}
    spikes = sum(per_layer.values())
    e_snn = (snn_macs * E_MAC_PJ + sops * E_AC_PJ) * 1e-6
    e_ann = ann_macs * E_MAC_PJ * 1e-6
    return Report(per_layer, spikes, sops, snn_macs, ann_macs, e_snn, e_ann, snn.timesteps, snn.latency_steps,
                  snn.steps_per_input, snn.method)
