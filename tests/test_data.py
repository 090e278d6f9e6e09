"""The data layer on the shared CIFAR-10 tarball and on small generated fixtures of every layout."""

import gzip
import hashlib
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spikeconverter.data import DatasetError, download_cifar, load_dataset, loader
from spikeconverter.data.datasets import default_roots

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
CLASSES10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def images(n, size=32, seed=0, channels=3):
    g = np.random.default_rng(seed)
    shape = (n, size, size, channels) if channels > 1 else (n, size, size)
    return g.integers(0, 256, shape, dtype=np.uint8)


# ------------------------------------------------------------------------------------ fixtures


def write_cifar10_pickles(root: Path, per_batch=3):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    all_imgs, all_labels = [], []
    for i in range(1, 6):
        imgs = images(per_batch, seed=i)
        labels = [(i + j) % 10 for j in range(per_batch)]
        data = imgs.transpose(0, 3, 1, 2).reshape(per_batch, -1)
        (d / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
        all_imgs.append(imgs)
        all_labels += labels
    t = images(4, seed=9)
    (d / "test_batch").write_bytes(pickle.dumps(
        {b"data": t.transpose(0, 3, 1, 2).reshape(4, -1), b"labels": [0, 1, 2, 3]}, protocol=2))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CLASSES10]}, protocol=2))
    return np.concatenate(all_imgs), np.array(all_labels), t


def write_folder_tree(root: Path, n_classes=10, per_class=2, fmt="PNG", ext=".png"):
    for split in ("train", "test"):
        for c in range(n_classes):
            d = root / split / f"class{c:03d}"
            d.mkdir(parents=True)
            for i, img in enumerate(images(per_class, seed=c * 7 + (split == "test"))):
                Image.fromarray(img).save(d / f"{i:04d}{ext}", format=fmt)
    return root


def write_idx(root: Path, compress: bool):
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 6), ("t10k", 3)):
        imgs = images(n, size=28, channels=1, seed=n)
        labels = np.arange(n, dtype=np.uint8) % 10
        raw_i = struct.pack(">IIII", 0x803, n, 28, 28) + imgs.tobytes()
        raw_l = struct.pack(">II", 0x801, n) + labels.tobytes()
        for stem, raw in ((f"{prefix}-images-idx3-ubyte", raw_i), (f"{prefix}-labels-idx1-ubyte", raw_l)):
            if compress:
                (root / (stem + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (root / stem).write_bytes(raw)
    return root


def tar_dir(src: Path, dest: Path, arc_prefix=""):
    with tarfile.open(dest, "w:gz" if dest.name.endswith("gz") else "w") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=arc_prefix + str(p.relative_to(src)), recursive=False)
    return dest


# ------------------------------------------------------------------------------------ tests


def test_shared_tarball_is_found_and_read():
    if not SHARED.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED} must exist in CI")
        pytest.skip("shared datasets not beside this checkout")
    test = load_dataset("cifar10", "test")
    assert len(test) == 10_000 and test.classes == CLASSES10
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    x, y = test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 0
    train = load_dataset("cifar10", "train")
    assert len(train) == 50_000
    assert any(Path(r).resolve() == SHARED.parent.resolve() for r in default_roots("cifar10") if r.exists())
    # the decoded arrays are cached: a second load does not decode again
    again = load_dataset("cifar10", "test")
    assert torch.equal(again.images[:10], test.images[:10])


def test_cifar10_pickles_dir_and_archive(tmp_path):
    tr_imgs, tr_labels, te_imgs = write_cifar10_pickles(tmp_path / "a")
    ds = load_dataset("cifar10", "train", root=tmp_path / "a")
    assert len(ds) == 15 and ds.classes == CLASSES10
    assert np.array_equal(ds.images.numpy(), tr_imgs) and np.array_equal(ds.labels.numpy(), tr_labels)
    te = load_dataset("cifar10", "test", root=tmp_path / "a")
    assert np.array_equal(te.images.numpy(), te_imgs)
    (tmp_path / "b").mkdir()
    arch = tar_dir(tmp_path / "a", tmp_path / "b" / "cifar-10-python.tar.gz")
    ds2 = load_dataset("cifar10", "train", root=tmp_path / "b")
    assert torch.equal(ds2.images, ds.images)
    ds3 = load_dataset("cifar10", "train", root=arch)  # the archive itself as root
    assert torch.equal(ds3.images, ds.images)


def test_cifar100_pickles(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    imgs = images(5)
    (d / "train").write_bytes(pickle.dumps({b"data": imgs.transpose(0, 3, 1, 2).reshape(5, -1),
                                            b"fine_labels": [0, 1, 2, 99, 50]}))
    (d / "test").write_bytes(pickle.dumps({b"data": imgs[:2].transpose(0, 3, 1, 2).reshape(2, -1),
                                           b"fine_labels": [3, 4]}))
    (d / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}))
    ds = load_dataset("cifar100", "train", root=tmp_path)
    assert ds.labels.tolist() == [0, 1, 2, 99, 50] and len(ds.classes) == 100
    assert np.array_equal(ds.images.numpy(), imgs)


