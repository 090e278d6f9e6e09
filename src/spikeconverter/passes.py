"""The front end's passes, from a user's nn.Module to an analysed graph (graph.py has the overview):
trace (tracing.py) -> constants (constants.py) -> mark shapes -> functionalize -> validate ->
normalize -> fold batch norm -> (input coder) -> analyze (plan.py). Every refusal happens here,
before any numerical work, naming the node, its op and the reason."""

from __future__ import annotations

import copy
import operator

import torch
import torch.fx as fx
from torch import nn

from . import ops
from .activation import SpikeActivation
from .constants import fold_constants, functional_weights_to_modules
from .errors import UnsupportedOperationError
from .plan import GraphPlan, analyze, is_activation
from .tracing import NeedsExample, shape_only, trace

# ---------------------------------------------------------------------------------------------
# shapes: nodes that compute sizes, not signals
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
        act = ops.kind_of(gm, node).layer(gm, node)  # the table's entry builds its spiking layer
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
    # what BN assumes of its output, per channel (mean beta, standard deviation |gamma|): the
    # data-free thresholds of bn_thresholds.py read it (conversion time only; not saved)
    ones = torch.ones_like(bn.running_mean)
    lin.bn_moments = ((bn.bias.detach().clone() if bn.affine else ones * 0),
                      (bn.weight.detach().abs().clone() if bn.affine else ones))
    return lin


def fold_batchnorm(gm: fx.GraphModule) -> fx.GraphModule:
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1):
            continue  # a BN on its own stays: it is an affine op and regions handle it
        lin = gm.get_submodule(prev.target)
        if not ops.folds_batchnorm(lin):
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
