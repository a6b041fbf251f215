"""Data spec strings: one argument names a dataset (``--data SPEC`` on the CLI).

::

    synthetic                                   the default: 10,000 64x64 images, plain background
    synthetic:n=20000,size=64,background=colored,seed=0
    synthetic:classes=face+house+car,max_angle=30,scale=0.6-0.9
    idx:PATH                                    MNIST/Fashion-MNIST folder or images file
    idx:PATH,classes=fashion
    idx:images=PATH,labels=PATH
    cifar:PATH                                  folder of CIFAR-10 .bin batches (or one .bin file)
    folder:PATH                                 root/<class>/*.png|jpg|jpeg (train/ test/ = splits)
    folder:PATH,size=64,cache=no,workers=4

Options follow the path, comma-separated ``key=value``. Synthetic keys: ``n`` (training images,
default 10000), ``n_val`` / ``n_test`` (default n/5), ``size`` (64), ``seed`` (0), ``background``
(plain|colored), ``classes`` (names joined by ``+``), ``scale`` (min-max bounding-circle diameter as
a fraction of the side, default 0.55-0.95), ``max_angle`` (degrees, default 45).

Splits: "train", "val", "test". Synthetic splits are disjoint random streams. The real-data
loaders have no separate validation files, so "val" reads the test files (CIFAR ``test_batch.bin``,
MNIST ``t10k``, a folder's ``test/``), unless a folder has a ``val/``.
"""
from __future__ import annotations

import os
import re

from ..errors import UserError

__all__ = ["parse_spec", "open_dataset", "available_splits", "KINDS"]

KINDS = ("synthetic", "idx", "cifar", "folder")
_KEYS = {
    "synthetic": {"n", "n_val", "n_test", "size", "seed", "background", "classes", "scale", "max_angle"},
    "idx": {"path", "images", "labels", "classes"},
    "cifar": {"path"},
    "folder": {"path", "size", "cache", "workers"},
}
_OPT = re.compile(r",(?=[A-Za-z_][A-Za-z0-9_]*=)")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def parse_spec(spec):
    """``"kind:PATH,key=val,..."`` -> ``(kind, path or None, {key: str})``."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"data spec {spec!r}: expected e.g. synthetic, cifar:PATH, folder:PATH")
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise UserError(f"data spec {spec!r}: unknown kind {kind!r}; expected one of "
                        f"{', '.join(KINDS)} (e.g. synthetic:n=20000 or folder:PATH)")
    parts = [p for p in _OPT.split(rest)] if rest else []
    path, opts = None, {}
    for i, p in enumerate(parts):
        if _KEY.match(p):
            k, _, v = p.partition("=")
            k = k.lower()
            if k not in _KEYS[kind]:
                raise UserError(f"data spec {spec!r}: unknown option {k!r} for {kind}; expected "
                                f"{', '.join(sorted(_KEYS[kind]))}")
            if k in opts:
                raise UserError(f"data spec {spec!r}: option {k!r} given twice")
            opts[k] = v
        elif i == 0:
            path = p
        else:
            raise UserError(f"data spec {spec!r}: cannot parse {p!r}; expected key=value")
    if "path" in opts:
        if path is not None:
            raise UserError(f"data spec {spec!r}: the path is given twice")
        path = opts.pop("path")
    if path is not None and kind == "synthetic":
        raise UserError(f"data spec {spec!r}: synthetic takes options only (e.g. synthetic:n=20000)")
    return kind, path, opts


def _int(v, key, spec, lo=None):
    try:
        x = int(v)
    except (TypeError, ValueError):
        raise UserError(f"data spec {spec!r}: {key}={v!r} is not an integer") from None
    if lo is not None and x < lo:
        raise UserError(f"data spec {spec!r}: {key}={x}: expected at least {lo}")
    return x


def _float(v, key, spec):
    try:
        return float(v)
    except (TypeError, ValueError):
        raise UserError(f"data spec {spec!r}: {key}={v!r} is not a number") from None


def _bool(v, key, spec):
    if isinstance(v, bool) or v == "auto":
        return v
    s = str(v).lower()
    if s in ("1", "yes", "true", "on"):
        return True
    if s in ("0", "no", "false", "off"):
        return False
    raise UserError(f"data spec {spec!r}: {key}={v!r}: expected yes, no or auto")


def _need_path(kind, path, spec):
    if not path:
        raise UserError(f"data spec {spec!r}: {kind} needs a path, e.g. {kind}:/data/{kind}")
    return os.path.expanduser(path)


def open_dataset(spec, split="train", **overrides):
    """Open the dataset a spec string names (see the module docstring).

    ``overrides`` replace spec options (e.g. ``open_dataset("synthetic", "val", n_val=500)``).
    Returns a dataset with the common interface (:mod:`zfscratch.data.base`).
    """
    if split not in ("train", "val", "test"):
        raise UserError(f"split {split!r}: expected train, val or test")
    kind, path, opts = parse_spec(spec)
    path = _apply_overrides(kind, path, opts, overrides)
    if kind == "synthetic":
        return _open_synthetic(opts, split, spec)
    if kind == "idx":
        return _open_idx(path, opts, split, spec)
    if kind == "cifar":
        from .cifar import CifarDataset
        return CifarDataset(_need_path(kind, path, spec), split=split)
    return _open_folder(path, opts, split, spec)


def _apply_overrides(kind, path, opts, overrides):
    """Put ``open_dataset``'s keyword overrides into ``opts`` (in place); returns the path."""
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in _KEYS[kind]:
            raise UserError(f"option {k!r} does not apply to {kind} data; expected "
                            f"{', '.join(sorted(_KEYS[kind]))}")
        if k == "path":
            path = v
        else:
            opts[k] = v
    return path


