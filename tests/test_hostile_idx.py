"""Hostile IDX files: dims whose product overflows, gzip bombs, a stray label 255, a FIFO."""
import gzip
import os
import struct

import numpy as np
import pytest

from hostile_util import assert_refused
from zfscratch.data import idx
from zfscratch.errors import UserError


def _idx(path, dims, payload=b"", gz=False):
    data = bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def test_dims_product_overflow_refused_from_header(tmp_path):
    p = _idx(tmp_path / "x", [0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF])
    with pytest.raises(UserError, match="refused before reading"):
        idx.read_idx(p, ndim=3)


def test_gzip_bomb_bounded(tmp_path):
    # declares 64 MiB, holds 64 MiB of zeros compressed to ~64 KB; the cap is 1 MiB: refused from the header
    p = tmp_path / "bomb.gz"
    with gzip.open(p, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">III", 1024, 256, 256))
        for _ in range(64):
            f.write(bytes(1 << 20))
    assert p.stat().st_size < 1 << 20
    with pytest.raises(UserError, match="more than the 1048576 allowed"):
        idx.read_idx(p, ndim=3, max_bytes=1 << 20)
    # a header that lies low: only the declared bytes (+1) are decompressed, then refused
    q = tmp_path / "liar.gz"
    with gzip.open(q, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">III", 1, 2, 2))
        for _ in range(64):
            f.write(bytes(1 << 20))
    with pytest.raises(UserError, match="truncated or wrong file"):
        idx.read_idx(q, ndim=3)


def test_stray_label_255_refused(tmp_path):
    n = 4
    imgs = _idx(tmp_path / "train-images-idx3-ubyte", [n, 2, 2], bytes(n * 4))
    labs = _idx(tmp_path / "train-labels-idx1-ubyte", [n], bytes([0, 1, 2, 255]))
    with pytest.raises(UserError, match="256 classes"):
        idx.IdxDataset(imgs, labs)


def test_fifo_idx_refused(tmp_path):
    os.mkfifo(tmp_path / "train-images-idx3-ubyte")
    _idx(tmp_path / "train-labels-idx1-ubyte", [2], bytes([0, 1]))
    assert_refused(["train", "--data", f"idx:{tmp_path}", "--out", "run", "--epochs", "1", "--quiet"], tmp_path,
                   ["train-images-idx3-ubyte", "not a regular file"], out=tmp_path / "run", timeout=120)
