"""What a command measures on: the model (its shipped or given weights), and the test, calibration
and held-out training images as fixed random subsets -- training images for calibration and for
choosing T, test images for accuracy, never the other way round."""

from __future__ import annotations

from pathlib import Path

import torch

from .data import load_dataset
from .data.datasets import ArrayDataset
from .models import create, pretrained_checkpoint


def load_model(name: str, dataset: str, checkpoint: str | None = None):
    """The model with its weights (a checkpoint file, else the shipped one) in eval mode."""
    from .checkpoint import load_weights

    model = create(name, dataset=dataset)
    path = Path(checkpoint) if checkpoint else pretrained_checkpoint(name, dataset)
    if path is not None and path.suffix == ".snn":
        from .serialize import is_network_file

        if is_network_file(path):
            raise ValueError(f"{path.name} is a converted network, not float weights: measure it with "
                             f"evaluate --snn {path.name} (or spikeconverter.load in Python)")
    meta = load_weights(model, path)
    keys = ("arch", "dataset", "test_acc", "epochs", "image_size")
    return model.eval(), {"checkpoint": file_ref(path), **{k: meta.get(k) for k in keys}}


def file_ref(path: Path) -> str:
    """A checkpoint as results name it: file name and content hash, never the machine's path."""
    import hashlib

    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return f"{Path(path).name} (sha256 {digest}...)"


def sized_kwargs(dataset: str, info: dict) -> dict:
    """Photos are evaluated at the side the checkpoint was trained at (its metadata says)."""
    return {"image_size": info["image_size"]} if dataset == "imagenette" and info.get("image_size") else {}


def fixed_subset(ds, n: int | None, seed: int):
    """A fixed random subset (test sets are stored class by class: the first n would be one class)."""
    if n is None or n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    if isinstance(ds, ArrayDataset):
        out = ds.subset(None)
        out.images, out.labels = ds.images[idx], ds.labels[idx]
        return out
    return torch.utils.data.Subset(ds, idx.tolist())


def data_digest(ds) -> str | None:
    """sha256 (first 16 hex digits) of a test set's decoded pixels and labels: when a published
    figure drifts, this says whether the images differ (another decoder) or the arithmetic does.
    None for datasets read lazily from folders (hashing them would decode every photo)."""
    if not isinstance(ds, ArrayDataset):
        return None
    import hashlib

    h = hashlib.sha256(ds.images.contiguous().numpy().tobytes())
    h.update(ds.labels.numpy().tobytes())
    return h.hexdigest()[:16]


def batches_of(ds, batch_size: int, device=None):
    """(x, y) batches of a test set, on ``device`` (None: where they are made, the CPU)."""
    if isinstance(ds, ArrayDataset):
        it = ((ds.normalize(ds.images[i : i + batch_size]), ds.labels[i : i + batch_size])
              for i in range(0, len(ds), batch_size))
    else:
        it = iter(torch.utils.data.DataLoader(ds, batch_size=batch_size))
    for x, y in it:
        yield (x, y) if device is None else (x.to(device, non_blocking=True), y.to(device, non_blocking=True))


def calibration_data(dataset: str, n: int, data_root=None, seed: int = 0, download: bool = False,
                     **dataset_kw) -> torch.Tensor:
    """``n`` training images (fixed random subset, no augmentation), normalised, as one tensor."""
    if n < 1:
        raise ValueError(f"--calibration must be >= 1, got {n}")
    train = fixed_subset(load_dataset(dataset, "train", data_root, download=download, **dataset_kw), n, seed + 1)
    return torch.cat([x for x, _ in batches_of(train, 512)])


# held-out training images that judge a per-layer T search (-T auto). The judged loss is an estimate
# whose standard error is about sqrt(flipped answers) / n: on ResNet-20 at T = 4, 1,024 images judged
# 0.10 pp where 4,096 judged 0.81 and the 10,000 test images 0.76 (docs/results.md, Latency)
SELECTION_IMAGES = 4096


def held_out_training(dataset: str, n: int, skip: int, data_root=None, seed: int = 0, download: bool = False,
                      **dataset_kw) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training images and labels that ``calibration_data(dataset, skip, seed=seed)`` does not
    use (the next ``n`` of the same fixed random order): what -T auto judges allocations on."""
    train = load_dataset(dataset, "train", data_root, download=download, **dataset_kw)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 1))[skip : skip + n].sort().values
    if isinstance(train, ArrayDataset):
        out = train.subset(None)
        out.images, out.labels = train.images[idx], train.labels[idx]
    else:
        out = torch.utils.data.Subset(train, idx.tolist())
    xs, ys = zip(*batches_of(out, 512))
    return torch.cat(xs), torch.cat(ys)
