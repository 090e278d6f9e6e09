"""Calibration data through the graph: the batches checked, every spiking layer observed, and
thresholds (and beta) chosen per layer, per channel, per beta group -- at once on the float ANN,
or staged by depth for sequential calibration and bias correction. The observers and the
threshold searches themselves are calibrate.py's."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from .activation import SpikeActivation
from .calibrate import (
    BETA_CANDIDATES,
    ChannelObserver,
    Observer,
    check_batch,
    choose_channel_thresholds,
    choose_threshold,
    iterate_calibration,
)
from .device import device_of, dtype_of
from .methods import method_named
from .plan import GraphPlan, check_pools, pools_mixing_channels


def beta_groups(plan: GraphPlan) -> dict:
    """Union-find: layers whose trains meet in one neuron must share beta. Returns node -> group id."""
    parent: dict = {}

    def find(a):
        parent.setdefault(a, a)
        while parent[a] is not a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a in plan.spikers:
        find(a)
    for region in list(plan.regions.values()) + list(plan.pools.values()):
        roots = [r for s in region.sources for r in plan.roots(s)]
        for r in roots[1:]:
            parent[find(r)] = find(roots[0])
    ids: dict = {}
    return {a: ids.setdefault(find(a), len(ids)) for a in plan.spikers}


def _checked_batches(plan: GraphPlan, calibration, dtype, progress: bool):
    """The calibration batches, checked (finite, one shape, accepted by the model's pools), cast to
    the network's precision. Yields (index, batch)."""
    input_shape = None
    images = 0
    it = iterate_calibration(calibration)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="calibrate", leave=False)
    for i, x in enumerate(it):
        check_batch(x)
        if input_shape is None:
            check_batch_axis(plan.gm, x)
            input_shape = tuple(x.shape[1:])
            try:
                # a graph check that needs shapes: before the work
                check_pools(plan, x[:1].to(device=device_of(plan.gm), dtype=dtype))
            except (RuntimeError, IndexError) as e:
                raise _rejected(x, e) from None
        elif tuple(x.shape[1:]) != input_shape:
            raise ValueError(f"calibration batches differ in shape: {tuple(x.shape[1:])} vs {input_shape}")
        images += len(x)
        yield i, x.to(device=device_of(plan.gm), dtype=dtype)
    if 0 < images < MIN_CALIBRATION_IMAGES:
        warnings.warn(f"calibration holds only {images} image{'s' if images > 1 else ''}: thresholds and bias "
                      f"corrections chosen on fewer than {MIN_CALIBRATION_IMAGES} images fit those images, not "
                      "the data (use a few hundred training images; the command line takes 512)", stacklevel=4)


# Below this many calibration images convert() warns: thresholds are per-channel statistics, and
# a handful of images leaves most channels' upper tails unseen.
MIN_CALIBRATION_IMAGES = 32


def check_batch_axis(model: nn.Module, x: torch.Tensor | None) -> None:
    """One image without its batch axis (a common slip) would otherwise fail deep inside the model
    with a shape error; the first convolution says how many axes a batch has."""
    first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if x is not None and first is not None and x.dim() == len(first.kernel_size) + 1:
        raise ValueError(f"calibration input of shape {tuple(x.shape)} has no batch axis (the model's first "
                         f"convolution takes {x.dim() + 1}-D batches): pass x.unsqueeze(0) for one image, or better "
                         "a batch of a few hundred")


def _rejected(x: torch.Tensor, e: Exception) -> ValueError:
    return ValueError(f"the model rejects calibration input of shape {tuple(x.shape)}: {str(e).splitlines()[0]}")


def _run(gm, batches) -> dict:
    """Run batches through gm (whatever modes its activations are in); returns, per spiking module,
    the shape of its output for one sample."""
    shapes: dict = {}

    def hook(mod, inp, out):
        shapes[mod] = tuple(out.shape[1:])

    hooks = [m.register_forward_hook(hook) for m in gm.modules() if isinstance(m, SpikeActivation)]
    n = 0
    try:
        with torch.no_grad():
            for _, x in batches:
                try:
                    gm(x)
                except (RuntimeError, IndexError) as e:
                    raise _rejected(x, e) from None
                n += 1
    finally:
        for h in hooks:
            h.remove()
    if n == 0:
        raise ValueError("calibration data is empty")
    return shapes


def observe_layers(plan: GraphPlan, mods: dict, calibration, progress: bool) -> tuple[tuple, dict]:
    """Run the calibration data through the ANN with an observer on every spiking layer.
    Returns (input shape, neurons per sample of each layer)."""
    gm = plan.gm
    dtype = dtype_of(gm)
    for m in mods.values():
        m.observer = Observer()
        m.mode = "observe"
    first = {}

    def batches():
        for i, x in _checked_batches(plan, calibration, dtype, progress):
            first.setdefault("shape", tuple(x.shape[1:]))
            yield i, x

    shapes = _run(gm, batches())
    return first["shape"], {a: math.prod(shapes[m]) for a, m in mods.items() if m in shapes}


