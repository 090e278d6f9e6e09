"""Spike codes: what a spiking layer's neurons code and how their trains are made, in one object.

A layer's ``Params`` (theta, beta, T, phi) say *how* values are coded: the greedy MSB-first train of
neuron.py. A ``Code`` says *what* is coded and by how many populations:

- ``Unsigned``: one population codes z (ReLU, ReLU6: the clip is part of q).
- ``Signed``: the input coder. ON neurons code z+, OFF neurons -z, one threshold; the train is
  ON - OFF (never both at once).
- ``Leaky``: leaky ReLU / PReLU. ON codes z > 0, OFF codes -slope * z (its weights are -slope times
  the ON's); the value is ON - OFF.

The twin (``value``, ``digit_pair``) and the time-stepped neuron (``start``, ``step``) of one code
live side by side here, so that they cannot drift apart; SpikeActivation, the simulator, spike
counting and the energy model ask the layer's code instead of testing flags. A code's own
parameters (the leaky slope) are named by the code too (``own_params``, ``argument``): fixed point
puts each on a grid and export writes each by name without knowing what they mean. A new code is
one new class (and its tests in tests/test_codes.py and the equivalence suite), plus its NumPy twin
in bundle_executor.py where it should run in the torch-free bundle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .neuron import generate_step, generate_step_, initial_potential, quantize_digits


@dataclass(frozen=True)
class Params:
    """One layer's code parameters: threshold (a float or per channel), growth, length, offset."""

    theta: object
    beta: float
    timesteps: int
    phi: float

    def offset(self, like: torch.Tensor) -> torch.Tensor:
        """phi * theta * beta^-T: the offset every generate phase starts above its value."""
        return initial_potential(torch.zeros_like(like), self.theta, self.beta, self.timesteps, self.phi)


class Code:
    """One population coding z (ReLU, ReLU6). Subclasses add a second population."""

    populations = 1
    name = "unsigned"

    # -- the code's own parameters (beyond Params), stored on the layer module ------------------
    def own_params(self, layer) -> dict:
        """The code's own parameters by name, as the layer stores them (a float, or a tensor per
        channel). Each is a factor in [0, 1) of a potential, so a fixed-point grid for it only
        refines the potential's grid (fixed_point.py)."""
        return {}

    def set_own_params(self, layer, values: dict) -> None:
        """Store ``values`` (own_params' names) on the layer (fixed point's rounded values)."""

    def argument(self, layer, z: torch.Tensor):
        """What the code's methods below take as their last argument for pre-activation z: its own
        parameters shaped to broadcast over z (None: it has none)."""
        return None

    def own_shaped(self, layer, like: torch.Tensor) -> dict:
        """own_params shaped to broadcast over a pre-activation like ``like`` (what export writes)."""
        return {}

    def coded(self, z: torch.Tensor, slope=None) -> tuple[torch.Tensor, ...]:
        """What each population codes for pre-activation z."""
        return (z,)

    def observed(self, z: torch.Tensor, slope=None) -> torch.Tensor:
        """What calibration sees for pre-activation z: the values the populations' one threshold
        must code (for two populations, each element's nonzero part: they never both fire)."""
        parts = self.coded(z, slope)
        return parts[0] if len(parts) == 1 else torch.where(parts[0] > 0, parts[0], parts[1])

    # -- the twin --------------------------------------------------------------------------------
    def value(self, z: torch.Tensor, p: Params, quantize, slope=None) -> torch.Tensor:
        """q(z) with ``quantize`` (fast, compiled or straight-through): ON minus OFF."""
        parts = [quantize(c, p.theta, p.beta, p.timesteps, p.phi) for c in self.coded(z, slope)]
        return parts[0] if len(parts) == 1 else parts[0] - parts[1]

    def digit_pair(self, z: torch.Tensor, p: Params, slope=None):
        """(ON digits, OFF digits or None) [T, *z.shape]."""
        d = [quantize_digits(c, p.theta, p.beta, p.timesteps, p.phi) for c in self.coded(z, slope)]
        return d[0], (d[1] if len(d) > 1 else None)

    # -- the neuron ------------------------------------------------------------------------------
    def start(self, v: torch.Tensor, p: Params, slope=None) -> tuple[torch.Tensor, ...]:
        """Each population's potential at the start of its generate phase, from the accumulated
        potential v (the ON population's: z plus the offset)."""
        return (v,)

    def step(self, state: tuple, p: Params) -> tuple[tuple, torch.Tensor]:
        """One generate step of every population. Returns (new state, spikes ON - OFF as a bool or
        a signed tensor)."""
        v, s = generate_step(state[0], p.theta, p.beta)
        return (v,), s

    def step_(self, state: tuple, p: Params, spikes: torch.Tensor) -> None:
        """``step`` in place: the potentials in ``state`` are stepped, ``spikes`` (ON - OFF) written."""
        generate_step_(state[0], p.theta, p.beta, spikes)


class _TwoPopulations(Code):
    populations = 2

    def start(self, v, p, slope=None):
        off = p.offset(v)
        return (v, self.coded(v - off, slope)[1] + off)

    def step(self, state, p):
        v_on, s_on = generate_step(state[0], p.theta, p.beta)
        v_off, s_off = generate_step(state[1], p.theta, p.beta)
        return (v_on, v_off), s_on.to(v_on.dtype) - s_off.to(v_on.dtype)

    def step_(self, state, p, spikes):
        generate_step_(state[0], p.theta, p.beta, spikes)
        spikes.sub_(generate_step_(state[1], p.theta, p.beta, torch.empty_like(spikes)))


class Signed(_TwoPopulations):
    """The input coder: ON codes z+, OFF codes z- (-z)."""

    name = "signed"

    def coded(self, z, slope=None):
        return (z, -z)

    def observed(self, z, slope=None):
        return z.abs()


class Leaky(_TwoPopulations):
    """Leaky ReLU / PReLU: ON codes z > 0, OFF codes -slope * z."""

    name = "leaky"

    def own_params(self, layer):
        return {"slope": layer.negative_slope}

    def set_own_params(self, layer, values):
        layer.negative_slope = values["slope"]

    def argument(self, layer, z):
        return layer.slope_for(z)

    def own_shaped(self, layer, like):
        slope = layer.slope_for(like)
        return {"slope": slope if torch.is_tensor(slope) else torch.tensor(slope)}

    def coded(self, z, slope=None):
        return (z, -slope * z)


UNSIGNED, SIGNED, LEAKY = Code(), Signed(), Leaky()
