"""Time-stepped simulators: the two-phase (temporal separation) SNN and the rate-coded baseline.

Two-phase schedule. Time is cut into windows of T steps. A spiking layer at depth d accumulates the
input it is given in window d-1 and generates its train in window d; the output layer accumulates
in window L (L = the spiking depth of the longest path), so one input's logits are final after
(L+1)*T steps. A source whose depth is smaller than its consumer's accumulate window (a residual
shortcut, the shallow side of a concat) is delayed by whole windows: its trains wait in a buffer.

Streaming. With inputs fed back to back every T steps, every layer accumulates input n+1 while it
generates input n: each neuron holds two potentials (double buffering), swapped at the end of each
window. No reset between inputs is needed and nothing leaks from one input to the next.

Currents. A sink's input current at step t is the *linear part* of its region applied to the
source trains of that step, each scaled by theta_source * beta^(-T); the bias and the offset phi
enter once, as the initial potential scaled by beta^(-T). After T accumulate steps
V = sum_t beta^(T-t) I(t) + beta^T V(0) = W a + b + phi*theta*beta^(-T): the decoded value, with
no explicit decoding. An analog input enters once, at the first accumulate step.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .graph import GraphPlan, SpikeActivation, node_shapes, run_region
from .neuron import generate, generate_step


@dataclass
class SimulationResult:
    logits: torch.Tensor
    spike_counts: dict[str, torch.Tensor]  # per spiking layer: spikes per sample, shape [batch]
    spike_trains: dict[str, torch.Tensor] | None  # per layer [T, batch, ...] of its generate phase
    latency_steps: int  # steps until one input's logits are final
    timesteps: int  # T per phase (two-phase) or simulation length (rate)
    total_steps: int = 0  # steps simulated in all (streaming: (N + L) * T)
    extra: dict = field(default_factory=dict)

    @property
    def spikes_per_sample(self) -> torch.Tensor:
        return sum(self.spike_counts.values()) if self.spike_counts else torch.zeros(len(self.logits))


# ---------------------------------------------------------------------------------------------
# Spiking max-pool on MSB-first trains
# ---------------------------------------------------------------------------------------------


class SpikingMaxPool2d:
    """Forwards, step by step, the train of the winning input of each pooling window.

    Greedy MSB-first codes compare lexicographically like their values, so the winner is known at
    the first step where the still-tied candidates differ: candidates that stay silent while another
    tied one spikes drop out. Output spike = any still-tied candidate spikes. The result is exactly
    the train of q(max z) = max q(z) (q is monotone). Padding never competes."""

    def __init__(self, pool: torch.nn.MaxPool2d):
        self.k, self.s = pool.kernel_size, pool.stride
        self.p, self.d = pool.padding, pool.dilation
        self.tied = None

    def _unfold(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        u = F.unfold(x, self.k, dilation=self.d, padding=self.p, stride=self.s)
        return u.view(b, c, -1, u.shape[-1])

    def out_shape(self, x: torch.Tensor) -> tuple[int, int]:
        def n(size, k, s, p, d):
            return (size + 2 * p - d * (k - 1) - 1) // s + 1

        def pair(v):
            return ((v, v) if isinstance(v, int) else tuple(v))
        k, s, p, d = pair(self.k), pair(self.s if self.s is not None else self.k), pair(self.p), pair(self.d)
        return n(x.shape[2], k[0], s[0], p[0], d[0]), n(x.shape[3], k[1], s[1], p[1], d[1])

    def reset(self) -> None:
        self.tied = None

    def step(self, s: torch.Tensor) -> torch.Tensor:
        u = self._unfold(s) > 0
        if self.tied is None:
            self.tied = self._unfold(torch.ones_like(s)) > 0  # every real input competes, padding never
        live = u & self.tied
        out = live.any(dim=2)
        self.tied = self.tied & (u | ~out[:, :, None, :])
        ho, wo = self.out_shape(s)
        return out.view(s.shape[0], s.shape[1], ho, wo).to(s.dtype)


class RateMaxPool2d(SpikingMaxPool2d):
    """Rate baseline: pass the spikes of the input that has fired most so far (Rueckauer et al.)."""

    def __init__(self, pool):
        super().__init__(pool)
        self.counts = None

    def reset(self) -> None:
        self.counts = None

    def step(self, s: torch.Tensor) -> torch.Tensor:
        self.counts = s.clone() if self.counts is None else self.counts + s
        c = self._unfold(self.counts + 0.0)
        mask = self._unfold(torch.ones_like(s)) > 0
        c = c.masked_fill(~mask, -1.0)
        win = c.argmax(dim=2, keepdim=True)
        out = torch.gather(self._unfold(s), 2, win).squeeze(2)
        ho, wo = self.out_shape(s)
        return out.reshape(s.shape[0], s.shape[1], ho, wo)


# ---------------------------------------------------------------------------------------------
# Two-phase simulator
# ---------------------------------------------------------------------------------------------


class TwoPhaseSimulator:
    def __init__(self, plan: GraphPlan):
        self.plan, self.gm = plan, plan.gm
        self.coder = plan.coder  # the signed input coder (spike-coded input), or None
        self.act = {n: self.gm.get_submodule(n.target) for n in plan.activations}
        if self.coder is not None:
            self.act[self.coder] = self.gm.get_submodule(self.coder.target)
        self.sinks = list(plan.activations) + [plan.output]
        self.acc_beta = {s: self._accumulate_beta(s) for s in self.sinks}

    def theta_of(self, src) -> float:
        return self.act[self.plan.root_source(src)].theta

    def beta_of(self, src) -> float:
        return self.act[self.plan.root_source(src)].beta

    def _accumulate_beta(self, sink) -> float:
        spikers = [s for s in self.plan.regions[sink].sources if self.plan.root_source(s) is not self.plan.input]
        betas = {self.beta_of(s) for s in spikers}
        if len(betas) > 1:
            raise ValueError(f"sources of '{sink.name}' use different beta values {sorted(betas)}; they must share one")
        if betas:
            return betas.pop()
        return self.act[sink].beta if sink in self.act else 2.0

    def _bias_map(self, sink, zeros: dict) -> torch.Tensor:
        region = self.plan.regions[sink]
        return run_region(self.gm, region, {s: zeros[s] for s in region.sources}, with_bias=True)

    @torch.no_grad()
    def run(self, x: torch.Tensor, record: bool = False, stream: bool = False,
            neuron_counts: bool = False) -> SimulationResult:
        plan, gm = self.plan, self.gm
        T = next(iter(self.act.values())).timesteps
        slots = [x[n : n + 1] for n in range(len(x))] if stream else [x]
        N, L = len(slots), plan.spiking_depth
        B = slots[0].shape[0]
        dtype = x.dtype

        # shapes of every source for one slot (the ANN pass on zeros gives them, and the bias maps)
        shapes = self._source_shapes(slots[0])
        zeros = {s: torch.zeros(shapes[s], dtype=dtype) for s in shapes}
        bias = {s: self._bias_map(s, zeros) for s in self.sinks}

        pools = {m: SpikingMaxPool2d(gm.get_submodule(m.target)) for m in plan.maxpools}
        v_acc: dict = {}
        v_gen: dict = {}
        trains: dict = defaultdict(dict)  # source -> window -> [T, B, ...]
        counts = {a: torch.zeros(B * N, dtype=dtype) for a in self.act}
        recorded: dict = {}
        per_neuron: dict = {}
        logits: list = [None] * N
        max_delay = max((plan.delay(s, src) for s in self.sinks for src in plan.regions[s].sources), default=0)
        gen_nodes = [n for n in gm.graph.nodes if (n in self.act and n is not self.coder) or n in plan.maxpools]

        for g in range(N + L):
            # start of window: fresh accumulators for the inputs that arrive at each sink
            for s in self.sinks:
                n = g - plan.accumulate_window[s]
                if 0 <= n < N:
                    init = bias[s]
                    if s in self.act:
                        a = self.act[s]
                        init = init + a.phi * a.theta * a.beta ** (-T)
                    v_acc[s] = (init * self.acc_beta[s] ** (-T)).expand((B,) + init.shape[1:]).clone()
                else:
                    v_acc.pop(s, None)
            for m in pools.values():
                m.reset()
            if self.coder is not None and g < N:
                trains[self.coder][g] = self._code_input(slots[g], T)
            step_spikes: dict = defaultdict(list)
            for t in range(T):
                cur = {}
                if self.coder is not None and g < N:
                    cur[self.coder] = trains[self.coder][g][t]
                # (1) generation: layers emit, max-pools forward their winners (topological order)
                for n in gen_nodes:
                    if n in self.act:
                        if plan.depth[n] <= g < plan.depth[n] + N:
                            a = self.act[n]
                            v_gen[n], s = generate_step(v_gen[n], a.theta, a.beta)
                            cur[n] = s.to(dtype)
                    else:
                        parent = plan.maxpools[n]
                        if parent in cur:
                            cur[n] = pools[n].step(cur[parent])
                for n, s in cur.items():
                    step_spikes[n].append(s)
                # (2) accumulation: every sink takes this step's (possibly delayed) trains
                for s in self.sinks:
                    if s not in v_acc:
                        continue
                    n_in = g - plan.accumulate_window[s]
                    current = self._current(s, g, t, T, cur, trains, slots[n_in], zeros)
                    beta = self.acc_beta[s]
                    v_acc[s] = v_acc[s] * beta if current is None else v_acc[s] * beta + current
            # end of window
            for n, seq in step_spikes.items():
                trains[n][g] = torch.stack(seq)
                if neuron_counts and not stream:
                    per_neuron[n] = per_neuron.get(n, 0) + trains[n][g].abs().sum(0)
            for a in self.act:
                if a in trains and g in trains[a]:
                    n_out = g - plan.depth[a]
                    c = trains[a][g].abs().flatten(2).sum((0, 2))
                    counts[a][n_out * B : (n_out + 1) * B] += c
                    if record and not stream:
                        recorded[a] = trains[a][g]
            for s in self.sinks:
                if s in v_acc:
                    n = g - plan.accumulate_window[s]
                    if s is plan.output:
                        logits[n] = v_acc[s]
                    else:
                        v_gen[s] = v_acc[s]
            for src in list(trains):
                for w in [w for w in trains[src] if w < g - max_delay]:
                    del trains[src][w]

        names = {a: self._name(a) for a in self.act}
        return SimulationResult(
            logits=torch.cat(logits),
            spike_counts={names[a]: counts[a] for a in self.act},
            spike_trains={names[a]: recorded[a] for a in recorded} if record and not stream else None,
            latency_steps=(L + 1) * T,
            timesteps=T,
            total_steps=(N + L) * T,
            extra={"neuron_counts": per_neuron} if neuron_counts else {},
        )

    def _name(self, node) -> str:
        return node.meta.get("layer_name", node.name)

    def _code_input(self, x, T):
        a = self.act[self.coder]
        off = a.phi * a.theta * a.beta ** (-T)
        pos, _ = generate(x + off, a.theta, a.beta, T)
        neg, _ = generate(-x + off, a.theta, a.beta, T)
        return pos - neg

    def _current(self, sink, g, t, T, cur, trains, x_in, zeros):
        plan = self.plan
        region = plan.regions[sink]
        beta = self.acc_beta[sink]
        values, active = {}, False
        for src in region.sources:
            root = plan.root_source(src)
            if root is plan.input:
                if t == 0:
                    v = x_in if src is root else self.gm.get_submodule(src.target)(x_in)
                    values[src] = v * beta ** (-(T - 1))
                    active = True
                else:
                    values[src] = zeros[src]
                continue
            w = g - plan.delay(sink, src)
            s = cur.get(src) if w == g else trains[src][w][t]
            if s is None:
                values[src] = zeros[src]
                continue
            values[src] = s * (self.theta_of(src) * beta ** (-T))
            active = True
        if not active:
            return None
        return run_region(self.gm, region, values, with_bias=False)

    def _source_shapes(self, x1: torch.Tensor) -> dict:
        """Shapes (for one slot's batch) of every source."""
        plan = self.plan
        shapes = node_shapes(self.gm, x1)
        return {n: shapes[n] for n in shapes if n is plan.input or n is plan.coder or n in plan.maxpools
                or n in plan.activations}


# ---------------------------------------------------------------------------------------------
# Rate-coded baseline
# ---------------------------------------------------------------------------------------------


class RateSimulator:
    """Classic rate-coded IF conversion: all layers run together for T steps, analog input every
    step, reset by subtraction, threshold lambda_l = the layer's max (or percentile) activation,
    logits = mean output potential. Max-pools pass the spikes of the most active input."""

    def __init__(self, plan: GraphPlan, v_init: float = 0.0):
        self.plan, self.gm = plan, plan.gm
        self.act: dict = {n: self.gm.get_submodule(n.target) for n in plan.activations}
        self.v_init = v_init  # initial potential as a fraction of the threshold

    @torch.no_grad()
    def run(self, x: torch.Tensor, timesteps: int, record: bool = False,
            neuron_counts: bool = False, checkpoints=(), on_checkpoint=None) -> SimulationResult:
        """``checkpoints``: steps t at which ``on_checkpoint(t, logits_so_far, per_neuron_counts)``
        is called -- the rate network's thresholds do not depend on T, so every shorter run is a
        prefix of the longest one and one simulation serves a whole sweep."""
        plan, gm = self.plan, self.gm
        B = x.shape[0]
        per_neuron: dict = {}
        neuron_counts = neuron_counts or bool(checkpoints)
        checkpoints = set(checkpoints)
        v: dict = {}
        counts = {a: torch.zeros(B, dtype=x.dtype) for a in self.act}
        trains: dict = defaultdict(list)
        pools = {m: RateMaxPool2d(gm.get_submodule(m.target)) for m in plan.maxpools}
        out_sum = None
        for step in range(timesteps):
            vals = {plan.input: x}
            for n in plan.gm.graph.nodes:
                if n in self.act:
                    a: SpikeActivation = self.act[n]
                    region = plan.regions[n]
                    current = run_region(gm, region, {s: vals[s] for s in region.sources}, with_bias=True)
                    if n not in v:
                        v[n] = torch.full_like(current, self.v_init * a.theta)
                    v[n] = v[n] + current
                    s = (v[n] >= a.theta).to(x.dtype)
                    v[n] = v[n] - a.theta * s
                    counts[n] += s.flatten(1).sum(1)
                    if neuron_counts:
                        per_neuron[n] = per_neuron.get(n, 0) + s
                    vals[n] = s * a.theta
                    if record:
                        trains[n].append(s)
                elif n in plan.maxpools:
                    parent = plan.maxpools[n]
                    if parent is plan.input:
                        vals[n] = gm.get_submodule(n.target)(vals[parent])
                    else:
                        theta = self.act[plan.root_source(parent)].theta
                        out = pools[n].step(vals[parent] / theta)
                        if neuron_counts:
                            per_neuron[n] = per_neuron.get(n, 0) + out
                        vals[n] = out * theta
            region = plan.regions[plan.output]
            o = run_region(gm, region, {s: vals[s] for s in region.sources}, with_bias=True)
            out_sum = o if out_sum is None else out_sum + o
            if step + 1 in checkpoints and on_checkpoint is not None:
                on_checkpoint(step + 1, out_sum / (step + 1), per_neuron)
        names = {a: a.meta.get("layer_name", a.name) for a in self.act}
        return SimulationResult(
            logits=out_sum / timesteps,
            spike_counts={names[a]: c for a, c in counts.items()},
            spike_trains={names[a]: torch.stack(t) for a, t in trains.items()} if record else None,
            latency_steps=timesteps,
            timesteps=timesteps,
            total_steps=timesteps,
            extra={"neuron_counts": per_neuron} if neuron_counts else {},
        )