def choose_thresholds(plan: GraphPlan, mods: dict, method, threshold, beta, timesteps, phi) -> dict:
    """Per spiking layer (theta, beta, calibration error): per layer for the rate baseline; per
    beta group (layers that must share beta) for ours, trying each candidate beta with "search"."""
    caps = {a: m.cap for a, m in mods.items()}
    scheme = method_named(method)
    if not scheme.binary_code:  # one level per step: no beta to search, no groups to share it
        chosen = {}
        for a, m in mods.items():
            b, T, p = scheme.threshold_code(1.0, 1, phi)
            theta, err = choose_threshold(m.observer, caps[a], threshold, b, T, p)
            chosen[a] = (theta, b, err)
        return chosen
    tried: dict = {}  # (node, beta) -> (theta, error): the group search's choices are reused

    def choose(a, b):
        if (a, b) not in tried:
            tried[a, b] = choose_threshold(mods[a].observer, caps[a], threshold, b, timesteps[a], phi)
        return tried[a, b]

    betas = _group_betas(plan, beta, lambda a, b: choose(a, b)[1])
    chosen = {}
    for a in plan.spikers:
        theta, err = choose(a, betas[a])
        chosen[a] = (theta, betas[a], err)
    return chosen


def channel_shape(theta: torch.Tensor, out_shape: tuple) -> torch.Tensor:
    """Per-channel values [C] shaped to broadcast over dim 1 of a layer's z (batch first)."""
    return theta.reshape((-1,) + (1,) * max(len(out_shape) - 1, 0))


STAGE_BATCH = 128  # staged calibration holds a float pass's activations per batch: bound its size


class _ResumablePass:
    """The calibration batches run through the graph in pieces, depth by depth. ``advance(d)``
    evaluates every node whose spiking layers (itself and upstream) all have depth < d -- those are
    calibrated, so their values are final -- and keeps, per batch, only the values a node not yet
    evaluated still reads. Staged calibration thus costs about one pass of the network instead of
    one pass from the input per spiking depth (ResNet-34: 33). Evaluating nodes out of the graph's
    order is safe because the prepared graph has no in-place ops (graph.functionalize)."""

    def __init__(self, plan: GraphPlan, batches: list):
        self.batches = batches
        self.nodes = [n for n in plan.gm.graph.nodes if n.op != "output"]
        depth = {a: plan.depth[a] for a in plan.spikers}
        self.need: dict = {}
        for n in self.nodes:
            self.need[n] = max([self.need[i] for i in n.all_input_nodes] + [depth.get(n, -1)])
        self.done: set = set()
        self.envs = [{} for _ in batches]
        self.interp = torch.fx.Interpreter(plan.gm)

    def advance(self, d: int) -> None:
        todo = [n for n in self.nodes if n not in self.done and self.need[n] < d]
        self.done.update(todo)
        with torch.no_grad():
            for env, (_, x) in zip(self.envs, self.batches):
                self.interp.env, self.interp.args_iter = env, iter([x])
                for n in todo:
                    try:
                        env[n] = self.interp.run_node(n)
                    except (RuntimeError, IndexError) as e:
                        raise _rejected(x, e) from None
                for n in [n for n in env if all(u in self.done for u in n.users)]:
                    del env[n]

    def call(self, b: int, node):
        """Run ``node`` (its inputs are evaluated) on batch b; its value is not kept."""
        self.interp.env = self.envs[b]
        args, kwargs = self.interp.fetch_args_kwargs_from_env(node)
        with torch.no_grad():
            return self.interp.call_module(node.target, args, kwargs)


