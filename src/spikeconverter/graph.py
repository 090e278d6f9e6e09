"""From a user's nn.Module to a graph the spiking engines can run.

Steps (each a function, in this order, all before any numerical work):

1. ``trace``: torch.fx symbolic tracing; data-dependent control flow fails here with a clear error.
2. ``validate``: every node must be an op we can convert; anything else raises
   ``UnsupportedOperationError`` naming the node, its op and what is supported.
3. ``normalize``: every ReLU/ReLU6 form (module, functional, method, in-place) becomes one
   ``SpikeActivation`` module, functional max-pools become modules, dropout/identity disappear,
   in-place adds become adds.
4. ``fold_batchnorm``: conv/linear followed by BatchNorm become one conv/linear with bias.
5. ``analyze``: find the *sources* (the input, each spiking activation, max-pools of sources) and,
   for each *sink* (each spiking activation and the output), the linear *region* that computes the
   sink's input current from its sources. Spiking depth and pipeline delays follow from it.

Why regions: between two spiking layers the ANN may do any linear thing -- a conv, a residual sum
of a conv and a shortcut, a concat, average pooling, MobileNet-v2's linear bottleneck feeding a sum
that feeds the next block. In the SNN all of that is one synaptic current: a linear function of the
source spike trains. A region is that function, and both the fast path and the simulator use it.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .neuron import quantize_compiled, quantize_fast


class UnsupportedOperationError(ValueError):
    """The model holds an operation that has no exact spiking form."""


SUPPORTED = (
    "Conv1d/Conv2d (any groups), Linear, BatchNorm1d/2d, ReLU/ReLU6/Hardtanh(0,6) (modules, F.relu, "
    "torch.relu, F.relu6, F.hardtanh(0,6), x.relu(), in-place forms), AvgPool1d/2d, AdaptiveAvgPool1d/2d, "
    "MaxPool2d directly on spike trains, Flatten/flatten/view/reshape, squeeze/unsqueeze, mean, Dropout, Identity, "
    "+/torch.add/+=, torch.cat, size/shape"
)

# ---------------------------------------------------------------------------------------------
# The activation that becomes a spiking layer
# ---------------------------------------------------------------------------------------------


class SpikeActivation(nn.Module):
    """Stands where the ANN had ReLU or ReLU6 (or, with ``signed=True``, codes the input).

    mode "ann": the original activation. mode "observe": the same, and the observer sees z.
    mode "quantize": q(z), the exact twin of the spiking layer (ReLU and the clip are part of q).
    """

    def __init__(self, cap: float | None = None, signed: bool = False):
        super().__init__()
        self.cap = cap
        self.signed = signed
        self.mode = "ann"
        self.theta: float | None = None
        self.beta: float = 2.0
        self.timesteps: int = 1
        self.phi: float = 0.0
        self.observer = None
        self.compiled = False  # use the fused kernel (float32, beta = 2) for q

    def extra_repr(self) -> str:
        s = f"mode={self.mode}, cap={self.cap}"
        if self.theta is not None:
            s += f", theta={self.theta:.6g}, beta={self.beta}, T={self.timesteps}, phi={self.phi}"
        return s + (", signed" if self.signed else "")

    def ann(self, z: torch.Tensor) -> torch.Tensor:
        if self.signed:
            return z
        return torch.relu(z) if self.cap is None else torch.clamp(z, 0.0, self.cap)

    def q(self, z: torch.Tensor) -> torch.Tensor:
        args = (self.theta, self.beta, self.timesteps, self.phi)
        f = quantize_compiled if self.compiled else quantize_fast
        if self.signed:  # two polarities: ON spikes code z+, OFF spikes code z-
            return f(z, *args) - f(-z, *args)
        return f(z, *args)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.mode == "quantize":
            return self.q(z)
        if self.mode == "observe" and self.observer is not None:
            self.observer.update(z)
        return self.ann(z)


# ---------------------------------------------------------------------------------------------
# 1. trace
# ---------------------------------------------------------------------------------------------


def trace(model: nn.Module) -> fx.GraphModule:
    model = copy.deepcopy(model).eval()
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, ... for control flow on tensors
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnsupportedOperationError(
            f"the model cannot be traced by torch.fx ({type(e).__name__}: {msg}); data-dependent control flow "
            f"(if/for on tensor values) has no static spiking graph. Supported: {SUPPORTED}"
        ) from None


# ---------------------------------------------------------------------------------------------
# 2. validate
# ---------------------------------------------------------------------------------------------

ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
LINEAR_MODULES = (
    nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
)
ACT_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.hardtanh, torch.relu_, F.relu_, F.hardtanh_}
ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
LINEAR_FUNCTIONS = {torch.cat, torch.concat, torch.flatten, F.avg_pool2d, F.avg_pool1d, F.adaptive_avg_pool2d,
                    F.adaptive_avg_pool1d, F.dropout, torch.mean, torch.squeeze, torch.unsqueeze}
SHAPE_FUNCTIONS = {getattr, operator.getitem}
SHAPE_ARITH = {operator.mul, operator.floordiv, operator.sub, operator.add, operator.truediv}
ACT_METHODS = {"relu", "relu_"}
LINEAR_METHODS = {"view", "reshape", "flatten", "contiguous", "clone", "mean", "squeeze", "unsqueeze", "add", "add_"}
SHAPE_METHODS = {"size", "dim"}
MAXPOOL_FUNCTIONS = {F.max_pool2d}


def _target_name(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"{type(gm.get_submodule(node.target)).__name__} '{node.target}'"
    if node.op == "call_function":
        return getattr(node.target, "__qualname__", None) or getattr(node.target, "__name__", str(node.target))
    return str(node.target)


def _unsupported(gm, node, reason: str) -> UnsupportedOperationError:
    return UnsupportedOperationError(
        f"node '{node.name}' ({node.op} {_target_name(gm, node)}) is not supported: {reason}. Supported: {SUPPORTED}"
    )


def _hardtanh_ok(lo, hi) -> bool:
    return float(lo) == 0.0 and float(hi) == 6.0


def _is_shape_value(node, shape_nodes: set) -> bool:
    return not isinstance(node, fx.Node) or node in shape_nodes


def validate(gm: fx.GraphModule) -> None:
    """Raise UnsupportedOperationError for the first node with no exact spiking form."""
    shape_nodes: set[fx.Node] = set()
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedOperationError(f"the model must take exactly one tensor input, it takes {len(placeholders)}")
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op == "get_attr":
            raise _unsupported(gm, node, "constant tensors inside forward() are not supported")
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if isinstance(mod, nn.Hardtanh) and not isinstance(mod, nn.ReLU6):
                if not _hardtanh_ok(mod.min_val, mod.max_val):
                    raise _unsupported(gm, node, f"Hardtanh({mod.min_val}, {mod.max_val}) is not ReLU6")
                continue
            if isinstance(mod, ACT_MODULES + LINEAR_MODULES):
                continue
            if isinstance(mod, nn.MaxPool2d):
                if mod.ceil_mode or mod.return_indices:
                    raise _unsupported(gm, node, "MaxPool2d with ceil_mode or return_indices")
                continue
            raise _unsupported(gm, node, f"{type(mod).__name__} has no exact spiking form")
        if node.op == "call_function":
            t = node.target
            if t in SHAPE_FUNCTIONS:
                if t is getattr or (isinstance(node.args[0], fx.Node) and node.args[0] in shape_nodes):
                    shape_nodes.add(node)
                continue
            if t in SHAPE_ARITH and all(_is_shape_value(a, shape_nodes) for a in node.args):
                shape_nodes.add(node)
                continue
            if t in (F.hardtanh, F.hardtanh_):
                lo = node.kwargs.get("min_val", node.args[1] if len(node.args) > 1 else -1.0)
                hi = node.kwargs.get("max_val", node.args[2] if len(node.args) > 2 else 1.0)
                if not _hardtanh_ok(lo, hi):
                    raise _unsupported(gm, node, f"hardtanh({lo}, {hi}) is not ReLU6")
                continue
            if t in ADD_FUNCTIONS:
                tensors = [a for a in node.args[:2] if isinstance(a, fx.Node)]
                if not tensors:
                    raise _unsupported(gm, node, "add of constants")
                continue
            if t in ACT_FUNCTIONS or t in LINEAR_FUNCTIONS:
                continue
            if t in MAXPOOL_FUNCTIONS:
                if node.kwargs.get("ceil_mode") or node.kwargs.get("return_indices"):
                    raise _unsupported(gm, node, "max_pool2d with ceil_mode or return_indices")
                continue
            what = "an element-wise product of signals" if t in (operator.mul, torch.mul) else "not a linear op or ReLU"
            raise _unsupported(gm, node, what)
        if node.op == "call_method":
            if node.target in SHAPE_METHODS:
                shape_nodes.add(node)
                continue
            if node.target in ACT_METHODS or node.target in LINEAR_METHODS:
                continue
            raise _unsupported(gm, node, f"tensor method .{node.target}() is not a linear op or ReLU")


# ---------------------------------------------------------------------------------------------
# 3. normalize
# ---------------------------------------------------------------------------------------------


def _activation_cap(gm, node) -> tuple[bool, float | None]:
    """(is it a spiking activation, its clip: None for ReLU, 6 for ReLU6)."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, nn.ReLU):
            return True, None
        if isinstance(mod, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
            return True, 6.0
    if node.op == "call_function":
        if node.target in (F.relu, torch.relu, torch.relu_, F.relu_):
            return True, None
        if node.target in (F.relu6, F.hardtanh, F.hardtanh_):
            return True, 6.0
    if node.op == "call_method" and node.target in ACT_METHODS:
        return True, None
    return False, None


def _add_module(gm: fx.GraphModule, prefix: str, mod: nn.Module) -> str:
    i = 0
    while hasattr(gm, f"{prefix}{i}"):
        i += 1
    name = f"{prefix}{i}"
    gm.add_module(name, mod)
    return name


def normalize(gm: fx.GraphModule) -> fx.GraphModule:
    graph = gm.graph
    for node in list(graph.nodes):
        is_act, cap = _activation_cap(gm, node)
        if is_act:
            name = _add_module(gm, "spike_act_", SpikeActivation(cap))
            with graph.inserting_before(node):
                new = graph.call_module(name, (node.args[0],))
            # the name users know the layer by: the activation module's path, or the functional's node
            new.meta["layer_name"] = node.target if node.op == "call_module" else node.name
            new.meta["orig_name"] = new.meta["layer_name"]
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            continue
        if node.op == "call_function" and node.target in MAXPOOL_FUNCTIONS:
            a = list(node.args) + [None] * 5
            kw = node.kwargs
            mod = nn.MaxPool2d(kw.get("kernel_size", a[1]), kw.get("stride", a[2]), kw.get("padding", a[3] or 0),
                               kw.get("dilation", a[4] or 1))
            name = _add_module(gm, "spike_maxpool_", mod)
            with graph.inserting_before(node):
                new = graph.call_module(name, (node.args[0],))
            new.meta["orig_name"] = f"{node.name}' (F.max_pool2d"
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            continue
        drop = (node.op == "call_module" and isinstance(gm.get_submodule(node.target),
                                                       (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)))
        drop |= node.op == "call_function" and node.target is F.dropout
        drop |= node.op == "call_method" and node.target in ("contiguous", "clone")
        if drop:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            continue
        # in-place adds would write into the spike-train buffers the simulator feeds in
        if node.op == "call_function" and node.target is operator.iadd:
            node.target = operator.add
        if node.op == "call_method" and node.target == "add_":
            node.target = "add"
    graph.lint()
    gm.recompile()
    return gm


# ---------------------------------------------------------------------------------------------
# 4. fold batch norm
# ---------------------------------------------------------------------------------------------


def _fold(lin: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    lin = copy.deepcopy(lin)
    w = lin.weight.detach()
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(
        bn.running_var + bn.eps)
    shift = (bn.bias.detach() if bn.affine else 0.0) - bn.running_mean * scale
    b = lin.bias.detach() if lin.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
    shape = [-1] + [1] * (w.ndim - 1)
    lin.weight = nn.Parameter(w * scale.reshape(shape))
    lin.bias = nn.Parameter(b * scale + shift)
    return lin


def fold_batchnorm(gm: fx.GraphModule) -> fx.GraphModule:
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1):
            continue  # a BN on its own stays: it is an affine op and regions handle it
        lin = gm.get_submodule(prev.target)
        if not isinstance(lin, (nn.Conv1d, nn.Conv2d, nn.Linear)):
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
# 5. analyze: sources, regions, depths
# ---------------------------------------------------------------------------------------------


@dataclass
class Region:
    """The linear function from a sink's sources to its input current."""

    sink: fx.Node  # a SpikeActivation node, or the graph's output node
    value: fx.Node  # the node whose value is the sink's input (the activation's argument / the output)
    nodes: list[fx.Node]  # in topological order
    sources: list[fx.Node]


@dataclass
class GraphPlan:
    gm: fx.GraphModule
    input: fx.Node
    activations: list[fx.Node]  # spiking layers, topological order
    maxpools: dict[fx.Node, fx.Node]  # spiking max-pool -> the source it pools
    regions: dict[fx.Node, Region]  # per activation, and the output node
    output: fx.Node
    coder: fx.Node | None = None  # signed input coder (spike-coded input): a source at depth 0
    depth: dict[fx.Node, int] = field(default_factory=dict)  # window in which a source generates
    accumulate_window: dict[fx.Node, int] = field(default_factory=dict)  # per sink

    @property
    def spiking_depth(self) -> int:
        """L: the spiking layers on the longest path (the output accumulates in window L)."""
        return self.accumulate_window[self.output]

    def delay(self, sink: fx.Node, source: fx.Node) -> int:
        """Whole windows by which ``source``'s trains wait before ``sink`` accumulates them."""
        return self.accumulate_window[sink] - self.depth[source]

    def root_source(self, n: fx.Node) -> fx.Node:
        while n in self.maxpools:
            n = self.maxpools[n]
        return n


def is_activation(gm, node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), SpikeActivation)


