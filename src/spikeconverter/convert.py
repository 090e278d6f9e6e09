"""``convert()``: the public entry. A trained CNN + calibration images -> a ``SpikingNetwork``.

Pipeline (torch.ao-style): validate arguments -> prepare the graph (trace, validate ops, normalize,
fold BN, analyze) -> observe activations on calibration data -> choose thresholds (and beta) ->
switch every activation to its quantizer twin -> wrap with the simulators.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from .activation import SpikeActivation
from .calibrate import (
    BETA_CANDIDATES,
    ChannelObserver,
    Observer,
    check_batch,
    choose_channel_thresholds,
    choose_threshold,
    iterate_calibration,
    parse_threshold,
)
from .engine import RateSimulator, SimulationResult, TwoPhaseSimulator
from .methods import Method, method_named
from .neuron import check_code_length, check_params
from .passes import prepare
from .plan import GraphPlan, analyze, check_pools, node_shapes, pools_mixing_channels

# The two-phase method's post-training calibration by default (chosen by measurement:
# benchmarks/calibration_ablation.py, docs/results.md). None in convert() means these.
CALIBRATION_DEFAULTS = dict(per_channel=True, sequential=False, bias_correction=True)


@dataclass
class LayerInfo:
    """A spiking layer's record. Its code parameters -- theta, beta, phi, cap -- are read from the
    layer module itself, so no step that changes the layer (fixed point, a T search, fine-tuning,
    a user setting beta) leaves the record stale."""

    name: str
    module: SpikeActivation = field(repr=False, compare=False)
    neurons: int  # per sample
    depth: int  # window in which the layer generates
    error: float  # calibration MSE of q against the ANN activation
    group: int  # layers whose spikes meet in one neuron share a group (and beta)

    @property
    def theta(self):
        return self.module.theta

    @property
    def beta(self) -> float:
        return self.module.beta

    @property
    def phi(self) -> float:
        return self.module.phi

    @property
    def cap(self) -> float | None:  # 6.0 for ReLU6
        return self.module.cap


class SpikingNetwork(nn.Module):
    """A converted network. ``snn(x)`` is the exact fast path (the quantizer twin; for the rate
    baseline, its simulation); ``simulate(x)`` runs the time-stepped spiking network."""

    def __init__(self, plan: GraphPlan, method: str, timesteps: int, layers: list[LayerInfo],
                 input_shape: tuple, input_coding: str, threshold: str):
        super().__init__()
        self.plan = plan
        self.gm = plan.gm  # registered as a submodule: .double(), .to() reach the weights
        self.method = method
        self.timesteps = timesteps
        self.layers = layers
        self.input_shape = tuple(input_shape)
        self.input_coding = input_coding
        self.threshold = threshold
        self.exact_bounds = None  # set by fixed_point mode: inputs are rounded and range-checked
        self._set_mode("quantize" if self.scheme.exact_twin else "ann")
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):  # every per-layer output is keyed by these names
            raise AssertionError(f"layer names repeat: {names}")

    # -- copying and pickling: the plan refers to the graph's nodes, so it is rebuilt, not copied
    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("plan", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.plan = analyze(self.gm)

    # -- introspection -------------------------------------------------------------------------
    def extra_repr(self) -> str:
        T = self.timesteps if self.uniform else f"per layer (<= {self.timesteps})"
        return (f"method={self.method}, T={T}, layers={len(self.layers)}, "
                f"spiking_depth={self.spiking_depth}, latency_steps={self.latency_steps}")

    @property
    def scheme(self) -> Method:
        """The method's facts (methods.py): two-phase or the rate baseline."""
        return method_named(self.method)

    @property
    def spiking_depth(self) -> int:
        return self.plan.spiking_depth

    @property
    def timesteps_per_layer(self) -> dict[str, int]:
        """Each spiking layer's T (its code length), by layer name. ``timesteps`` is the longest."""
        return {layer.name: m.timesteps for layer, m in zip(self.layers, self._spikers())}

    @property
    def uniform(self) -> bool:
        """One T for every spiking layer."""
        return len(set(self.timesteps_per_layer.values())) == 1

    @property
    def schedule(self):
        """When each layer accumulates and generates (schedule.py)."""
        from .schedule import schedule

        return schedule(self.plan, {a: m.timesteps for a, m in zip(self.plan.spikers, self._spikers())})

    @property
    def latency_steps(self) -> int:
        """Steps until one input's logits are final: (L+1)*T two-phase with one T (per-layer T: the
        longest path through the schedule); T for the rate baseline."""
        if not self.scheme.pipelined:
            return self.timesteps
        return self.schedule.latency

    @property
    def steps_per_input(self) -> int:
        """Pipelined throughput: a new input every T steps (per-layer T: every max_l T_l steps; rate:
        every T steps, no pipelining)."""
        if not self.scheme.pipelined:
            return self.timesteps
        return self.schedule.period

    @property
    def betas(self) -> dict[int, float]:
        return {layer.group: layer.beta for layer in self.layers}

    def _acts(self) -> list[SpikeActivation]:
        return [m for m in self.gm.modules() if isinstance(m, SpikeActivation)]

    def _spikers(self) -> list[SpikeActivation]:
        """The spiking layers' modules (and the input coder's) in the order of ``self.layers``."""
        return [self.gm.get_submodule(a.target) for a in self.plan.spikers]

    def _set_mode(self, mode: str) -> None:
        for m in self._acts():
            m.mode = mode

    def _check_input(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x):
            raise ValueError(f"input must be a tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"input has shape {tuple(x.shape)}; expected (batch, {', '.join(map(str, self.input_shape))})")

    def save(self, path, extra: dict | None = None, half_weights: bool = False) -> None:
        """Write the network to one safetensors file, no pickle (``spikeconverter.load`` reads it
        back bit for bit, without the model's class). ``extra``: JSON-able notes kept with it
        (default: ``self.source``, the notes a loaded or fine-tuned network carries).
        ``half_weights``: store the layers' weights as float16 (half the file); the loaded network
        then has float16-rounded weights (run in float32, still exact as an SNN), so measure it as loaded."""
        from .serialize import save

        save(self, path, getattr(self, "source", None) if extra is None else extra, half_weights)

    def export(self, directory):
        """The integer deployment bundle of a fixed-point network (docs/deploy.md): integer weights,
        thresholds and biases with power-of-two exponents, the graph and schedule, and a NumPy
        reference executor (run.py) equal to the fixed-point engine bit for bit."""
        from .export import export

        return export(self, directory)

    # -- running -------------------------------------------------------------------------------
    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Both engines see the same input: a floating tensor in the network's precision, finite
        (a NaN or Inf pixel has no spike code: the fast path would return NaN and the simulator
        finite numbers, so it is refused)."""
        self._check_input(x)
        if not x.is_floating_point():
            raise ValueError(f"input must be a floating-point tensor (normalised images), got {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"input holds {int((~torch.isfinite(x)).sum())} NaN/Inf values; both engines refuse "
                             "non-finite input")
        if next(iter(self.gm.parameters()), None) is not None and (x.dtype != _dtype(self.gm) or
                                                                   x.device != _device(self.gm)):
            # the network's precision (what it was converted, and thresholds rounded, for) and device
            x = x.to(device=_device(self.gm), dtype=_dtype(self.gm))
        if self.exact_bounds is None:
            return x
        from .fixed_point import check_bounds, round_input

        x = round_input(x)
        check_bounds(self.exact_bounds, x)
        return x

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._prepare_input(x)
        if not self.scheme.exact_twin:  # no shortcut: the baseline's value is its simulation's
            return RateSimulator(self.plan).run(x, self.timesteps).logits
        return self.gm(x)

    @torch.no_grad()
    def simulate(self, x: torch.Tensor, record: bool = False, stream: bool = False,
                 neuron_counts: bool = False, events: bool = False, clocked: bool | None = None) -> SimulationResult:
        """Time-stepped simulation. ``record``: keep every layer's trains; ``stream``: feed the
        batch's inputs one after another every T steps through the pipeline; ``neuron_counts``:
        spikes per neuron of every source in ``result.extra["neuron_counts"]``; ``events``: neuron
        updates per input in ``result.extra["neuron_updates"]`` (two-phase only); ``clocked``: all
        layers on one clock (True) or layer after layer with batched synapses (False); the same
        trains either way, the default is the faster on the input's device (engine.py)."""
        x = self._prepare_input(x)
        if not self.scheme.pipelined:
            if stream:
                raise ValueError("streaming applies to the two-phase pipeline, not the rate baseline")
            return RateSimulator(self.plan).run(x, self.timesteps, record=record, neuron_counts=neuron_counts)
        return TwoPhaseSimulator(self.plan).run(x, record=record, stream=stream, neuron_counts=neuron_counts,
                                                events=events, clocked=clocked)

    def compile(self, enabled: bool = True) -> SpikingNetwork:
        """Use a fused torch.compile kernel for q on float32 inputs with beta = 2 (exact, see
        neuron._binary_code_f64). The first call on a machine builds it (seconds); where no
        compiler is available the eager path is kept. Returns self."""
        for m in self._acts():
            m.compiled = enabled
        return self

    @torch.no_grad()
    def twin_trains(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The twin's logits and, per spiking layer, the trains [T, batch, ...] its digits make
        (signed for the input coder): what ``simulate(x, record=True)`` must reproduce."""
        x = self._prepare_input(x)
        qann = self.quantized_ann()
        trains, hooks = {}, []

        def hook(mod, inp, out):
            trains[mod.layer_name] = mod.digits(inp[0])

        for m in qann.modules():
            if isinstance(m, SpikeActivation):
                hooks.append(m.register_forward_hook(hook))
        try:
            logits = qann(x)
        finally:
            for h in hooks:
                h.remove()
        return logits, trains

    def quantized_ann(self) -> nn.Module:
        """The original graph (BN folded) with q() in place of every spiking activation: the
        function the SNN computes, as an ordinary nn.Module."""
        if not self.scheme.exact_twin:
            raise ValueError(f"the {self.scheme.summary} has no exact quantized twin")
        gm = copy.deepcopy(self.gm)
        for m in gm.modules():
            if isinstance(m, SpikeActivation):
                m.mode = "quantize"
        return gm

    def ann(self) -> nn.Module:
        """The folded float ANN (same graph, original activations)."""
        gm = copy.deepcopy(self.gm)
        for m in gm.modules():
            if isinstance(m, SpikeActivation):
                m.mode = "ann"
        return gm

    def train(self, mode: bool = True):  # the converted network is inference-only
        return super().train(False)


# ---------------------------------------------------------------------------------------------


def check_args(timesteps, beta, threshold, method, phi, input_coding, fixed_point=False):
    scheme = method_named(method)
    if fixed_point and not scheme.fixed_point:
        raise ValueError("fixed_point applies to the two-phase method, not the rate baseline")
    if isinstance(timesteps, (dict, list, tuple)):  # per layer: each value checked, names after tracing
        if not scheme.pipelined:
            raise ValueError("time steps per layer apply to the two-phase method; the rate baseline runs all "
                             "layers together for one T")
        values = list(timesteps.values() if isinstance(timesteps, dict) else timesteps)
        if not values:
            raise ValueError("timesteps per layer: got an empty " + type(timesteps).__name__)
    else:
        values = [timesteps]
    for T in values:
        check_params(None, 2.0 if beta == "search" else beta, T, phi)
        if scheme.binary_code:
            check_code_length(T)
    if beta != "search" and not isinstance(beta, (int, float)):
        raise ValueError(f"beta must be a number in [1, 2] or 'search', got {beta!r}")
    if input_coding not in ("analog", "spike"):
        raise ValueError(f"input_coding must be 'analog' or 'spike', got {input_coding!r}")
    if input_coding != "analog" and not scheme.spike_input:
        raise ValueError("the rate baseline takes analog input")
    if threshold is not None and parse_threshold(threshold)[0] == "mse" and not scheme.mse_threshold:
        raise ValueError("the rate baseline sets thresholds by 'max' or 'percentile:P', not 'mse'")


def calibration_options(method: str, per_channel=None, sequential=None, bias_correction=None) -> tuple:
    """(per_channel, sequential, bias_correction) with None replaced by the method's default."""
    given = dict(per_channel=per_channel, sequential=sequential, bias_correction=bias_correction)
    if not method_named(method).calibration_options:
        if any(given.values()):
            raise ValueError("per_channel, sequential and bias_correction apply to the two-phase method, "
                             "not the rate baseline")
        return False, False, False
    return tuple(CALIBRATION_DEFAULTS[k] if v is None else bool(v) for k, v in given.items())


def beta_groups(plan: GraphPlan) -> dict:
    """Union-find: layers whose trains meet in one neuron must share beta. Returns node -> group id."""
    parent: dict = {}

    def find(a):
        parent.setdefault(a, a)
        while parent[a] is not a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a in plan.spikers:
        find(a)
    for region in list(plan.regions.values()) + list(plan.pools.values()):
        roots = [r for s in region.sources for r in plan.roots(s)]
        for r in roots[1:]:
            parent[find(r)] = find(roots[0])
    ids: dict = {}
    return {a: ids.setdefault(find(a), len(ids)) for a in plan.spikers}


def _checked_batches(plan: GraphPlan, calibration, dtype, progress: bool):
    """The calibration batches, checked (finite, one shape, accepted by the model's pools), cast to
    the network's precision. Yields (index, batch)."""
    input_shape = None
    images = 0
    it = iterate_calibration(calibration)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="calibrate", leave=False)
    for i, x in enumerate(it):
        check_batch(x)
        if input_shape is None:
            _check_batch_axis(plan.gm, x)
            input_shape = tuple(x.shape[1:])
            try:
                # a graph check that needs shapes: before the work
                check_pools(plan, x[:1].to(device=_device(plan.gm), dtype=dtype))
            except (RuntimeError, IndexError) as e:
                raise _rejected(x, e) from None
        elif tuple(x.shape[1:]) != input_shape:
            raise ValueError(f"calibration batches differ in shape: {tuple(x.shape[1:])} vs {input_shape}")
        images += len(x)
        yield i, x.to(device=_device(plan.gm), dtype=dtype)
    if 0 < images < MIN_CALIBRATION_IMAGES:
        warnings.warn(f"calibration holds only {images} image{'s' if images > 1 else ''}: thresholds and bias "
                      f"corrections chosen on fewer than {MIN_CALIBRATION_IMAGES} images fit those images, not "
                      "the data (use a few hundred training images; the command line takes 512)", stacklevel=4)


# Below this many calibration images convert() warns: thresholds are per-channel statistics, and
# a handful of images leaves most channels' upper tails unseen.
MIN_CALIBRATION_IMAGES = 32


def _check_batch_axis(model: nn.Module, x: torch.Tensor | None) -> None:
    """One image without its batch axis (a common slip) would otherwise fail deep inside the model
    with a shape error; the first convolution says how many axes a batch has."""
    first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if x is not None and first is not None and x.dim() == len(first.kernel_size) + 1:
        raise ValueError(f"calibration input of shape {tuple(x.shape)} has no batch axis (the model's first "
                         f"convolution takes {x.dim() + 1}-D batches): pass x.unsqueeze(0) for one image, or better "
                         "a batch of a few hundred")


def _check_leaky(plan: GraphPlan, method: str) -> None:
    """Leaky ReLU layers (two spike populations) run in the two-phase engines, the fast path and
    fixed point; the rate baseline does not model them."""
    leaky = [plan.layer_name(a) for a in plan.spikers if plan.gm.get_submodule(a.target).leaky]
    if leaky and not method_named(method).leaky:
        raise ValueError(f"the rate baseline has no two-population neuron for leaky ReLU layers ({leaky[0]}, ...); "
                         "use method='spikeconverter'")


class _Peek:
    """The first calibration batch, read only if tracing needs it (``example``); ``calibration``
    is then what to read the batches from (a one-shot iterator gets its first batch back)."""

    def __init__(self, model, calibration):
        self.model, self.calibration = model, calibration

    def example(self):
        first, self.calibration = _first_batch(self.calibration)
        _check_batch_axis(self.model, first)
        return first


def _first_batch(calibration):
    """(the first calibration batch or None, the calibration data to use afterwards): a one-shot
    iterator (a generator) gets its first batch put back in front."""
    if calibration is None:
        return None, None
    if torch.is_tensor(calibration):
        first = calibration
    else:
        try:
            it = iter(calibration)
        except TypeError:
            return None, calibration  # refused with its reason when the batches are read
        try:
            item = next(it)
        except StopIteration:
            return None, calibration
        first = item[0] if isinstance(item, (tuple, list)) else item
        if it is calibration:  # one-shot: what was taken is put back
            calibration = itertools.chain([item], it)
    if not torch.is_tensor(first) or first.dim() == 0 or first.numel() == 0:
        return None, calibration  # refused with its reason when the batches are read
    return first, calibration


def _rejected(x: torch.Tensor, e: Exception) -> ValueError:
    return ValueError(f"the model rejects calibration input of shape {tuple(x.shape)}: {str(e).splitlines()[0]}")


def _device(gm) -> torch.device:
    """Where the network computes: its parameters' device (calibration batches are moved there)."""
    param = next(iter(gm.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _dtype(gm) -> torch.dtype:
    param = next(iter(gm.parameters()), None)
    return param.dtype if param is not None else torch.float32


def _run(gm, batches) -> dict:
    """Run batches through gm (whatever modes its activations are in); returns, per spiking module,
    the shape of its output for one sample."""
    shapes: dict = {}

    def hook(mod, inp, out):
        shapes[mod] = tuple(out.shape[1:])

    hooks = [m.register_forward_hook(hook) for m in gm.modules() if isinstance(m, SpikeActivation)]
    n = 0
    try:
        with torch.no_grad():
            for _, x in batches:
                try:
                    gm(x)
                except (RuntimeError, IndexError) as e:
                    raise _rejected(x, e) from None
                n += 1
    finally:
        for h in hooks:
            h.remove()
    if n == 0:
        raise ValueError("calibration data is empty")
    return shapes


def _observe(plan: GraphPlan, mods: dict, calibration, progress: bool) -> tuple[tuple, dict]:
    """Run the calibration data through the ANN with an observer on every spiking layer.
    Returns (input shape, neurons per sample of each layer)."""
    gm = plan.gm
    dtype = _dtype(gm)
    for m in mods.values():
        m.observer = Observer()
        m.mode = "observe"
    first = {}

    def batches():
        for i, x in _checked_batches(plan, calibration, dtype, progress):
            first.setdefault("shape", tuple(x.shape[1:]))
            yield i, x

    shapes = _run(gm, batches())
    return first["shape"], {a: math.prod(shapes[m]) for a, m in mods.items() if m in shapes}


def layer_timesteps(plan: GraphPlan, timesteps) -> dict:
    """Per spiking node (layers, the input coder) its T, from one T for all, a dict {layer name: T}
    naming every spiking layer, or a list in layer order (``snn.layers``)."""
    spikers = plan.spikers
    names = {plan.gm.get_submodule(a.target).layer_name: a for a in spikers}
    if isinstance(timesteps, dict):
        unknown = [k for k in timesteps if k not in names]
        missing = [k for k in names if k not in timesteps]
        if unknown or missing:
            raise ValueError("timesteps per layer must name every spiking layer once"
                             + (f"; not layers of this model: {unknown}" if unknown else "")
                             + (f"; missing: {missing}" if missing else "") + f" (its layers: {list(names)})")
        return {names[k]: int(v) for k, v in timesteps.items()}
    if isinstance(timesteps, (list, tuple)):
        if len(timesteps) != len(spikers):
            raise ValueError(f"timesteps per layer: {len(timesteps)} values for {len(spikers)} spiking layers "
                             f"({list(names)})")
        return {a: int(t) for a, t in zip(spikers, timesteps)}
    return {a: int(timesteps) for a in spikers}


def _choose(plan: GraphPlan, mods: dict, method, threshold, beta, timesteps, phi) -> dict:
    """Per spiking layer (theta, beta, calibration error): per layer for the rate baseline; per
    beta group (layers that must share beta) for ours, trying each candidate beta with "search"."""
    caps = {a: m.cap for a, m in mods.items()}
    scheme = method_named(method)
    if not scheme.binary_code:  # one level per step: no beta to search, no groups to share it
        chosen = {}
        for a, m in mods.items():
            b, T, p = scheme.threshold_code(1.0, 1, phi)
            theta, err = choose_threshold(m.observer, caps[a], threshold, b, T, p)
            chosen[a] = (theta, b, err)
        return chosen
    groups = beta_groups(plan)
    chosen = {}
    for gid in set(groups.values()):
        members = [a for a in plan.spikers if groups[a] == gid]
        cands = BETA_CANDIDATES if beta == "search" else (float(beta),)
        best = None
        for b in cands:
            res = {a: choose_threshold(mods[a].observer, caps[a], threshold, b, timesteps[a], phi) for a in members}
            total = sum(err for _, err in res.values())
            if best is None or total < best[0]:
                best = (total, b, res)
        for a in members:
            chosen[a] = (best[2][a][0], best[1], best[2][a][1])
    return chosen


def _channel_shape(theta: torch.Tensor, out_shape: tuple) -> torch.Tensor:
    """Per-channel values [C] shaped to broadcast over dim 1 of a layer's z (batch first)."""
    return theta.reshape((-1,) + (1,) * max(len(out_shape) - 1, 0))


STAGE_BATCH = 128  # staged calibration holds a float pass's activations per batch: bound its size


class _ResumablePass:
    """The calibration batches run through the graph in pieces, depth by depth. ``advance(d)``
    evaluates every node whose spiking layers (itself and upstream) all have depth < d -- those are
    calibrated, so their values are final -- and keeps, per batch, only the values a node not yet
    evaluated still reads. Staged calibration thus costs about one pass of the network instead of
    one pass from the input per spiking depth (ResNet-34: 33). Evaluating nodes out of the graph's
    order is safe because the prepared graph has no in-place ops (graph.functionalize)."""

    def __init__(self, plan: GraphPlan, batches: list):
        self.batches = batches
        self.nodes = [n for n in plan.gm.graph.nodes if n.op != "output"]
        depth = {a: plan.depth[a] for a in plan.spikers}
        self.need: dict = {}
        for n in self.nodes:
            self.need[n] = max([self.need[i] for i in n.all_input_nodes] + [depth.get(n, -1)])
        self.done: set = set()
        self.envs = [{} for _ in batches]
        self.interp = torch.fx.Interpreter(plan.gm)

    def advance(self, d: int) -> None:
        todo = [n for n in self.nodes if n not in self.done and self.need[n] < d]
        self.done.update(todo)
        with torch.no_grad():
            for env, (_, x) in zip(self.envs, self.batches):
                self.interp.env, self.interp.args_iter = env, iter([x])
                for n in todo:
                    try:
                        env[n] = self.interp.run_node(n)
                    except (RuntimeError, IndexError) as e:
                        raise _rejected(x, e) from None
                for n in [n for n in env if all(u in self.done for u in n.users)]:
                    del env[n]

    def call(self, b: int, node):
        """Run ``node`` (its inputs are evaluated) on batch b; its value is not kept."""
        self.interp.env = self.envs[b]
        args, kwargs = self.interp.fetch_args_kwargs_from_env(node)
        with torch.no_grad():
            return self.interp.call_module(node.target, args, kwargs)


def _calibrate_staged(plan: GraphPlan, mods: dict, calibration, threshold, beta, timesteps, phi, *,
                      per_channel: bool, sequential: bool, bias_correction: bool, progress: bool):
    """Thresholds per channel or per layer, chosen on the float ANN's activations or sequentially,
    with optional bias correction. Every choice only sets thresholds and offsets of the quantizer
    twin, so the SNN stays exactly equal to it.

    - sequential: depth by depth, layer l's threshold minimises the error between q of the z that
      the already-quantized layers before it produce and the float ANN's activation at the same
      position (each batch is run twice: float, then quantized);
    - bias correction: a per-channel constant added to each spiking layer's pre-activation so that
      its mean over the calibration data equals the float ANN's (measured with the layers before
      quantized, so it is staged by depth as well).

    Returns (input shape, neurons per sample, {node: (theta, beta, error)}); sets each module's
    theta, beta, timesteps, phi and shift."""
    gm = plan.gm
    dtype = _dtype(gm)
    batches = [(i, c) for i, x in _checked_batches(plan, calibration, dtype, progress) for c in x.split(STAGE_BATCH)]
    if not batches:
        raise ValueError("calibration data is empty")
    input_shape = tuple(batches[0][1].shape[1:])
    mixed = pools_mixing_channels(plan, batches[0][1][:1]) if per_channel else set()
    caps = {a: m.cap for a, m in mods.items()}
    shapes, float_obs = _observe_float(gm, mods, batches, everything=not sequential or beta == "search")
    neurons = {a: math.prod(shapes[m]) for a, m in mods.items() if m in shapes}

    def choose(a, obs, b, shift=None):
        return choose_channel_thresholds(obs, caps[a], threshold, b, timesteps[a], phi, shift=shift,
                                         per_channel=per_channel and a not in mixed)

    betas = _group_betas(plan, beta, lambda a, b: choose(a, float_obs[a], b)[1])
    chosen = {}

    def setup(a, theta, shift, err):
        m, shape, dev = mods[a], shapes[mods[a]], _device(gm)
        m.theta = _channel_shape(theta, shape).to(device=dev, dtype=dtype) if torch.is_tensor(theta) else theta
        m.shift = None if shift is None else _channel_shape(shift, shape).to(device=dev, dtype=dtype)
        m.beta, m.timesteps, m.phi = betas[a], timesteps[a], phi
        chosen[a] = (theta, betas[a], err)

    if not sequential and not bias_correction:
        for a in plan.spikers:
            theta, err = choose(a, float_obs[a], betas[a])
            setup(a, theta, None, err)
        return input_shape, neurons, chosen

    # Depth by depth, each batch continues from the values the previous depth left (not from the
    # input again): the quantized network, and for sequential also the float one beside it.
    quantized = _ResumablePass(plan, batches)
    floating = _ResumablePass(plan, batches) if sequential else None
    for d in sorted({plan.depth[a] for a in plan.spikers}):
        stage = [a for a in plan.spikers if plan.depth[a] == d]
        _observe_stage(mods, stage, chosen, quantized, floating, d, len(batches))
        for a in stage:
            m, obs = mods[a], mods[a].observer
            shift = None
            if bias_correction and m.code.populations == 1:  # two populations observe magnitudes, not z
                aim = obs.target_mean if sequential else float_obs[a].mean
                shift = (aim - obs.mean).float()
            theta, err = choose(a, obs, betas[a], shift) if sequential else choose(a, float_obs[a], betas[a])
            setup(a, theta, shift, err)
    for m in mods.values():
        m.mode = "quantize"
    return input_shape, neurons, chosen


def _observe_float(gm, mods: dict, batches: list, everything: bool) -> tuple[dict, dict]:
    """The float ANN's activations of every spiking layer on all ``batches`` (the threshold sample
    unless sequential, the means bias correction aims at, what the beta search compares
    candidates on), or, when not ``everything``, just its shapes from the first batch. Returns
    (shapes, {node: its observer})."""
    if not everything:
        for m in mods.values():
            m.mode = "ann"
        return _run(gm, batches[:1]), {}
    for m in mods.values():
        m.observer, m.mode = ChannelObserver(), "observe"
    return _run(gm, batches), {a: m.observer for a, m in mods.items()}


def _group_betas(plan: GraphPlan, beta, error) -> dict:
    """beta per spiking node: the one given, or (beta="search") per group of layers whose trains
    meet, the candidate with the least summed ``error(node, beta)``."""
    groups = beta_groups(plan)
    betas = {}
    for gid in set(groups.values()):
        members = [a for a in plan.spikers if groups[a] == gid]
        if beta != "search":
            betas.update({a: float(beta) for a in members})
            continue
        errs = {b: sum(error(a, b) for a in members) for b in BETA_CANDIDATES}
        best = min(errs, key=errs.get)
        betas.update({a: best for a in members})
    return betas


def _observe_stage(mods: dict, stage: list, chosen: dict, quantized, floating, depth: int, n_batches: int) -> None:
    """Observe the layers of one depth with every shallower layer quantized: z as the quantized
    network gives it, and (sequential) the float ANN's z at the same positions first."""
    sequential = floating is not None

    def set_modes(quantize: bool):
        for a, m in mods.items():
            m.mode = "quantize" if (quantize and a in chosen) else "ann"

    for a in stage:
        mods[a].observer = ChannelObserver(means_only=not sequential)
    if sequential:
        set_modes(quantize=False)
        floating.advance(depth)
    set_modes(quantize=True)
    quantized.advance(depth)
    for a in stage:
        mods[a].mode = "observe"
    for b in range(n_batches):
        for a in stage:
            if sequential:  # the pair: the float ANN's z first, then z at the same positions, quantized
                mods[a].observer.capture = True
                floating.call(b, a)
            mods[a].observer.capture = False
            quantized.call(b, a)


def convert(model: nn.Module, calibration, timesteps: int = 8, beta=2.0, threshold: str | None = None,
            method: str = "spikeconverter", phi: float = 0.5, input_coding: str = "analog",
            progress: bool = False, fixed_point: bool = False, per_channel: bool | None = None,
            sequential: bool | None = None, bias_correction: bool | None = None, *,
            input_shape: tuple | None = None, data_free_images: int = 128, data_free_steps: int = 300,
            seed: int = 0, max_loss: float | None = None, latency: int | None = None,
            selection=None, data_free_method: str = "synthesised") -> SpikingNetwork:
    """Convert a trained CNN into a spiking network.

    Args:
        model: a traceable nn.Module (see docs/method.md for the supported ops).
        calibration: a tensor batch, or an iterable of tensors or (input, label) pairs; or
            "data-free": no images, the calibration inputs are synthesised from the model's batch-norm
            statistics (datafree.py; needs ``input_shape``, one sample's shape, and BN layers;
            ``data_free_images``, ``data_free_steps`` and ``seed`` set the synthesis). With
            ``data_free_method="bn-statistics"`` no input at all: each layer's threshold minimises
            the expected quantization error of the normal distribution its BN statistics give
            (bn_thresholds.py); layers those do not reach are calibrated on synthesised inputs;
            with ``bias_correction=True`` also shifts that cancel the expected error of the
            layers before (opt-in: not better on balance on the shipped networks).
        timesteps: T, steps per phase (two-phase) or simulation steps (rate). Two-phase also per
            layer: a dict {layer name: T} naming every spiking layer, or a list in layer order
            (``snn.layers``); each layer quantizes to its own T-step code and generates for T steps,
            and the end-to-end latency is the longest path through that schedule (schedule.py).
            "auto": chosen per layer (allocate.py) for the shortest latency within ``max_loss`` pp of
            the float ANN, or the best accuracy within ``latency`` steps, judged on ``selection``
            (held-out *training* images and labels, (x, y)); without it, on the calibration images
            with the float ANN's own predictions as labels. The search is recorded in
            ``snn.calibration["timesteps_search"]``.
        beta: growth factor in [1, 2] (2: binary code, 1: burst code), or "search".
        threshold: "mse" (default for spikeconverter), "max", or "percentile:P"
            (default "percentile:99.99" for the rate baseline).
        method: "spikeconverter" (two-phase iLIF) or "rate" (rate-coded IF baseline).
        phi: offset in [0, 1): 0.5 rounds to the nearest code level, 0 truncates.
        input_coding: "analog" (first layer takes the input as current) or "spike" (the input is
            sent as a signed T-step train of the same code).
        fixed_point: round weights, thresholds, biases and the input to power-of-two grids (float64)
            so that the simulator and the twin agree bit for bit by construction (fixed_point.py).
        per_channel: one threshold per channel (dim 1) of each spiking layer, not one per layer
            (layers whose channels share a max-pool window keep one). Off by default with
            fixed_point (its grid is per layer).
        sequential: choose each layer's threshold on the activations that the already-quantized
            layers before it produce (depth by depth), not on the float ANN's.
        bias_correction: add to each spiking layer's pre-activation the per-channel constant that
            makes its mean over the calibration data equal to the float ANN's.
        The last three apply to the two-phase method (None: CALIBRATION_DEFAULTS; the rate baseline
        uses none of them). With any of them the calibration batches are kept in memory (they are
        run once or twice per spiking depth).
    """
    auto = _check_budgets(timesteps, max_loss, latency, method)
    check_args(8 if auto else timesteps, beta, threshold, method, phi, input_coding, fixed_point)
    kw = dict(beta=beta, threshold=threshold, method=method, phi=phi, input_coding=input_coding,
              fixed_point=fixed_point, per_channel=per_channel, sequential=sequential, bias_correction=bias_correction)
    data_free = None
    if isinstance(calibration, str):
        synth = dict(n=data_free_images, steps=data_free_steps, seed=seed, progress=progress)
        if _data_free_method(model, calibration, input_shape, data_free_method, auto) == "bn-statistics":
            return _convert_bn_statistics(model, tuple(input_shape), synth, dict(kw, timesteps=timesteps,
                                                                                  progress=progress))
        from .datafree import synthesize_inputs

        calibration, data_free = synthesize_inputs(model, tuple(input_shape), **synth)
    if auto:
        return _convert_auto(model, calibration, data_free, max_loss, latency, selection, progress, kw)
    return _convert_from(model, calibration, timesteps, progress=progress, data_free=data_free, **kw)


def _check_budgets(timesteps, max_loss, latency, method) -> bool:
    """Whether T is to be chosen ("auto"), after checking that the budgets go with it."""
    auto = isinstance(timesteps, str)
    if auto and timesteps != "auto":
        raise ValueError(f"timesteps must be an integer, per-layer values or 'auto', got {timesteps!r}")
    if not auto and (max_loss is not None or latency is not None):
        raise ValueError("max_loss / latency are budgets for timesteps='auto'")
    if auto and not method_named(method).pipelined:
        raise ValueError("timesteps='auto' applies to the two-phase method")
    return auto


def _data_free_method(model, calibration: str, input_shape, method: str, auto: bool) -> str:
    """The checked data-free method for calibration="data-free"."""
    from .datafree import NO_BN, bn_layers

    if calibration != "data-free":
        raise ValueError(f"calibration must be images or 'data-free', got {calibration!r}")
    if input_shape is None:
        raise ValueError("data-free conversion needs input_shape= (one sample's shape, e.g. (3, 32, 32))")
    if method not in ("synthesised", "bn-statistics"):
        raise ValueError(f"data_free_method must be 'synthesised' or 'bn-statistics', got {method!r}")
    if method == "bn-statistics":
        if not bn_layers(model):
            raise ValueError(NO_BN)
        if auto:
            raise ValueError("timesteps='auto' needs images to judge on; use the synthesised data-free method")
    return method


def _convert_from(model, calibration, timesteps, *, beta, threshold, method, phi, input_coding, fixed_point,
                  per_channel, sequential, bias_correction, progress, data_free) -> SpikingNetwork:
    """convert() once the calibration images (or synthesised inputs) and T are known: trace,
    calibrate, assemble the network."""
    if fixed_point and per_channel is None:
        # the fixed-point grid is one per layer: thresholds spread over channels would make it finer
        # and leave float64's exact range at ResNet-size T = 8 (opt in with per_channel=True)
        per_channel = False
    per_channel, sequential, bias_correction = calibration_options(method, per_channel, sequential, bias_correction)
    staged = per_channel or sequential or bias_correction
    if threshold is None:
        threshold = method_named(method).default_threshold
    peek = _Peek(model, calibration)
    # unsupported ops fail here, before any numerical work (a model that asserts or branches on
    # shapes is traced on the first calibration batch, specialised to its shape)
    plan = prepare(model, input_coding, peek.example)
    calibration = peek.calibration
    _check_leaky(plan, method)
    per_layer = layer_timesteps(plan, timesteps)
    mods = {a: plan.gm.get_submodule(a.target) for a in plan.spikers}
    if staged:
        input_shape, neurons, chosen = _calibrate_staged(
            plan, mods, calibration, threshold, beta, per_layer, phi,
            per_channel=per_channel, sequential=sequential, bias_correction=bias_correction, progress=progress)
    else:
        input_shape, neurons = _observe(plan, mods, calibration, progress)
        chosen = _choose(plan, mods, method, threshold, beta, per_layer, phi)
        for a in plan.spikers:
            m = mods[a]
            m.theta, m.beta, m.timesteps = chosen[a][0], chosen[a][1], per_layer[a]
            m.phi = phi if method_named(method).uses_phi else 0.0
    snn = _assemble(plan, mods, method, max(per_layer.values()), neurons, chosen, input_shape, input_coding,
                    threshold)
    snn.calibration = dict(threshold=threshold, per_channel=per_channel, sequential=sequential,
                           bias_correction=bias_correction)
    if data_free is not None:  # no image was used: the file and the reports say so
        snn.calibration["data_free"] = data_free
    if fixed_point:
        from . import fixed_point as fx_point

        snn.double()
        snn.exact_bounds = fx_point.apply(plan, input_shape)
    return snn


def _assemble(plan, mods, method, period, neurons, chosen, input_shape, input_coding, threshold) -> SpikingNetwork:
    """The SpikingNetwork from calibrated modules. ``period``: the longest T (a new input every
    max_l T_l steps)."""
    groups = beta_groups(plan)
    layers = []
    for a in plan.spikers:
        m = mods[a]
        m.observer = None
        layers.append(LayerInfo(m.layer_name, m, neurons.get(a, 0), plan.depth[a], chosen[a][2], groups[a]))
    return SpikingNetwork(plan, method, period, layers, input_shape, input_coding, threshold)


def _convert_auto(model, calibration, data_free, max_loss, latency, selection, progress, kw) -> SpikingNetwork:
    """timesteps="auto": choose T per layer (allocate.py), then convert with that choice."""
    from dataclasses import asdict

    from .allocate import choose_timesteps, paired_loss

    if not torch.is_tensor(calibration):  # the search converts several times: the batches are kept
        calibration = torch.cat([b[0] if isinstance(b, (tuple, list)) else b for b in calibration])
    search_kw = dict(kw, fixed_point=False)  # the search judges the float network; fixed point rounds the result
    if selection is None:  # no held-out images: the calibration images, labelled by the float ANN itself
        with torch.no_grad():
            images = calibration.to(_dtype(model))
            labels = torch.cat([model(images[i : i + 256]).argmax(1) for i in range(0, len(images), 256)])
        judged_on = "calibration images, labelled by the float ANN"
    else:
        images, labels = selection
        images = images.to(_dtype(model))
        judged_on = "held-out training images"
    search = choose_timesteps(model, calibration, images, labels, max_loss=max_loss, latency=latency,
                              progress=progress, **search_kw)
    snn = convert(model, calibration, timesteps=search.timesteps, progress=progress, **kw)
    record = asdict(search)
    record["judged_on"] = judged_on

    def loss(net) -> tuple[float, float]:
        with torch.no_grad():
            x = images.to(_dtype(net.gm))
            out = torch.cat([net(x[i : i + 256]) for i in range(0, len(x), 256)])
            ann = torch.cat([model(images[i : i + 256]) for i in range(0, len(images), 256)])
        return paired_loss(ann, out, labels)

    # the chosen T, calibrated with mixed T
    record["loss_pp_converted"], record["loss_se_pp_converted"] = loss(snn)
    # both are exact spiking networks: keep the one that does better on the selection images (fixed
    # point needs the rounded conversion)
    record["network"] = "calibrated for the allocation"
    if not kw.get("fixed_point") and search.loss_pp < record["loss_pp_converted"]:
        snn, record["network"] = search.network, "thresholds of the uniform-T conversions (as judged)"
    snn.calibration["timesteps_search"] = record
    if data_free is not None:
        snn.calibration["data_free"] = data_free
    return snn


def _bn_bias_corrections(plan: GraphPlan, moments: dict, shapes: dict) -> list:
    """Set the statistics' bias corrections (bn_thresholds.bias_corrections); returns the layers set."""
    from .bn_thresholds import bias_corrections

    shifts = bias_corrections(plan, moments, shapes)
    for a, shift in shifts.items():
        m = plan.gm.get_submodule(a.target)
        m.shift = _channel_shape(shift, shapes[a][1:]).to(device=_device(plan.gm), dtype=_dtype(plan.gm))  # [C, 1, ...]
    return list(shifts)


def _convert_bn_statistics(model, input_shape: tuple, synth: dict, kw: dict) -> SpikingNetwork:
    """data_free_method="bn-statistics": thresholds from BN statistics where they reach a layer
    (bn_thresholds.py), synthesised inputs for the others (only if there are any)."""
    from .bn_thresholds import pre_activation_moments, thresholds_from_moments
    from .datafree import synthesize_inputs

    if kw.get("fixed_point"):
        raise ValueError("data_free_method='bn-statistics' with fixed_point is not built yet; use the synthesised "
                         "data-free method")
    t0 = time.time()
    g = torch.Generator().manual_seed(synth["seed"])  # an input only to trace with (its values set nothing kept)
    example = torch.randn((2,) + input_shape, generator=g).to(device=_device(model), dtype=_dtype(model))
    probe = prepare(model, kw["input_coding"], lambda: example)
    missing = [a for a in probe.spikers if a not in pre_activation_moments(probe, node_shapes(probe.gm, example[:1]))]
    synthesised = None
    if missing:  # those layers need activations to calibrate on: synthesise inputs (method 2)
        calibration, synthesised = synthesize_inputs(model, input_shape, n=synth["n"], steps=synth["steps"],
                                                     seed=synth["seed"], progress=synth["progress"])
        snn = convert(model, calibration, **kw)
    else:  # every layer from BN statistics: the conversion only needs the example to trace
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "few calibration images": none of their thresholds is kept
            snn = convert(model, example, **dict(kw, bias_correction=False, sequential=False))
    plan, spec = snn.plan, snn.threshold
    per_channel = snn.calibration["per_channel"]
    mixed = pools_mixing_channels(plan, example[:1]) if per_channel else set()
    shapes = node_shapes(plan.gm, example[:1])
    moments = pre_activation_moments(plan, shapes)
    searched: dict = {}  # distinct (mean/sd, cap/sd) shapes, shared by the layers
    for info, a in zip(snn.layers, plan.spikers):
        if a not in moments:
            continue
        m = plan.gm.get_submodule(a.target)
        theta, err = thresholds_from_moments(*moments[a], m.cap, spec, m.beta, m.timesteps, m.phi,
                                             per_channel=per_channel and a not in mixed, cache=searched)
        m.theta = theta.reshape(m.theta_map.shape).to(m.theta_map) if torch.is_tensor(theta) else float(theta)
        m.shift = None
        info.error = err  # theta is the module's (LayerInfo reads it)
    # opt-in (bias_correction=True): on the shipped networks it moved accuracy by -0.5 to +0.7 pp,
    # no better on balance -- the normal model's shape, not its mean, is what costs accuracy
    corrected = _bn_bias_corrections(plan, moments, shapes) if kw.get("bias_correction") is True else []
    names = {a: plan.layer_name(a) for a in plan.spikers}
    snn.calibration["data_free"] = dict(
        method="bn-statistics", images=0 if synthesised is None else synthesised["images"],
        layers_from_bn_statistics=[names[a] for a in plan.spikers if a in moments],
        layers_from_synthesised_inputs=[names[a] for a in plan.spikers if a not in moments],
        layers_bias_corrected_from_statistics=[names[a] for a in corrected],
        seconds=round(time.time() - t0, 1), **({"synthesis": synthesised} if synthesised else {}))
    return snn