def calibrate_staged(plan: GraphPlan, mods: dict, calibration, threshold, beta, timesteps, phi, *,
                      per_channel: bool, sequential: bool, bias_correction: bool, progress: bool):
    """Thresholds per channel or per layer, chosen on the float ANN's activations or sequentially,
    with optional bias correction. Every choice only sets thresholds and offsets of the quantizer
    twin, so the SNN stays exactly equal to it.

    - sequential: depth by depth, layer l's threshold minimises the error between q of the z that
      the already-quantized layers before it produce and the float ANN's activation at the same
      position (each batch is run twice: float, then quantized);
    - bias correction: a per-channel constant added to each spiking layer's pre-activation so that
      its mean over the calibration data equals the float ANN's (measured with the layers before
      quantized, so it is staged by depth as well).

    Returns (input shape, neurons per sample, {node: (theta, beta, error)}); sets each module's
    theta, beta, timesteps, phi and shift."""
    gm = plan.gm
    dtype = dtype_of(gm)
    batches = [(i, c) for i, x in _checked_batches(plan, calibration, dtype, progress) for c in x.split(STAGE_BATCH)]
    if not batches:
        raise ValueError("calibration data is empty")
    input_shape = tuple(batches[0][1].shape[1:])
    mixed = pools_mixing_channels(plan, batches[0][1][:1]) if per_channel else set()
    caps = {a: m.cap for a, m in mods.items()}
    shapes, float_obs = _observe_float(gm, mods, batches, everything=not sequential or beta == "search")
    neurons = {a: math.prod(shapes[m]) for a, m in mods.items() if m in shapes}

    def choose(a, obs, b, shift=None):
        return choose_channel_thresholds(obs, caps[a], threshold, b, timesteps[a], phi, shift=shift,
                                         per_channel=per_channel and a not in mixed)

    betas = _group_betas(plan, beta, lambda a, b: choose(a, float_obs[a], b)[1])
    chosen = {}

    def setup(a, theta, shift, err):
        m, shape, dev = mods[a], shapes[mods[a]], device_of(gm)
        m.theta = channel_shape(theta, shape).to(device=dev, dtype=dtype) if torch.is_tensor(theta) else theta
        m.shift = None if shift is None else channel_shape(shift, shape).to(device=dev, dtype=dtype)
        m.beta, m.timesteps, m.phi = betas[a], timesteps[a], phi
        chosen[a] = (theta, betas[a], err)

    if not sequential and not bias_correction:
        for a in plan.spikers:
            theta, err = choose(a, float_obs[a], betas[a])
            setup(a, theta, None, err)
        return input_shape, neurons, chosen

    # Depth by depth, each batch continues from the values the previous depth left (not from the
    # input again): the quantized network, and for sequential also the float one beside it.
    quantized = _ResumablePass(plan, batches)
    floating = _ResumablePass(plan, batches) if sequential else None
    for d in sorted({plan.depth[a] for a in plan.spikers}):
        stage = [a for a in plan.spikers if plan.depth[a] == d]
        _observe_stage(mods, stage, chosen, quantized, floating, d, len(batches))
        for a in stage:
            m, obs = mods[a], mods[a].observer
            shift = None
            if bias_correction and m.code.populations == 1:  # two populations observe magnitudes, not z
                aim = obs.target_mean if sequential else float_obs[a].mean
                shift = (aim - obs.mean).float()
            theta, err = choose(a, obs, betas[a], shift) if sequential else choose(a, float_obs[a], betas[a])
            setup(a, theta, shift, err)
    for m in mods.values():
        m.mode = "quantize"
    return input_shape, neurons, chosen


def _observe_float(gm, mods: dict, batches: list, everything: bool) -> tuple[dict, dict]:
    """The float ANN's activations of every spiking layer on all ``batches`` (the threshold sample
    unless sequential, the means bias correction aims at, what the beta search compares
    candidates on), or, when not ``everything``, just its shapes from the first batch. Returns
    (shapes, {node: its observer})."""
    if not everything:
        for m in mods.values():
            m.mode = "ann"
        return _run(gm, batches[:1]), {}
    for m in mods.values():
        m.observer, m.mode = ChannelObserver(), "observe"
    return _run(gm, batches), {a: m.observer for a, m in mods.items()}


def _group_betas(plan: GraphPlan, beta, error) -> dict:
    """beta per spiking node: the one given, or (beta="search") per group of layers whose trains
    meet, the candidate with the least summed ``error(node, beta)``."""
    groups = beta_groups(plan)
    betas = {}
    for gid in set(groups.values()):
        members = [a for a in plan.spikers if groups[a] == gid]
        if beta != "search":
            betas.update({a: float(beta) for a in members})
            continue
        errs = {b: sum(error(a, b) for a in members) for b in BETA_CANDIDATES}
        best = min(errs, key=errs.get)
        betas.update({a: best for a in members})
    return betas


def _observe_stage(mods: dict, stage: list, chosen: dict, quantized, floating, depth: int, n_batches: int) -> None:
    """Observe the layers of one depth with every shallower layer quantized: z as the quantized
    network gives it, and (sequential) the float ANN's z at the same positions first."""
    sequential = floating is not None

    def set_modes(quantize: bool):
        for a, m in mods.items():
            m.mode = "quantize" if (quantize and a in chosen) else "ann"

    for a in stage:
        mods[a].observer = ChannelObserver(means_only=not sequential)
    if sequential:
        set_modes(quantize=False)
        floating.advance(depth)
    set_modes(quantize=True)
    quantized.advance(depth)
    for a in stage:
        mods[a].mode = "observe"
    for b in range(n_batches):
        for a in stage:
            if sequential:  # the pair: the float ANN's z first, then z at the same positions, quantized
                mods[a].observer.capture = True
                floating.call(b, a)
            mods[a].observer.capture = False
            quantized.call(b, a)
