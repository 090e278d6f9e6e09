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

import math
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from . import ops
from .neuron import countable_from_value, popcount, word_and_count
from .plan import GraphPlan, Region, ancestors, node_shapes, run_region

E_MAC_PJ = 4.6
E_AC_PJ = 0.9
ENERGY_CONVENTION = "45 nm CMOS (Horowitz 2014): 4.6 pJ/MAC, 0.9 pJ/AC (SOP)"


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
        p = next(self.gm.parameters())
        return node_shapes(self.gm, torch.zeros((1,) + self.input_shape, dtype=p.dtype, device=p.device))

    def _weighted(self, n) -> bool:
        k = ops.kind_of(self.gm, n)
        return k is not None and k.weighted

    def _region_ops(self, sink, region: Region) -> list[OpCost]:
        weighted = [n for n in region.nodes if self._weighted(n)]
        out = []
        for w in weighted:
            # which sources reach w's input without crossing another weighted op
            stop = set(region.sources) | (set(weighted) - {w})
            _, reached = ancestors(w.args[0], stop, within=set(region.nodes), signals_only=True)
            reach = {n for n in reached if n in region.sources and not self.plan.is_analog(n)}
            analog = any(n not in reach for n in reached)  # the analog input, or another weighted op's output
            mod = self.gm.get_submodule(w.target)
            cost = OpCost(w, sink, ops.macs(mod, self.shapes[w.args[0]], self.shapes[w]),
                          spike_fed=bool(reach) and not analog)
            if cost.spike_fed:
                cost.fanout = {s: self._fanout(region, w, s) for s in reach}
            out.append(cost)
        return out

    def _fanout(self, region: Region, w: fx.Node, src: fx.Node) -> torch.Tensor:
        """Synapses reached in op ``w`` by each neuron of ``src``: the transpose of (w with all
        weights 1) after (the unweighted path with every coefficient 1), applied to ones."""
        dev = next(self.gm.parameters()).device
        s = torch.zeros(self.shapes[src], dtype=torch.float64, device=dev, requires_grad=True)
        env = {src: s}
        for other in region.sources:
            if other is not src:
                env[other] = torch.zeros(self.shapes[other], dtype=torch.float64, device=dev)
        needed, _ = ancestors(w.args[0], set(region.sources), within=set(region.nodes))
        needed = set(needed)
        for n in region.nodes:
            if n not in needed:
                continue
            args = fx.node.map_arg(n.args, lambda a: env[a])
            kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a])
            env[n] = ops.structural(self.gm, n, args, kwargs)
        y = ops.ones_weighted(self.gm.get_submodule(w.target), env[w.args[0]])
        y.sum().backward()
        return s.grad.detach().float()


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


def _counted_by_digits(mod) -> bool:
    """Layers whose spikes are counted from their digit trains (1 < beta < 2, or the signed input
    coder); the others' from their value: the integer word at beta = 2, the burst length at beta = 1."""
    return mod.code.populations > 1 or not countable_from_value(mod.beta)


def counting_bytes_per_image(snn, cost: CostModel) -> int:
    """What ``neuron_spike_counts`` holds per image, with margin: every spiking layer's output, word
    and count for the whole batch (~11 bytes per neuron measured at beta = 2 on ResNet-34 at 128 px),
    plus, for layers counted by digits (1 < beta < 2, the signed coder), their input and a [T, ...]
    digit tensor."""
    total = 0
    for s in snn.plan.spikers:
        if s in cost.shapes:
            digits = _counted_by_digits(snn.gm.get_submodule(s.target))
            total += math.prod(cost.shapes[s][1:]) * (16 + (8 + 4 * snn.timesteps if digits else 0))
    return max(1, total)


def neuron_spike_counts(snn, x: torch.Tensor, return_logits: bool = False):
    """Per-neuron spike counts of every source (layers, max-pools, input coder) for inputs x,
    read off the exact twin: each neuron's code as an integer word (MSB first), its popcount the
    spikes. A max-pool's output word is the max of its window's words -- the same function the
    simulator's max-pool computes step by step (tested). With ``return_logits``, also the twin's
    logits (same pass): (counts, logits)."""
    plan, gm = snn.plan, snn.gm
    if (p := next(iter(gm.parameters()), None)) is not None:
        x = x.to(device=p.device, dtype=p.dtype)  # the network's precision (the graph is run directly)
    values, zs, hooks = {}, {}, []
    for node in plan.spikers:
        def grab(mod, inp, out, node=node):
            values[node] = out
            if _counted_by_digits(mod):
                zs[node] = inp[0]
        hooks.append(gm.get_submodule(node.target).register_forward_hook(grab))
    try:
        with torch.no_grad():
            logits = gm(x)
    finally:
        for h in hooks:
            h.remove()
    counts, words = {}, {}
    for node in plan.spikers:
        m = gm.get_submodule(node.target)
        if not _counted_by_digits(m):
            words[node], n = word_and_count(values[node], m.theta, m.beta, m.timesteps)
            counts[node] = n.to(values[node].dtype)
            continue
        d = m.digits(zs[node])  # two populations (input coder, leaky ReLU): ON minus OFF, never both at once
        place = 2.0 ** torch.arange(m.timesteps - 1, -1, -1, dtype=torch.float64, device=d.device)
        words[node] = torch.tensordot(place, d.clamp(min=0).double(), dims=([0], [0]))
        counts[node] = d.abs().sum(0)
    T = snn.timesteps
    with torch.no_grad():
        for pool in gm.graph.nodes:
            if pool in plan.pools and not plan.is_analog(pool):
                region = plan.pools[pool]
                words[pool] = run_region(gm, region, {s: words[s] for s in region.sources})
                counts[pool] = popcount(words[pool], T).to(logits.dtype)
    return (counts, logits) if return_logits else counts


def report(snn, x: torch.Tensor, neuron_counts: dict | None = None, cost: CostModel | None = None) -> Report:
    """Spikes, SOPs, MACs and energy per image of ``snn`` on inputs ``x``."""
    cost = cost or CostModel(snn.plan, snn.input_shape, snn.input_coding)
    B = x.shape[0]
    if neuron_counts is None:
        if not snn.scheme.exact_twin:  # counted in simulation (no twin gives the baseline's trains)
            res = snn.simulate(x, neuron_counts=True)
            neuron_counts = res.extra["neuron_counts"]
        else:
            neuron_counts = neuron_spike_counts(snn, x)
    steps = snn.timesteps if snn.scheme.analog_every_step else 1
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
    names = {a: snn.plan.layer_name(a) for a in snn.plan.spikers}
    # counts are integers: summed in float64 they are exact (float32 rounds past 2^24 spikes a batch,
    # differently with the thread count's summation order)
    per_layer = {names[a]: float(neuron_counts[a].sum(dtype=torch.float64)) / B for a in names if a in neuron_counts}
    spikes = sum(per_layer.values())
    e_snn = (snn_macs * E_MAC_PJ + sops * E_AC_PJ) * 1e-6
    e_ann = ann_macs * E_MAC_PJ * 1e-6
    return Report(per_layer, spikes, sops, snn_macs, ann_macs, e_snn, e_ann, snn.timesteps, snn.latency_steps,
                  snn.steps_per_input, snn.method)
