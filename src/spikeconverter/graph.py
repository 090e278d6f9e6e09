"""From a user's nn.Module to a graph the spiking engines can run.

Steps (each a function, in this order, all before any numerical work):

1. ``trace`` (tracing.py): torch.fx tracing specialised to the calibration input's shape (shape
   asserts and branches decided once); control flow on values fails here, naming the line.
2. ``functionalize``: in-place ops keep eager semantics: a later read of a tensor an op wrote into
   reads the written value; where a *view* of that memory is read later, the model is refused.
3. ``validate``: every node must be an op the table in ops.py knows and accepts; anything else
   raises ``UnsupportedOperationError`` naming the node, its op and the reason.
4. ``normalize``: every ReLU form becomes one ``SpikeActivation`` module (unique layer names, also
   for a module called several times), identities disappear, a max-pool on pre-activations that
   feed a ReLU moves after the ReLU (ReLU is monotone: the two commute, bit for bit).
5. ``fold_batchnorm``: conv/linear followed by BatchNorm become one conv/linear with bias.
6. ``analyze``: find the *sources* (the input, each spiking activation, max-pools of sources) and,
   for each *sink* (each spiking activation and the output), the linear *region* that computes the
   sink's input current from its sources. Spiking depth and pipeline delays follow from it.

Why regions: between two spiking layers the ANN may do any linear thing -- convs, residual sums and
differences, concats, slices, pads, permutes, interpolation, average pooling, scaling, BN anywhere,
MobileNet-v2's linear bottleneck feeding a sum. In the SNN all of that is one synaptic current: a
linear function of the source spike trains. A region is that function, and both engines use it.

Why max-pools are sources: a max over the trains of one layer is again a train (greedy MSB-first
codes compare like their values), so a max-pool -- after any rearrangement of trains -- is computed
on the trains themselves, step by step, and feeds later regions like a layer does.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from . import ops
from .constants import fold_constants, functional_weights_to_modules
from .errors import UnsupportedOperationError
from .neuron import quantize_compiled, quantize_digits, quantize_fast, quantize_ste
from .tracing import NeedsExample, shape_only, trace


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
    def leaky(self) -> bool:
        """Two spiking populations (leaky ReLU / PReLU): ON for z > 0, OFF for -slope * z."""
        return self.negative_slope is not None

    def _slope_for(self, z: torch.Tensor):
        """The slope shaped to broadcast over z (per channel: dim 1)."""
        if self.slope_map is None:
            return self._slope
        return self.slope_map.reshape([-1] + [1] * (z.dim() - 2)).to(z.dtype)

    def off_input(self, z: torch.Tensor) -> torch.Tensor:
        """What the OFF population codes: -slope * z (its incoming weights are -slope times the ON's)."""
        return -self._slope_for(z) * z

    def observed(self, z: torch.Tensor) -> torch.Tensor:
        """What calibration sees: z, or for two populations the magnitude |leaky(z)| both codes share."""
        return torch.where(z > 0, z, self.off_input(z)) if self.leaky else z

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
            return torch.where(z > 0, z, z * self._slope_for(z))
        return torch.relu(z) if self.cap is None else torch.clamp(z, 0.0, self.cap)

    def potential(self, z: torch.Tensor) -> torch.Tensor:
        """What the spiking neuron codes for pre-activation z: z plus the bias correction."""
        return z if self.shift is None else z + self.shift

    def q(self, z: torch.Tensor) -> torch.Tensor:
        args = (self.theta, self.beta, self.timesteps, self.phi)
        f = quantize_compiled if self.compiled else quantize_fast
        z = self.potential(z)
        if self.signed:  # two polarities: ON spikes code z+, OFF spikes code z-
            return f(z, *args) - f(-z, *args)
        if self.leaky:  # ON codes z+, OFF codes -slope*z (both with the layer's threshold)
            return f(z, *args) - f(self.off_input(z), *args)
        return f(z, *args)

    def digits(self, z: torch.Tensor) -> torch.Tensor:
        """The twin's trains [T, *z.shape] for pre-activation z (signed for the input coder)."""
        on, off = self.digit_pair(z)
        return on if off is None else on - off

    def digit_pair(self, z: torch.Tensor):
        """(ON digits, OFF digits or None) [T, *z.shape]: the twin's trains of each population."""
        args = (self.theta, self.beta, self.timesteps, self.phi)
        z = self.potential(z)
        on = quantize_digits(z, *args)
        if self.signed:
            return on, quantize_digits(-z, *args)
        if self.leaky:
            return on, quantize_digits(self.off_input(z), *args)
        return on, None

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
        args = (theta, self.beta, self.timesteps, self.phi)
        if self.signed:
            return quantize_ste(z, *args) - quantize_ste(-z, *args)
        if self.leaky:
            return quantize_ste(z, *args) - quantize_ste(self.off_input(z), *args)
        return quantize_ste(z, *args)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.mode == "quantize":
            return self.q(z)
        if self.mode == "train":
            return self._train_q(z)
        if self.mode == "observe" and self.observer is not None:
            self.observer.update(self.observed(z))
        return self.ann(z)


# ---------------------------------------------------------------------------------------------
# 1. trace
# ---------------------------------------------------------------------------------------------


def _unsupported(gm, node, reason: str) -> UnsupportedOperationError:
    return UnsupportedOperationError(f"{ops.describe(gm, node)} is not supported: {reason}")


def mark_shapes(gm: fx.GraphModule) -> None:
    """node.meta["shape_value"]: the node computes sizes (x.size(), x.shape[2] // 2), not signals."""
    for node in gm.graph.nodes:
        shape = False
        if node.op == "call_method" and node.target in ("size", "dim"):
            shape = True
        elif node.op == "call_function" and node.target is getattr:
            shape = True
        elif node.op == "call_function" and node.target in ops.SHAPE_ARITH:
            ins = node.all_input_nodes
            shape = bool(ins) and all(n.meta.get("shape_value", False) for n in ins)
        node.meta["shape_value"] = shape


# ---------------------------------------------------------------------------------------------
# 2. functionalize: eager semantics of in-place ops
# ---------------------------------------------------------------------------------------------

_INPLACE_FUNCTIONS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                      operator.itruediv: operator.truediv}


