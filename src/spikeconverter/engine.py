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
from .neuron import accumulate, accumulate_, if_step, initial_potential
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


@dataclass
class _Constants:
    zeros: dict  # per source, zeros shaped like its output for the batch (a broadcast view: never written)
    bias: dict  # per sink, its region's constant term (for one input; broadcast)
    theta: dict  # per train source, each neuron's threshold (see _theta_maps)
    scale: dict = field(default_factory=dict)  # (sink, train source) -> theta * beta^-acc_length
    scratch: dict = field(default_factory=dict)  # (sink, source) -> a buffer for its scaled digits


class _Tally:
    """What a run counts: spikes per input of every layer, neuron updates, spikes per neuron."""

    def __init__(self, act: dict, inputs: int, like: torch.Tensor, per_neuron: bool):
        self.act = act
        self.counts = {a: torch.zeros(inputs, dtype=like.dtype, device=like.device) for a in act}
        self.updates = 0  # neuron updates (potentials stepped), all inputs together
        self.per_neuron: dict = {} if per_neuron else None

    def train(self, n, train: torch.Tensor, rows: slice) -> None:
        """Source n's whole train [T, batch, ...] for the inputs ``rows`` of the run (integer sums:
        the same in any order)."""
        magnitude = train.abs() if n not in self.act or self.act[n].code.populations > 1 else train
        if n in self.act:
            self.counts[n][rows] += magnitude.flatten(2).sum(2).sum(0)
        if self.per_neuron is not None:
            self.per_neuron[n] = self.per_neuron.get(n, 0) + magnitude.sum(0)