def is_maxpool(gm, node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.MaxPool2d)


def analyze(gm: fx.GraphModule) -> GraphPlan:
    nodes = list(gm.graph.nodes)
    inp = next(n for n in nodes if n.op == "placeholder")
    out = next(n for n in nodes if n.op == "output")
    if not isinstance(out.args[0], fx.Node):
        raise UnsupportedOperationError("the model must return a single tensor")
    sources: set[fx.Node] = {inp}
    acts, maxpools, coder = [], {}, None
    for n in nodes:
        if is_activation(gm, n) and gm.get_submodule(n.target).signed:
            if n.args[0] is not inp:
                raise UnsupportedOperationError(f"input coder '{n.name}' must take the input directly")
            coder = n
            sources.add(n)
        elif is_activation(gm, n):
            acts.append(n)
            sources.add(n)
        elif is_maxpool(gm, n):
            src = n.args[0]
            if src is coder:
                raise UnsupportedOperationError(
                    f"node '{n.name}' max-pools the signed input code; use analog input for this model")
            if src not in sources:
                who = n.meta.get("orig_name", f"{n.name}' (MaxPool2d '{n.target}'")
                what = getattr(src, "meta", {}).get("orig_name", getattr(src, "name", src))
                raise UnsupportedOperationError(
                    f"node '{who}) pools '{what}', which is not a spike "
                    "train (the input, a ReLU/ReLU6 output or another such max-pool): a max over a sum of trains has "
                    "no exact spiking form. Put the max-pool right after the activation (they commute)."
                )
            maxpools[n] = src
            sources.add(n)
    if not acts:
        raise UnsupportedOperationError("the model has no ReLU/ReLU6 activation: there is nothing to make spike")
    order = {n: i for i, n in enumerate(nodes)}

    def region_for(sink: fx.Node, value: fx.Node) -> Region:
        seen, srcs, stack = set(), set(), [value]
        while stack:
            n = stack.pop()
            if not isinstance(n, fx.Node) or n in seen:
                continue
            if n in sources:
                srcs.add(n)
                continue
            seen.add(n)
            stack.extend(a for a in n.all_input_nodes)
        if not srcs:
            raise UnsupportedOperationError(f"'{sink.name}' does not depend on the input")
        return Region(sink, value, sorted(seen, key=order.get), sorted(srcs, key=order.get))

    regions = {a: region_for(a, a.args[0]) for a in acts}
    regions[out] = region_for(out, out.args[0])
    plan = GraphPlan(gm, inp, acts, maxpools, regions, out, coder)
    plan.depth[inp] = 0
    if coder is not None:
        plan.depth[coder] = 0  # the image is its spike train: it is sent in window 0
    for n in nodes:  # topological: sources' depths are known before their consumers
        if n in maxpools:
            plan.depth[n] = plan.depth[maxpools[n]]
        elif n in regions:
            w = max(plan.depth[s] for s in regions[n].sources)
            plan.accumulate_window[n] = w
            if n is not out:
                plan.depth[n] = w + 1
    return plan


