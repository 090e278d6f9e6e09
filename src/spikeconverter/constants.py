"""Constant tensors in forward(): computed once, and used as weights they become weighted modules.

Model libraries keep fixed filters as buffers and call the functional op with them (an
anti-aliasing blur: ``F.conv2d(x, self.filt, stride=2, groups=C)``), compute a weight from
parameters inside forward (weight standardisation: ``w = (self.weight - mean) / std``), or wrap
BatchNorm in a subclass whose forward() fx traces through down to ``F.batch_norm`` (norm-act
layers). All are fixed linear maps of the signal. ``fold_constants`` evaluates every node that
depends on no input once and keeps the result as a buffer; ``functional_weights_to_modules`` then
turns a functional conv / linear / batch norm whose weights are such constants into the
``nn.Conv*d`` / ``nn.Linear`` / ``nn.BatchNorm*d`` it is, so the rest of the converter (BN folding,
regions, fixed point, costs, saving) treats it like any other layer. A constant used any other
way (added to a signal, say) is refused by validation.
"""

from __future__ import annotations

import functools

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

_CONVS = {F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d,
          torch.conv1d: nn.Conv1d, torch.conv2d: nn.Conv2d, torch.conv3d: nn.Conv3d}
_LINEAR = (F.linear,)


def _get(gm: fx.GraphModule, target: str):
    return functools.reduce(getattr, target.split("."), gm)


def _is_constant(n) -> bool:
    return isinstance(n, fx.Node) and n.op == "get_attr"


def fold_constants(gm: fx.GraphModule) -> None:
    """Replace every node computed from constants only (get_attr nodes, numbers) by a buffer with
    its value; shape queries are left alone (they are not tensors)."""
    values: dict = {}
    count = 0
    some = next(iter(gm.parameters()), None)
    if some is None:
        some = next(iter(gm.buffers()), torch.zeros(()))
    for node in list(gm.graph.nodes):
        if node.op == "get_attr":
            values[node] = _get(gm, node.target)
            continue
        if node.op == "call_function" and node.target is getattr and node.args[1] in ("dtype", "device"):
            # `filt.to(x.dtype)`: the signal's dtype and device are the network's
            values[node] = getattr(some, node.args[1])
            continue
        if node.op not in ("call_function", "call_method") or not node.all_input_nodes:
            continue
        if not all(n in values for n in node.all_input_nodes):
            continue
        args = fx.node.map_arg(node.args, lambda n: values[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
        with torch.no_grad():
            value = (node.target(*args, **kwargs) if node.op == "call_function"
                     else getattr(args[0], node.target)(*args[1:], **kwargs))
        if not torch.is_tensor(value):
            continue
        while hasattr(gm, f"_folded_constant_{count}"):
            count += 1
        name = f"_folded_constant_{count}"
        gm.register_buffer(name, value.detach().clone())
        with gm.graph.inserting_before(node):
            const = gm.graph.get_attr(name)
        node.replace_all_uses_with(const)
        gm.graph.erase_node(node)
        values[const] = gm.get_buffer(name)
    _drop_unused_constants(gm)


def _arg(node, i, name, default=None):
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[i] if len(node.args) > i else default


def _batch_norm_for(gm, node) -> nn.Module | None:
    """``F.batch_norm(x, mean, var, weight, bias, training=False, ...)`` with constant statistics (a
    BatchNorm subclass traced through, as norm-act layers are): the BatchNorm module it is."""
    consts = [_arg(node, i, name) for i, name in enumerate(("running_mean", "running_var", "weight", "bias"), 1)]
    if _arg(node, 5, "training", False) or not all(c is None or _is_constant(c) for c in consts[:4]) \
            or consts[0] is None or consts[1] is None:
        return None
    mean, var, w, b = (None if c is None else _get(gm, c.target) for c in consts)
    ndim = node.args[0].meta.get("ndim", 4) if isinstance(node.args[0], fx.Node) else 4
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 5: nn.BatchNorm3d}.get(ndim, nn.BatchNorm2d)
    mod = cls(mean.numel(), eps=_arg(node, 7, "eps", 1e-5), affine=w is not None).to(device=mean.device,
                                                                                       dtype=mean.dtype)
    with torch.no_grad():
        mod.running_mean.copy_(mean)
        mod.running_var.copy_(var)
        if w is not None:
            mod.weight.copy_(w)
            mod.bias.copy_(b if b is not None else torch.zeros_like(w))
    return mod.eval()


def _module_for(gm, node) -> nn.Module | None:
    """The nn module a functional conv/linear/batch norm with constant weights is, or None."""
    if node.target is F.batch_norm:
        return _batch_norm_for(gm, node)
    weight, bias = _arg(node, 1, "weight"), _arg(node, 2, "bias")
    if not _is_constant(weight) or not (bias is None or _is_constant(bias)):
        return None
    w = _get(gm, weight.target)
    b = None if bias is None else _get(gm, bias.target)
    if node.target in _LINEAR:
        mod = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    else:
        groups = _arg(node, 6, "groups", 1)
        mod = _CONVS[node.target](w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=_arg(node, 3, "stride", 1),
                                  padding=_arg(node, 4, "padding", 0), dilation=_arg(node, 5, "dilation", 1),
                                  groups=groups, bias=b is not None)
    mod = mod.to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        mod.weight.copy_(w)
        if b is not None:
            mod.bias.copy_(b)
    return mod.eval()


def functional_weights_to_modules(gm: fx.GraphModule) -> None:
    """``F.conv*d(x, W, b, ...)`` / ``F.linear(x, W, b)`` / ``F.batch_norm(x, ...)`` with constant
    weights and statistics -> a module call."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or (node.target not in _CONVS and node.target not in _LINEAR
                                          and node.target is not F.batch_norm):
            continue
        mod = _module_for(gm, node)
        if mod is None:
            continue
        kind = "linear" if isinstance(mod, nn.Linear) else ("bn" if isinstance(mod, nn.modules.batchnorm._BatchNorm)
                                                            else "conv")
        while hasattr(gm, f"functional_{kind}_{count}"):
            count += 1
        name = f"functional_{kind}_{count}"
        gm.add_module(name, mod)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
    _drop_unused_constants(gm)


def _drop_unused_constants(gm: fx.GraphModule) -> None:
    """Constant nodes nothing reads any more (not a general dead-code pass: an unused in-place op
    still writes into a tensor read later, until functionalize has made that explicit)."""
    for node in reversed(list(gm.graph.nodes)):
        if not node.users and (node.op == "get_attr" or (node.op == "call_function" and node.target is getattr
                                                          and node.args[1] in ("dtype", "device"))):
            gm.graph.erase_node(node)
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name in [b for b, _ in gm.named_buffers() if b.startswith("_folded_constant_") and b not in used]:
        delattr(gm, name)
    gm.recompile()
