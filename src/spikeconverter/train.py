"""Training the model zoo: SGD (momentum, nesterov), weight decay, one-cycle or cosine schedule,
optional label smoothing, bf16 autocast on CPU, channels-last.

A checkpoint (weights, optimizer state, history) is written atomically after every epoch, and
``resume=True`` continues from it: a kill loses at most the running epoch. Each epoch's data order
and augmentation are seeded from (seed, epoch), so a resumed run sees the same batches as an
unbroken one."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import distributed
from .checkpoint import export_weights, load_tensors, save_tensors
from .data import load_dataset, loader
from .models import create


@dataclass
class TrainConfig:
    model: str = "resnet20"
    dataset: str = "cifar10"
    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # or "cosine"
    warmup: float = 0.15  # fraction of steps rising to lr (onecycle)
    label_smoothing: float = 0.0
    seed: int = 0
    bf16: bool = True
    channels_last: bool = True
    data_root: str | None = None
    download: bool = False
    threads: int | None = None
    image_size: int | None = None  # photos (imagenette): the side the network is trained at
    device: str = "auto"  # auto: CUDA, else MPS, else CPU


def _portable(config: dict) -> dict:
    """The config as metadata records it: a data folder by its name, not the machine's path."""
    if config.get("data_root"):
        config = {**config, "data_root": Path(config["data_root"]).name}
    return config


def balanced_subset(ds, n: int, seed: int):
    """A fixed random subset of ``n`` items with the classes as equally represented as they can be."""
    if n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(seed)
    labels = ds.labels
    classes = labels.unique()
    per_class = [torch.nonzero(labels == c).flatten() for c in classes]
    per_class = [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]
    # round-robin over the classes, each in its own random order
    order = torch.stack([torch.cat([idx, idx.new_full((len(labels) - len(idx),), -1)]) for idx in per_class], 1).flatten()
    picked = order[order >= 0][:n].sort().values
    out = ds.subset(None)
    out.images, out.labels = ds.images[picked], ds.labels[picked]
    return out


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    p = step / max(1, total)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * p))
    if cfg.schedule == "onecycle":
        if p < cfg.warmup:
            return cfg.lr * (0.04 + 0.96 * p / cfg.warmup)
        q = (p - cfg.warmup) / (1 - cfg.warmup)
        return cfg.lr * (0.5 * (1 + math.cos(math.pi * q)) * 0.9996 + 0.0004)
    raise ValueError(f"unknown schedule {cfg.schedule!r}; use onecycle or cosine")


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, ds, batch_size: int = 500, progress: bool = False, limit=None) -> float:
    """Top-1 accuracy in percent, float32, eval mode."""
    model.eval()
    if limit is not None and hasattr(ds, "subset"):
        ds = ds.subset(limit)
    correct = total = 0
    it = loader(ds, batch_size=batch_size, train=False)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="eval", leave=False)
    device = next(model.parameters()).device
    for x, y in it:
        correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
        total += len(y)
    return 100.0 * correct / max(1, total)


def _optimizer(model: nn.Module, cfg: TrainConfig):
    decay, no_decay = [], []
    for _n, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BN and biases
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
    )


def _optim_tensors(opt) -> dict[str, torch.Tensor]:
    out = {}
    for gi, g in enumerate(opt.param_groups):
        for pi, p in enumerate(g["params"]):
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[f"optim.{gi}.{pi}"] = buf
    return out