def _out_of_place(gm, node) -> None:
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        mod.inplace = False
        return
    if node.op == "call_method":
        node.target = node.target[:-1] if node.target.endswith("_") else node.target
        return
    t = node.target
    if t in _INPLACE_FUNCTIONS:
        node.target = _INPLACE_FUNCTIONS[t]
    elif "inplace" in node.kwargs:
        node.kwargs = {**node.kwargs, "inplace": False}
    else:
        name = getattr(t, "__name__", "")[:-1]
        for space in (torch.nn.functional, torch):
            if hasattr(space, name):
                node.target = getattr(space, name)
                break


def functionalize(gm: fx.GraphModule) -> fx.GraphModule:
    """Make every in-place op out-of-place without changing what the model computes.

    In eager PyTorch ``a = F.relu(y, inplace=True)`` also changes ``y``: every later read of ``y``
    sees ReLU(y). So later reads of the written tensor are redirected to the op's result. If the
    written memory is shared with a view (``v = y.view(...)`` read after the write, or ``y`` itself a
    view of a tensor read later), that cannot be expressed by redirecting, and the model is refused."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}

    def base(n):
        while isinstance(n, fx.Node) and ops.is_view(gm, n) and n.args and isinstance(n.args[0], fx.Node):
            n = n.args[0]
        return n

    for node in list(gm.graph.nodes):
        if node.op not in ("call_module", "call_function", "call_method") or not ops.is_inplace(gm, node):
            continue
        if not node.args or not isinstance(node.args[0], fx.Node):
            continue
        written = node.args[0]
        root = base(written)
        for other in gm.graph.nodes:
            if order[other] >= order[node] or other is written or base(other) is not root:
                continue
            late = [u for u in other.users if order[u] > order[node]]
            if late:
                raise _unsupported(gm, node, (
                    f"it writes into '{written.name}' in place while '{other.name}' (the same memory) is read "
                    f"afterwards by '{late[0].name}'; eager PyTorch would read the written values there, which this "
                    "graph cannot express: use the out-of-place form (inplace=False, x = x + y)"))
        for u in list(written.users):
            if u is not node and order[u] > order[node]:
                u.replace_input_with(written, node)
        _out_of_place(gm, node)
    gm.graph.lint()
    gm.recompile()
    return gm


# ---------------------------------------------------------------------------------------------
# 3. validate
# ---------------------------------------------------------------------------------------------


def validate(gm: fx.GraphModule) -> None:
    """Raise UnsupportedOperationError for the first node with no exact spiking form."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedOperationError(f"the model must take exactly one tensor input, it takes {len(placeholders)}")
    refused = []
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output") or node.meta.get("shape_value"):
            continue
        reason = _refusal(gm, node)
        if reason is None:
            continue
        if shape_only(node):  # an assert or comparison on shapes: decided once shapes are known
            raise NeedsExample(f"'{node.name}' compares shapes")
        refused.append((node, reason))
    if refused:
        node, reason = refused[0]  # the first in execution order, and how many there are
        more = "" if len(refused) == 1 else (f" (the first of {len(refused)} unsupported ops; the others: "
                                             + ", ".join(n.name for n, _ in refused[1:4])
                                             + (", ..." if len(refused) > 4 else "") + ")")
        raise UnsupportedOperationError(f"{ops.describe(gm, node)} is not supported: {reason}{more}")