def insert_input_coder(gm: fx.GraphModule) -> fx.Node:
    """Spike-coded input: a signed SpikeActivation right after the input (q(x+) - q(x-))."""
    inp = next(n for n in gm.graph.nodes if n.op == "placeholder")
    name = _add_module(gm, "spike_input_", SpikeActivation(signed=True))
    with gm.graph.inserting_after(inp):
        coder = gm.graph.call_module(name, (inp,))
    coder.meta["layer_name"] = "input"
    inp.replace_all_uses_with(coder, delete_user_cb=lambda u: u is not coder)
    gm.recompile()
    return coder


def prepare(model: nn.Module, input_coding: str = "analog") -> GraphPlan:
    """trace -> validate -> normalize -> fold_batchnorm -> (input coder) -> analyze."""
    gm = trace(model)
    validate(gm)
    gm = fold_batchnorm(normalize(gm))
    if input_coding == "spike":
        insert_input_coder(gm)
    return analyze(gm)


def node_shapes(gm: fx.GraphModule, x1: torch.Tensor) -> dict:
    """The output shape of every tensor-valued node for input ``x1``, from one ANN-mode pass."""
    shapes = {}
    acts = [m for m in gm.modules() if isinstance(m, SpikeActivation)]
    modes = [m.mode for m in acts]

    class Rec(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if torch.is_tensor(out):
                shapes[n] = tuple(out.shape)
            return out

    for m in acts:
        m.mode = "ann"
    try:
        with torch.no_grad():
            Rec(gm).run(x1)
    finally:
        for m, mode in zip(acts, modes):
            m.mode = mode
    return shapes


# ---------------------------------------------------------------------------------------------
# Evaluating a region (used by both simulators)
# ---------------------------------------------------------------------------------------------

_CONV_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _no_bias_call(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(mod, nn.Linear):
        return F.linear(x, mod.weight)
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        return mod._conv_forward(x, mod.weight, None)
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale = torch.rsqrt(mod.running_var + mod.eps)
        if mod.affine:
            scale = scale * mod.weight
        return x * scale.reshape([-1] + [1] * (x.ndim - 2))
    return mod(x)


def _is_number(a) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool)


def run_region(gm: fx.GraphModule, region: Region, values: dict, with_bias: bool = True) -> torch.Tensor:
    """Evaluate the region with the given source values. ``with_bias=False`` drops every constant
    term (conv/linear biases, BN shifts, added numbers), giving the purely linear part."""
    env = dict(values)

    def load(a):
        return fx.node.map_arg(a, lambda n: env[n])

    for node in region.nodes:
        args, kwargs = load(node.args), load(node.kwargs)
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            env[node] = mod(*args, **kwargs) if with_bias else _no_bias_call(mod, *args)
        elif node.op == "call_function":
            t = node.target
            if not with_bias and t in ADD_FUNCTIONS and torch.is_tensor(args[0]) != torch.is_tensor(args[1]):
                env[node] = args[0] if torch.is_tensor(args[0]) else args[1]
            else:
                env[node] = t(*args, **kwargs)
        elif node.op == "call_method":
            if not with_bias and node.target == "add" and _is_number(args[1]):
                env[node] = args[0]
            else:
                env[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
        else:
            raise UnsupportedOperationError(f"unexpected node '{node.name}' ({node.op}) inside a linear region")
    return env[region.value]