def test_class_folders_and_folder_archive(tmp_path):
    write_folder_tree(tmp_path / "tree" / "cifar10")
    ds = load_dataset("cifar10", "train", root=tmp_path / "tree")
    assert len(ds) == 20 and ds.labels.tolist() == sorted(ds.labels.tolist())
    assert np.array_equal(ds.images[0].numpy(), images(2, seed=0)[0])  # PNG is lossless
    arch = tar_dir(tmp_path / "tree" / "cifar10", tmp_path / "cifar10-small.tar", arc_prefix="top/")
    ds2 = load_dataset("cifar10", "train", root=arch)
    assert torch.equal(ds2.images, ds.images) and torch.equal(ds2.labels, ds.labels)
    (tmp_path / "holder").mkdir()
    os.replace(arch, tmp_path / "holder" / "cifar10-small.tar")
    ds3 = load_dataset("cifar10", "test", root=tmp_path / "holder")  # found inside a folder
    assert len(ds3) == 20


def test_fashion_mnist_idx(tmp_path):
    for compress in (True, False):
        root = write_idx(tmp_path / f"fm{compress}" / "fashion-mnist", compress)
        ds = load_dataset("fashion_mnist", "train", root=root.parent)
        assert len(ds) == 6 and ds[0][0].shape == (1, 28, 28)
        assert np.array_equal(ds.images[..., 0].numpy(), images(6, size=28, channels=1, seed=6))
        assert len(load_dataset("fashion_mnist", "test", root=root)) == 3


def test_imagenet_folders(tmp_path):
    for split in ("train", "val"):
        for c in ("n01", "n02"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            Image.fromarray(images(1, size=300)[0][:250]).save(d / "a.JPEG")
    val = load_dataset("imagenet", "test", root=tmp_path)
    x, y = val[1]
    assert x.shape == (3, 224, 224) and y == 1 and len(val) == 2
    tr = load_dataset("imagenet", "train", root=tmp_path)
    assert tr[0][0].shape == (3, 224, 224)


def test_env_variable_root(tmp_path, monkeypatch):
    write_idx(tmp_path / "fm", True)
    monkeypatch.setenv("SPIKECONVERTER_DATA", str(tmp_path / "fm"))
    assert len(load_dataset("fashion_mnist", "train")) == 6


@pytest.mark.parametrize("make_bad,fragment", [
    (lambda p: (p / "empty").mkdir(), "expected one of these layouts"),
    (lambda p: write_folder_tree(p / "empty", n_classes=3), "expected one of these layouts"),
    (lambda p: (p / "empty").mkdir() or (p / "empty" / "cifar10-x.tar.gz").write_bytes(b"not a tar"), "cannot read"),
    (lambda p: tar_dir(write_folder_tree(p / "src", n_classes=4), Path(p / "empty").mkdir() or
                       p / "empty" / "cifar10-few.tar.gz"), "found 4 class folders"),
])
def test_malformed_cifar_gives_clear_error(tmp_path, make_bad, fragment):
    make_bad(tmp_path)
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", "train", root=tmp_path / "empty")
    assert fragment in str(e.value)
    assert "class folders" in str(e.value) or "layouts" in str(e.value)


def test_corrupt_image_and_truncated_idx(tmp_path):
    root = write_folder_tree(tmp_path / "t")
    (root / "train" / "class000" / "0000.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match="cannot decode image"):
        load_dataset("cifar10", "train", root=root)
    fm = write_idx(tmp_path / "fm", False)
    p = fm / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="header says"):
        load_dataset("fashion_mnist", "train", root=fm)


def test_pickle_that_runs_code_is_refused(tmp_path):
    write_cifar10_pickles(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DatasetError, match="refusing"):
        load_dataset("cifar10", "train", root=tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_unknown_dataset_and_split():
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("mnist3d")
    with pytest.raises(DatasetError, match="unknown split"):
        load_dataset("cifar10", "dev")


def test_download_from_local_server(tmp_path, http_server):
    served, base = http_server
    write_cifar10_pickles(tmp_path / "src")
    arch = tar_dir(tmp_path / "src", served / "cifar-10-python.tar.gz")
    md5 = hashlib.md5(arch.read_bytes()).hexdigest()
    dest = tmp_path / "dl"
    got = download_cifar("cifar10", dest, url=f"{base}/cifar-10-python.tar.gz", md5=md5, progress=False)
    assert got.read_bytes() == arch.read_bytes()
    ds = load_dataset("cifar10", "train", root=dest)
    assert len(ds) == 15
    # a second call finds the verified file and does not fetch again
    arch.unlink()
    assert download_cifar("cifar10", dest, url=f"{base}/cifar-10-python.tar.gz", md5=md5, progress=False) == got


def test_download_rejects_bad_checksum_and_missing_file(tmp_path, http_server):
    served, base = http_server
    (served / "cifar-10-python.tar.gz").write_bytes(b"tampered")
    with pytest.raises(DatasetError, match="md5"):
        download_cifar("cifar10", tmp_path / "dl", url=f"{base}/cifar-10-python.tar.gz", md5="0" * 32, progress=False)
    assert not list((tmp_path / "dl").iterdir())
    with pytest.raises(DatasetError, match="failed"):
        download_cifar("cifar10", tmp_path / "dl", url=f"{base}/nothing.tar.gz", md5="0" * 32, progress=False)
    with pytest.raises(DatasetError, match="download is available"):
        download_cifar("imagenet", tmp_path)


def test_loader_batches_and_augmentation(tmp_path):
    write_folder_tree(tmp_path / "t", per_class=5)
    ds = load_dataset("cifar10", "train", root=tmp_path / "t")
    ev = list(loader(ds, batch_size=16))
    assert [len(y) for _, y in ev] == [16, 16, 16, 2]
    assert torch.allclose(ev[0][0][3], ds[3][0])
    a = [x for x, _ in loader(ds, batch_size=16, train=True, seed=1)]
    b = [x for x, _ in loader(ds, batch_size=16, train=True, seed=1)]
    c = [x for x, _ in loader(ds, batch_size=16, train=True, seed=2)]
    assert len(a) == 3 and all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])
    # the crop keeps content: every augmented image is a shifted/flipped copy of some original
    x = loader(ds, batch_size=50, train=True, augment=True, shuffle=False, seed=3)
    imgs, _ = next(iter(x))
    assert imgs.shape == (50, 3, 32, 32)