def _refusal(gm, node) -> str | None:
    """Why ``node`` has no exact spiking form, or None."""
    if node.op == "get_attr":
        return ("constant tensors inside forward() are not supported (register them as weights of a conv/linear, "
                "or fold them into one)")
    kind = ops.kind_of(gm, node)
    if kind is None:
        return f"not a linear op, a rearrangement or a ReLU, so it has no exact spiking form; {ops.supported_summary()}"
    if kind.role == ops.REFUSED:
        return kind.reason
    return kind.check(gm, node) if kind.check is not None else None


# ---------------------------------------------------------------------------------------------
# 4. normalize
# ---------------------------------------------------------------------------------------------


def _add_module(gm: fx.GraphModule, prefix: str, mod: nn.Module) -> str:
    i = 0
    while hasattr(gm, f"{prefix}{i}"):
        i += 1
    name = f"{prefix}{i}"
    gm.add_module(name, mod)
    return name


def _layer_names(gm, acts: list) -> dict:
    """Unique, stable names: the activation module's path, with ':k' for the k-th call of a module
    called several times (torchvision's blocks call self.relu two or three times); the node's name
    for functional forms."""
    calls: dict = {}
    for n in acts:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    seen: dict = {}
    names = {}
    for n in acts:
        if n.op == "call_module":
            seen[n.target] = seen.get(n.target, 0) + 1
            names[n] = n.target if calls[n.target] == 1 else f"{n.target}:{seen[n.target]}"
        else:
            names[n] = n.name
    used: set = set()
    for n, name in names.items():  # a functional node could be named like a module path
        while name in used:
            name += "'"
        used.add(name)
        names[n] = name
    return names


def normalize(gm: fx.GraphModule) -> fx.GraphModule:
    graph = gm.graph
    acts = [n for n in graph.nodes if ops.role_of(gm, n) == ops.ACTIVATION and not n.meta.get("shape_value")]
    names = _layer_names(gm, acts)
    for node in acts:
        cap, _ = ops.activation_cap(gm, node)
        act = SpikeActivation(cap, negative_slope=ops.activation_slope(gm, node))
        act.layer_name = names[node]
        name = _add_module(gm, "spike_act_", act)
        with graph.inserting_before(node):
            new = graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    for node in list(graph.nodes):
        if ops.role_of(gm, node) == ops.IDENTITY:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    _maxpool_after_relu(gm)
    graph.lint()
    gm.recompile()
    return gm


