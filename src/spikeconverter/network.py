"""``SpikingNetwork``: a converted network -- the exact fast path (the quantizer twin), the
time-stepped simulators, the twin views, saving and export -- and ``LayerInfo``, a spiking layer's
record. ``convert()`` (convert.py) makes one; ``spikeconverter.load`` reads one back."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .activation import SpikeActivation
from .device import device_of, dtype_of
from .engine import RateSimulator, SimulationResult, TwoPhaseSimulator
from .methods import Method, method_named
from .plan import GraphPlan, analyze


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
        if next(iter(self.gm.parameters()), None) is not None and (x.dtype != dtype_of(self.gm) or
                                                                   x.device != device_of(self.gm)):
            # the network's precision (what it was converted, and thresholds rounded, for) and device
            x = x.to(device=device_of(self.gm), dtype=dtype_of(self.gm))
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
