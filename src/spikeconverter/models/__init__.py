"""The model zoo: ``create(name, num_classes, dataset, pretrained)`` and ``available()``.

Shipped checkpoints are ``<name>-<dataset>.safetensors`` (weights, with their metadata as JSON
inside the safetensors header; loading never unpickles code), found or downloaded by weights.py."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .. import weights
from ..data.datasets import DATASETS
from .mobilenet import MobileNetV2, mobilenet_v2
from .resnet import BasicBlock, ResNet, resnet20, resnet34
from .vgg import VGG, vgg16

BUILDERS = {"vgg16": vgg16, "resnet20": resnet20, "resnet34": resnet34, "mobilenet_v2": mobilenet_v2}
CHECKPOINT_DIR = weights.CHECKOUT_DIR  # where the repository keeps them (not in the wheel)
# Accuracy (%) each checkpoint is meant to reach (CIFAR-10: the JPEG copy's test set; Imagenette:
# its val set); the docs report the shortfall of any checkpoint shipped below it (docs/training.md,
# the README's results).
CHECKPOINT_TARGETS = {("resnet20", "cifar10"): 90.5, ("vgg16", "cifar10"): 92.0, ("mobilenet_v2", "cifar10"): 90.5,
                      ("resnet34", "imagenette"): 88.0, ("mobilenet_v2", "imagenette"): 85.0}

__all__ = ["BUILDERS", "CHECKPOINT_TARGETS", "BasicBlock", "MobileNetV2", "ResNet", "VGG", "available", "create",
           "pretrained_checkpoint", "shipped_checkpoint", "shipped_network"]


def checkpoint_file(name: str, dataset: str) -> str:
    return f"{name}-{dataset}.safetensors"


def shipped_checkpoint(name: str, dataset: str) -> Path | None:
    """The shipped checkpoint of (name, dataset) if it is on this machine (weights.py says where it
    is looked for), else None; ``pretrained_checkpoint`` also downloads it."""
    return weights.local(checkpoint_file(name, dataset))


def pretrained_checkpoint(name: str, dataset: str) -> Path:
    """The shipped checkpoint of (name, dataset): found on this machine or downloaded (weights.py)."""
    if checkpoint_file(name, dataset) not in weights.registry():
        shipped = [f"{n}/{d}" for n, ds in available().items() for d in ds]
        raise ValueError(f"no shipped checkpoint for {name}/{dataset}; shipped: {', '.join(shipped) or 'none'}")
    return weights.fetch(checkpoint_file(name, dataset))


def shipped_network(name: str, dataset: str, timesteps: int) -> Path | None:
    """The shipped fine-tuned network file of (name, dataset) for T (found or downloaded), or None
    if none is shipped."""
    file = f"{name}-{dataset}-T{timesteps}.snn"
    return weights.fetch(file) if file in weights.registry() else None


def available() -> dict[str, list[str]]:
    """Model names, each with the datasets it has a shipped checkpoint for."""
    return {n: [d for d in DATASETS if checkpoint_file(n, d) in weights.registry()] for n in BUILDERS}


def create(name: str, num_classes: int | None = None, dataset: str = "cifar10", pretrained: bool = False,
           in_channels: int | None = None, image_size: int | None = None) -> nn.Module:
    """Build ``name`` shaped for ``dataset`` (input size and channels); ``pretrained=True`` loads the
    shipped checkpoint for (name, dataset) and returns the model in eval mode."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(BUILDERS)}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    info = DATASETS[dataset]
    model = BUILDERS[name](
        num_classes=num_classes or info.num_classes,
        in_channels=in_channels or info.channels,
        image_size=image_size or info.image_size,
    )
    if pretrained:
        path = pretrained_checkpoint(name, dataset)
        from ..checkpoint import load_weights

        load_weights(model, path)
        model.eval()
    return model
