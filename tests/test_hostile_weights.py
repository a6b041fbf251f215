"""Hostile weights files: zip bombs, pickles, crafted layer names, absurd sizes, bad metadata, NaN weights.

Every case goes through the CLI (``zfscratch visualize --weights FILE``) in a subprocess under an
address-space cap: exit 2, one stderr line naming the file, no traceback, nothing outside --out touched.
"""
import io as _io
import json
import zipfile

import numpy as np
import pytest

from hostile_util import assert_refused
from zfscratch import io as zio
from zfscratch import models
from zfscratch.errors import UserError


def _good(tmp_path):
    net = models.zfnet_small(num_classes=3, input_size=32)
    p = tmp_path / "good.npz"
    zio.save_weights(p, net, meta={"classes": ["a", "b", "c"],
                                   "preprocessing": {"input_size": 32, "resize": 32, "scale": 1 / 64, "pad": 0}})
    return p


def _rewrite(tmp_path, name, meta_fn=None, arrays_fn=None, raw_meta=None):
    arrays, meta = zio.load_npz(_good(tmp_path))
    if meta_fn:
        meta = meta_fn(meta) or meta
    if arrays_fn:
        arrays_fn(arrays)
    p = tmp_path / name
    if raw_meta is not None:
        arrays[zio.META_KEY] = np.frombuffer(raw_meta, np.uint8)
        buf = _io.BytesIO()
        np.savez(buf, **arrays)
        p.write_bytes(buf.getvalue())
    else:
        zio.atomic_savez(p, arrays, meta)
    return p


def _refused(tmp_path, weights, *extra_names):
    out = tmp_path / "out"
    return assert_refused(["visualize", "--weights", weights.name, "--out", "out", "--backend", "numpy"],
                          tmp_path, [weights.name, *extra_names], out=out)


def test_good_weights_load(tmp_path):
    net, meta = zio.load_weights(_good(tmp_path))
    assert meta["classes"] == ["a", "b", "c"]


def test_zip_bomb_refused_before_reading(tmp_path):
    p = tmp_path / "bomb.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("conv1.w.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (600, 1 << 20)})
            chunk = bytes(1 << 24)
            for _ in range(150):  # 2.4 GB of zeros, ~2.4 MB compressed
                f.write(chunk)
    assert p.stat().st_size < 8 << 20
    line = _refused(tmp_path, p, "zip bomb")
    assert "ratio" in line


def test_npz_declared_total_bounded(tmp_path):
    p = _good(tmp_path)
    with pytest.raises(UserError, match="declares .* bytes of arrays, more than the 1000 allowed"):
        zio.load_npz(p, max_bytes=1000)


def test_npz_header_larger_than_entry(tmp_path):
    p = tmp_path / "lying.npz"
    with zipfile.ZipFile(p, "w") as z:
        f = _io.BytesIO()
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (1 << 30,)})
        z.writestr("conv1.w.npy", f.getvalue() + b"\0" * 64)
    _refused(tmp_path, p, "declares shape")


def test_pickle_refused(tmp_path):
    p = tmp_path / "pickle.npz"
    buf = _io.BytesIO()
    np.savez(buf, x=np.array([{"a": 1}], dtype=object))
    p.write_bytes(buf.getvalue())
    _refused(tmp_path, p, "no pickles")


def test_not_a_zip_and_fifo(tmp_path):
    import os
    p = tmp_path / "junk.npz"
    p.write_bytes(b"\x80\x04garbage")
    _refused(tmp_path, p, "no zip signature")
    f = tmp_path / "fifo.npz"
    os.mkfifo(f)
    _refused(tmp_path, f, "not a regular file")


def _custom(meta, **layer_edit):
    return meta


@pytest.mark.parametrize("name", ["../../evil", "/tmp/evil", "a/b", "..", ""])
def test_layer_name_that_is_a_path(tmp_path, name):
    def edit(meta):
        net = models.zfnet_small(num_classes=3, input_size=32)
        specs = net.layer_specs()
        specs[0]["name"] = name
        meta["config"] = {"arch": "custom", "layers": specs, "input_size": 32}
    p = _rewrite(tmp_path, "names.npz", meta_fn=edit)
    _refused(tmp_path, p, "not a safe name")


@pytest.mark.parametrize("key,value,words", [
    ("conv1", [7, 0, 3], "conv1 stride"), ("conv2", [0, 1, 2], "conv2 k"), ("fc", 0, "fc"),
    ("fc", 1 << 40, "fc"), ("widths", [0, 64, 96, 96, 64], "widths[0]"), ("widths", [32, 64], "widths"),
    ("input_size", 40000, "input_size"), ("input_size", "x", "input_size"), ("pool", [3, 0], "pool stride"),
    ("num_classes", -1, "num_classes"), ("dropout", float("nan"), "dropout"),
    ("widths", [65536, 65536, 65536, 65536, 65536], "parameters"),
])
def test_absurd_config(tmp_path, key, value, words):
    def edit(meta):
        meta["config"][key] = value
    p = _rewrite(tmp_path, "cfg.npz", meta_fn=edit)
    _refused(tmp_path, p, words)


def test_custom_layer_kind_and_stride(tmp_path):
    def edit(meta):
        net = models.zfnet_small(num_classes=3, input_size=32)
        specs = net.layer_specs()
        specs[0]["config"]["stride"] = 0
        meta["config"] = {"arch": "custom", "layers": specs, "input_size": 32}
    _refused(tmp_path, _rewrite(tmp_path, "s0.npz", meta_fn=edit), "conv1 (Conv2d) stride")

    def edit2(meta):
        meta["config"] = {"arch": "custom", "layers": [{"kind": "os.system", "name": "x", "config": {}}]}
    _refused(tmp_path, _rewrite(tmp_path, "kind.npz", meta_fn=edit2), "unknown layer kind")


@pytest.mark.parametrize("pre,words", [
    ({"input_size": 32, "resize": 20000}, "preprocessing.resize"),
    ({"input_size": 32, "scale": float("nan")}, "preprocessing.scale"),
    ({"input_size": 32, "pad": 10 ** 9}, "preprocessing.pad"),
    ("not a dict", "preprocessing"),
])
def test_bad_preprocessing(tmp_path, pre, words):
    def edit(meta):
        meta["preprocessing"] = pre
    _refused(tmp_path, _rewrite(tmp_path, "pre.npz", meta_fn=edit), words)


def test_nan_mean(tmp_path):
    def edit(arrays):
        arrays["extra/mean"] = np.full((32, 32, 3), np.nan, np.float32)
    _refused(tmp_path, _rewrite(tmp_path, "mean.npz", arrays_fn=edit), "NaN")


def test_nan_weights(tmp_path):
    def edit(arrays):
        arrays["conv1.w"] = arrays["conv1.w"].copy()
        arrays["conv1.w"][0, 0, 0, 0] = np.nan
    _refused(tmp_path, _rewrite(tmp_path, "nanw.npz", arrays_fn=edit), "conv1.w", "NaN")


@pytest.mark.parametrize("raw,words", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2, 3]", "JSON list"),
    (b"[" * 100000 + b"]" * 100000, "nested"),
    (json.dumps({"format": "zfscratch-weights", "a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}).encode(), "nested"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_malformed_metadata(tmp_path, raw, words):
    _refused(tmp_path, _rewrite(tmp_path, "meta.npz", raw_meta=raw), words)


def test_bad_classes(tmp_path):
    def edit(meta):
        meta["classes"] = [{"x": 1}, "b", "c"]
    _refused(tmp_path, _rewrite(tmp_path, "cls.npz", meta_fn=edit), "classes")