def _maxpool_after_relu(gm: fx.GraphModule) -> None:
    """relu(maxpool(z)) -> maxpool(relu(z)): equal bit for bit (a max picks one element and ReLU is
    monotone; padding never wins a window that holds a real element), and the max-pool then acts on
    spike trains, where it is exact."""
    graph = gm.graph
    for act in list(graph.nodes):
        if not is_activation(gm, act):
            continue
        pool = act.args[0]
        if not (isinstance(pool, fx.Node) and ops.role_of(gm, pool) == ops.MAXPOOL and len(pool.users) == 1):
            continue
        z = pool.args[0]
        if is_activation(gm, z):
            continue
        with graph.inserting_before(pool):
            new_act = graph.call_module(act.target, (z,))
        pool.replace_input_with(z, new_act)  # shape reads of z (kernel sizes) stay on z
        act.replace_all_uses_with(pool)
        graph.erase_node(act)


# ---------------------------------------------------------------------------------------------
# 5. fold batch norm
# ---------------------------------------------------------------------------------------------


def _fold(lin: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    lin = copy.deepcopy(lin)
    w = lin.weight.detach()
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(
        bn.running_var + bn.eps)
    shift = (bn.bias.detach() if bn.affine else 0.0) - bn.running_mean * scale
    b = lin.bias.detach() if lin.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    shape = [-1] + [1] * (w.ndim - 1)
    lin.weight = nn.Parameter(w * scale.reshape(shape))
    lin.bias = nn.Parameter(b * scale + shift)
    return lin


def fold_batchnorm(gm: fx.GraphModule) -> fx.GraphModule:
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1):
            continue  # a BN on its own stays: it is an affine op and regions handle it
        lin = gm.get_submodule(prev.target)
        if not isinstance(lin, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            continue
        bn = gm.get_submodule(node.target)
        if bn.running_mean is None:
            continue
        name = _add_module(gm, "folded_", _fold(lin, bn))
        prev.target = name
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


# ---------------------------------------------------------------------------------------------
# 6. analyze: sources, regions, depths
# ---------------------------------------------------------------------------------------------


@dataclass
class Region:
    """The function from a sink's sources to its input current (for a max-pool: to its output)."""

    sink: fx.Node  # a SpikeActivation node, the graph's output node, or a max-pool
    value: fx.Node  # the node whose value is the sink's input (for a max-pool: the pool itself)
    nodes: list[fx.Node]  # in topological order
    sources: list[fx.Node]


@dataclass
class GraphPlan:
    gm: fx.GraphModule
    input: fx.Node
    activations: list[fx.Node]  # spiking layers, topological order
    pools: dict[fx.Node, Region]  # max-pools acting on sources (trains, or the analog input)
    regions: dict[fx.Node, Region]  # per activation, and the output node
    output: fx.Node
    coder: fx.Node | None = None  # signed input coder (spike-coded input): a source at depth 0
    depth: dict[fx.Node, int] = field(default_factory=dict)  # window in which a source generates
    accumulate_window: dict[fx.Node, int] = field(default_factory=dict)  # per sink

    @property
    def spiking_depth(self) -> int:
        """L: the spiking layers on the longest path (the output accumulates in window L)."""
        return self.accumulate_window[self.output]

    @property
    def spikers(self) -> list[fx.Node]:
        """Every node whose neurons spike on their own: the layers and the input coder."""
        return list(self.activations) + ([self.coder] if self.coder is not None else [])

    def delay(self, consumer: fx.Node, source: fx.Node) -> int:
        """Whole windows by which ``source``'s trains wait before ``consumer`` takes them (a sink
        accumulates in its accumulate window, a max-pool forwards in its own depth's window)."""
        at = self.depth[consumer] if consumer in self.pools else self.accumulate_window[consumer]
        return at - self.depth[source]

    def roots(self, n: fx.Node) -> list[fx.Node]:
        """The spiking layers whose trains reach ``n`` without crossing another layer (itself for a
        layer; through max-pools; nothing for the analog input)."""
        if n is self.input:
            return []
        if n in self.pools:
            out = []
            for s in self.pools[n].sources:
                out += [r for r in self.roots(s) if r not in out]
            return out
        return [n]

    def is_analog(self, n: fx.Node) -> bool:
        """The input, or a max-pool of the input: values sent once, not trains."""
        return n is self.input or (n in self.pools and all(self.is_analog(s) for s in self.pools[n].sources))

    def layer_name(self, n: fx.Node) -> str:
        return self.gm.get_submodule(n.target).layer_name


def is_activation(gm, node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), SpikeActivation)


