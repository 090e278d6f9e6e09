"""Batch iteration with the usual augmentation: CIFAR's random crop with padding and horizontal flip;
for photos (datasets with a ``crop`` size, e.g. Imagenette) the ImageNet random-resized crop and flip.

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
            if self.augment and getattr(self.ds, "crop", None) is not None:
                x = self._random_resized_crop(imgs, self.ds.crop)
                yield (x - self.ds.mean) / self.ds.std, self.ds.labels[idx]
                continue
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


    # area fraction of the crop: torchvision's default starts at 0.08; short CPU schedules do better
    # with milder crops (fastai's Imagenette baselines use 0.35)
    RRC_SCALE = (0.35, 1.0)
    RRC_RATIO = (3 / 4, 4 / 3)

    def _random_resized_crop(self, imgs: torch.Tensor, size: int) -> torch.Tensor:
        """Random-resized crop + horizontal flip of a whole uint8 NHWC batch in one grid_sample:
        float NCHW in [0, 1], ``size`` x ``size``."""
        import math

        b = imgs.shape[0]
        g = self.generator
        area = torch.empty(b).uniform_(*self.RRC_SCALE, generator=g)
        logr = torch.empty(b).uniform_(math.log(self.RRC_RATIO[0]), math.log(self.RRC_RATIO[1]), generator=g)
        w = torch.sqrt(area * torch.exp(logr)).clamp(max=1.0)  # crop side / image side (normalised coords)
        h = torch.sqrt(area / torch.exp(logr)).clamp(max=1.0)
        cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - w)
        cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - h)
        flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        x = imgs.permute(0, 3, 1, 2).float().div_(255.0)
        grid = torch.nn.functional.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
        return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


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
