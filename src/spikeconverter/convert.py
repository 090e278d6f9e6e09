"""``convert()``: the public entry. A trained CNN + calibration images -> a ``SpikingNetwork``.

Pipeline (torch.ao-style): validate arguments -> prepare the graph (trace, validate ops, normalize,
fold BN, analyze) -> observe activations on calibration data -> choose thresholds (and beta) ->
switch every activation to its quantizer twin -> wrap with the simulators.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .calibrate import (
    BETA_CANDIDATES,
    Observer,
    check_batch,
    choose_threshold,
    iterate_calibration,
    parse_threshold,
)
from .engine import RateSimulator, SimulationResult, TwoPhaseSimulator
from .graph import GraphPlan, SpikeActivation, analyze, check_pools, prepare
from .neuron import check_code_length, check_params, quantize_digits

METHODS = ("spikeconverter", "rate")


@dataclass
class LayerInfo:
    name: str
    theta: float
    beta: float
    phi: float
    cap: float | None  # 6.0 for ReLU6
    neurons: int  # per sample
    depth: int  # window in which the layer generates
    error: float  # calibration MSE of q against the ANN activation
    group: int  # layers whose spikes meet in one neuron share a group (and beta)


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
        self._set_mode("quantize" if method == "spikeconverter" else "ann")
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
        return (f"method={self.method}, T={self.timesteps}, layers={len(self.layers)}, "
                f"spiking_depth={self.spiking_depth}, latency_steps={self.latency_steps}")

    @property
    def spiking_depth(self) -> int:
        return self.plan.spiking_depth

    @property
    def latency_steps(self) -> int:
        """Steps until one input's logits are final: (L+1)*T two-phase; T for the rate baseline."""
        if self.method == "rate":
            return self.timesteps
        return (self.spiking_depth + 1) * self.timesteps

    @property
    def steps_per_input(self) -> int:
        """Pipelined throughput: a new input every T steps (rate: every T steps, no pipelining)."""
        return self.timesteps

    @property
    def betas(self) -> dict[int, float]:
        return {layer.group: layer.beta for layer in self.layers}

    def _acts(self) -> list[SpikeActivation]:
        return [m for m in self.gm.modules() if isinstance(m, SpikeActivation)]

    def _set_mode(self, mode: str) -> None:
        for m in self._acts():
            m.mode = mode

    def _check_input(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x):
            raise ValueError(f"input must be a tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"input has shape {tuple(x.shape)}; expected (batch, {', '.join(map(str, self.input_shape))})")

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
        param = next(iter(self.gm.parameters()), None)
        if param is not None and x.dtype != param.dtype:
            x = x.to(param.dtype)  # the network's precision: what it was converted (and thresholds rounded) for
        if self.exact_bounds is None:
            return x
        from .fixed_point import check_bounds, round_input

        x = round_input(x)
        check_bounds(self.exact_bounds, x)
        return x

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._prepare_input(x)
        if self.method == "rate":
            return RateSimulator(self.plan).run(x, self.timesteps).logits
        return self.gm(x)

    @torch.no_grad()
    def simulate(self, x: torch.Tensor, record: bool = False, stream: bool = False,
                 neuron_counts: bool = False) -> SimulationResult:
        """Time-stepped simulation. ``record``: keep every layer's trains; ``stream``: feed the
        batch's inputs one after another every T steps through the pipeline; ``neuron_counts``:
        spikes per neuron of every source in ``result.extra["neuron_counts"]``."""
        x = self._prepare_input(x)
        if self.method == "rate":
            if stream:
                raise ValueError("streaming applies to the two-phase pipeline, not the rate baseline")
            return RateSimulator(self.plan).run(x, self.timesteps, record=record, neuron_counts=neuron_counts)
        return TwoPhaseSimulator(self.plan).run(x, record=record, stream=stream, neuron_counts=neuron_counts)

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
            args = (mod.theta, mod.beta, mod.timesteps, mod.phi)
            d = quantize_digits(inp[0], *args)
            trains[mod.layer_name] = d - quantize_digits(-inp[0], *args) if mod.signed else d

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
        if self.method != "spikeconverter":
            raise ValueError("the rate baseline has no exact quantized twin")
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


def _check_args(timesteps, beta, threshold, method, phi, input_coding, fixed_point=False):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    if fixed_point and method != "spikeconverter":
        raise ValueError("fixed_point applies to the two-phase method, not the rate baseline")
    check_params(None, 2.0 if beta == "search" else beta, timesteps, phi)
    if method == "spikeconverter":
        check_code_length(timesteps)
    if beta != "search" and not isinstance(beta, (int, float)):
        raise ValueError(f"beta must be a number in [1, 2] or 'search', got {beta!r}")
    if input_coding not in ("analog", "spike"):
        raise ValueError(f"input_coding must be 'analog' or 'spike', got {input_coding!r}")
    if method == "rate":
        if input_coding != "analog":
            raise ValueError("the rate baseline takes analog input")
        if threshold is not None and parse_threshold(threshold)[0] == "mse":
            raise ValueError("the rate baseline sets thresholds by 'max' or 'percentile:P', not 'mse'")
    elif threshold is not None:
        parse_threshold(threshold)


def _beta_groups(plan: GraphPlan) -> dict:
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


def _observe(plan: GraphPlan, mods: dict, calibration, progress: bool) -> tuple[tuple, dict]:
    """Run the calibration data through the ANN with an observer on every spiking layer.
    Returns (input shape, neurons per sample of each layer)."""
    gm = plan.gm
    param = next(iter(gm.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    for m in mods.values():
        m.observer = Observer(signed=m.signed)
        m.mode = "observe"
    input_shape, n_batches = None, 0
    neurons: dict = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, a=a: neurons.__setitem__(a, out[0].numel()))
             for a, m in mods.items()]
    it = iterate_calibration(calibration)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="calibrate", leave=False)
    try:
        with torch.no_grad():
            for x in it:
                check_batch(x)
                if input_shape is None:
                    input_shape = tuple(x.shape[1:])
                    try:
                        check_pools(plan, x[:1].to(dtype))  # a graph check that needs shapes: before the work
                    except (RuntimeError, IndexError) as e:
                        raise ValueError(f"the model rejects calibration input of shape {tuple(x.shape)}: "
                                         f"{str(e).splitlines()[0]}") from None
                elif tuple(x.shape[1:]) != input_shape:
                    raise ValueError(f"calibration batches differ in shape: {tuple(x.shape[1:])} vs {input_shape}")
                try:
                    gm(x.to(dtype))
                except (RuntimeError, IndexError) as e:
                    raise ValueError(f"the model rejects calibration input of shape {tuple(x.shape)}: "
                                     f"{str(e).splitlines()[0]}") from None
                n_batches += 1
    finally:
        for h in hooks:
            h.remove()
    if n_batches == 0:
        raise ValueError("calibration data is empty")
    return input_shape, neurons


