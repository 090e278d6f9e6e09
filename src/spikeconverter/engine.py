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

import copy
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from . import ops
from .activation import SpikeActivation
from .neuron import accumulate, if_step, initial_potential
from .plan import GraphPlan, Region, node_shapes, run_region
from .schedule import schedule


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
        return sum(self.spike_counts.values()) if self.spike_counts else torch.zeros(len(self.logits), device=self.logits.device)


# ---------------------------------------------------------------------------------------------
# Max-pools on spike trains
# ---------------------------------------------------------------------------------------------


class SpikingMaxPool:
    """A max-pool on MSB-first trains, step by step: any max-pool op (1-3d, ceil mode, adaptive)
    after any rearrangement of the trains of one layer (its region, see graph.check_pools).

    Each input neuron's code so far is an integer word k_t = 2 k_{t-1} + s(t). Greedy codes of one
    layer compare lexicographically like their values, so the pooled word K_t = pool(k_t) is the
    winner's word so far, and its newest digit K_t - 2 K_{t-1} is the output spike: exactly the train
    of q(max z) = max q(z) (q is monotone). Padding never wins; silent (zero-padded) neurons carry
    the word 0. Words are float64: exact for T <= 52."""

    def __init__(self, gm, region: Region):
        self.gm, self.region = gm, region
        self.words: dict = {}
        self.pooled = None

    def reset(self) -> None:
        self.words, self.pooled = {}, None

    def step(self, spikes: dict) -> torch.Tensor:
        """``spikes``: per source of the region, this step's 0/1 spikes. Returns the output spikes."""
        dtype = None
        for src, s in spikes.items():
            k = self.words.get(src)
            self.words[src] = s.double() if k is None else k * 2 + s.double()
            dtype = s.dtype
        pooled = run_region(self.gm, self.region, self.words)
        out = pooled if self.pooled is None else pooled - 2 * self.pooled
        self.pooled = pooled
        return out.to(dtype)


class RateMaxPool:
    """Rate baseline (Rueckauer et al.): pass the spikes of the input that has fired most so far.
    The same region (rearrangement + pool) picks the winner on the counts, with the pool's indices."""

    def __init__(self, gm, region: Region):
        self.gm, self.region = gm, region
        self.counts: dict = {}
        pool = region.sink
        self.pool_op = ops.callable_of(gm, pool)
        if isinstance(self.pool_op, torch.nn.Module):
            self.pool_op = copy.copy(self.pool_op)
            self.pool_op.return_indices = True
            self.kw = {}
        else:
            self.kw = {"return_indices": True}

    def reset(self) -> None:
        self.counts = {}

    def _pool_call(self, values: dict):
        """The pool's evaluated arguments for these source values (the rearranged input first)."""
        seen = {}

        def grab(node, args, kwargs):
            seen["call"] = (args, kwargs)
            return args, kwargs

        run_region(self.gm, self.region, values, transform=grab)
        return seen["call"]

    def step(self, spikes: dict) -> torch.Tensor:
        for src, s in spikes.items():
            c = self.counts.get(src)
            self.counts[src] = s.clone() if c is None else c + s
        (counts_in, *rest), kwargs = self._pool_call(self.counts)
        (spikes_in, *_), _ = self._pool_call(spikes)
        _, idx = self.pool_op(counts_in, *rest, **{**kwargs, **self.kw})  # F.max_pool* traced with return_indices=False
        out = torch.gather(spikes_in.flatten(2), 2, idx.flatten(2))
        return out.view(idx.shape)


# ---------------------------------------------------------------------------------------------
# Two-phase simulator
# ---------------------------------------------------------------------------------------------


