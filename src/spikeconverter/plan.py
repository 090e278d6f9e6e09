"""The analysed graph: sources (the input, spiking layers, max-pools of trains), the linear region
that computes each sink's input current from its sources, depths and pipeline delays (``analyze``);
checks that need shapes (``check_pools``); and the region interpreter both engines, the cost model
and fixed point evaluate regions with (``run_region``). graph.py has the overview."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx

from . import ops
from .activation import SpikeActivation
from .errors import UnsupportedOperationError

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
