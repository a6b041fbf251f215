"""Data of a training run: datasets from specs, the validation split, images prepared once (:class:`Cached`)."""
from __future__ import annotations

import os

import numpy as np

from zfscratch.errors import UserError
from zfscratch.util.progress import tqdm_bar as _tqdm


def _labels_of(ds):
    lab = getattr(ds, "labels", None)
    if lab is None:
        raise UserError(f"dataset {_describe(ds)} has no labels")
    return np.asarray(lab() if callable(lab) else lab)


def _describe(ds):
    d = getattr(ds, "describe", None)
    if callable(d):
        try:
            return d()
        except Exception:  # description is informative only
            pass
    return {"kind": type(ds).__name__, "n": len(ds)}


def open_data(spec, split="train"):
    """Open a dataset from a spec string (``synthetic[:opts]``, ``idx:PATH``, ``cifar:PATH``,
    ``folder:PATH``) for ``split``; datasets (objects) pass through."""
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    from zfscratch.data import open_dataset
    return open_dataset(os.fspath(spec), split=split)


def _has_own_val(spec):
    """Whether ``spec`` names data with a genuine validation split: synthetic (a separate random
    stream) or a folder with a ``val/`` subfolder. (For CIFAR/IDX "val" means the test files, which
    should not steer training: a held-out part of the training set is used instead.)"""
    from zfscratch.data import parse_spec
    kind, path, _ = parse_spec(spec)
    if kind == "synthetic":
        return True
    if kind == "folder" and path:
        from zfscratch.data.folder import folder_splits
        try:
            return os.path.isdir(os.path.join(os.path.expanduser(path), "val")) and \
                "val" in folder_splits(os.path.expanduser(path))
        except UserError:
            return False
    return False


def resolve_data(data, val_data=None, val_split=0.1, seed=0):
    """(train, val) datasets from the ``data`` argument of :func:`train_model`.

    ``data``: a spec string, a dataset, or a ``(train, val)`` pair. The validation set is
    ``val_data`` when given, else the source's own validation split when it has a genuine one
    (synthetic, folder with ``val/``), else a deterministic, stratified ``val_split`` fraction held
    out of the training set (``zfscratch.data.holdout_split``).
    """
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return open_data(data[0], "train"), open_data(data[1], "val")
    train = open_data(data, "train")
    if val_data is not None:
        return train, open_data(val_data, "val")
    if isinstance(data, str) and _has_own_val(data):
        return train, open_data(data, "val")
    if not 0 < val_split < 1:
        raise UserError(f"--val-split {val_split}: expected a fraction in (0, 1) (the data has no "
                        f"validation split of its own)")
    if len(train) < 2:
        raise UserError(f"dataset {_describe(train)} has {len(train)} images: too few to hold out a "
                        f"validation set")
    from zfscratch.data import holdout_split
    return holdout_split(train, val_split, seed)


class Cached:
    """A dataset's images prepared to (R, R, C) uint8 once (when they fit in ``limit_bytes``)."""

    def __init__(self, ds, prep, limit_bytes=3 << 30, desc="loading", quiet=True, chunk=512):
        self.ds, self.prep = ds, prep
        self.n = len(ds)
        self.labels = _labels_of(ds).astype(np.int64)
        self.images = None
        first, _ = ds.get_batch(np.arange(min(1, self.n)))
        if first.ndim != 4:
            raise UserError(f"dataset {_describe(ds)} yields images of shape {first.shape[1:]}, expected (H, W, C)")
        self.channels = int(first.shape[-1])
        r = prep.resize
        if self.n * r * r * self.channels <= limit_bytes:
            self.images = np.empty((self.n, r, r, self.channels), np.uint8)
            it = range(0, self.n, chunk)
            bar = _tqdm(total=self.n, desc=desc, unit="img", disable=quiet, leave=False)
            for s in it:
                idx = np.arange(s, min(self.n, s + chunk))
                imgs, _ = ds.get_batch(idx)
                self.images[s:s + len(idx)] = prep.prepare(imgs)
                bar.update(len(idx))
            bar.close()

    def __len__(self):
        return self.n

    def get_batch(self, idx):
        return self.get(idx)

    def get(self, idx):
        idx = np.asarray(idx, dtype=np.int64)
        if self.images is not None:
            return self.images[idx], self.labels[idx]
        imgs, lab = self.ds.get_batch(idx)
        return self.prep.prepare(imgs), np.asarray(lab, np.int64)

    def batches(self, size, start=0, stop=None):
        """Batches of ``size`` over the images ``[start, stop)`` (default: all)."""
        stop = self.n if stop is None else stop
        for s in range(start, stop, size):
            yield self.get(np.arange(s, min(stop, s + size)))
