"""The common dataset interface (:class:`DatasetBase`) and small helpers shared by the loaders.

Every dataset (synthetic, IDX, CIFAR, image folder, and a :class:`Subset` of any of them) derives
from :class:`DatasetBase`, whose docstring says what a dataset provides.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError

__all__ = ["DatasetBase", "ArrayDataset", "Subset", "holdout_split", "check_labels"]


def check_labels(labels, num_classes, source):
    """Raise UserError naming ``source`` when a label is outside 0..num_classes-1."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise UserError(f"{source}: label {bad} out of range 0..{num_classes - 1} "
                        f"({num_classes} classes)")


class DatasetBase:
    """What every dataset provides (the iterator, training, the experiments and the report use only this).

    Set by each dataset:

    - ``classes``: list of class names; label ``i`` is ``classes[i]``;
    - ``name``: "synthetic", "idx", "cifar", "folder", ... (the kind in :meth:`describe`);
    - ``len(ds)``: the number of samples ``N``;
    - ``get_batch(indices) -> (images, labels)``: ``indices`` any integer array-like of length ``B``;
      ``images`` ``(B, H, W, 3)`` uint8 RGB (every dataset yields images of one size), ``labels``
      ``(B,)`` int64 in ``0 .. num_classes - 1``;
    - ``describe()``: a JSON-able dict saying where the data came from.

    Shared here (a dataset overrides what it stores differently):

    - ``num_classes``: ``len(classes)``;
    - ``labels``: all labels, ``(N,) int64`` (here: the ``_labels`` array the dataset holds);
    - ``image_shape``: ``(H, W, 3)`` (here: square images of side ``size``).
    """

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def labels(self):
        return self._labels

    @property
    def image_shape(self):
        return (self.size, self.size, 3)


class ArrayDataset(DatasetBase):
    """Images held in memory as one uint8 array (``(N, H, W, 3)``, or ``(N, H, W, 1)`` grey,
    expanded to RGB per batch)."""

    def __init__(self, images, labels, classes, name="array", source=None):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 1|3), got {images.dtype} {images.shape}")
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise UserError(f"{source or name}: {images.shape[0]} images but {labels.shape[0]} labels")
        self.classes = list(classes)
        check_labels(labels, len(self.classes), source or name)
        self._images = images
        self._labels = labels
        self.name = name
        self.source = source

    def __len__(self):
        return self._images.shape[0]

    @property
    def image_shape(self):
        return (self._images.shape[1], self._images.shape[2], 3)

    def get_batch(self, indices):
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        x = self._images[idx]
        if x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        return x, self._labels[idx]

    def __getitem__(self, i):
        x, y = self.get_batch([i])
        return x[0], int(y[0])

    def describe(self):
        return {"kind": self.name, "source": self.source, "n": len(self), "classes": self.classes,
                "image_shape": list(self.image_shape)}


class Subset(DatasetBase):
    """A view of ``dataset`` restricted to ``indices`` (same interface)."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.classes = dataset.classes
        self.name = getattr(dataset, "name", "subset")

    def __len__(self):
        return self.indices.shape[0]

    @property
    def labels(self):
        return np.asarray(self.dataset.labels)[self.indices]

    @property
    def image_shape(self):
        return self.dataset.image_shape

    def get_batch(self, indices):
        return self.dataset.get_batch(self.indices[np.asarray(indices, dtype=np.int64).reshape(-1)])

    def __getitem__(self, i):
        return self.dataset[int(self.indices[i])]

    def describe(self):
        d = dict(self.dataset.describe())
        d["subset"] = len(self)
        return d


def holdout_split(dataset, fraction=0.1, seed=0):
    """Deterministic (train, val) :class:`Subset` pair holding out ``fraction`` of ``dataset``
    (stratified by label, so every class keeps the same share)."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"holdout fraction {fraction}: expected a number between 0 and 1")
    labels = np.asarray(dataset.labels)
    rng = np.random.default_rng([int(seed), 0x401D])
    val = []
    for c in range(dataset.num_classes):
        idx = np.nonzero(labels == c)[0]
        rng.shuffle(idx)
        val.append(idx[:int(round(fraction * idx.size))])
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    mask = np.ones(len(dataset), bool)
    mask[val] = False
    return Subset(dataset, np.nonzero(mask)[0]), Subset(dataset, val)