def _choose(plan: GraphPlan, mods: dict, method, threshold, beta, timesteps, phi) -> dict:
    """Per spiking layer (theta, beta, calibration error): per layer for the rate baseline; per
    beta group (layers that must share beta) for ours, trying each candidate beta with "search"."""
    caps = {a: m.cap for a, m in mods.items()}
    if method == "rate":
        chosen = {}
        for a, m in mods.items():
            theta, err = choose_threshold(m.observer, caps[a], threshold, 1.0, 1, 0.0)
            chosen[a] = (theta, 1.0, err)
        return chosen
    groups = _beta_groups(plan)
    chosen = {}
    for gid in set(groups.values()):
        members = [a for a in plan.spikers if groups[a] == gid]
        cands = BETA_CANDIDATES if beta == "search" else (float(beta),)
        best = None
        for b in cands:
            res = {a: choose_threshold(mods[a].observer, caps[a], threshold, b, timesteps, phi) for a in members}
            total = sum(err for _, err in res.values())
            if best is None or total < best[0]:
                best = (total, b, res)
        for a in members:
            chosen[a] = (best[2][a][0], best[1], best[2][a][1])
    return chosen


def convert(model: nn.Module, calibration, timesteps: int = 8, beta=2.0, threshold: str | None = None,
            method: str = "spikeconverter", phi: float = 0.5, input_coding: str = "analog",
            progress: bool = False, fixed_point: bool = False) -> SpikingNetwork:
    """Convert a trained CNN into a spiking network.

    Args:
        model: a traceable nn.Module (see docs/method.md for the supported ops).
        calibration: a tensor batch, or an iterable of tensors or (input, label) pairs.
        timesteps: T, steps per phase (two-phase) or simulation steps (rate).
        beta: growth factor in [1, 2] (2: binary code, 1: burst code), or "search".
        threshold: "mse" (default for spikeconverter), "max", or "percentile:P"
            (default "percentile:99.99" for the rate baseline).
        method: "spikeconverter" (two-phase iLIF) or "rate" (rate-coded IF baseline).
        phi: offset in [0, 1): 0.5 rounds to the nearest code level, 0 truncates.
        input_coding: "analog" (first layer takes the input as current) or "spike" (the input is
            sent as a signed T-step train of the same code).
        fixed_point: round weights, thresholds, biases and the input to power-of-two grids (float64)
            so that the simulator and the twin agree bit for bit by construction (fixed_point.py).
    """
    _check_args(timesteps, beta, threshold, method, phi, input_coding, fixed_point)
    if threshold is None:
        threshold = "mse" if method == "spikeconverter" else "percentile:99.99"
    plan = prepare(model, input_coding)  # unsupported ops fail here, before any numerical work
    gm = plan.gm
    mods = {a: gm.get_submodule(a.target) for a in plan.spikers}
    input_shape, neurons = _observe(plan, mods, calibration, progress)
    chosen = _choose(plan, mods, method, threshold, beta, timesteps, phi)
    groups = _beta_groups(plan)

    layers = []
    for a in plan.spikers:
        m = mods[a]
        theta, b, err = chosen[a]
        m.theta, m.beta, m.timesteps = theta, b, timesteps
        m.phi = phi if method == "spikeconverter" else 0.0
        m.observer = None
        layers.append(LayerInfo(m.layer_name, theta, b, m.phi, m.cap, neurons.get(a, 0), plan.depth[a], err, groups[a]))
    snn = SpikingNetwork(plan, method, timesteps, layers, input_shape, input_coding, threshold)
    if fixed_point:
        from . import fixed_point as fx_point

        snn.double()
        snn.exact_bounds = fx_point.apply(plan, timesteps, input_shape)
        for info, a in zip(layers, plan.spikers):
            info.theta = gm.get_submodule(a.target).theta
    return snn
