"""Tracing a user's model into a torch.fx graph, specialised to the shape of the input it converts.

Model libraries write forward() with checks and branches on shapes: ``torch._assert(x.ndim == 4)``,
``assert H == self.img_size[0]``, ``if x.shape[-2] < self.kernel: x = F.adaptive_avg_pool2d(...)``,
``if x.shape[-2:] != skip.shape[-2:]: x = F.interpolate(x, size=skip.shape[-2:])``. Plain symbolic
tracing turns every shape into a graph node, so such code fails (control flow on a proxy) or leaves
comparisons in the graph. Here the tracer also runs the model on an example batch as it records
it (every node's value is kept beside it while tracing), and answers shape questions with Python
values, as torch.export does for static shapes: asserts are checked once and vanish, branches take
the branch the real input takes. The batch size stays symbolic -- a shape's first entry, when it
is the batch size, is one ``x.size(0)`` node -- so the graph runs for any batch; the other sizes
are fixed to the example's, and the converted network refuses inputs of another shape.

Control flow on tensor *values* (``if x.sum() > 0``) or on the batch size has no static spiking
graph: it is refused with the file and line that does it.

Without an example (``trace(model)``) the tracer records shapes as nodes, as torch.fx does.
"""

from __future__ import annotations

import copy
import dis
import functools
import inspect
import operator
import traceback
from pathlib import Path

import torch
import torch.fx as fx
from torch import nn

from . import ops
from .errors import UnsupportedOperationError

# A batch size no CNN dimension is likely to share: a leading size equal to it is taken for the
# batch (symbolic); any other size is fixed. The example batch repeats the first inputs to it.
EXAMPLE_BATCH = 7
_MISSING = object()
_OWN_DIRS = (str(Path(torch.__file__).parent), str(Path(__file__).parent))


class _Shape(tuple):
    """A shape whose batch entry (first, when it is the batch) is a graph node, the rest ints."""

    def numel(self) -> int:
        n = 1
        for s in self:
            n = n * s
        return n


class _Proxy(fx.Proxy):
    # fx's Proxy has no __iadd__, so `z += 1` would be traced as `z = z + 1` and a second name for
    # the same tensor (`y = z` before it) would silently keep the old value; recording the in-place
    # operator lets graph.functionalize apply eager semantics.
    def __iadd__(self, other):
        return self.tracer.create_proxy("call_function", operator.iadd, (self, other), {})

    def __isub__(self, other):
        return self.tracer.create_proxy("call_function", operator.isub, (self, other), {})

    def __imul__(self, other):
        return self.tracer.create_proxy("call_function", operator.imul, (self, other), {})

    def __itruediv__(self, other):
        return self.tracer.create_proxy("call_function", operator.itruediv, (self, other), {})

    # shape questions: answered from the example where it is known
    @property
    def shape(self):
        return self.tracer.shape_of(self)

    def size(self, dim=None):
        return self.tracer.size_of(self, dim)

    @property
    def ndim(self):
        return self.tracer.ndim_of(self)

    def dim(self):
        return self.tracer.ndim_of(self, method=True)

    def __len__(self):
        return self.tracer.len_of(self)

    def __iter__(self):
        ex = self.node.meta.get("example", _MISSING)
        if isinstance(ex, (tuple, list)):  # for part in x.chunk(4): ...
            return iter([self[i] for i in range(len(ex))])
        # fx's own rule (`a, b = proxy` unpacks by the count the caller's bytecode asks for), read
        # in the caller's frame as fx.Proxy.__iter__ does
        caller = inspect.currentframe().f_back
        for inst in dis.get_instructions(caller.f_code):
            if inst.offset == caller.f_lasti and inst.opname == "UNPACK_SEQUENCE":
                return (self[i] for i in range(inst.argval))
        return self.tracer.iter(self)