def test_load_dataset_download_flag(tmp_path, http_server, monkeypatch):
    """load_dataset(download=True) finds nothing, fetches the release archive and reads it."""
    from spikeconverter.data import download as dl

    served, base = http_server
    write_cifar10_pickles(tmp_path / "src")
    arch = tar_dir(tmp_path / "src", served / "cifar-10-python.tar.gz")
    md5 = hashlib.md5(arch.read_bytes()).hexdigest()
    monkeypatch.setitem(dl.OFFICIAL, "cifar10", (f"{base}/cifar-10-python.tar.gz", md5))
    with pytest.raises(DatasetError):
        load_dataset("cifar10", "train", root=tmp_path / "empty")
    ds = load_dataset("cifar10", "train", root=tmp_path / "empty", download=True)
    assert len(ds) == 15 and (tmp_path / "empty" / "cifar-10-python.tar.gz").exists()


def _imagenette_tree(root, per_class=2, classes=10):
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"n0{c:07d}"
            d.mkdir(parents=True)
            for i, img in enumerate(images(per_class, size=60, seed=c)):
                Image.fromarray(img[:, :50]).save(d / f"ILSVRC_{i}.JPEG")  # 50x60: not square, resized
    return root


@pytest.mark.parametrize("layout", ["folders", "archive"])
def test_imagenette_layouts(tmp_path, monkeypatch, layout):
    monkeypatch.setenv("SPIKECONVERTER_CACHE", str(tmp_path / "cache"))
    tree = _imagenette_tree(tmp_path / "src" / "imagenette-224")
    root = tree.parent
    if layout == "archive":
        import tarfile

        root = tmp_path / "arch"
        root.mkdir()
        with tarfile.open(root / "imagenette-224.tar.gz", "w:gz") as tf:
            tf.add(tree, arcname="imagenette-224")
    val = load_dataset("imagenette", "val", root=root, image_size=32)
    assert len(val) == 20 and val.images.shape[1:] == (37, 37, 3)  # stored at 32 / 0.875
    x, y = val[3]
    assert x.shape == (3, 32, 32) and y == 1  # centre crop; labels follow the sorted wnids
    train = load_dataset("imagenette", "train", root=root, image_size=32)
    xb, yb = next(iter(loader(train, 8, train=True, seed=0)))
    assert xb.shape == (8, 3, 32, 32) and torch.isfinite(xb).all()
    # a random-resized crop differs from the centre crop, and is seeded
    xb2, _ = next(iter(loader(train, 8, train=True, seed=0)))
    assert torch.equal(xb, xb2)
    # the cache serves the second load, and another size is a separate entry
    assert load_dataset("imagenette", "val", root=root, image_size=48).images.shape[1:] == (55, 55, 3)


def test_imagenette_wrong_tree_says_what_is_expected(tmp_path):
    _imagenette_tree(tmp_path / "imagenette", classes=3)
    with pytest.raises(DatasetError, match="class folders"):
        load_dataset("imagenette", "val", root=tmp_path / "imagenette")