class TwoPhaseSimulator:
    def __init__(self, plan: GraphPlan):
        self.plan, self.gm = plan, plan.gm
        self.coder = plan.coder  # the signed input coder (spike-coded input), or None
        self.act = {n: self.gm.get_submodule(n.target) for n in plan.spikers}
        self.sinks = list(plan.activations) + [plan.output]
        self.acc_beta = {s: self._accumulate_beta(s) for s in self.sinks}
        self.train_pools = [p for p in plan.pools if not plan.is_analog(p)]
        self.schedule = schedule(plan, {n: a.timesteps for n, a in self.act.items()})
        self.gen_nodes = [n for n in self.gm.graph.nodes if n in self.schedule.gen_start]
        self.consumers = defaultdict(list)  # train source -> the sinks and max-pools that read it
        for c in self.sinks + self.train_pools:
            for src in (plan.regions[c] if c in plan.regions else plan.pools[c]).sources:
                self.consumers[src].append(c)

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
            neuron_counts: bool = False, events: bool = False, clocked: bool | None = None) -> SimulationResult:
        """Simulate ``x``. ``record``: keep every layer's trains (of the first input when
        streaming); ``stream``: the inputs one after another through the pipeline, every
        ``period`` steps; ``neuron_counts``: spikes per neuron of every source; ``events``: count
        neuron updates (every potential an accumulate or generate step changes, per input) into
        ``result.extra["neuron_updates"]`` (the energy model's count).

        ``clocked``: every layer on one clock, step by step (the pipeline as hardware runs it;
        always so when streaming). Otherwise layer after layer, as multi-step SNN simulators run:
        a sink's input frames of all its accumulate steps go through its synapses in one batched
        call, then its neurons step through them -- the same neuron dynamics on the same currents
        in another order (nothing flows backwards: a layer's train depends only on the layers
        before it); trains are identical, float32 currents may round differently in the last bit.
        Default: clocked on a CPU (measured faster there: batching saves no launch overhead and
        the larger convolution is less cache-friendly, benchmarks/speed.py), layer after layer on
        an accelerator, where each call has a launch cost."""
        clocked = (stream or x.device.type == "cpu") if clocked is None else clocked
        if stream and not clocked:
            raise ValueError("streaming runs on one clock (clocked=True)")
        slots = [x[n : n + 1] for n in range(len(x))] if stream else [x]
        B, N = slots[0].shape[0], len(slots)
        const = self._constants(slots[0])
        tally = _Tally(self.act, B * N, x, per_neuron=neuron_counts and not stream)
        if clocked:
            logits, trains = self._run_clocked(slots, const, tally, record and not stream)
        else:
            logits, trains = self._run_layerwise(x, const, tally, record)
        names = {a: self.plan.layer_name(a) for a in self.act}
        recorded = {names[a]: trains[a] for a in self.act if a in trains} if record and not stream else None
        # a head that squeezes the batch axis (x.squeeze()) drops it for one-input slots: stack them
        joined = torch.cat(logits) if logits[0].ndim and (not stream or logits[0].shape[0] == 1) else torch.stack(logits)
        sch = self.schedule
        return SimulationResult(
            logits=joined,
            spike_counts={names[a]: tally.counts[a] for a in self.act},
            spike_trains=recorded,
            latency_steps=sch.latency,
            timesteps=sch.period,
            total_steps=(N - 1) * sch.period + sch.latency,
            extra={**({"neuron_counts": tally.per_neuron or {}} if neuron_counts else {}),
                   **({"neuron_updates": tally.updates // (B * N)} if events else {})},
        )

    def _constants(self, x1: torch.Tensor) -> _Constants:
        """What every run needs besides the input: zero maps, bias maps and threshold maps. The
        bias and threshold maps are the same for every input: made for one and broadcast."""
        shapes = self._source_shapes(x1[:1])
        B = x1.shape[0]
        one = {s: torch.zeros(shapes[s], dtype=x1.dtype, device=x1.device) for s in shapes}
        zeros = {s: z.expand(B, *z.shape[1:]) if z.ndim else z for s, z in one.items()}
        return _Constants(zeros, {s: self._bias_map(s, one) for s in self.sinks}, self._theta_maps(one))

    # -- one clock ---------------------------------------------------------------------------------
    def _run_clocked(self, slots: list, const: _Constants, tally: _Tally, record: bool):
        """One clock for all layers (schedule.py): at each step, first every source that is in its
        generate phase emits its digit (layers, then the max-pools of their trains, in graph
        order), then every sink in its accumulate phase takes the digits of that step. Returns the
        logits of every slot and the trains of the first (when ``record``)."""
        sch, N, P = self.schedule, len(slots), self.schedule.period
        B = slots[0].shape[0]
        pools = {p: SpikingMaxPool(self.gm, self.plan.pools[p]) for p in self.train_pools}
        v_acc: dict = {}
        v_gen: dict = {}  # per layer, each population's potential (codes.py)
        trains: dict = defaultdict(dict)  # train source -> input -> its digits so far (a list)
        logits: list = [None] * N
        last_read = {src: sch.last_read(src, self.consumers[src]) for src in self.gen_nodes}
        for step in range((N - 1) * P + sch.latency):
            for n in self.gen_nodes:  # (1) generation
                i, k = divmod(step - sch.gen_start[n], P)
                if not (0 <= i < N and k < sch.code_length[n]):
                    continue
                rows = slice(i * B, (i + 1) * B)
                if n is self.coder:
                    if k == 0:
                        trains[n][i] = self._coder_train(slots[i], tally, rows)
                    continue
                if k == 0:
                    trains[n][i] = self._train_buffer(n, const)
                if n in self.act:
                    self._generate_step(n, v_gen[n], trains[n][i][k], tally)
                else:
                    if k == 0:
                        pools[n].reset()
                    trains[n][i][k] = self._pool_step(pools[n], {s: trains[s][i] for s in self.plan.pools[n].sources}, k,
                                                      const)
                if k == sch.code_length[n] - 1:
                    tally.train(n, trains[n][i], rows)
            for sk in self.sinks:  # (2) accumulation: every sink in its accumulate phase takes this step's digits
                i, k = divmod(step - sch.acc_start[sk], P)
                length = sch.acc_length[sk]
                if not (0 <= i < N and k < length):
                    continue
                if k == 0:
                    v_acc[sk] = self._initial(sk, const.bias[sk], length)
                current = self._current(sk, k, length, {s: trains[s].get(i, ()) for s in self._train_sources(sk)},
                                        slots[i], const)
                v_acc[sk] = self._accumulate_step(sk, v_acc[sk], current, tally)
                if k == length - 1:  # accumulated: the output's logits, or the potential that generates
                    v = v_acc.pop(sk)
                    if sk is self.plan.output:
                        logits[i] = v
                    else:
                        v_gen[sk] = self.act[sk].generate_start(v)
            for src in self.gen_nodes:  # trains no consumer reads any more
                for i in [i for i in trains[src] if step >= last_read[src] + i * P and not (record and i == 0)]:
                    del trains[src][i]
        return logits, {n: t[0] for n, t in trains.items() if 0 in t}

    # -- layer after layer -------------------------------------------------------------------------
    def _run_layerwise(self, x: torch.Tensor, const: _Constants, tally: _Tally, record: bool):
        """Each node in graph order: a sink accumulates its whole input (currents of all steps in
        one call through its synapses), a source generates its whole train, step by step."""
        sch = self.schedule
        trains: dict = {}  # train source -> its digits (a list)
        nodes = list(self.gm.graph.nodes)
        last_use = {src: max((nodes.index(c) for c in self.consumers[src]), default=len(nodes)) for src in self.gen_nodes}
        logits = None
        for idx, n in enumerate(nodes):
            if n in self.acc_beta:  # a sink: accumulate
                length = sch.acc_length[n]
                v = self._initial(n, const.bias[n], length)
                currents = self._currents(n, length, {s: trains[s] for s in self._train_sources(n)}, x, const)
                for k in range(length):
                    v = self._accumulate_step(n, v, currents[k] if k < len(currents) else None, tally)
                if n is self.plan.output:
                    logits = [v]
                else:
                    state = self.act[n].generate_start(v)
            if n not in sch.gen_start:
                continue
            if n is self.coder:
                trains[n] = self._coder_train(x, tally, slice(None))
                continue
            trains[n] = self._train_buffer(n, const)
            if n in self.act:
                for k in range(sch.code_length[n]):
                    self._generate_step(n, state, trains[n][k], tally)
            else:
                pool = SpikingMaxPool(self.gm, self.plan.pools[n])
                for k in range(sch.code_length[n]):
                    trains[n][k] = self._pool_step(pool, {s: trains[s] for s in self.plan.pools[n].sources}, k, const)
            tally.train(n, trains[n], slice(None))
            for src in [s for s in trains if last_use[s] <= idx and not (record and s in self.act)]:
                del trains[src]
        return logits, trains

    # -- the pieces both orders share ----------------------------------------------------------------
    def _coder_train(self, x: torch.Tensor, tally: _Tally, rows: slice) -> torch.Tensor:
        """The image's signed train, made at once (the twin's digits are the neuron's): its ON and
        OFF neurons each step."""
        a = self.act[self.coder]
        train = a.digits(x)
        tally.updates += train.numel() * a.code.populations
        tally.train(self.coder, train, rows)
        return train

    def _train_buffer(self, n, const: _Constants) -> torch.Tensor:
        """Where source n's train [T, batch, ...] is written, digit by digit."""
        z = const.zeros[n]
        return torch.empty(self.schedule.code_length[n], *z.shape, dtype=z.dtype, device=z.device)

    def _generate_step(self, n, state: tuple, spikes: torch.Tensor, tally: _Tally) -> None:
        """One generate step of layer n, in place: every population (codes.py); ON - OFF into ``spikes``."""
        a = self.act[n]
        a.generate_step_(state, spikes)
        tally.updates += state[0].numel() * a.code.populations

    def _pool_step(self, pool: SpikingMaxPool, inputs: dict, k: int, const: _Constants) -> torch.Tensor:
        """Step k of a max-pool over trains; a shorter train (a branch with fewer steps) has ended:
        its neurons are silent."""
        return pool.step({src: d[k] if k < len(d) else const.zeros[src] for src, d in inputs.items()})

    def _accumulate_step(self, sink, v: torch.Tensor, current, tally: _Tally) -> torch.Tensor:
        """One accumulate step; in place once v has the batch's shape (a fresh accumulator is one
        input's initial potential, broadcast)."""
        beta = self.acc_beta[sink]
        if current is None:
            v = v.mul_(beta)
        elif v.shape == current.shape:
            v = accumulate_(v, current, beta)
        else:
            v = accumulate(v, current, beta)
        tally.updates += v.numel() * (self.act[sink].code.populations if sink in self.act else 1)
        return v

    def _train_sources(self, sink) -> list:
        return [s for s in self.plan.regions[sink].sources if not self.plan.is_analog(s)]

    def _initial(self, sink, bias, length):
        """A fresh accumulator: bias and offset as the initial potential, scaled by beta^-length so
        that ``length`` accumulate steps bring them to full size."""
        init = bias
        if sink in self.act:
            a = self.act[sink]
            init = initial_potential(a.potential(init), a.theta, a.beta, a.timesteps, a.phi)
        return init * self.acc_beta[sink] ** (-length)  # a fresh tensor, shaped as one slot's batch

    def _send(self, sink, src, trains: dict, k: int, length: int, x_in, const: _Constants, out: torch.Tensor):
        """What ``src`` sends ``sink`` at accumulate step k, written into ``out``: its digit k scaled
        by theta * beta^-length; the analog input once, at the first step. Returns False (``out``
        untouched) when it sends nothing (the analog input after the first step, a shorter train
        that has ended)."""
        beta = self.acc_beta[sink]
        if self.plan.is_analog(src):
            if k:
                return False
            torch.mul(self._analog(src, x_in), beta ** (-(length - 1)), out=out)
            return True
        digits = trains[src]
        if k >= len(digits):
            return False
        key = (sink, src)
        if key not in const.scale:
            const.scale[key] = const.theta[src] * beta ** (-length)
        torch.mul(digits[k], const.scale[key], out=out)
        return True

    def _current(self, sink, k, length, trains: dict, x_in, const: _Constants):
        """Sink's input current at step k of its accumulation: every source's contribution (see
        ``_send``) through the linear part of its region; None when no source sends anything."""
        region = self.plan.regions[sink]
        values, active = {}, False
        for src in region.sources:
            key = (sink, src)
            if key not in const.scratch:
                const.scratch[key] = torch.empty_like(const.zeros[src])
            sent = self._send(sink, src, trains, k, length, x_in, const, const.scratch[key])
            values[src] = const.scratch[key] if sent else const.zeros[src]
            active |= sent
        return run_region(self.gm, region, values, with_bias=False) if active else None

    def _currents(self, sink, length, trains: dict, x_in, const: _Constants) -> list:
        """The currents of every accumulate step that receives anything (all ``length`` steps when
        the sink takes a train, else only the first), through the region in batched calls of
        several steps each (stacked on the batch axis; at most ~16M values per call)."""
        region = self.plan.regions[sink]
        steps = length if trains else 1
        B = const.zeros[region.sources[0]].shape[0]
        per_step = sum(const.zeros[s].numel() for s in region.sources)
        chunk = max(1, min(steps, (1 << 24) // max(per_step, 1)))
        out = []
        for k0 in range(0, steps, chunk):
            ks = range(k0, min(steps, k0 + chunk))
            values = {}
            for src in region.sources:
                z = const.zeros[src]
                values[src] = frames = torch.empty(len(ks) * B, *z.shape[1:], dtype=z.dtype, device=z.device)
                for j, k in enumerate(ks):
                    frame = frames[j * B : (j + 1) * B]
                    if not self._send(sink, src, trains, k, length, x_in, const, frame):
                        frame.zero_()
            current = run_region(self.gm, region, values, with_bias=False)
            if current.ndim and current.shape[0] == len(ks) * B:
                out += list(current.unflatten(0, (len(ks), B)))
            else:  # a region that does not keep the batch axis (a head squeezing a batch of one): step by step
                out += [self._current(sink, k, length, trains, x_in, const) for k in ks]
        return out

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
