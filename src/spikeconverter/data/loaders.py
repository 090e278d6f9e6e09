"""Batch iteration with the usual CIFAR augmentation (random crop with padding, horizontal flip).

For in-memory datasets the crop and flip run on whole uint8 batches: one gather per batch instead
of per-sample Python work, which matters on a 2-core machine."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from .datasets import ArrayDataset


class Batches:
    """Re-iterable batches of (normalised images, labels) from an ``ArrayDataset``."""

    def __init__(self, ds: ArrayDataset, batch_size=128, shuffle=False, augment=False, padding=4,
                 drop_last=False, seed=None):
        self.ds, self.batch_size, self.shuffle, self.augment = ds, batch_size, shuffle, augment
        self.padding, self.drop_last = padding, drop_last
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __len__(self) -> int:
        n = len(self.ds)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.ds)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            imgs = self.ds.images[idx]
            if self.augment:
                imgs = self._augment(imgs)
            yield self.ds.normalize(imgs), self.ds.labels[idx]

    def _augment(self, imgs: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = imgs.shape
        p = self.padding
        if p > 0:
            padded = torch.nn.functional.pad(imgs, (0, 0, p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (b,), generator=self.generator)
            dx = torch.randint(0, 2 * p + 1, (b,), generator=self.generator)
            rows = (dy[:, None] + torch.arange(h)[None, :])[:, :, None].expand(b, h, w)
            cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, :].expand(b, h, w)
            bidx = torch.arange(b)[:, None, None].expand(b, h, w)
            imgs = padded[bidx, rows, cols]
        flip = torch.rand(b, generator=self.generator) < 0.5
        imgs = torch.where(flip[:, None, None, None], imgs.flip(2), imgs)
        return imgs


def loader(ds, batch_size=128, train=False, shuffle=None, augment=None, seed=None, num_workers=0):
    """Batches for training (``train=True``: shuffled, augmented) or evaluation.

    In-memory datasets get the fast batched path; others (ImageNet folders) a torch DataLoader."""
    shuffle = train if shuffle is None else shuffle
    augment = train if augment is None else augment
    if isinstance(ds, ArrayDataset):
        return Batches(ds, batch_size, shuffle=shuffle, augment=augment, drop_last=train, seed=seed)
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=train, generator=g,
                      num_workers=num_workers)