class TwoPhaseSimulator:
    def __init__(self, plan: GraphPlan):
        self.plan, self.gm = plan, plan.gm
        self.coder = plan.coder  # the signed input coder (spike-coded input), or None
        self.act = {n: self.gm.get_submodule(n.target) for n in plan.spikers}
        self.sinks = list(plan.activations) + [plan.output]
        self.acc_beta = {s: self._accumulate_beta(s) for s in self.sinks}
        self.train_pools = [p for p in plan.pools if not plan.is_analog(p)]
        self.schedule = schedule(plan, {n: a.timesteps for n, a in self.act.items()})

    def _accumulate_beta(self, sink) -> float:
        roots = {r for s in self.plan.regions[sink].sources for r in self.plan.roots(s)}
        betas = {self.act[r].beta for r in roots}
        if len(betas) > 1:
            raise ValueError(f"sources of '{sink.name}' use different beta values {sorted(betas)}; they must share one")
        if betas:
            return betas.pop()
        return self.act[sink].beta if sink in self.act else 2.0

    def _bias_map(self, sink, zeros: dict) -> torch.Tensor:
        region = self.plan.regions[sink]
        return run_region(self.gm, region, {s: zeros[s] for s in region.sources}, with_bias=True)

    def _theta_maps(self, zeros: dict) -> dict:
        """Per train source, the threshold of each neuron: a layer's theta; for a max-pool, its
        window's layer's theta (0 where a window holds only silent padding)."""
        theta = {}
        for n in self.gm.graph.nodes:
            if n in self.act:
                theta[n] = self.act[n].theta
            elif n in self.train_pools:
                region = self.plan.pools[n]
                theta[n] = run_region(self.gm, region, {s: zeros[s] + theta[s] for s in region.sources})
        return theta

    def _analog(self, src, x):
        """The value of an analog source (the input, a max-pool of it) for input x."""
        if src is self.plan.input:
            return x
        region = self.plan.pools[src]
        return run_region(self.gm, region, {s: self._analog(s, x) for s in region.sources})

    @torch.no_grad()
    def run(self, x: torch.Tensor, record: bool = False, stream: bool = False,
            neuron_counts: bool = False, events: bool = False) -> SimulationResult:
        """``events``: also count neuron updates (every potential each accumulate or generate step
        changes, per input) into ``result.extra["neuron_updates"]`` (the energy model's count).

        One clock for all layers (schedule.py): at each step, first every source that is in its
        generate phase emits its digit (layers, then the max-pools of their trains, in graph
        order), then every sink in its accumulate phase takes the digits of that step."""
        plan, gm, sch = self.plan, self.gm, self.schedule
        slots = [x[n : n + 1] for n in range(len(x))] if stream else [x]
        N, P = len(slots), sch.period
        B = slots[0].shape[0]
        dtype = x.dtype

        # shapes of every source for one slot (the ANN pass on zeros gives them, and the bias maps)
        shapes = self._source_shapes(slots[0])
        zeros = {s: torch.zeros(shapes[s], dtype=dtype, device=x.device) for s in shapes}
        bias = {s: self._bias_map(s, zeros) for s in self.sinks}
        theta = self._theta_maps(zeros)

        pools = {p: SpikingMaxPool(gm, plan.pools[p]) for p in self.train_pools}
        v_acc: dict = {}
        v_gen: dict = {}  # per layer, each population's potential (codes.py)
        trains: dict = defaultdict(dict)  # train source -> input -> its digits so far (a list)
        counts = {a: torch.zeros(B * N, dtype=dtype, device=x.device) for a in self.act}
        updates = 0  # neuron updates (potentials stepped), all inputs together
        per_neuron: dict = {}
        logits: list = [None] * N
        gen_nodes = [n for n in gm.graph.nodes if n in sch.gen_start]
        consumers = defaultdict(list)
        for c in self.sinks + self.train_pools:
            for src in (plan.regions[c] if c in plan.regions else plan.pools[c]).sources:
                consumers[src].append(c)
        last_read = {src: sch.last_read(src, consumers[src]) for src in gen_nodes}

        for step in range((N - 1) * P + sch.latency):
            # (1) generation: the coder sends its train, layers emit, max-pools forward their winners
            for n in gen_nodes:
                i, k = divmod(step - sch.gen_start[n], P)
                if not (0 <= i < N and k < sch.code_length[n]):
                    continue
                if n is self.coder:
                    if k == 0:  # the image's signed train, made at once (the twin's digits are the neuron's)
                        trains[n][i] = list(self.act[n].digits(slots[i]))
                    s = trains[n][i][k]
                    updates += s.numel() * self.act[n].code.populations  # its ON and OFF neurons each step
                elif n in self.act:
                    a = self.act[n]
                    v_gen[n], s = a.generate_step(v_gen[n])  # every population (codes.py); ON - OFF
                    updates += v_gen[n][0].numel() * a.code.populations
                    s = s.to(dtype)
                else:
                    if k == 0:
                        pools[n].reset()
                    # a shorter train (a branch with fewer steps) has ended: its neurons are silent
                    s = pools[n].step({src: trains[src][i][k] if k < len(trains[src][i]) else zeros[src]
                                       for src in plan.pools[n].sources})
                if n is not self.coder:
                    trains[n].setdefault(i, []).append(s)
                if n in self.act:
                    counts[n][i * B : (i + 1) * B] += s.abs().flatten(1).sum(1)
                if neuron_counts and not stream:
                    per_neuron[n] = per_neuron.get(n, 0) + s.abs()
            # (2) accumulation: every sink in its accumulate phase takes this step's digits
            for sk in self.sinks:
                i, k = divmod(step - sch.acc_start[sk], P)
                length = sch.acc_length[sk]
                if not (0 <= i < N and k < length):
                    continue
                if k == 0:
                    v_acc[sk] = self._initial(sk, bias[sk], length)
                current = self._current(sk, i, k, length, trains, slots[i], zeros, theta)
                v_acc[sk] = accumulate(v_acc[sk], 0.0 if current is None else current, self.acc_beta[sk])
                updates += v_acc[sk].numel() * (self.act[sk].code.populations if sk in self.act else 1)
                if k == length - 1:  # accumulated: the output's logits, or the potential that generates
                    v = v_acc.pop(sk)
                    if sk is plan.output:
                        logits[i] = v
                    else:
                        v_gen[sk] = self.act[sk].generate_start(v)
            for src in gen_nodes:  # trains no consumer reads any more
                for i in [i for i in trains[src] if step >= last_read[src] + i * P and not (record and i == 0)]:
                    del trains[src][i]

        names = {a: plan.layer_name(a) for a in self.act}
        recorded = {a: torch.stack(trains[a][0]) for a in self.act if 0 in trains[a]} if record and not stream else {}
        # a head that squeezes the batch axis (x.squeeze()) drops it for one-input slots: stack them
        joined = torch.cat(logits) if logits[0].ndim and (not stream or logits[0].shape[0] == 1) else torch.stack(logits)
        return SimulationResult(
            logits=joined,
            spike_counts={names[a]: counts[a] for a in self.act},
            spike_trains={names[a]: recorded[a] for a in recorded} if record and not stream else None,
            latency_steps=sch.latency,
            timesteps=P,
            total_steps=(N - 1) * P + sch.latency,
            extra={**({"neuron_counts": per_neuron} if neuron_counts else {}),
                   **({"neuron_updates": updates // (B * N)} if events else {})},
        )

    def _initial(self, sink, bias, length):
        """A fresh accumulator: bias and offset as the initial potential, scaled by beta^-length so
        that ``length`` accumulate steps bring them to full size."""
        init = bias
        if sink in self.act:
            a = self.act[sink]
            init = initial_potential(a.potential(init), a.theta, a.beta, a.timesteps, a.phi)
        return init * self.acc_beta[sink] ** (-length)  # a fresh tensor, shaped as one slot's batch

    def _current(self, sink, i, k, length, trains, x_in, zeros, theta):
        """Sink's input current at step k of its accumulation of input i: every source's digit k
        (nothing once a shorter train has ended), scaled by theta * beta^-length; the analog input
        once, at the first step."""
        plan = self.plan
        region = plan.regions[sink]
        beta = self.acc_beta[sink]
        values, active = {}, False
        for src in region.sources:
            if plan.is_analog(src):  # sent once, at the first accumulate step
                if k == 0:
                    values[src] = self._analog(src, x_in) * beta ** (-(length - 1))
                    active = True
                else:
                    values[src] = zeros[src]
                continue
            digits = trains[src].get(i, [])
            if k >= len(digits):
                values[src] = zeros[src]
                continue
            values[src] = digits[k] * (theta[src] * beta ** (-length))
            active = True
        if not active:
            return None
        return run_region(self.gm, region, values, with_bias=False)

    def _source_shapes(self, x1: torch.Tensor) -> dict:
        """Shapes (for one slot's batch) of every source."""
        plan = self.plan
        shapes = node_shapes(self.gm, x1)
        return {n: shapes[n] for n in shapes if n is plan.input or n in plan.pools or n in self.act}


# ---------------------------------------------------------------------------------------------
# Rate-coded baseline
# ---------------------------------------------------------------------------------------------


class RateSimulator:
    """Classic rate-coded IF conversion: all layers run together for T steps, analog input every
    step, reset by subtraction, threshold lambda_l = the layer's max (or percentile) activation,
    logits = mean output potential. Max-pools pass the spikes of the most active input."""

    def __init__(self, plan: GraphPlan):
        self.plan, self.gm = plan, plan.gm
        self.act: dict = {n: self.gm.get_submodule(n.target) for n in plan.activations}

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
        counts = {a: torch.zeros(B, dtype=x.dtype, device=x.device) for a in self.act}
        trains: dict = defaultdict(list)
        pools = {p: RateMaxPool(gm, plan.pools[p]) for p in plan.pools if not plan.is_analog(p)}
        theta: dict = {}
        out_sum = None
        for step in range(timesteps):
            vals = {plan.input: x}
            spikes = {}
            for n in plan.gm.graph.nodes:
                if n in self.act:
                    a: SpikeActivation = self.act[n]
                    region = plan.regions[n]
                    current = run_region(gm, region, {s: vals[s] for s in region.sources}, with_bias=True)
                    v[n], s = if_step(v.get(n, torch.zeros_like(current)), current, a.theta)
                    s = s.to(x.dtype)
                    counts[n] += s.flatten(1).sum(1)
                    if neuron_counts:
                        per_neuron[n] = per_neuron.get(n, 0) + s
                    spikes[n], theta[n] = s, a.theta
                    vals[n] = s * a.theta
                    if record:
                        trains[n].append(s)
                elif n in plan.pools:
                    region = plan.pools[n]
                    if plan.is_analog(n):
                        vals[n] = run_region(gm, region, {s: vals[s] for s in region.sources})
                        continue
                    if n not in theta:
                        theta[n] = run_region(gm, region, {s: torch.zeros_like(spikes[s]) + theta[s]
                                                           for s in region.sources})
                    out = pools[n].step({s: spikes[s] for s in region.sources})
                    if neuron_counts:
                        per_neuron[n] = per_neuron.get(n, 0) + out
                    spikes[n] = out
                    vals[n] = out * theta[n]
            region = plan.regions[plan.output]
            o = run_region(gm, region, {s: vals[s] for s in region.sources}, with_bias=True)
            out_sum = o if out_sum is None else out_sum + o
            if step + 1 in checkpoints and on_checkpoint is not None:
                on_checkpoint(step + 1, out_sum / (step + 1), per_neuron)
        names = {a: plan.layer_name(a) for a in self.act}
        return SimulationResult(
            logits=out_sum / timesteps,
            spike_counts={names[a]: c for a, c in counts.items()},
            spike_trains={names[a]: torch.stack(t) for a, t in trains.items()} if record else None,
            latency_steps=timesteps,
            timesteps=timesteps,
            total_steps=timesteps,
            extra={"neuron_counts": per_neuron} if neuron_counts else {},
        )
