"""Energy per image under a hardware cost model: the SNN against its bit-matched quantized twin.

The 45 nm operation count (metrics.ENERGY_CONVENTION: 0.9 pJ per synaptic operation, 4.6 pJ per
float MAC) prices only arithmetic and compares the SNN with a *float* ANN. The SNN is exactly a
quantized ANN (T-bit activations) whose zero bits are skipped, so the honest baselines are that
network on digital hardware. This model counts, per image:

SNN (two-phase, event-driven):
  - synaptic events (one per spike and synapse it reaches, = SOPs): a weight read (w bits), an
    accumulate (acc bits) and the target's potential read and written (2 x acc bits);
  - neuron updates: every spiking neuron at every step of both phases (2T), the output neurons in
    their accumulate phase (T): potential read and written (2 x acc bits) and one add;
  - spikes routed: an event (its address) written to and read from a queue (2 x addr bits);
  - analog-input MACs (the first layer): as the quantized ANN's MACs, with in bits inputs.
Quantized ANN (the twin on a MAC array): every MAC a multiply (w x T bits; in bits for the first
  layer), an accumulate, a weight read and an activation read; every activation written once.
Bit-serial twin (the twin on a zero-skipping bit-serial engine): one shifted add per nonzero
  activation bit and synapse (the SNN's synaptic events) with a weight read, accumulators kept in
  registers (no potential traffic, no per-step updates), every activation written once; the first
  layer as in the quantized ANN.
Float ANN: every MAC a 32-bit float multiply and add with two 32-bit reads; activations written.

Energies per operation (defaults, 45 nm; docs/method.md cites them): Horowitz, "Computing's energy
problem", ISSCC 2014: 8-bit int add 0.03 pJ, 32-bit int add 0.1 pJ, 8-bit int multiply 0.2 pJ,
32-bit int multiply 3.1 pJ, 32-bit float add 0.9 pJ and multiply 3.7 pJ, SRAM read of 64 bits from
a 32 KB array 20 pJ. Integer adds are scaled linearly with width and multiplies with the product of
the widths between those points; SRAM energy per bit is the 64-bit figure / 64 (a write is taken
equal to a read). Left out (for every network alike): DRAM traffic, routing distance, leakage,
clocking, control. Every parameter can be overridden (``EnergyParams.from_file``: JSON or TOML).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

# Horowitz 2014 (45 nm) anchor points
_ADD_32_PJ = 0.1
_MUL_32_PJ = 3.1
_FADD_32_PJ = 0.9
_FMUL_32_PJ = 3.7
_SRAM_64BIT_32KB_PJ = 20.0


@dataclass(frozen=True)
class EnergyParams:
    """Bit widths and energies of the cost model (module docstring)."""

    weight_bits: int = 8  # integer weights of the quantized twin and the SNN's synapses
    input_bits: int = 8  # image pixels fed to the first layer
    acc_bits: int = 24  # accumulators and membrane potentials
    addr_bits: int = 32  # a spike event's address
    add_32_pj: float = _ADD_32_PJ  # 32-bit integer add; other widths scale linearly
    mul_32_pj: float = _MUL_32_PJ  # 32x32-bit integer multiply; other widths scale with the product
    fadd_32_pj: float = _FADD_32_PJ
    fmul_32_pj: float = _FMUL_32_PJ
    sram_bit_pj: float = _SRAM_64BIT_32KB_PJ / 64  # per bit read or written (32 KB array)
    source: str = "45 nm CMOS, Horowitz (ISSCC 2014); SRAM 32 KB array"

    def add(self, bits: int) -> float:
        return self.add_32_pj * bits / 32

    def mul(self, a_bits: int, b_bits: int) -> float:
        return self.mul_32_pj * a_bits * b_bits / (32 * 32)

    def mem(self, bits: int) -> float:
        return self.sram_bit_pj * bits

    @classmethod
    def from_file(cls, path) -> EnergyParams:
        """Overrides from a JSON or TOML file of {field: value} (unknown fields refused)."""
        path = Path(path)
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise ValueError(f"{path.name}: reading TOML needs Python 3.11; write the parameters as JSON") from None
            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path.name}: unknown energy parameters {unknown}; known: {sorted(known)}")
        return replace(cls(), **data)


@dataclass
class Events:
    """What one image costs in countable events (per image, averaged over the images measured)."""

    spikes: float
    synaptic_events: float  # = SOPs
    neurons: int  # spiking neurons
    output_neurons: int
    timesteps: int
    analog_macs: float  # MACs on analog input (the first layer)
    ann_macs: float  # every MAC of the ANN

    @property
    def neuron_updates(self) -> int:
        return self.neurons * 2 * self.timesteps + self.output_neurons * self.timesteps

    @property
    def spike_rate(self) -> float:
        """Spikes per spiking neuron per time step (of its generate phase)."""
        return self.spikes / max(1, self.neurons * self.timesteps)


def _snn(ev: Events, p: EnergyParams, spikes: float | None = None) -> dict:
    spikes = ev.spikes if spikes is None else spikes
    syn = ev.synaptic_events * (spikes / ev.spikes if ev.spikes else 0.0)  # synapses per spike held fixed
    per_syn = p.mem(p.weight_bits) + p.add(p.acc_bits) + 2 * p.mem(p.acc_bits)
    per_update = 2 * p.mem(p.acc_bits) + p.add(p.acc_bits)
    return {"synaptic events": syn * per_syn,
            "neuron updates": ev.neuron_updates * per_update,
            "spike routing": spikes * 2 * p.mem(p.addr_bits),
            "input layer MACs": ev.analog_macs * _mac(p, p.input_bits)}


def _mac(p: EnergyParams, act_bits: int) -> float:
    return p.mul(p.weight_bits, act_bits) + p.add(p.acc_bits) + p.mem(p.weight_bits) + p.mem(act_bits)


def _qann(ev: Events, p: EnergyParams) -> dict:
    return {"MACs": (ev.ann_macs - ev.analog_macs) * _mac(p, ev.timesteps),
            "input layer MACs": ev.analog_macs * _mac(p, p.input_bits),
            "activation writes": (ev.neurons + ev.output_neurons) * p.mem(ev.timesteps)}


def _bit_serial(ev: Events, p: EnergyParams) -> dict:
    return {"shifted adds": ev.synaptic_events * (p.mem(p.weight_bits) + p.add(p.acc_bits)),
            "input layer MACs": ev.analog_macs * _mac(p, p.input_bits),
            "activation writes": (ev.neurons + ev.output_neurons) * p.mem(ev.timesteps)}


def _float(ev: Events, p: EnergyParams) -> dict:
    return {"MACs": ev.ann_macs * (p.fmul_32_pj + p.fadd_32_pj + 2 * p.mem(32)),
            "activation writes": (ev.neurons + ev.output_neurons) * p.mem(32)}


def energy_report(ev: Events, p: EnergyParams | None = None) -> dict:
    """Energy per image (uJ) by network and category, and the SNN's break-even spike rate against
    the quantized twin: the rate at which its energy would equal the twin's (None when even no
    spike at all would make the SNN cheaper: its per-step neuron updates alone cost more)."""
    p = p or EnergyParams()
    parts = {"snn": _snn(ev, p), "quantized_ann": _qann(ev, p), "bit_serial_twin": _bit_serial(ev, p),
             "float_ann": _float(ev, p)}
    total = {k: sum(v.values()) * 1e-6 for k, v in parts.items()}
    fixed = sum(_snn(ev, p, spikes=0.0).values()) * 1e-6
    per_spike = (total["snn"] - fixed) / ev.spikes if ev.spikes else 0.0
    crossover = (total["quantized_ann"] - fixed) / per_spike if per_spike > 0 else None
    return {
        "model": p.source, "params": asdict(p),
        "events": {"spikes": ev.spikes, "synaptic_events": ev.synaptic_events, "neuron_updates": ev.neuron_updates,
                   "ann_macs": ev.ann_macs, "input_layer_macs": ev.analog_macs, "spike_rate": ev.spike_rate},
        "uj": total,
        "uj_by_category": {k: {c: e * 1e-6 for c, e in v.items()} for k, v in parts.items()},
        "snn_vs_quantized_ann": total["snn"] / total["quantized_ann"],
        "break_even_spike_rate": (None if crossover is None or crossover <= 0
                                  else crossover / max(1, ev.neurons * ev.timesteps)),
    }


def events_of(snn, report) -> Events:
    """The events of a converted network from a metrics.Report of it."""
    import math

    from .metrics import CostModel

    cost = CostModel(snn.plan, snn.input_shape, snn.input_coding)
    out = cost.shapes.get(snn.plan.output)
    # leaky ReLU: ON and OFF neurons, both phases. The input coder's ON and OFF neurons only generate:
    # 2 populations x T steps, the same count as one population's two phases
    populations = {m.layer_name: m.code.populations if m.leaky else 1 for m in snn._acts()}
    return Events(spikes=report.spikes, synaptic_events=report.sops,
                  neurons=int(sum(la.neurons * populations.get(la.name, 1) for la in snn.layers)),
                  output_neurons=int(math.prod(out[1:])) if out else 0, timesteps=snn.timesteps,
                  analog_macs=report.snn_macs, ann_macs=report.ann_macs)


def format_energy(e: dict) -> list[tuple[str, str]]:
    """Rows for evaluate's table."""
    u = e["uj"]
    rate = e["break_even_spike_rate"]
    return [
        ("energy model", e["model"] + f" (w {e['params']['weight_bits']} bit, acc {e['params']['acc_bits']} bit)"),
        ("energy / image", f"SNN {u['snn']:.2f} uJ, quantized twin {u['quantized_ann']:.2f} uJ, bit-serial twin "
                           f"{u['bit_serial_twin']:.2f} uJ, float ANN {u['float_ann']:.2f} uJ"),
        ("SNN / quantized twin", f"{e['snn_vs_quantized_ann']:.2f}x"),
        ("spike rate", f"{e['events']['spike_rate']:.2%} per neuron and step; break-even with the quantized twin: "
                       + ("none (the SNN's per-step neuron updates alone cost more)" if rate is None
                          else f"{rate:.2%}")),
    ]
