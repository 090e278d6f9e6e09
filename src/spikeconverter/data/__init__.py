"""Datasets: CIFAR-10/100, Fashion-MNIST and ImageNet, read from the layouts users actually have.

Small datasets are decoded once into uint8 arrays and cached (``SPIKECONVERTER_CACHE``, default
``~/.cache/spikeconverter``); every later load is a memory map away. Batches for training are cut
and augmented on whole uint8 tensors, which on a 2-core CPU is far cheaper than per-sample
DataLoader workers.
"""

from .datasets import (
    DATASETS,
    ArrayDataset,
    DatasetError,
    DatasetInfo,
    FolderDataset,
    load_dataset,
    resolve_root,
)
from .download import download_cifar
from .loaders import Batches, loader

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "Batches",
    "DatasetError",
    "DatasetInfo",
    "FolderDataset",
    "download_cifar",
    "load_dataset",
    "loader",
    "resolve_root",
]
