"""The conversion methods: ours (two-phase iLIF, MSB-first codes) and the rate-coded IF baseline.

What differs between them lives here, one object each, as facts named for what they decide --
which options apply, how a threshold is chosen, how the network runs, counts and is timed -- so the
rest of the package asks ``method.pipelined`` instead of testing ``method == "rate"``. A third
method is one more object (and the places its facts are asked).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    default_threshold: str
    # forward() is the quantizer twin: one ANN pass, equal to the simulation (else forward simulates)
    exact_twin: bool
    # layers accumulate, then generate, in a pipeline (schedule.py): latency is the longest path,
    # a new input every max T steps, T per layer possible; else all layers run together for T steps
    pipelined: bool
    # T steps code 2^T levels (greedy MSB-first): T is bounded by the float mantissa
    binary_code: bool
    # per-channel thresholds, sequential calibration and bias correction apply
    calibration_options: bool
    fixed_point: bool  # the dyadic fixed-point mode (and so the integer bundle)
    leaky: bool  # leaky ReLU / PReLU layers (two populations)
    spike_input: bool  # input_coding="spike"
    mse_threshold: bool  # threshold="mse" (the quantizer's error is defined)
    uses_phi: bool  # the offset phi (rate: none)
    analog_every_step: bool  # analog-fed ops (the first layer) compute every step, not once per input

    def threshold_code(self, beta: float, timesteps: int, phi: float) -> tuple[float, int, float]:
        """(beta, T, phi) of the code a threshold is chosen for. The rate baseline's IF neuron has
        one level per step: its threshold is the clipping value itself (beta 1, T 1, no offset)."""
        return (beta, timesteps, phi) if self.binary_code else (1.0, 1, 0.0)


TWO_PHASE = Method("spikeconverter", "two-phase iLIF", "mse", exact_twin=True, pipelined=True, binary_code=True,
                   calibration_options=True, fixed_point=True, leaky=True, spike_input=True, mse_threshold=True,
                   uses_phi=True, analog_every_step=False)
RATE = Method("rate", "rate-coded IF baseline", "percentile:99.99", exact_twin=False, pipelined=False,
              binary_code=False, calibration_options=False, fixed_point=False, leaky=False, spike_input=False,
              mse_threshold=False, uses_phi=False, analog_every_step=True)
METHODS = {m.name: m for m in (TWO_PHASE, RATE)}


def method_named(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; use one of {tuple(METHODS)}")
    return METHODS[name]