class SpecialisingTracer(fx.Tracer):
    """fx.Tracer that evaluates every recorded node on ``example`` (a batch) as it goes."""

    def __init__(self, example: torch.Tensor | None = None):
        super().__init__()
        self.example = example
        self._batch: dict = {}  # tensor node -> its size(0) proxy (a shape's batch entry)
        self._evaluating = False

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        if self.example is not None and kind != "output":
            node.meta["example"] = self._evaluate(node)
        return node

    # -- every node's value on the example ------------------------------------------------------
    def _evaluate(self, node: fx.Node):
        if node.op == "placeholder":
            first = not any(n.op == "placeholder" for n in node.graph.nodes if n is not node)
            return self.example if first else _MISSING
        if node.op == "get_attr":
            self._evaluating, was = True, self._evaluating
            try:
                return functools.reduce(getattr, node.target.split("."), self.root)
            finally:
                self._evaluating = was
        missing = []
        load = functools.partial(_example_of, missing=missing)
        args, kwargs = fx.node.map_arg(node.args, load), fx.node.map_arg(node.kwargs, load)
        if missing:
            return _MISSING
        self._evaluating, was = True, self._evaluating
        try:
            with torch.no_grad():
                if node.op == "call_function":
                    return node.target(*args, **kwargs)
                if node.op == "call_method":
                    return getattr(args[0], node.target)(*args[1:], **kwargs)
                return self.root.get_submodule(node.target)(*args, **kwargs)
        except (ShapeRejected, UnsupportedOperationError, NeedsExample):
            raise
        except Exception as e:  # the model itself rejects the input: say where
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ShapeRejected(f"the model rejects calibration input of shape {tuple(self.example.shape[1:])} "
                                f"(per sample) at {_user_line()}: {msg}") from None
        finally:
            self._evaluating = was

    # while a node is evaluated, fx's patched module calls and attribute reads must act as in eager
    # mode (else evaluating a conv would record its weight read, and so on)
    def call_module(self, m, forward, args, kwargs):
        return forward(*args, **kwargs) if self._evaluating else super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        return attr_val if self._evaluating else super().getattr(attr, attr_val, parameter_proxy_cache)

    # -- shape questions ------------------------------------------------------------------------
    def _tensor_example(self, proxy):
        ex = proxy.node.meta.get("example", _MISSING)
        return ex if torch.is_tensor(ex) else None

    def _batch_entry(self, proxy, ex):
        if ex.shape[0] != self.example.shape[0]:  # a leading size that is not the batch (after a view)
            return ex.shape[0]
        if proxy.node not in self._batch:  # the tensor's own size(0), as fx records it; unused ones go
            self._batch[proxy.node] = self.create_proxy("call_method", "size", (proxy, 0), {})
        return self._batch[proxy.node]

    def shape_of(self, proxy):
        ex = self._tensor_example(proxy)
        if ex is None:
            return fx.proxy.Attribute(proxy, "shape")
        if ex.dim() == 0:
            return _Shape(())
        return _Shape((self._batch_entry(proxy, ex), *ex.shape[1:]))

    def size_of(self, proxy, dim=None):
        if self._tensor_example(proxy) is None:
            return fx.proxy.Attribute(proxy, "size")() if dim is None else fx.proxy.Attribute(proxy, "size")(dim)
        shape = self.shape_of(proxy)
        return shape if dim is None else shape[dim]

    def ndim_of(self, proxy, method: bool = False):
        ex = self._tensor_example(proxy)
        if ex is None:
            return fx.proxy.Attribute(proxy, "dim")() if method else fx.proxy.Attribute(proxy, "ndim")
        return ex.dim()

    def len_of(self, proxy):
        ex = proxy.node.meta.get("example", _MISSING)
        if isinstance(ex, (tuple, list)):
            return len(ex)
        if torch.is_tensor(ex) and ex.dim() > 0:
            first = self._batch_entry(proxy, ex)
            if isinstance(first, int):
                return first
            raise UnsupportedOperationError(
                f"len() of a tensor is its batch size at {_user_line()}, which the graph keeps open: use x.size(0)")
        return super(_Proxy, proxy).__len__()

    # -- control flow ---------------------------------------------------------------------------
    def to_bool(self, obj):
        node = obj.node
        if self.example is None and shape_only(node):
            raise NeedsExample(f"a branch or assert on shapes at {_user_line()}")
        if node.op == "call_function" and node.target in (operator.eq, operator.ne) and len(node.args) == 2 and all(
                isinstance(a, fx.Node) and a in self._batch_nodes() for a in node.args):
            # two batch entries (x.shape == y.shape): every tensor of the graph has the same batch
            self.graph.erase_node(node)
            return node.target is operator.eq
        what = "the batch size" if _depends_on_batch_only(obj.node) else "tensor values"
        raise UnsupportedOperationError(
            f"control flow on {what} at {_user_line()}: a spiking network is one static graph and this branch "
            "cannot be traced into one; branches and asserts on shapes are fine (decided by the calibration "
            "input's), on values take them out")

    def _batch_nodes(self) -> set:
        return {p.node for p in self._batch.values()}

    def drop_unused_batch_entries(self) -> None:
        for p in self._batch.values():
            if not p.node.users:
                self.graph.erase_node(p.node)

    def iter(self, obj):
        raise UnsupportedOperationError(
            f"iterating over a tensor at {_user_line()}: its length is the batch size or unknown when tracing; "
            "index or split it explicitly")


