"""CIFAR-10 binary batches (the ``cifar-10-batches-bin`` release; never the Python pickles).

Each file is a sequence of 3073-byte records: one label byte (0..9) and 3072 pixel bytes -- the
1024 red values of the 32x32 image in row-major order, then the 1024 green, then the 1024 blue.
Train files: ``data_batch_1.bin`` .. ``data_batch_5.bin`` (those present are used, in order);
test: ``test_batch.bin``. Class names come from ``batches.meta.txt`` (one per line) when present.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import UserError
from .base import ArrayDataset

__all__ = ["read_cifar_batch", "CifarDataset", "CIFAR10_CLASSES"]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]
_REC = 1 + 3 * 32 * 32


def read_cifar_batch(path):
    """(images (N, 32, 32, 3) uint8, labels (N,) int64) of one binary batch file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"CIFAR batch file {path} does not exist")
    size = os.path.getsize(path)
    if size == 0 or size % _REC:
        raise UserError(f"CIFAR batch file {path} has {size} bytes, expected a multiple of {_REC} "
                        "(1 label byte + 3072 pixel bytes per image)")
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, _REC)
    labels = raw[:, 0].astype(np.int64)
    images = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    return images, labels


def _batch_files(path, split):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"CIFAR path {path} does not exist")
    if os.path.isfile(path):
        return os.path.dirname(path), [path]
    folder = path
    sub = os.path.join(path, "cifar-10-batches-bin")
    if not any(os.path.exists(os.path.join(path, f)) for f in ("data_batch_1.bin", "test_batch.bin")) \
            and os.path.isdir(sub):
        folder = sub
    if split == "train":
        files = [os.path.join(folder, f"data_batch_{i}.bin") for i in range(1, 6)]
        files = [f for f in files if os.path.exists(f)]
        if not files:
            raise UserError(f"CIFAR folder {path} has no data_batch_1.bin .. data_batch_5.bin")
    elif split in ("test", "val"):
        files = [os.path.join(folder, "test_batch.bin")]
        if not os.path.exists(files[0]):
            raise UserError(f"CIFAR folder {path} has no test_batch.bin")
    else:
        raise UserError(f"CIFAR split {split!r}: expected train, val (= test) or test")
    return folder, files


class CifarDataset(ArrayDataset):
    """CIFAR-10 binary batches in memory (50,000 training images take 150 MB).

    ``path``: the folder of the ``.bin`` files (or the folder above ``cifar-10-batches-bin``), or
    one batch file (then ``split`` is ignored). ``split``: "train", "test" or "val" (= test).
    """

    def __init__(self, path, split="train", classes=None):
        folder, files = _batch_files(path, split)
        xs, ys = [], []
        for f in files:
            x, y = read_cifar_batch(f)
            bad = y[y >= (len(classes) if classes else 10)]
            if bad.size:
                raise UserError(f"CIFAR batch file {f}: label {int(bad[0])} out of range 0..9 "
                                "(is this a CIFAR-100 file? only CIFAR-10 is supported)")
            xs.append(x)
            ys.append(y)
        names = list(classes) if classes else _read_meta(folder)
        super().__init__(np.concatenate(xs), np.concatenate(ys), names, name="cifar",
                         source=os.fspath(path))
        self.files = files
        self.split = split

    def describe(self):
        d = super().describe()
        d.update(split=self.split, files=self.files)
        return d


def _read_meta(folder):
    meta = os.path.join(folder, "batches.meta.txt")
    if not os.path.exists(meta):
        return list(CIFAR10_CLASSES)
    with open(meta, encoding="utf-8", errors="replace") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) < 10:
        raise UserError(f"CIFAR class-name file {meta} lists {len(names)} names, expected 10")
    return names[:10]
