"""Datasets: the embedded synthetic default, MNIST/Fashion-MNIST IDX, CIFAR-10 binary batches and
image folders, with one interface, the paper's preprocessing and a sharded, resumable iterator.

Quick use::

    from zfscratch.data import open_dataset, BatchIterator, compute_mean, transforms
    train = open_dataset("synthetic:n=20000,background=colored", "train")
    val = open_dataset("synthetic:n=20000,background=colored", "val")
    mean = compute_mean(train)                       # (H, W, 3) float32, 0..255 units
    it = BatchIterator(train, 64, shuffle=True, seed=0,
                       transform=transforms.train_transform(mean, flip=False))
    for x, y in it:                                  # x float32 (B, 3, H, W), y int64 (B,)
        ...

Every dataset has ``classes``, ``num_classes``, ``len()``, ``labels``, ``image_shape`` (H, W, 3) and
``get_batch(indices) -> (uint8 (B, H, W, 3), int64 (B,))``; the synthetic one also returns samples
with bounding boxes and part landmarks and renders objects at chosen poses.
"""
from .base import ArrayDataset, Subset, check_labels, holdout_split
from .cifar import CIFAR10_CLASSES, CifarDataset, read_cifar_batch
from .folder import FolderDataset, load_rgb
from .idx import FASHION_CLASSES, IdxDataset, read_idx
from .iterator import BatchIterator
from .spec import KINDS, available_splits, dataset_from_meta, open_dataset, open_for_model, open_split, parse_spec
from .synthetic import CLASS_NAMES, Sample, SyntheticDataset, class_parts
from .transforms import compute_mean
from . import transforms

__all__ = [
    "ArrayDataset", "Subset", "check_labels", "holdout_split",
    "CIFAR10_CLASSES", "CifarDataset", "read_cifar_batch",
    "FolderDataset", "load_rgb",
    "FASHION_CLASSES", "IdxDataset", "read_idx",
    "BatchIterator",
    "KINDS", "available_splits", "dataset_from_meta", "open_dataset", "open_for_model", "open_split", "parse_spec",
    "CLASS_NAMES", "Sample", "SyntheticDataset", "class_parts",
    "compute_mean", "transforms",
]