def _open_synthetic(opts, split, spec):
    from .synthetic import SyntheticDataset
    n = _int(opts.get("n", 10000), "n", spec, 0)
    key = {"train": "n", "val": "n_val", "test": "n_test"}[split]
    count = n if split == "train" else _int(opts.get(key, max(1, n // 5)), key, spec, 0)
    kw = {}
    if "scale" in opts:
        s = opts["scale"]
        if isinstance(s, str):
            lo, sep, hi = s.partition("-")
            kw["scale_range"] = (_float(lo, "scale", spec), _float(hi if sep else lo, "scale", spec))
        else:
            kw["scale_range"] = tuple(s)
    if "max_angle" in opts:
        kw["max_angle"] = _float(opts["max_angle"], "max_angle", spec)
    if "classes" in opts:
        kw["classes"] = opts["classes"]
    return SyntheticDataset(count, size=_int(opts.get("size", 64), "size", spec, 8),
                            seed=_int(opts.get("seed", 0), "seed", spec),
                            background=str(opts.get("background", "plain")).lower(),
                            split=split, **kw)


def _open_idx(path, opts, split, spec):
    from .idx import IdxDataset, find_idx_files
    if "images" in opts or "labels" in opts:
        if "images" not in opts or "labels" not in opts:
            raise UserError(f"data spec {spec!r}: give both images=PATH and labels=PATH")
        images, labels = os.path.expanduser(opts["images"]), os.path.expanduser(opts["labels"])
    else:
        images, labels = find_idx_files(_need_path("idx", path, spec), split)
    classes = opts.get("classes")
    if isinstance(classes, str) and classes not in ("mnist", "fashion"):
        classes = classes.split("+")
    return IdxDataset(images, labels, classes=classes)


def _open_folder(path, opts, split, spec):
    from .folder import FolderDataset
    size = opts.get("size")
    return FolderDataset(_need_path("folder", path, spec), split=split,
                         size=None if size is None else _int(size, "size", spec, 1),
                         cache=_bool(opts.get("cache", "auto"), "cache", spec),
                         workers=None if opts.get("workers") is None else _int(opts["workers"], "workers", spec, 1))


def available_splits(spec):
    """The splits ``open_dataset(spec, split)`` can open (cheap checks, nothing decoded)."""
    kind, path, opts = parse_spec(spec)
    if kind == "synthetic":
        return ["train", "val", "test"]
    if kind == "folder":
        from .folder import folder_splits
        return [s for s in ("train", "val", "test") if s in folder_splits(_need_path(kind, path, spec))]
    out = []
    for s in ("train", "val", "test"):
        try:
            if kind == "idx":
                from .idx import find_idx_files
                if "images" in opts:
                    return ["train", "val", "test"]
                find_idx_files(_need_path(kind, path, spec), s)
            else:
                from .cifar import _batch_files
                _batch_files(_need_path(kind, path, spec), s)
            out.append(s)
        except UserError:
            pass
    return out


def dataset_from_meta(meta, split="val"):
    """Open the dataset a model was trained on (``meta["train"]["data"]``), ``split`` if it has one."""
    spec = ((meta or {}).get("train") or {}).get("data")
    while isinstance(spec, dict) and "subset_of" in spec:  # a held-out part of a dataset
        spec = spec["subset_of"]
    if isinstance(spec, dict) and spec.get("kind") == "synthetic":  # a dataset's describe() record
        kw = {k: spec[k] for k in ("n", "size", "seed", "background", "max_angle") if k in spec}
        if spec.get("classes"):
            kw["classes"] = "+".join(spec["classes"])
        if spec.get("scale_range"):
            kw["scale"] = "{}-{}".format(*spec["scale_range"])
        return open_dataset("synthetic", split=split, **kw)
    if not isinstance(spec, str) or not spec:
        raise UserError("the weights do not record their training data as a spec string; pass --data")
    return open_split(spec, split)


def open_split(spec, split="val"):
    """``open_dataset(spec, split)``; when the data has no ``val`` split, its ``test`` split, else
    ``train`` (a split asked for other than ``val`` must exist: UserError otherwise)."""
    splits = available_splits(spec)
    if split not in splits:
        if split != "val" or not splits:
            raise UserError(f"data {spec!r} has no {split!r} split (it has: {', '.join(splits) or 'none'})")
        split = "test" if "test" in splits else splits[0]
    return open_dataset(spec, split=split)


def open_for_model(spec, meta, split="val"):
    """The dataset ``spec`` (its ``split``; ``val`` falls back to ``test``, see :func:`open_split`), else
    the data a model was trained on (``meta["train"]["data"]``, see :func:`dataset_from_meta`)."""
    if spec is None:
        return dataset_from_meta(meta, split=split)
    return open_split(spec, split)
