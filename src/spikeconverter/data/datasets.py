"""Finding, decoding and caching datasets.

Every supported layout is listed in ``LAYOUTS``; a dataset that is missing or malformed raises
``DatasetError`` with that list, never a traceback from deep inside a decoder.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


class DatasetError(ValueError):
    """A dataset could not be found or read. The message says what layouts are expected."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, 32, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo("cifar100", 100, 32, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, 28, 1, (0.2860,), (0.3530,)),
    "imagenet": DatasetInfo("imagenet", 1000, 224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # 10 ImageNet classes (fastai's Imagenette v2 split), real photographs; ImageNet's statistics
    "imagenette": DatasetInfo("imagenette", 10, 224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# Imagenette is decoded once, resized so that the evaluation centre crop keeps 87.5 % of the side
# (the usual ImageNet 224/256 ratio), and cached as uint8: per-epoch JPEG decoding would cost more
# than training on two cores.
EVAL_CROP_FRACTION = 0.875

LAYOUTS = {
    "cifar10": [
        "<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}   (the original python release)",
        "<root>/cifar-10-python.tar.gz                               (the original release archive)",
        "<root>[/cifar10]/{train,test}/<class>/*.jpg|png             (class folders, 10 classes)",
        "<root>[/cifar10*].tar[.gz] holding {train,test}/<class>/*   (an archive of class folders)",
    ],
    "cifar100": [
        "<root>/cifar-100-python/{train,test,meta}                   (the original python release)",
        "<root>/cifar-100-python.tar.gz                              (the original release archive)",
        "<root>[/cifar100]/{train,test}/<class>/*.jpg|png            (class folders, 100 classes)",
        "<root>[/cifar100*].tar[.gz] holding {train,test}/<class>/*  (an archive of class folders)",
    ],
    "fashion_mnist": [
        "<root>[/fashion-mnist]/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]   (IDX files)",
    ],
    "imagenet": [
        "<root>[/imagenet]/{train,val}/<wnid>/*.JPEG                 (class folders)",
    ],
    "imagenette": [
        "<root>[/imagenette*]/{train,val}/<wnid>/*.JPEG              (class folders, 10 classes)",
        "<root>[/imagenette*].tar[.gz] holding [top/]{train,val}/<wnid>/*  (an archive of class folders)",
    ],
}


def _layout_help(name: str) -> str:
    return "expected one of these layouts:\n  " + "\n  ".join(LAYOUTS[name])


# ----------------------------------------------------------------------------------------------
# Root resolution
# ----------------------------------------------------------------------------------------------


def _repo_root() -> Path:
    # src/spikeconverter/data/datasets.py -> the checkout (when installed editable / run from source)
    return Path(__file__).resolve().parents[3]


def default_roots(name: str) -> list[Path]:
    """The places a user would expect, in order: ./data, the download cache, the shared folder."""
    roots = [Path.cwd() / "data", cache_dir() / "data"]
    for base in (Path.cwd(), _repo_root()):
        roots.append(base.parent / "shared" / "datasets")
        roots.append(base / "shared" / "datasets")
    if name == "fashion_mnist":
        roots.append(Path("/usr/share/datasets/fashion-mnist"))
    if name == "imagenet":
        roots.append(Path("/data/imagenet"))
    seen, out = set(), []
    for r in roots:
        key = str(r.resolve()) if r.exists() else str(r)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("SPIKECONVERTER_CACHE", Path.home() / ".cache" / "spikeconverter"))


def resolve_root(name: str, root: str | os.PathLike | None = None) -> tuple[str, Path]:
    """Find the dataset ``name``. Returns (layout kind, path). Order: ``root``, then the
    ``SPIKECONVERTER_DATA`` environment variable, then ``default_roots``."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if root is not None:
        candidates, explicit = [Path(root)], True
    elif os.environ.get("SPIKECONVERTER_DATA"):
        candidates, explicit = [Path(os.environ["SPIKECONVERTER_DATA"])], True
    else:
        candidates, explicit = default_roots(name), False
    for cand in candidates:
        if not cand.exists():
            continue
        found = _detect(name, cand)
        if found is not None:
            return found
    where = ", ".join(str(c) for c in candidates)
    what = "was not found in" if explicit else "was not found in any default place"
    raise DatasetError(
        f"dataset {name!r} {what} ({where}); pass root=... or set SPIKECONVERTER_DATA; "
        + _layout_help(name)
        + ("\n  or use --download (CIFAR only)" if name.startswith("cifar") else "")
    )


def _is_archive(p: Path) -> bool:
    return p.is_file() and p.name.endswith((".tar", ".tar.gz", ".tgz"))


def _class_tree_ok(path: Path, num_classes: int, splits: tuple[str, str]) -> bool:
    try:
        return all(
            (path / s).is_dir() and sum(1 for d in (path / s).iterdir() if d.is_dir()) == num_classes
            for s in splits
        )
    except OSError:
        return False


def _detect(name: str, cand: Path) -> tuple[str, Path] | None:
    info = DATASETS[name]
    if name in ("cifar10", "cifar100"):
        pickle_dir = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
        if cand.is_dir():
            if (cand / pickle_dir).is_dir():
                return "pickle", cand / pickle_dir
            if cand.name == pickle_dir:
                return "pickle", cand
            if (cand / f"{pickle_dir.split('-batches')[0]}-python.tar.gz").is_file():
                return "pickle-archive", cand / f"{pickle_dir.split('-batches')[0]}-python.tar.gz"
            for sub in (cand / name, cand):
                if _class_tree_ok(sub, info.num_classes, ("train", "test")):
                    return "folders", sub
            archives = sorted(
                p for p in cand.iterdir() if _is_archive(p) and p.name.startswith((name + "-", name + "."))
            )
            if archives:
                return "folder-archive", archives[0]
            return None
        if _is_archive(cand):
            kind = "pickle-archive" if cand.name.endswith("-python.tar.gz") else "folder-archive"
            return kind, cand
        return None
    if name == "fashion_mnist":
        for sub in (cand, cand / "fashion-mnist", cand / "fashion_mnist"):
            if sub.is_dir() and _idx_file(sub, "train-images-idx3-ubyte") is not None:
                return "idx", sub
        return None
    if name == "imagenet":
        for sub in (cand, cand / "imagenet"):
            if (sub / "train").is_dir() or (sub / "val").is_dir():
                return "folders", sub
        return None
    if name == "imagenette":
        if _is_archive(cand):
            return "folder-archive", cand
        if not cand.is_dir():
            return None
        subs = [cand] + sorted(p for p in cand.iterdir() if p.is_dir() and p.name.startswith("imagenette"))
        for sub in subs:
            if _class_tree_ok(sub, info.num_classes, ("train", "val")):
                return "folders", sub
        archives = sorted(p for p in cand.iterdir() if _is_archive(p) and p.name.startswith("imagenette"))
        if archives:
            return "folder-archive", archives[0]
        return None
    return None


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------


class ArrayDataset(Dataset):
    """Images held as one uint8 NHWC tensor; items are normalised float CHW tensors.

    ``images``/``labels`` are public so that batch loaders can cut whole batches at once."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, info: DatasetInfo, classes=None, source=""):
        if images.ndim == 3:
            images = images[..., None]
        self.images = torch.from_numpy(np.array(images, copy=True))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.info = info
        self.classes = list(classes) if classes is not None else [str(i) for i in range(info.num_classes)]
        self.source = source
        self.crop: int | None = None  # photos: the side the network sees (centre crop when evaluating)
        c = self.images.shape[-1]
        self.mean = torch.tensor(info.mean, dtype=torch.float32).view(1, c, 1, 1)
        self.std = torch.tensor(info.std, dtype=torch.float32).view(1, c, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def normalize(self, images_uint8_nhwc: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW (the centre ``crop`` x ``crop`` when it is set)."""
        x = images_uint8_nhwc
        if self.crop is not None and x.shape[1] != self.crop:
            top, left = (x.shape[1] - self.crop) // 2, (x.shape[2] - self.crop) // 2
            x = x[:, top : top + self.crop, left : left + self.crop]
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std

    def __getitem__(self, i):
        return self.normalize(self.images[i : i + 1])[0], int(self.labels[i])

    def subset(self, n: int | None, offset: int = 0) -> ArrayDataset:
        """The first ``n`` items (after ``offset``), same class, same normalisation."""
        sl = slice(offset, None if n is None else offset + n)
        out = ArrayDataset.__new__(ArrayDataset)
        out.__dict__.update(self.__dict__)
        out.images, out.labels = self.images[sl], self.labels[sl]
        return out


class FolderDataset(Dataset):
    """ImageNet-style class folders read lazily (too large to cache as one array)."""

    def __init__(self, root: Path, split: str, info: DatasetInfo, train: bool):
        split_dir = root / split
        if not split_dir.is_dir():
            raise DatasetError(f"{split_dir} does not exist; " + _layout_help("imagenet"))
        self.classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
        if not self.classes:
            raise DatasetError(f"{split_dir} holds no class folders; " + _layout_help("imagenet"))
        self.samples = [
            (p, i)
            for i, c in enumerate(self.classes)
            for p in sorted((split_dir / c).iterdir())
            if p.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.samples:
            raise DatasetError(f"{split_dir} holds no images; " + _layout_help("imagenet"))
        self.info, self.train = info, train
        self.labels = torch.tensor([s[1] for s in self.samples])
        self.source = f"folders:{root.name}"
        self.mean = torch.tensor(info.mean).view(3, 1, 1)
        self.std = torch.tensor(info.std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image

        path, label = self.samples[i]
        try:
            img = Image.open(path).convert("RGB")
        except OSError as e:
            raise DatasetError(f"cannot decode image {path}: {e}") from None
        size = self.info.image_size
        short = int(round(size * 256 / 224))
        w, h = img.size
        s = short / min(w, h)
        img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
        w, h = img.size
        if self.train:
            left = int(torch.randint(0, w - size + 1, ()).item())
            top = int(torch.randint(0, h - size + 1, ()).item())
        else:
            left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        if self.train and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return (x - self.mean) / self.std, label


def load_dataset(name: str, split: str = "test", root=None, download: bool = False, image_size: int | None = None):
    """Load ``name`` (cifar10, cifar100, fashion_mnist, imagenet, imagenette), ``split`` train or
    test (``val`` is accepted and means the same). Returns a Dataset of (normalised CHW tensor, label).

    ``image_size`` (imagenette): the side of the images the network sees (default 224). The photos
    are decoded once at image_size / 0.875 and cached; evaluation takes the centre crop, training
    batches a random-resized crop (``loader(..., train=True)``)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if split not in ("train", "test", "val"):
        raise DatasetError(f"unknown split {split!r}; use 'train' or 'test'")
    if image_size is not None and name != "imagenette":
        raise DatasetError(f"image_size applies to imagenette only ({name} has a fixed size)")
    info = DATASETS[name]
    try:
        kind, path = resolve_root(name, root)
    except DatasetError:
        if not (download and name.startswith("cifar")):
            raise
        from .download import download_cifar

        archive = download_cifar(name, Path(root) if root is not None else cache_dir() / "data")
        kind, path = "pickle-archive", archive
    if name == "imagenet":
        return FolderDataset(path, "val" if split in ("test", "val") else "train", info, train=split == "train")
    split = "test" if split == "val" else split
    if name == "imagenette":
        size = int(image_size or info.image_size)
        if not 32 <= size <= 512:
            raise DatasetError(f"image_size must be in [32, 512], got {size}")
        stored = int(round(size / EVAL_CROP_FRACTION))
        images, labels, classes = _cached_arrays(name, kind, path, split, stored)
        ds = ArrayDataset(images, labels, info, classes, source=f"{kind}:{path.name}")
        ds.crop = size
        return ds
    images, labels, classes = _cached_arrays(name, kind, path, split)
    # provenance names the layout and the file or folder, never the machine's absolute path
    return ArrayDataset(images, labels, info, classes, source=f"{kind}:{path.name}")


# ----------------------------------------------------------------------------------------------
# Decoding with a cache of uint8 arrays
# ----------------------------------------------------------------------------------------------


def _cache_key(name: str, kind: str, path: Path, stored: int | None = None) -> str:
    st = path.stat()
    raw = f"{name}|{kind}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}" + (f"|{stored}" if stored else "")
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def _cached_arrays(name: str, kind: str, path: Path, split: str, stored: int | None = None):
    """uint8 NHWC arrays of ``split``, decoded once and cached. ``stored``: resize to this side."""
    key = _cache_key(name, kind, path, stored)
    cdir = cache_dir() / "arrays" / f"{name}-{key}"
    img_f, lab_f, cls_f = cdir / f"{split}-images.npy", cdir / f"{split}-labels.npy", cdir / "classes.txt"
    if img_f.exists() and lab_f.exists() and cls_f.exists():
        try:
            return np.load(img_f, mmap_mode="r"), np.load(lab_f), cls_f.read_text().splitlines()
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below
    splits, classes = _decode(name, kind, path, stored)
    try:
        cdir.mkdir(parents=True, exist_ok=True)
        for s, (imgs, labs) in splits.items():
            _atomic_save(cdir / f"{s}-images.npy", imgs)
            _atomic_save(cdir / f"{s}-labels.npy", labs)
        tmp = cls_f.with_suffix(".tmp")
        tmp.write_text("\n".join(classes))
        os.replace(tmp, cls_f)
    except OSError:
        pass  # a read-only cache only costs speed
    imgs, labs = splits[split]
    return imgs, labs, classes


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


def _decode(name: str, kind: str, path: Path, stored: int | None = None):
    try:
        if name == "imagenette":
            return _decode_imagenette(kind, path, stored)
        if kind == "pickle":
            return _decode_cifar_pickles(name, lambda fn: (path / fn).read_bytes())
        if kind == "pickle-archive":
            with tarfile.open(path, "r:*") as tf:
                members = {Path(m.name).name: m for m in tf.getmembers() if m.isfile()}

                def read(fn):
                    if fn not in members:
                        raise DatasetError(f"{path} has no member {fn}; " + _layout_help(name))
                    return tf.extractfile(members[fn]).read()

                return _decode_cifar_pickles(name, read)
        if kind == "folders":
            return _decode_folder_tree(name, path)
        if kind == "folder-archive":
            return _decode_folder_archive(name, path)
        if kind == "idx":
            return _decode_idx(path)
    except DatasetError:
        raise
    except (OSError, EOFError, tarfile.TarError, zlib.error, pickle.UnpicklingError, KeyError, struct.error) as e:
        raise DatasetError(f"cannot read {name} from {path} ({type(e).__name__}: {e}); " + _layout_help(name)) from None
    raise DatasetError(f"unknown layout kind {kind}")


class _SafeUnpickler(pickle.Unpickler):
    """The CIFAR release is pickled dicts of numpy arrays: allow those types and nothing else,
    so a tampered file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _unpickle(raw: bytes) -> dict:
    d = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _decode_cifar_pickles(name: str, read):
    if name == "cifar10":
        parts = [_unpickle(read(f"data_batch_{i}")) for i in range(1, 6)]
        test = _unpickle(read("test_batch"))
        meta = _unpickle(read("batches.meta"))
        classes = [c.decode() if isinstance(c, bytes) else c for c in meta["label_names"]]
        label_key = "labels"
    else:
        parts = [_unpickle(read("train"))]
        test = _unpickle(read("test"))
        meta = _unpickle(read("meta"))
        classes = [c.decode() if isinstance(c, bytes) else c for c in meta["fine_label_names"]]
        label_key = "fine_labels"

    def arr(ds):
        data = np.concatenate([np.asarray(d["data"], dtype=np.uint8) for d in ds])
        if data.ndim != 2 or data.shape[1] != 3072:
            raise DatasetError(f"{name}: pickled data has shape {data.shape}, expected (N, 3072)")
        labels = np.concatenate([np.asarray(d[label_key], dtype=np.int64) for d in ds])
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels

    return {"train": arr(parts), "test": arr([test])}, classes


def _decode_image(raw: bytes, where: str, size: int, channels: int, resize: bool = False) -> np.ndarray:
    """Decode one image; ``resize``: shorter side to ``size``, then the centre square (photos)."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(raw))
        if resize:
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when it is large enough
        img = img.convert("RGB" if channels == 3 else "L")
        if resize:
            w, h = img.size
            s = size / min(w, h)
            img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR, reducing_gap=3.0)
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
    except Exception as e:  # Pillow raises many types for bad data
        raise DatasetError(f"cannot decode image {where}: {e}") from None
    a = np.asarray(img, dtype=np.uint8)
    if a.shape[:2] != (size, size):
        raise DatasetError(f"image {where} is {a.shape[1]}x{a.shape[0]}, expected {size}x{size}")
    return a


def _collect(name: str, entries):
    """entries: iterable of (split, class, where, raw bytes) -> arrays per split, class list."""
    info = DATASETS[name]
    by_split: dict[str, list] = {"train": [], "test": []}
    for split, cls, where, raw in entries:
        by_split[split].append((cls, where, raw))
    classes = sorted({c for s in by_split.values() for c, _, _ in s})
    if not by_split["train"] or not by_split["test"]:
        raise DatasetError(f"{name}: need both train/ and test/ class folders; " + _layout_help(name))
    if len(classes) != info.num_classes:
        raise DatasetError(f"{name}: found {len(classes)} class folders, expected {info.num_classes}; " + _layout_help(name))
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for split, items in by_split.items():
        items.sort(key=lambda t: (index[t[0]], t[1]))
        imgs = np.stack([_decode_image(raw, where, info.image_size, info.channels) for _, where, raw in items])
        labels = np.array([index[c] for c, _, _ in items], dtype=np.int64)
        out[split] = (imgs, labels)
    return out, classes


def _decode_folder_tree(name: str, root: Path):
    def entries():
        for split in ("train", "test"):
            for cdir in sorted((root / split).iterdir()):
                if cdir.is_dir():
                    for p in sorted(cdir.iterdir()):
                        if p.suffix.lower() in IMAGE_SUFFIXES:
                            yield split, cdir.name, str(p), p.read_bytes()

    return _collect(name, entries())


def _decode_folder_archive(name: str, path: Path):
    def entries():
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                parts = Path(m.name).parts
                # accept an optional top-level folder: .../{train,test}/<class>/<file>
                if len(parts) < 3 or parts[-3] not in ("train", "test"):
                    continue
                if Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                yield parts[-3], parts[-2], f"{path}:{m.name}", tf.extractfile(m).read()

    return _collect(name, entries())


def _decode_imagenette(kind: str, path: Path, stored: int):
    """Class folders {train,val}/<wnid>/* (in a folder or an archive, an optional top folder),
    every photo resized to ``stored`` x ``stored``. Returns ({"train", "test"}: arrays), classes."""
    info = DATASETS["imagenette"]

    def entries():
        if kind == "folders":
            for split in ("train", "val"):
                for cdir in sorted((path / split).iterdir()):
                    if cdir.is_dir():
                        for p in sorted(cdir.iterdir()):
                            if p.suffix.lower() in IMAGE_SUFFIXES:
                                yield split, cdir.name, f"{split}/{cdir.name}/{p.name}", p.read_bytes()
            return
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                parts = Path(m.name).parts
                if m.isfile() and len(parts) >= 3 and parts[-3] in ("train", "val") and \
                        Path(parts[-1]).suffix.lower() in IMAGE_SUFFIXES:
                    yield parts[-3], parts[-2], f"{path.name}:{m.name}", tf.extractfile(m).read()

    by_split: dict[str, list] = {"train": [], "val": []}
    for split, cls, where, raw in entries():
        by_split[split].append((cls, where, _decode_image(raw, where, stored, 3, resize=True)))
    classes = sorted({c for items in by_split.values() for c, _, _ in items})
    if not by_split["train"] or not by_split["val"]:
        raise DatasetError(f"imagenette: need both train/ and val/ class folders in {path}; " + _layout_help("imagenette"))
    if len(classes) != info.num_classes:
        raise DatasetError(f"imagenette: found {len(classes)} class folders in {path}, expected {info.num_classes}; "
                           + _layout_help("imagenette"))
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for split, items in by_split.items():
        items.sort(key=lambda t: (index[t[0]], t[1]))
        out["test" if split == "val" else split] = (np.stack([a for _, _, a in items]),
                                                   np.array([index[c] for c, _, _ in items], dtype=np.int64))
    return out, classes


def _idx_file(root: Path, stem: str) -> Path | None:
    for cand in (root / stem, root / (stem + ".gz")):
        if cand.is_file():
            return cand
    return None


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file; " + _layout_help("fashion_mnist"))
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def _decode_idx(root: Path):
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        fi = _idx_file(root, f"{prefix}-images-idx3-ubyte")
        fl = _idx_file(root, f"{prefix}-labels-idx1-ubyte")
        if fi is None or fl is None:
            raise DatasetError(f"{root}: missing {prefix} IDX files; " + _layout_help("fashion_mnist"))
        imgs, labels = _read_idx(fi), _read_idx(fl).astype(np.int64)
        if len(imgs) != len(labels):
            raise DatasetError(f"{root}: {len(imgs)} {split} images but {len(labels)} labels")
        out[split] = (imgs[..., None].copy(), labels)
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    return out, classes