def ancestors(start, stop, within=None, signals_only: bool = False) -> tuple[list, set]:
    """Walk back from ``start`` (a node or nodes): returns (the nodes seen, not in ``stop``; the
    ``stop`` nodes reached). ``within``: only nodes in this set are entered. ``signals_only``: do
    not follow shape computations (``x.size(0)`` reads no signal of x)."""
    seen, reached = [], set()
    seen_set: set = set()
    stack = list(start) if isinstance(start, (list, tuple, set)) else [start]
    while stack:
        n = stack.pop()
        if not isinstance(n, fx.Node) or n in seen_set:
            continue
        if n in stop:
            reached.add(n)
            continue
        if within is not None and n not in within:
            continue
        if signals_only and n.meta.get("shape_value"):
            continue
        seen_set.add(n)
        seen.append(n)
        stack.extend(n.all_input_nodes)
    return seen, reached


def analyze(gm: fx.GraphModule) -> GraphPlan:
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    inp = next(n for n in nodes if n.op == "placeholder")
    out = next(n for n in nodes if n.op == "output")
    if not isinstance(out.args[0], fx.Node):
        raise UnsupportedOperationError("the model must return a single tensor")
    sources: set[fx.Node] = {inp}
    acts, pools, coder = [], {}, None

    def region_for(sink, starts, value) -> Region:
        seen, srcs = ancestors(starts, sources)
        if not srcs:
            raise UnsupportedOperationError(f"'{sink.name}' does not depend on the input")
        inside = sorted(seen, key=order.get)
        if sink is value and sink not in inside:
            inside.append(sink)
        return Region(sink, value, inside, sorted(srcs, key=order.get))

    for n in nodes:
        if is_activation(gm, n) and gm.get_submodule(n.target).signed:
            if n.args[0] is not inp:
                raise UnsupportedOperationError(f"input coder '{n.name}' must take the input directly")
            coder = n
            sources.add(n)
        elif is_activation(gm, n):
            acts.append(n)
            sources.add(n)
        elif ops.role_of(gm, n) == ops.MAXPOOL:
            region = region_for(n, n.all_input_nodes, n)
            _check_pool_region(gm, n, region, inp, coder)
            pools[n] = region
            sources.add(n)
    if not acts:
        raise UnsupportedOperationError("the model has no ReLU/ReLU6 activation: there is nothing to make spike")

    regions = {a: region_for(a, [a.args[0]], a.args[0]) for a in acts}
    regions[out] = region_for(out, [out.args[0]], out.args[0])
    plan = GraphPlan(gm, inp, acts, pools, regions, out, coder)
    plan.depth[inp] = 0
    if coder is not None:
        plan.depth[coder] = 0  # the image is its spike train: it is sent in window 0
    for n in nodes:  # topological: sources' depths are known before their consumers
        if n in pools:
            plan.depth[n] = max(plan.depth[s] for s in pools[n].sources)
        elif n in regions:
            w = max(plan.depth[s] for s in regions[n].sources)
            plan.accumulate_window[n] = w
            if n is not out:
                plan.depth[n] = w + 1
    return plan


