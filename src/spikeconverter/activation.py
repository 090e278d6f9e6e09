"""The spiking layer as a module: ``SpikeActivation`` stands where the ANN had a ReLU (its ANN
mode), computes the exact twin of the spiking layer (quantize mode: ``q``, ``digits``), feeds the
calibration observers (observe mode) and trains thresholds (train mode). Its neuron dynamics are
neuron.py's pure functions; the engines step the same code."""

from __future__ import annotations

import torch
from torch import nn

from .codes import LEAKY, SIGNED, UNSIGNED, Code, Params
from .neuron import quantize_compiled, quantize_fast, quantize_ste


class SpikeActivation(nn.Module):
    """Stands where the ANN had ReLU or ReLU6 (or, with ``signed=True``, codes the input).

    mode "ann": the original activation. mode "observe": the same, and the observer sees z.
    mode "quantize": q(z + shift), the exact twin of the spiking layer (ReLU and the clip are part of q).
    mode "train": the same value with straight-through gradients, thresholds and shift learnable
    (``make_trainable`` / ``freeze``; used by fine-tuning).

    ``theta`` is one threshold for the layer (a float) or one per channel (a tensor shaped to
    broadcast over dim 1 of z, e.g. [C, 1, 1]; kept as a buffer so ``.double()``/``.to()`` reach it).
    ``shift`` (None or per channel, like theta) is the bias correction: a constant added to the
    pre-activation of the spiking layer only -- the float ANN (mode "ann") never sees it. The
    simulator puts it into the initial potential with the bias.
    """

    def __init__(self, cap: float | None = None, signed: bool = False, negative_slope=None):
        super().__init__()
        self.cap = cap
        self.signed = signed
        # leaky ReLU / PReLU (a float, or a tensor per channel): two populations, ON codes z > 0 and
        # OFF codes -slope*z, with the layer's threshold; the layer's value is ON - OFF
        self._slope: float | None = None
        self.register_buffer("slope_map", None)
        self.negative_slope = negative_slope
        self.mode = "ann"
        self._theta: float | None = None
        self.register_buffer("theta_map", None)
        self.register_buffer("shift", None)
        self.beta: float = 2.0
        self.timesteps: int = 1
        self.phi: float = 0.0
        self.observer = None
        self.compiled = False  # use the fused kernel (float32, beta = 2) for q
        self.train_log_theta: nn.Parameter | None = None  # mode "train": log theta (positive by construction)
        self.train_shift: nn.Parameter | None = None
        self.layer_name = ""  # unique: the activation module's path (":k" for its k-th call) or the node's name

    @property
    def theta(self):
        return self._theta if self.theta_map is None else self.theta_map

    @theta.setter
    def theta(self, value) -> None:
        if torch.is_tensor(value) and value.dim() > 0:
            self.theta_map, self._theta = value, None
        else:
            self.theta_map, self._theta = None, (None if value is None else float(value))

    @property
    def per_channel(self) -> bool:
        return self.theta_map is not None

    @property
    def negative_slope(self):
        return self._slope if self.slope_map is None else self.slope_map

    @negative_slope.setter
    def negative_slope(self, value) -> None:
        if torch.is_tensor(value) and value.numel() > 1:
            self.slope_map, self._slope = value.detach().clone(), None
        else:
            self.slope_map, self._slope = None, (None if value is None else float(value))

    @property
    def code(self) -> Code:
        """What this layer's neurons code (codes.py): one population, or two (input coder, leaky)."""
        return SIGNED if self.signed else LEAKY if self.leaky else UNSIGNED

    @property
    def params(self) -> Params:
        return Params(self.theta, self.beta, self.timesteps, self.phi)

    @property
    def leaky(self) -> bool:
        """Two spiking populations (leaky ReLU / PReLU): ON for z > 0, OFF for -slope * z."""
        return self.negative_slope is not None

    def slope_for(self, z: torch.Tensor):
        """The slope shaped to broadcast over z (per channel: dim 1)."""
        if self.slope_map is None:
            return self._slope
        return self.slope_map.reshape([-1] + [1] * (z.dim() - 2)).to(z.dtype)

    def off_input(self, z: torch.Tensor) -> torch.Tensor:
        """What the OFF population codes: -slope * z (its incoming weights are -slope times the ON's)."""
        return -self.slope_for(z) * z

    def observed(self, z: torch.Tensor) -> torch.Tensor:
        """What calibration sees (the code says: z, |z| for the input coder, |leaky(z)| for two
        populations -- the magnitude their one threshold codes)."""
        return self.code.observed(z, self.code.argument(self, z))

    def extra_repr(self) -> str:
        s = f"mode={self.mode}, cap={self.cap}"
        if self.per_channel:
            th = self.theta_map
            s += f", theta=[{th.numel()} channels, {float(th.min()):.4g}..{float(th.max()):.4g}]"
        elif self.theta is not None:
            s += f", theta={self.theta:.6g}"
        if self.theta is not None:
            s += f", beta={self.beta}, T={self.timesteps}, phi={self.phi}"
        if self.shift is not None:
            s += ", bias-corrected"
        if self.leaky:
            s += f", negative_slope={'per channel' if self.slope_map is not None else self._slope}"
        return s + (", signed" if self.signed else "")

    # -- state_dict: complete, so a converted network's state_dict round-trips its thresholds ----
    def get_extra_state(self) -> dict:
        # the neuron's scalars (a per-layer theta is a float, not a tensor); theta_map and shift
        # are buffers and travel as tensors
        return {"theta": self._theta, "beta": self.beta, "timesteps": self.timesteps, "phi": self.phi,
                "mode": self.mode, "negative_slope": self._slope}

    def set_extra_state(self, state: dict) -> None:
        self.beta, self.timesteps, self.phi, self.mode = state["beta"], state["timesteps"], state["phi"], state["mode"]
        if state["theta"] is not None:
            self.theta = state["theta"]
        if state.get("negative_slope") is not None:
            self._slope = state["negative_slope"]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # theta_map / shift are registered as None until set: where the state_dict holds them they
        # get the saved shape first (the loader then copies the values in), where not they are cleared
        for name in ("theta_map", "shift", "slope_map"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
            elif name in self._buffers:
                setattr(self, name, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def ann(self, z: torch.Tensor) -> torch.Tensor:
        if self.signed:
            return z
        if self.leaky:  # as F.leaky_relu / F.prelu compute it
            return torch.where(z > 0, z, z * self.slope_for(z))
        return torch.relu(z) if self.cap is None else torch.clamp(z, 0.0, self.cap)

    def potential(self, z: torch.Tensor) -> torch.Tensor:
        """What the spiking neuron codes for pre-activation z: z plus the bias correction."""
        return z if self.shift is None else z + self.shift

    def q(self, z: torch.Tensor) -> torch.Tensor:
        z = self.potential(z)
        return self.code.value(z, self.params, quantize_compiled if self.compiled else quantize_fast, self.code.argument(self, z))

    def digits(self, z: torch.Tensor) -> torch.Tensor:
        """The twin's trains [T, *z.shape] for pre-activation z (ON - OFF for two populations)."""
        on, off = self.digit_pair(z)
        return on if off is None else on - off

    def digit_pair(self, z: torch.Tensor):
        """(ON digits, OFF digits or None) [T, *z.shape]: the twin's trains of each population."""
        z = self.potential(z)
        return self.code.digit_pair(z, self.params, self.code.argument(self, z))

    # -- the neuron, step by step (the simulator) --------------------------------------------------
    def generate_start(self, v: torch.Tensor) -> tuple:
        """Every population's potential when the generate phase starts from accumulated v."""
        return self.code.start(v, self.params, self.code.argument(self, v))

    def generate_step(self, state: tuple) -> tuple[tuple, torch.Tensor]:
        """One generate step: (new state, spikes, ON - OFF)."""
        return self.code.step(state, self.params)

    def generate_step_(self, state: tuple, spikes: torch.Tensor) -> None:
        """``generate_step`` in place: the potentials in ``state`` stepped, ``spikes`` written."""
        self.code.step_(state, self.params, spikes)

    # -- fine-tuning ---------------------------------------------------------------------------
    def make_trainable(self, device=None) -> None:
        """Mode "train": theta (per layer or per channel, as now) and the shift become parameters."""
        theta = self.theta_map if self.per_channel else torch.tensor(self.theta, device=device)
        dtype = theta.dtype if self.per_channel else torch.float32
        self.train_log_theta = nn.Parameter(theta.to(dtype).log().clone())
        self.train_shift = None if self.shift is None else nn.Parameter(self.shift.clone())
        self.mode = "train"

    def freeze(self) -> None:
        """Back to mode "quantize" with the learned values (a per-layer theta stays a float)."""
        theta = self.train_log_theta.detach().exp()
        self.theta = theta if self.per_channel else float(theta)
        if self.train_shift is not None:
            self.shift = self.train_shift.detach().clone()
        self.train_log_theta = self.train_shift = None
        self.mode = "quantize"

    def _train_q(self, z: torch.Tensor) -> torch.Tensor:
        theta = self.train_log_theta.exp()
        if self.train_shift is not None:
            z = z + self.train_shift
        return self.code.value(z, Params(theta, self.beta, self.timesteps, self.phi), quantize_ste, self.code.argument(self, z))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.mode == "quantize":
            return self.q(z)
        if self.mode == "train":
            return self._train_q(z)
        if self.mode == "observe" and self.observer is not None:
            self.observer.update(self.observed(z))
        return self.ann(z)