class ShapeRejected(ValueError):
    """The model fails on the calibration input while it is traced."""


class NeedsExample(Exception):
    """Tracing without an example met a question only shapes answer (a branch or assert on them)."""


_SHAPE_QUERIES = {("call_method", "size"), ("call_method", "dim"), ("call_function", getattr)}


def shape_only(node: fx.Node) -> bool:
    """Is ``node`` computed from shape queries (x.size(), x.shape, x.ndim, ...) and constants only?"""
    seen, stack, queried = set(), [node], False
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if (n.op, n.target) in _SHAPE_QUERIES or (n.op == "call_function" and n.target is getattr):
            queried = True
            continue
        if n.op in ("placeholder", "get_attr", "call_module"):
            return False
        stack.extend(n.all_input_nodes)
    return queried


def _example_of(n: fx.Node, missing: list):
    ex = n.meta.get("example", _MISSING)
    if ex is _MISSING:
        missing.append(n)
    return ex


def _depends_on_batch_only(node: fx.Node) -> bool:
    """A comparison built from size() nodes only (no signal)."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            return False
        if n.op == "call_method" and n.target == "size":
            continue
        stack.extend(n.all_input_nodes)
    return True


def _user_line() -> str:
    """'file.py:LINE (`code`)' of the innermost frame of the user's code (not torch's, not ours)."""
    for frame in reversed(traceback.extract_stack()):
        if not frame.filename.startswith(_OWN_DIRS) and not frame.filename.startswith("<"):
            code = f" (`{frame.line.strip()}`)" if frame.line else ""
            return f"{Path(frame.filename).name}:{frame.lineno}{code}"
    return "an unknown line"


def example_batch(x: torch.Tensor) -> torch.Tensor:
    """EXAMPLE_BATCH inputs from the first ones of ``x`` (repeated as needed), as a fresh tensor:
    in-place ops in the model act on it, never on the user's data."""
    reps = -(-EXAMPLE_BATCH // len(x))
    return x[:EXAMPLE_BATCH].repeat((reps,) + (1,) * (x.dim() - 1))[:EXAMPLE_BATCH].clone()


def trace(model: nn.Module, example: torch.Tensor | None = None) -> fx.GraphModule:
    """The model's graph; with ``example`` (a batch shaped like the calibration data), specialised
    to that shape (module docstring)."""
    model = copy.deepcopy(model).eval()
    if example is not None:
        param = next(iter(model.parameters()), None)
        if param is not None:
            example = example.to(device=param.device, dtype=param.dtype)
        example = example_batch(example)
    tracer = SpecialisingTracer(example)
    try:
        graph = tracer.trace(model)
    except (UnsupportedOperationError, ShapeRejected, NeedsExample):
        raise
    except Exception as e:  # fx raises TraceError, TypeError, ... for what it cannot record
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnsupportedOperationError(
            f"the model cannot be traced by torch.fx ({type(e).__name__}: {msg}); the usual cause is data-dependent "
            f"control flow (if/for on tensor values), which has no static spiking graph; {ops.supported_summary()}"
        ) from None
    tracer.drop_unused_batch_entries()
    for node in graph.nodes:  # the example values served the tracing only (their ndim is kept)
        ex = node.meta.pop("example", None)
        if torch.is_tensor(ex):
            node.meta["ndim"] = ex.dim()
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    gm.meta["specialised_to"] = None if example is None else tuple(example.shape[1:])
    return gm
