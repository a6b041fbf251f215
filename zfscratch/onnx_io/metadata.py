"""What travels beside the weights: the ``zfscratch.*`` metadata of exported models (class names,
preprocessing, mean), and the ``--labels`` / ``--mean`` / ``--std`` inputs of an import."""
from __future__ import annotations

import base64
import json
import math
import os

import numpy as np

from ..errors import UserError
from .reading import _one_line

META_PREFIX = "zfscratch."
#: RGB mean (0..255) the ONNX model zoo's demo code subtracts for ZFNet-512, CaffeNet and AlexNet
ZOO_MEAN_RGB = (123.68, 116.779, 103.939)


def _parse_meta_props(model):
    out = {}
    for p in model.metadata_props:
        if p.key.startswith(META_PREFIX):
            out[p.key[len(META_PREFIX):]] = p.value
    return out


def _decode_array(text):
    d = json.loads(text)
    raw = base64.b64decode(d["data"])
    return np.frombuffer(raw, dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


def _encode_array(a):
    a = np.ascontiguousarray(a)
    return json.dumps({"dtype": a.dtype.str, "shape": list(a.shape),
                       "data": base64.b64encode(a.tobytes()).decode("ascii")})


def read_labels(path, num_classes=None):
    """Class names from a text file, one per line (e.g. the model zoo's ``synset.txt``)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f.read().splitlines()]
    except FileNotFoundError:
        raise UserError(f"labels file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"labels file {path} cannot be read as UTF-8 text: {_one_line(e)}") from None
    while lines and not lines[-1]:
        lines.pop()
    if not lines or any(not ln for ln in lines):
        raise UserError(f"labels file {path}: expected one non-empty class name per line")
    if num_classes is not None and len(lines) != num_classes:
        raise UserError(f"labels file {path} has {len(lines)} names, the model has {num_classes} outputs")
    return lines


def parse_triple(text, what):
    """``"R,G,B"`` -> float array (3,)."""
    try:
        vals = [float(v) for v in str(text).replace(",", " ").split()]
    except ValueError:
        raise UserError(f"{what} {text!r}: expected three numbers R,G,B") from None
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise UserError(f"{what} {text!r}: expected three finite numbers R,G,B")
    return np.asarray(vals, np.float32)


def read_mean(spec, input_size):
    """``--mean``: ``"R,G,B"`` (0..255 units) or a file: ``.npy`` of shape (3,) or (R, R, 3) with R >=
    the input size (RGB, 0..255), or a text file holding three numbers. Returns float32 array."""
    if isinstance(spec, np.ndarray) or isinstance(spec, (list, tuple)):
        arr = np.asarray(spec, np.float32)
    elif os.path.isfile(os.fspath(spec)):
        path = os.fspath(spec)
        if path.endswith(".npy"):
            try:
                arr = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise UserError(f"mean file {path} is not a valid .npy array: {_one_line(e)}") from None
        else:
            try:
                with open(path, encoding="utf-8") as f:
                    arr = parse_triple(f.read(), f"mean file {path}")
            except UnicodeDecodeError:
                raise UserError(f"mean file {path}: expected a .npy array or a text file R,G,B") from None
    elif any(ch in str(spec) for ch in ",. ") or str(spec).strip().lstrip("-").isdigit():
        arr = parse_triple(spec, "--mean")
    else:
        raise UserError(f"--mean {spec!r}: expected R,G,B or an existing file")
    if arr.dtype.kind not in "fiu":
        raise UserError(f"mean of dtype {arr.dtype}: expected numbers")
    arr = np.asarray(arr, np.float32)
    ok = arr.shape == (3,) or (arr.ndim == 3 and arr.shape[2] == 3 and arr.shape[0] == arr.shape[1]
                               and arr.shape[0] >= input_size)
    if not ok:
        raise UserError(f"mean of shape {arr.shape}: expected (3,) or a square RGB image (R, R, 3) with "
                        f"R >= the input size {input_size}")
    if not np.all(np.isfinite(arr)):
        raise UserError("mean holds NaN or infinite values")
    return arr