def _check_pool_region(gm, pool, region, inp, coder) -> None:
    """A max-pool is exact on trains only through rearrangements (each neuron's train copied or
    moved, zeros where padding adds silent neurons) -- not through sums or scalings."""
    if coder is not None and coder in region.sources:
        raise UnsupportedOperationError(f"{ops.describe(gm, pool)} max-pools the signed input code; use analog input "
                                        "for this model")
    leaky = [s for s in region.sources if is_activation(gm, s) and gm.get_submodule(s.target).leaky]
    if leaky:
        # a max over two-population codes would compare ON - OFF words; not built yet
        raise UnsupportedOperationError(f"{ops.describe(gm, pool)} max-pools the output of leaky ReLU layer "
                                        f"'{leaky[0].name}' (two spike populations), which is not supported yet; "
                                        "use a stride-2 conv or average pooling there")
    analog = [s for s in region.sources if s is inp]
    if analog and len(analog) != len(region.sources):
        raise UnsupportedOperationError(f"{ops.describe(gm, pool)} takes a max over the analog input and spike trains "
                                        "together, which has no exact spiking form")
    if analog:
        return  # a max-pool of the input is computed once, on the analog values
    for n in region.nodes:
        if n is pool or n.meta.get("shape_value"):
            continue
        if ops.role_of(gm, n) not in (ops.REARRANGE,):
            raise UnsupportedOperationError(
                f"{ops.describe(gm, pool)} is not supported: it max-pools the output of {ops.describe(gm, n)}, "
                "a weighted or summed combination of spike trains; a max over sums has no exact spiking form. A "
                "max-pool directly after ReLU (or after concat, slicing, zero padding, permutes or nearest "
                "upsampling of ReLU outputs) is exact; a max-pool followed directly by ReLU is moved after it.")


def _mixed_windows(plan: GraphPlan, x1: torch.Tensor, label) -> list:
    """Per max-pool on trains: (pool, max label in each window, windows whose real neurons carry
    different labels). ``label(i, shape)`` gives the i-th spiking layer's neurons their labels
    (> 0; silent padding is 0). Computed once on one input's shapes."""
    shapes = node_shapes(plan.gm, x1)
    ids = {s: label(i, shapes[s]) for i, s in enumerate(plan.spikers) if s in shapes}
    out = []
    for pool, region in plan.pools.items():
        if plan.is_analog(pool):
            continue
        vals = {s: ids[s] for s in region.sources}
        hi = run_region(plan.gm, region, vals)
        # silent padding is 0; for the minimum over real neurons it must never win, so mark it +inf
        lo = -run_region(plan.gm, region, vals, transform=_neg_silent_inf)
        out.append((pool, hi, (hi != lo) & (hi != 0)))
        ids[pool] = hi
    return out


def check_pools(plan: GraphPlan, x1: torch.Tensor) -> None:
    """Every max-pool window must hold trains of one layer (or silent padding): codes of layers with
    different thresholds do not compare like their values."""
    if not plan.pools:
        return
    for pool, _, mixed in _mixed_windows(plan, x1, _layer_labels(x1.device)):
        if bool(mixed.any()):
            raise UnsupportedOperationError(
                f"{ops.describe(plan.gm, pool)} has windows that mix the spike trains of different layers (e.g. a "
                "concat along a spatial axis): their codes have different thresholds and do not compare like their "
                "values. Pool each layer's output before concatenating.")


_LAYER_STRIDE = 2.0**24  # label = layer * stride + channel: exact in float64


def _layer_labels(device):
    return lambda i, shape: torch.full(shape, float(i + 1), dtype=torch.float64, device=device)


def _channel_labels(i: int, shape) -> torch.Tensor:
    ch = torch.arange(shape[1] if len(shape) > 1 else 1, dtype=torch.float64)
    ch = ch.reshape((1, -1) + (1,) * max(len(shape) - 2, 0)) if len(shape) > 1 else ch
    return (i + 1) * _LAYER_STRIDE + torch.zeros(shape, dtype=torch.float64) + ch


def pools_mixing_channels(plan: GraphPlan, x1: torch.Tensor) -> set:
    """Spiking layers whose trains reach a max-pool window that holds several of their channels
    (after a pixel shuffle, a flatten, ...): per-channel thresholds would make codes that do not
    compare like their values there, so such layers keep one threshold."""
    if not plan.pools:
        return set()
    mixed = set()
    for _, hi, bad in _mixed_windows(plan, x1, lambda i, shape: _channel_labels(i, shape).to(x1.device)):
        for layer in torch.unique(torch.floor(hi[bad] / _LAYER_STRIDE)).tolist():
            mixed.add(plan.spikers[int(layer) - 1])
    return mixed


def _neg_silent_inf(node, args, kwargs):
    """For check_pools' minimum: the pool's input with silent zeros as +inf, negated."""
    x = args[0]
    return (-torch.where(x == 0, torch.full_like(x, float("inf")), x),) + tuple(args[1:]), kwargs


