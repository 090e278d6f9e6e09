"""Choosing each layer's T: the shortest end-to-end latency within an accuracy budget, or the best
accuracy within a latency budget, judged on training images only.

Why not per-layer sensitivity: quantization errors of layers add up, so a layer's loss measured
alone says little about its loss beside the others (on ResNet-20 an allocation from single-layer
sensitivities was worse than uniform T). Every allocation here is judged as a whole network.

Why groups: a sink accumulates for as long as its longest input train (schedule.py), so shortening
one layer of a residual sum shortens nothing while its partner stays long. Layers whose trains meet
in one neuron form a group (the groups beta is shared in); a move shortens one group by one step.

The search (greedy descent, documented in docs/method.md):
1. Thresholds per layer and T come from uniform-T conversions (one per T tried), so trying an
   allocation costs one forward pass of the exact twin, not a calibration.
2. Start: with ``max_loss``, the smallest uniform T whose loss on the selection images is within
   the budget; with ``latency``, the smallest uniform T whose latency is over the budget (so the
   descent mixes T: a uniform T that fits exactly would leave nothing to choose).
3. Each round scores every move that shortens the latency by its divergence from the float ANN
   (mean KL of the softmax outputs on a small scoring subset) per step saved, takes the best one
   whose accuracy loss on all selection images stays within ``max_loss`` (trying at most three),
   and stops when none does (``max_loss``) or once the latency is within budget (``latency``).
   With ``latency`` the allocation found (judged as searched and calibrated for itself, the better
   counting) is then compared with the longest uniform T within the budget, and the one with the
   smaller loss on the selection images is kept.
The chosen allocation is then converted again, calibrated with mixed T (convert.py); of that
network and the one the search judged (thresholds of the uniform conversions) the one with the
smaller loss on the selection images is returned -- both are exact spiking networks -- and both
losses are reported.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch

from .calibrate_graph import beta_groups
from .convert import convert
from .schedule import schedule

SCORING_IMAGES = 128  # the smooth divergence ranks moves; the accuracy budget uses every image
TRIES_PER_ROUND = 3


@dataclass
class Search:
    """What ``choose_timesteps`` found and how: the allocation, and every accepted step."""

    timesteps: dict[str, int]
    latency: int
    loss_pp: float  # ANN accuracy minus the search's estimate of the SNN's, on the selection images
    loss_se_pp: float = 0.0  # its standard error (paired: per image, ANN right minus SNN right)
    steps: list[dict] = field(default_factory=list)  # the descent: latency, loss, divergence per step
    evaluations: int = 0
    seconds: float = 0.0
    images: int = 0
    budget: dict = field(default_factory=dict)


def paired_loss(ann: torch.Tensor, snn: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(loss, standard error) in pp of the SNN's accuracy below the ANN's on the same images: the
    mean and standard error of d = [ANN right] - [SNN right] per image. Most images agree (d = 0),
    so the error is set by the images whose answer flips: about sqrt(flips) / n."""
    d = (ann.argmax(1) == labels).double() - (snn.argmax(1) == labels).double()
    n = d.numel()
    se = float(d.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("inf")
    return 100.0 * float(d.mean()), 100.0 * se


class _Judge:
    """Scores allocations of one network against the float ANN on the selection images."""

    def __init__(self, model, images, labels, batch_size=256):
        param = next(iter(model.parameters()), None)
        if param is not None:  # the model's precision and device (the networks converted from it share them)
            images, labels = images.to(device=param.device, dtype=param.dtype), labels.to(param.device)
        self.images, self.labels, self.batch = images, labels, batch_size
        with torch.no_grad():
            self.ann = self._logits(model, images)
        self.ann_acc = self._acc(self.ann)
        self.count = 0

    def _logits(self, net, x):
        with torch.no_grad():
            return torch.cat([net(x[i : i + self.batch]) for i in range(0, len(x), self.batch)])

    def _acc(self, logits) -> float:
        return 100.0 * float((logits.argmax(1) == self.labels).double().mean())

    def loss(self, net) -> float:
        self.count += 1
        return self.ann_acc - self._acc(self._logits(net, self.images))

    def standard_error(self, net) -> float:
        """Standard error (pp) of ``loss(net)`` as an estimate of the loss on unseen images."""
        return paired_loss(self.ann, self._logits(net, self.images), self.labels)[1]

    def divergence(self, net) -> float:
        self.count += 1
        n = min(SCORING_IMAGES, len(self.images))
        p = torch.log_softmax(self.ann[:n].double(), 1)
        q = torch.log_softmax(self._logits(net, self.images[:n]).double(), 1)
        return float((p.exp() * (p - q)).sum(1).mean())


class _Allocations:
    """Allocations of one model: the uniform conversions their thresholds come from (made on first
    use), the latency of each, and one working network they are applied to."""

    def __init__(self, model, calibration, convert_kw, progress, t0):
        self.model, self.calibration, self.kw, self.progress, self.t0 = model, calibration, convert_kw, progress, t0
        self.nets: dict[int, object] = {}
        self.work = self.mods = None

    def uniform(self, T: int):
        if T not in self.nets:
            self.nets[T] = convert(self.model, self.calibration, timesteps=T, **self.kw)
            if self.progress:
                print(f"  T = {T} converted ({time.time() - self.t0:.0f} s)", flush=True)
        return self.nets[T]

    def index(self, T: int) -> None:
        """The graph's spiking layers, their groups and names (from any conversion: all trace alike)."""
        plan = self.uniform(T).plan
        self.plan, self.spikers = plan, list(plan.spikers)
        self.groups: dict[int, list] = {}
        for a, g in beta_groups(plan).items():
            self.groups.setdefault(g, []).append(self.spikers.index(a))
        self.names = [plan.layer_name(a) for a in self.spikers]

    def latency(self, alloc) -> int:
        return schedule(self.plan, dict(zip(self.spikers, alloc))).latency

    def start(self, T: int) -> None:
        self.work = copy.deepcopy(self.uniform(T))
        self.mods = [self.work.gm.get_submodule(a.target) for a in self.work.plan.spikers]

    def apply(self, alloc) -> object:
        """The working network with each layer's threshold and shift from the conversion at its T."""
        for i, T in enumerate(alloc):
            net = self.uniform(T)
            src = net.gm.get_submodule(net.plan.spikers[i].target)
            m = self.mods[i]
            m.theta = src.theta.clone() if torch.is_tensor(src.theta) else src.theta
            m.shift = None if src.shift is None else src.shift.clone()
            m.timesteps = src.timesteps
        return self.work

    def calibrated(self, alloc):
        """The allocation converted for itself (calibrated with its mixed T), not the working network."""
        return convert(self.model, self.calibration, timesteps=self.named(alloc), **self.kw)

    def named(self, alloc) -> dict[str, int]:
        return dict(zip(self.names, alloc))


def _starting_T(judge: _Judge, allocs: _Allocations, candidates, max_loss, latency) -> int:
    """The smallest uniform T within the loss budget, or whose latency is over the latency budget."""
    for T in candidates:
        if max_loss is not None:
            if judge.loss(allocs.uniform(T)) <= max_loss:
                return T
        elif allocs.latency([T] * len(allocs.spikers)) > latency:
            return T
    if max_loss is not None:
        raise ValueError(f"no uniform T up to {candidates[-1]} is within {max_loss} pp on the selection images; "
                         "allow larger T (candidates) or a larger loss")
    return candidates[-1]


def _moves(judge: _Judge, allocs: _Allocations, alloc, cur, lowest) -> list:
    """Every group shortened by one step that shortens the latency: (divergence added per step saved,
    allocation, divergence), best first."""
    moves = []
    for members in allocs.groups.values():
        if any(alloc[i] - 1 < lowest for i in members):
            continue
        new = [t - 1 if i in members else t for i, t in enumerate(alloc)]
        saved = cur["latency"] - allocs.latency(new)
        if saved <= 0:
            continue
        div = judge.divergence(allocs.apply(new))
        moves.append(((div - cur["divergence"]) / saved, new, div))
    return sorted(moves, key=lambda m: m[0])


def _against_uniform(judge: _Judge, allocs: _Allocations, candidates, latency, alloc, cur, steps) -> tuple:
    """The descent's allocation or the longest uniform T within the latency budget, whichever loses
    less on the selection images (ties: the uniform T, the simpler network). The allocation is judged
    as searched and calibrated for itself (its bias corrections then see the mixed T upstream; the
    search's use the uniform conversions'), the better of the two counting (the descent's last step
    records both). The uniform T's row is added to ``steps`` with ``"uniform": True``. Returns
    (allocation, its record, the network calibrated for it or None) -- convert() reuses that one."""
    n = len(allocs.spikers)
    fits = [T for T in candidates if allocs.latency([T] * n) <= latency]
    if not fits or len(set(alloc)) == 1:
        return alloc, cur, None
    calibrated = allocs.calibrated(alloc)
    steps[-1]["loss_pp_recalibrated"] = judge.loss(calibrated)
    mixed = min(cur["loss_pp"], steps[-1]["loss_pp_recalibrated"])
    T = fits[-1]
    uni = [T] * n
    net = allocs.apply(uni)
    other = dict(latency=allocs.latency(uni), loss_pp=judge.loss(net), divergence=judge.divergence(net))
    steps.append(dict(other, timesteps=allocs.named(uni), uniform=True))
    return (uni, other, None) if other["loss_pp"] <= mixed else (alloc, cur, calibrated)


def choose_timesteps(model, calibration, images: torch.Tensor, labels: torch.Tensor, *,
                     max_loss: float | None = None, latency: int | None = None,
                     candidates=(2, 3, 4, 5, 6, 7, 8), progress: bool = False, **convert_kw) -> Search:
    """Per-layer T for ``model`` (see the module's docstring). ``images``/``labels``: held-out
    *training* images (never test images) the budgets are judged on. Exactly one of ``max_loss``
    (pp of accuracy against the float ANN) or ``latency`` (end-to-end steps)."""
    if (max_loss is None) == (latency is None):
        raise ValueError("give exactly one budget: max_loss (pp) or latency (steps)")
    if max_loss is not None and max_loss < 0:
        raise ValueError(f"max_loss must be >= 0 pp, got {max_loss}")
    candidates = sorted(set(int(t) for t in candidates))
    t0 = time.time()
    judge = _Judge(model, images, labels)
    allocs = _Allocations(model, calibration, convert_kw, progress, t0)
    allocs.index(candidates[0])
    start = _starting_T(judge, allocs, candidates, max_loss, latency)
    allocs.start(start)
    alloc = [start] * len(allocs.spikers)
    work = allocs.apply(alloc)
    cur = dict(latency=allocs.latency(alloc), loss_pp=judge.loss(work), divergence=judge.divergence(work))
    steps = [dict(cur, timesteps=allocs.named(alloc))]
    while latency is None or cur["latency"] > latency:
        moves = _moves(judge, allocs, alloc, cur, candidates[0])
        taken = None
        for _, new, div in moves[:TRIES_PER_ROUND] if max_loss is not None else moves[:1]:
            loss = judge.loss(allocs.apply(new))
            if max_loss is None or loss <= max_loss:
                taken = (new, loss, div)
                break
        if taken is None:
            break
        alloc = taken[0]
        cur = dict(latency=allocs.latency(alloc), loss_pp=taken[1], divergence=taken[2])
        steps.append(dict(cur, timesteps=allocs.named(alloc)))
        if progress:
            print(f"  latency {cur['latency']}: loss {cur['loss_pp']:+.2f} pp on {len(images)} training images "
                  f"({time.time() - t0:.0f} s)", flush=True)
    if latency is not None and cur["latency"] > latency:
        raise ValueError(f"no allocation with T >= {candidates[0]} reaches a latency of {latency} steps "
                         f"(shortest found: {cur['latency']})")
    calibrated = None
    if latency is not None:
        alloc, cur, calibrated = _against_uniform(judge, allocs, candidates, latency, alloc, cur, steps)
    work = allocs.apply(alloc)  # the chosen allocation (the last move tried may have been refused)
    search = Search(allocs.named(alloc), cur["latency"], cur["loss_pp"], judge.standard_error(work), steps, judge.count,
                    round(time.time() - t0, 1), len(images),
                    {"max_loss_pp": max_loss} if max_loss is not None else {"latency_steps": latency})
    search.network = work  # the allocation with the uniform conversions' thresholds (what was judged)
    search.calibrated = calibrated  # the kept allocation calibrated for itself, if made: saves a conversion
    return search
