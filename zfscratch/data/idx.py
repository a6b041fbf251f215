"""MNIST / Fashion-MNIST IDX files (raw or ``.gz``).

Format (LeCun): a 4-byte magic ``00 00 TT ND`` (``TT`` = 0x08 for unsigned bytes, the only type
used by MNIST and accepted here; ``ND`` = number of dimensions), ``ND`` big-endian uint32 sizes,
then the data. Images files have ND = 3 (N, rows, cols); labels files ND = 1 (N). The file length
must match the header exactly.

Grey images are returned as RGB (the channel repeated) so that every dataset yields
``(B, H, W, 3) uint8``.
"""
from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from ..errors import UserError
from .base import ArrayDataset, check_labels

__all__ = ["read_idx", "IdxDataset", "find_idx_files", "MNIST_CLASSES", "FASHION_CLASSES"]

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


#: most bytes an IDX file may declare (its dims' product), checked from the header before reading
MAX_IDX_BYTES = 2 << 30


def read_idx(path, ndim=None, max_bytes=None):
    """Read an IDX file of unsigned bytes (raw or gzip) into a uint8 array.

    The header is read first; the declared size (the product of the dims, in Python integers: no
    overflow) must be at most ``max_bytes`` (:data:`MAX_IDX_BYTES`), and only that many bytes are then
    read or decompressed, so a gzip bomb cannot unpack more. Validates magic, ndim and length.
    """
    from zfscratch.util.files import open_regular

    path = os.fspath(path)
    max_bytes = MAX_IDX_BYTES if max_bytes is None else int(max_bytes)
    raw = open_regular(path, "IDX file")
    try:
        head = raw.read(2)
        raw.seek(0)
        f = gzip.GzipFile(fileobj=raw, mode="rb") if head == b"\x1f\x8b" else raw
        hdr = f.read(4)
        if len(hdr) < 4:
            raise UserError(f"IDX file {path} is too short ({len(hdr)} bytes) for an IDX header")
        if hdr[0] != 0 or hdr[1] != 0:
            raise UserError(f"IDX file {path} has a bad magic number {hdr[:4].hex()}: "
                            "expected 0000 08 0N (unsigned-byte IDX)")
        if hdr[2] != 0x08:
            raise UserError(f"IDX file {path} has data type 0x{hdr[2]:02x}: only unsigned bytes (0x08) "
                            "are supported")
        nd = hdr[3]
        if ndim is not None and nd != ndim:
            kind = "images" if ndim == 3 else "labels"
            raise UserError(f"IDX file {path} has {nd} dimensions, expected {ndim} for an {kind} file")
        dimb = f.read(4 * nd)
        if nd == 0 or len(dimb) < 4 * nd:
            raise UserError(f"IDX file {path} is truncated inside its header")
        dims = tuple(int.from_bytes(dimb[4 * i:4 * i + 4], "big") for i in range(nd))
        n = 1
        for d in dims:
            n *= d
        if n > max_bytes:
            raise UserError(f"IDX file {path} declares dims {'x'.join(map(str, dims))} = {n} bytes, more than "
                            f"the {max_bytes} allowed (refused before reading)")
        data = f.read(n + 1)  # one more: a longer file is the wrong file
        if len(data) != n:
            raise UserError(f"IDX file {path} has {4 + 4 * nd + len(data)}{'+' if len(data) > n else ''} bytes, "
                            f"expected {4 + 4 * nd + n} for dims {'x'.join(map(str, dims))} "
                            f"(truncated or wrong file)")
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"IDX file {path} cannot be read (corrupt gzip?): {e}") from None
    finally:
        raw.close()
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


_PREFIXES = {"train": ("train",), "test": ("t10k", "test"), "val": ("t10k", "test")}


def _candidates(folder, prefix, kind):
    idx = "idx3" if kind == "images" else "idx1"
    names = [f"{prefix}-{kind}-{idx}-ubyte", f"{prefix}-{kind}.{idx}-ubyte", f"{prefix}-{kind}-{idx}"]
    return [os.path.join(folder, n + ext) for n in names for ext in ("", ".gz")]


def find_idx_files(path, split="train"):
    """(images_path, labels_path) for ``split`` under ``path``.

    ``path`` is a folder holding ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
    ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]`` (the MNIST names; ``test-``
    and ``.idx3-ubyte`` spellings are accepted too; split "val" means the t10k files), or an images
    file, whose labels file is found by replacing ``images`` with ``labels`` and ``idx3`` with
    ``idx1`` in its name.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"IDX path {path} does not exist")
    if os.path.isfile(path):
        d, b = os.path.split(path)
        lb = b.replace("images", "labels").replace("idx3", "idx1")
        if lb == b:
            raise UserError(f"IDX images file {path}: cannot infer its labels file (expected 'images' "
                            "in the name); use idx:images=PATH,labels=PATH")
        labels = os.path.join(d, lb)
        if not os.path.exists(labels):
            alt = labels[:-3] if labels.endswith(".gz") else labels + ".gz"
            if os.path.exists(alt):
                labels = alt
            else:
                raise UserError(f"IDX labels file {labels} (for images {path}) does not exist")
        return path, labels
    if split not in _PREFIXES:
        raise UserError(f"IDX split {split!r}: expected train, val or test")
    for prefix in _PREFIXES[split]:
        for img in _candidates(path, prefix, "images"):
            if os.path.exists(img):
                for lab in _candidates(path, prefix, "labels"):
                    if os.path.exists(lab):
                        return img, lab
                raise UserError(f"IDX folder {path} has {os.path.basename(img)} but no matching "
                                f"{prefix}-labels-idx1-ubyte[.gz]")
    raise UserError(f"IDX folder {path} has no {_PREFIXES[split][0]}-images-idx3-ubyte[.gz] "
                    f"file for split {split!r}")


class IdxDataset(ArrayDataset):
    """MNIST-style IDX images + labels in memory.

    Parameters
    ----------
    images, labels : paths of the two IDX files (raw or gzip).
    classes : list of names, "mnist" (``0``..``9``) or "fashion" (Fashion-MNIST names); default:
        ``0``..``9`` (or ``0``..max label when labels exceed 9).
    """

    def __init__(self, images, labels, classes=None):
        x = read_idx(images, ndim=3)
        y = read_idx(labels, ndim=1).astype(np.int64)
        if x.shape[0] != y.shape[0]:
            raise UserError(f"IDX files {images} and {labels} disagree: {x.shape[0]} images but "
                            f"{y.shape[0]} labels")
        if classes is None or classes == "mnist":
            n = max(10, int(y.max()) + 1) if y.size else 10
            if n > 10 and len(np.unique(y)) < n:  # e.g. one stray 255 would make 256 classes
                raise UserError(f"IDX labels file {labels}: label {int(y.max())} would make {n} classes but only "
                                f"{len(np.unique(y))} distinct labels occur (expected 0..9 or contiguous labels)")
            names = [str(i) for i in range(n)]
        elif classes == "fashion":
            names = list(FASHION_CLASSES)
        else:
            names = list(classes)
        check_labels(y, len(names), f"IDX labels file {labels}")
        super().__init__(x[..., None], y, names, name="idx", source=os.fspath(images))
        self.labels_path = os.fspath(labels)

    def describe(self):
        d = super().describe()
        d["labels_path"] = self.labels_path
        return d