def insert_input_coder(gm: fx.GraphModule) -> fx.Node:
    """Spike-coded input: a signed SpikeActivation right after the input (q(x+) - q(x-))."""
    inp = next(n for n in gm.graph.nodes if n.op == "placeholder")
    coder_mod = SpikeActivation(signed=True)
    coder_mod.layer_name = "input"
    name = _add_module(gm, "spike_input_", coder_mod)
    with gm.graph.inserting_after(inp):
        coder = gm.graph.call_module(name, (inp,))
    inp.replace_all_uses_with(coder, delete_user_cb=lambda u: u is not coder)
    gm.recompile()
    return coder


def _traced(model, example):
    gm = trace(model, example)
    fold_constants(gm)
    functional_weights_to_modules(gm)
    mark_shapes(gm)
    functionalize(gm)
    validate(gm)
    return gm


def prepare(model: nn.Module, input_coding: str = "analog", example=None) -> GraphPlan:
    """trace -> functionalize -> validate -> normalize -> fold_batchnorm -> (input coder) -> analyze.
    ``example``: a batch shaped like the inputs to convert, or a function that returns one (the
    calibration data's first batch; read only if needed): a model that asserts or branches on shapes
    is traced specialised to its shape (tracing.py); any other is traced as written, before any
    data is read."""
    try:  # as written; a model that checks or branches on shapes is traced again on an example
        gm = _traced(model, None)
    except NeedsExample:
        x = example() if callable(example) else example
        if x is None:
            raise UnsupportedOperationError("the model checks or branches on input shapes; pass calibration data "
                                            "so that it can be traced for their shape") from None
        gm = _traced(model, x)
    gm = fold_batchnorm(normalize(gm))
    if input_coding == "spike":
        insert_input_coder(gm)
    return analyze(gm)


def node_values(gm: fx.GraphModule, x1: torch.Tensor) -> dict:
    """Every node's value for input ``x1``, from one ANN-mode pass."""
    env = {}
    acts = [m for m in gm.modules() if isinstance(m, SpikeActivation)]
    modes = [m.mode for m in acts]

    class Rec(fx.Interpreter):
        def run_node(self, n):
            env[n] = super().run_node(n)
            return env[n]

    for m in acts:
        m.mode = "ann"
    try:
        with torch.no_grad():
            Rec(gm).run(x1)
    finally:
        for m, mode in zip(acts, modes):
            m.mode = mode
    return env


def node_shapes(gm: fx.GraphModule, x1: torch.Tensor) -> dict:
    """The output shape of every tensor-valued node for input ``x1``."""
    return {n: tuple(v.shape) for n, v in node_values(gm, x1).items() if torch.is_tensor(v)}


# ---------------------------------------------------------------------------------------------
# Evaluating a region (used by both simulators, the cost model and fixed point)
# ---------------------------------------------------------------------------------------------


def run_region(gm: fx.GraphModule, region: Region, values: dict, with_bias: bool = True, transform=None):
    """Evaluate the region with the given source values. ``with_bias=False`` drops every constant
    term (conv/linear biases, BN shifts, added numbers, constant padding), giving the linear part
    (ops.linear_part says how, per op). ``transform(node, args, kwargs) -> (args, kwargs)``, if
    given, rewrites the evaluated arguments of the region's max-pool (check_pools, the rate pool)."""
    env = dict(values)

    def load(a):
        return fx.node.map_arg(a, lambda n: env[n])

    for node in region.nodes:
        args, kwargs = load(node.args), load(node.kwargs)
        if node.op not in ("call_module", "call_function", "call_method"):
            raise UnsupportedOperationError(f"unexpected node '{node.name}' ({node.op}) inside a linear region")
        if node is region.sink and transform is not None:
            args, kwargs = transform(node, args, kwargs)
        if with_bias or node.meta.get("shape_value"):
            env[node] = ops.callable_of(gm, node)(*args, **kwargs)
        else:
            env[node] = ops.linear_part(gm, node, args, kwargs)
    return env[region.value]