def _load_optim_tensors(opt, tensors) -> None:
    for gi, g in enumerate(opt.param_groups):
        for pi, p in enumerate(g["params"]):
            t = tensors.get(f"optim.{gi}.{pi}")
            if t is not None:
                opt.state[p]["momentum_buffer"] = t.to(device=p.device, dtype=p.dtype).clone()


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True,
          export: str | Path | None = None, half_export: bool = False, stop_after: int | None = None,
          limit: int | None = None, test_limit: int | None = None) -> dict:
    """Train per ``cfg``; ``out`` is the run's checkpoint file (``.safetensors``). Returns metadata.

    ``stop_after``: run at most this many epochs now (a time-boxed session), resumable later.
    ``limit``: train on a fixed random, class-balanced subset of ``limit`` training images (tests,
    smoke runs; the archives are sorted by class, so the first N would be one class).
    ``test_limit``: score each epoch on a fixed random subset of the test set."""
    out = Path(out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    sized = {"image_size": cfg.image_size} if cfg.image_size else {}
    train_ds = load_dataset(cfg.dataset, "train", cfg.data_root, download=cfg.download, **sized)
    if limit is not None:
        train_ds = balanced_subset(train_ds, limit, cfg.seed)
    test_ds = load_dataset(cfg.dataset, "test", cfg.data_root, **sized)
    if test_limit is not None:
        test_ds = balanced_subset(test_ds, test_limit, cfg.seed + 1)
    torch.manual_seed(cfg.seed)
    from .device import resolve

    device = resolve(cfg.device)
    model = create(cfg.model, dataset=cfg.dataset).to(device)
    opt = _optimizer(model, cfg)
    history, start_epoch = _resume(model, opt, cfg, out, device, progress) if resume and out.exists() else ([], 0)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    crit = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    # torchrun: data-parallel (DDP, gradients averaged over the ranks); batch i of an epoch goes to
    # rank i mod N, every rank takes the same number of steps, rank 0 scores and writes the run file
    world, rank = distributed.world_size(), distributed.rank()
    net = model
    if distributed.active():
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    steps_per_epoch = len(loader(train_ds, cfg.batch_size, train=True)) // world
    meta = {}
    end_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.time()
        seen, correct, loss_sum = _epoch(model, net, opt, crit, train_ds, cfg, epoch, steps_per_epoch, device, progress)
        train_time = time.time() - t0
        seen, correct, loss_sum = distributed.all_sum([seen, correct, loss_sum])
        if rank != 0:
            continue
        test_acc = evaluate_accuracy(model, test_ds)
        history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": 100 * correct / seen,
                        "test_acc": test_acc, "seconds": round(train_time, 1)})
        meta = {"arch": cfg.model, "dataset": cfg.dataset, "epoch": epoch + 1, "epochs": cfg.epochs,
                "seed": cfg.seed, "test_acc": test_acc, "data": getattr(test_ds, "source", ""),
                "image_size": getattr(test_ds, "crop", None) or test_ds.info.image_size,
                "config": _portable(asdict(cfg)), "history": history}
        if world > 1:
            meta["processes"] = world
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update(_optim_tensors(opt))
        save_tensors(out, tensors, meta)
        if progress:
            print(json.dumps(history[-1]), flush=True)
    distributed.barrier()  # the other ranks read what rank 0 wrote
    if not meta:
        _, meta = load_tensors(out)
    if export is not None and meta["epoch"] == meta["epochs"] and rank == 0:
        _export_run(model, meta, cfg, test_ds, Path(export), half_export)
    return meta


def _resume(model, opt, cfg: TrainConfig, out: Path, device, progress: bool) -> tuple[list, int]:
    """Load the run in ``out`` into ``model`` and ``opt``; returns (history, epochs done)."""
    tensors, meta = load_tensors(out)
    if meta.get("config", {}).get("model") != cfg.model or meta.get("config", {}).get("dataset") != cfg.dataset:
        raise ValueError(f"{out} holds a {meta.get('config', {}).get('model')} run, not {cfg.model}")
    model.load_state_dict({k[6:]: v.to(device) for k, v in tensors.items() if k.startswith("model.")})
    _load_optim_tensors(opt, tensors)
    saved = TrainConfig(**{k: v for k, v in meta["config"].items() if k in TrainConfig.__dataclass_fields__})
    cfg.epochs = saved.epochs if cfg.epochs == saved.epochs else cfg.epochs
    if progress:
        print(f"resuming {out} after epoch {meta['epoch']}/{cfg.epochs}")
    return meta["history"], meta["epoch"]


def _epoch(model, net, opt, crit, train_ds, cfg: TrainConfig, epoch: int, steps_per_epoch: int, device,
           progress: bool) -> tuple[int, int, float]:
    """One seeded pass (this rank's share of the batches). Returns (images, correct, loss sum)."""
    world, rank = distributed.world_size(), distributed.rank()
    total = steps_per_epoch * cfg.epochs
    torch.manual_seed(cfg.seed * 100003 + epoch)
    model.train()
    batches = loader(train_ds, cfg.batch_size, train=True, seed=cfg.seed * 100003 + epoch)
    it = batches
    if progress:
        from tqdm import tqdm

        it = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, mininterval=2.0)
    seen, correct, loss_sum = 0, 0, 0.0
    for j, (x, y) in enumerate(it):
        if j % world != rank or j >= steps_per_epoch * world:
            continue
        i = j // world
        for g in opt.param_groups:
            g["lr"] = lr_at(epoch * steps_per_epoch + i, total, cfg)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = net(x)
            loss = crit(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
        correct += (logits.argmax(1) == y).sum().item()
        loss_sum += loss.item() * len(y)
        if progress and i % 20 == 0:
            it.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}")
    return seen, correct, loss_sum


def _export_run(model, meta: dict, cfg: TrainConfig, test_ds, export: Path, half: bool) -> None:
    """The finished run's weights in shippable form, with the accuracy of exactly those weights."""
    model = model.to(memory_format=torch.contiguous_format)
    exp_meta = {k: meta[k] for k in ("arch", "dataset", "epochs", "seed", "test_acc", "data", "image_size") if k in meta}
    exp_meta["config"] = meta["config"]
    exp_meta["seconds_per_epoch_median"] = sorted(h["seconds"] for h in meta["history"])[len(meta["history"]) // 2]
    if half:  # the accuracy we ship is that of the weights we ship: fp16-rounded, measured again
        shipped = create(cfg.model, dataset=cfg.dataset)
        shipped.load_state_dict({k: (v.half().to(v.dtype) if v.is_floating_point() else v)
                                 for k, v in model.state_dict().items()})
        exp_meta["test_acc_float32"] = meta["test_acc"]
        exp_meta["test_acc"] = evaluate_accuracy(shipped, test_ds)
    export_weights(model, export, exp_meta, half=half)
