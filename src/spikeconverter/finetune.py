"""Fine-tuning the quantized twin for few time steps (quantization-aware training).

What is trained is what is converted: the converted network's own graph (BN already folded into
the convolutions), its weights and biases, and every spiking layer's threshold(s) and bias
correction, with straight-through gradients through q (``neuron.quantize_ste``). The value each
layer computes during training is the twin's, so when the thresholds are frozen back the network
is a SpikingNetwork like any other: the simulator equals its fast path exactly, it saves and loads
with ``snn.save`` / ``spikeconverter.load``, and nothing is recalibrated.

Optimisation: Adam on weights and shifts (cosine learning rate from ``lr``) and on log-thresholds
(``theta_lr``). Not SGD: the folded weights carry each BN's scale, so their sizes differ by orders of
magnitude between channels, and one SGD step size that moves some of them moved others by 20 % in
four steps (measured on ResNet-20); Adam's per-weight steps do not depend on that scale.

A run file (``out``: the network, after every epoch; the optimiser state beside it) makes
``resume=True`` continue where a killed run stopped, bit for bit.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_tensors, save_tensors


@dataclass
class FinetuneConfig:
    epochs: int = 2
    lr: float = 1e-4  # Adam on weights and shifts, cosine to 0 over the run
    theta_lr: float = 2e-3  # Adam on log-thresholds (constant)
    weight_decay: float = 0.0  # decoupled (AdamW-style), on weights only
    batch_size: int = 128
    seed: int = 0
    label_smoothing: float = 0.0
    # knowledge distillation: the loss is (1 - distill) * CE(labels) + distill * KL(float ANN || twin),
    # both at temperature 1 -- the twin learns to reproduce the network it was converted from, whose
    # outputs carry more than the labels (the usual remedy for low-bit quantization-aware training)
    distill: float = 0.0
    # False: the weights stay as converted; only thresholds and bias corrections (shifts) learn --
    # a few parameters per channel, so a few hundred unlabelled images (distill = 1) are enough
    train_weights: bool = True


def _trainable(snn, train_weights: bool = True):
    """Put every spiking layer into mode "train"; returns (weights, shifts, log-thresholds).
    ``train_weights=False``: the weights get no gradient and are not returned."""
    acts = snn._acts()
    device = next(snn.gm.parameters()).device
    for m in acts:
        m.make_trainable(device)
    gm = snn.gm
    theta_ids = {id(m.train_log_theta) for m in acts}
    shift_ids = {id(m.train_shift) for m in acts if m.train_shift is not None}
    weights, shifts, thetas = [], [], []
    # by name: a network loaded from a run file registers its modules in another order, and the
    # optimiser state is matched to parameters by position
    for _, p in sorted(gm.named_parameters()):
        kind = thetas if id(p) in theta_ids else shifts if id(p) in shift_ids else weights
        p.requires_grad_(kind is not weights or train_weights)
        if p.requires_grad:
            kind.append(p)
    return weights, shifts, thetas


def _optimizers(weights, shifts, thetas, cfg: FinetuneConfig):
    decay = [p for p in weights if p.ndim > 1]
    no_decay = [p for p in weights if p.ndim <= 1] + shifts
    params = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    thresholds = torch.optim.Adam(thetas, lr=cfg.theta_lr)
    return params, thresholds


def _optim_state(opts) -> dict:
    out = {}
    for oi, opt in enumerate(opts):
        for gi, g in enumerate(opt.param_groups):
            for pi, p in enumerate(g["params"]):
                for k, v in opt.state.get(p, {}).items():
                    if torch.is_tensor(v):
                        out[f"{oi}.{gi}.{pi}.{k}"] = v
    return out


def _load_optim_state(opts, tensors: dict) -> None:
    for oi, opt in enumerate(opts):
        for gi, g in enumerate(opt.param_groups):
            for pi, p in enumerate(g["params"]):
                prefix = f"{oi}.{gi}.{pi}."
                state = {k[len(prefix):]: v.clone() for k, v in tensors.items() if k.startswith(prefix)}
                if state:
                    opt.state[p] = state


def _batches(data, batch_size: int, seed: int):
    """(x, y) batches: an in-memory dataset is shuffled and augmented as in training; anything else
    is taken as an iterable of (x, y) batches as it is."""
    from .data import loader

    if isinstance(data, torch.utils.data.Dataset):  # ArrayDataset included
        return loader(data, batch_size, train=True, seed=seed)
    return data


@torch.no_grad()
def twin_accuracy(snn, data, batch_size: int = 500) -> float:
    """Top-1 accuracy (%) of the exact fast path on a dataset or iterable of (x, y) batches."""
    from .data import loader
    from .data.datasets import ArrayDataset

    it = loader(data, batch_size, train=False) if isinstance(data, (ArrayDataset, torch.utils.data.Dataset)) else data
    correct = total = 0
    for x, y in it:
        correct += int((snn(x).argmax(1) == y).sum())
        total += len(y)
    return 100.0 * correct / max(1, total)


def finetune(model, train_data, timesteps: int | None = None, epochs: int = 2, *, calibration=None,
             eval_data=None, out: str | Path | None = None, resume: bool = False, progress: bool = False,
             stop_after: int | None = None, source: dict | None = None, config: FinetuneConfig | None = None,
             **convert_kw):
    """Fine-tune the quantized twin of ``model`` at ``timesteps`` and return the SpikingNetwork.

    Args:
        model: a SpikingNetwork of the two-phase method (fine-tuned from its thresholds), or an
            nn.Module, converted first with ``convert(model, calibration, timesteps, **convert_kw)``
            (``calibration`` default: the first 512 training images of ``train_data``).
        train_data: a dataset (shuffled and augmented each epoch) or a re-iterable of (x, y) batches.
        epochs: passes over ``train_data`` (the cosine schedule spans them).
        eval_data: scored with the exact fast path after every epoch (history's ``eval_acc``).
        out: run file, rewritten after every epoch (a network file that ``spikeconverter.load``
            and ``evaluate --snn`` read); ``resume=True`` continues the run it holds.
        stop_after: run at most this many epochs now (resumable later).
        source: JSON-able notes saved with the network (model, dataset, checkpoint).
        config: learning rates, batch size, seed (FinetuneConfig); ``epochs`` overrides its own.
    The input model is not changed. ``snn.calibration["finetune"]`` records the run."""
    cfg = copy.copy(config or FinetuneConfig())
    cfg.epochs = epochs
    if not 0.0 <= cfg.distill <= 1.0:
        raise ValueError(f"distill must be in [0, 1], got {cfg.distill}")
    out = Path(out) if out is not None else None
    snn, cfg, history, start, source = _start(model, train_data, timesteps, calibration, out, resume, progress, cfg,
                                              source, convert_kw)
    _check_finetunable(snn, timesteps)
    source = dict(source or getattr(snn, "source", None) or {})
    teacher = _teacher(model, cfg) if cfg.distill > 0 else None

    weights, shifts, thetas = _trainable(snn, cfg.train_weights)
    opts = _optimizers(weights, shifts, thetas, cfg)
    optim_file = None if out is None else out.with_name(out.name + ".optim")
    if start and optim_file is not None and optim_file.exists():
        _restore_optimizers(opts, thetas, optim_file)
    crit = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    end = cfg.epochs if stop_after is None else min(cfg.epochs, start + stop_after)
    try:
        for epoch in range(start, end):
            entry = _epoch(snn, opts, crit, teacher, train_data, cfg, epoch, progress)
            history.append(entry)
            if eval_data is not None or out is not None:
                frozen = _frozen_copy(snn)
                if eval_data is not None:
                    entry["eval_acc"] = twin_accuracy(frozen, eval_data)
                if out is not None:
                    _record(frozen, cfg, history, epoch + 1)
                    save_tensors(optim_file, {**_optim_state(opts), **{f"log_theta.{i}": p.detach()
                                                                        for i, p in enumerate(thetas)}},
                                 {"epoch": epoch + 1})
                    frozen.save(out, extra={**source, "finetune": frozen.calibration["finetune"]})
            if progress:
                print(json.dumps(entry), flush=True)
    finally:
        for m in snn._acts():
            if m.mode == "train":
                m.freeze()
    for p in snn.gm.parameters():
        p.requires_grad_(False)
    _record(snn, cfg, history, history[-1]["epoch"] if history else start)
    snn.source = {**source, "finetune": snn.calibration["finetune"]}
    return snn


def _start(model, train_data, timesteps, calibration, out, resume, progress, cfg, source, convert_kw):
    """The network to train and where the run stands: resumed from ``out``, a copy of the
    SpikingNetwork given, or a fresh conversion. Returns (snn, cfg, history, first epoch, source)."""
    from .convert import convert
    from .network import SpikingNetwork

    if resume and out is not None and out.exists():
        from .serialize import load

        snn = load(out)
        record = snn.source.get("finetune", {})
        history, start = record.get("history", []), record.get("epoch", 0)
        cfg = FinetuneConfig(**{**record.get("config", asdict(cfg)), "epochs": cfg.epochs})
        source = {k: v for k, v in snn.source.items() if k != "finetune"}
        if progress:
            print(f"resuming {out} after epoch {start}/{cfg.epochs}")
        return snn, cfg, history, start, source
    if isinstance(model, SpikingNetwork):
        return copy.deepcopy(model), cfg, [], 0, source
    if timesteps is None:
        raise ValueError("timesteps is required to convert a model for fine-tuning")
    if calibration is None:
        calibration = _first_images(train_data, 512)
    return convert(model, calibration, timesteps=timesteps, **convert_kw), cfg, [], 0, source


def _check_finetunable(snn, timesteps) -> None:
    """Refuse what fine-tuning cannot keep exact: the rate baseline, fixed point, another T."""
    if not snn.scheme.exact_twin:
        raise ValueError("fine-tuning applies to the two-phase method (the rate baseline has no exact twin)")
    if snn.exact_bounds is not None:
        raise ValueError("a fixed-point network cannot be fine-tuned (training leaves its grid); fine-tune, then "
                         "round the result with fixed point")
    if timesteps is not None:
        from .convert import layer_timesteps

        want = {snn.plan.layer_name(a): T for a, T in layer_timesteps(snn.plan, timesteps).items()}
        if want != snn.timesteps_per_layer:
            have = snn.timesteps if snn.uniform else snn.timesteps_per_layer
            raise ValueError(f"the network was converted for T = {have}, not {timesteps}")


def _restore_optimizers(opts, thetas, optim_file: Path) -> None:
    state = load_tensors(optim_file)[0]
    _load_optim_state(opts, state)
    with torch.no_grad():  # the log-thresholds as trained: exp then log again would not give them back
        for i, p in enumerate(thetas):
            if f"log_theta.{i}" in state:
                p.copy_(state[f"log_theta.{i}"])


def _epoch(snn, opts, crit, teacher, train_data, cfg: FinetuneConfig, epoch: int, progress: bool) -> dict:
    """One pass over ``train_data`` (seeded by epoch: a resumed run draws the same batches), the
    weights' learning rate on its cosine over all epochs. Returns the epoch's history entry."""
    gm = snn.gm
    dtype, device = next(gm.parameters()).dtype, next(gm.parameters()).device
    torch.manual_seed(cfg.seed * 100003 + epoch)
    batches = _batches(train_data, cfg.batch_size, cfg.seed * 100003 + epoch)
    steps = len(batches) if hasattr(batches, "__len__") else None
    it = batches
    if progress:
        from tqdm import tqdm

        it = tqdm(batches, desc=f"finetune T={snn.timesteps} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                  mininterval=2.0)
    t0, seen, correct, loss_sum = time.time(), 0, 0, 0.0
    gm.eval()  # standalone BN keeps its statistics; everything else has no train mode
    for i, (x, y) in enumerate(it):
        if steps:
            frac = (epoch * steps + i) / (cfg.epochs * steps)
            opts[0].param_groups[0]["lr"] = opts[0].param_groups[1]["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))
        x = x.to(device=device, dtype=dtype)
        logits = gm(x)
        y = y.to(device)
        loss = crit(logits.float(), y)
        if teacher is not None:
            with torch.no_grad():
                soft = torch.softmax(teacher(x).float(), 1)
            kd = torch.nn.functional.kl_div(torch.log_softmax(logits.float(), 1), soft, reduction="batchmean")
            loss = (1 - cfg.distill) * loss + cfg.distill * kd
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()
        seen += len(y)
        correct += int((logits.argmax(1) == y).sum())
        loss_sum += loss.item() * len(y)
        if progress and i % 20 == 0:
            it.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}")
    return {"epoch": epoch + 1, "loss": loss_sum / max(1, seen), "train_acc": 100 * correct / max(1, seen),
            "seconds": round(time.time() - t0, 1)}


def _teacher(model, cfg: FinetuneConfig) -> nn.Module:
    """The float network the twin is distilled from: the model given, or the float ANN of the
    SpikingNetwork given (its weights as converted). Resuming needs it passed again: the run file
    holds the twin being trained, not its teacher."""
    from .network import SpikingNetwork

    if model is None:
        raise ValueError("distillation needs the float model: pass it again when resuming")
    teacher = model.ann() if isinstance(model, SpikingNetwork) else copy.deepcopy(model)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def _frozen_copy(snn):
    """The network as it stands, thresholds frozen (what the run file saves and eval scores)."""
    acts = snn._acts()
    saved = [(m.train_log_theta, m.train_shift) for m in acts]
    try:
        for m in acts:
            m.freeze()
        frozen = copy.deepcopy(snn)
    finally:
        for m, (lt, sh) in zip(acts, saved):
            m.train_log_theta, m.train_shift, m.mode = lt, sh, "train"
    for p in frozen.gm.parameters():
        p.requires_grad_(False)
    return frozen


def _record(snn, cfg: FinetuneConfig, history: list, epoch: int) -> None:
    snn.calibration = dict(getattr(snn, "calibration", None) or {})
    snn.calibration["finetune"] = {"epoch": epoch, "config": asdict(cfg), "history": history}


def _first_images(data, n: int) -> torch.Tensor:
    from .data.datasets import ArrayDataset

    if isinstance(data, ArrayDataset):  # a fixed random subset: the archives are sorted by class
        idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))[:n].sort().values
        return data.normalize(data.images[idx])
    xs, have = [], 0
    for x, _ in data:
        xs.append(x)
        have += len(x)
        if have >= n:
            break
    return torch.cat(xs)[:n]
