"""Weights and checkpoints as ``.npz`` files with a JSON metadata entry; atomic writes; validation.

A weights file holds one array per parameter (``conv1.w``, ``conv1.b``, ...) and ``__meta__``: a
uint8 array of UTF-8 JSON with at least ``{"format": "zfscratch-weights", "version": 1, "config":
{...}}`` (the architecture config of :mod:`zfscratch.models`) plus whatever the producer adds
(class names, mean image, preprocessing). Files are read with ``allow_pickle=False``: object arrays
are refused, never unpickled.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from zfscratch.errors import UserError
from zfscratch.util.files import atomic_write_bytes, atomic_write_npz, atomic_write_text  # noqa: F401 (re-exported)

META_KEY = "__meta__"
WEIGHTS_FORMAT = "zfscratch-weights"


def _meta_array(meta):
    return np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)


def atomic_savez(path, arrays, meta=None):
    """Save ``arrays`` (name -> array) and ``meta`` (JSON-serializable dict) to an ``.npz``, atomically."""
    payload = dict(arrays)
    if META_KEY in payload:
        raise ValueError(f"array name {META_KEY!r} is reserved")
    payload[META_KEY] = _meta_array(meta or {})
    atomic_write_npz(path, payload)


def load_npz(path, what="npz file"):
    """Load an ``.npz`` written by :func:`atomic_savez`.

    Returns
    -------
    arrays : dict name -> numpy array
    meta : dict

    Raises
    ------
    UserError
        missing file, not an npz, object arrays, unreadable metadata — one line naming the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} does not exist")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # np.load would otherwise try to unpickle unknown files
            raise UserError(f"{what} {path} is not a valid .npz file (no zip signature)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {}
            for k in z.files:
                arrays[k] = z[k]
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise UserError(f"{what} {path} holds object arrays, which are refused (no pickles)") from None
        raise UserError(f"{what} {path} is not a valid .npz file: {e}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{what} {path} is not a valid .npz file: {e}") from None
    meta = {}
    if META_KEY in arrays:
        raw = arrays.pop(META_KEY)
        try:
            meta = json.loads(raw.astype(np.uint8).tobytes().decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"{what} {path}: metadata entry {META_KEY} is not valid JSON") from None
    return arrays, meta


EXTRA_PREFIX = "extra/"


def save_weights(path, net, meta=None, extra=None):
    """Save a network's parameters and a self-describing metadata record (atomic).

    Parameters
    ----------
    meta : dict, e.g. ``classes`` (list of names), ``preprocessing`` (dict); ``config``, ``format``
        and ``version`` are filled in here.
    extra : dict name -> array, non-parameter arrays kept with the model (e.g. ``mean``: the
        training mean image (H, W, 3) float32); stored under ``extra/<name>``.
    """
    meta = dict(meta or {})
    meta["format"] = WEIGHTS_FORMAT
    meta["version"] = 1
    meta["config"] = net.config
    arrays = net.state_dict()
    for k, v in (extra or {}).items():
        arrays[EXTRA_PREFIX + k] = np.asarray(v)
    atomic_savez(path, arrays, meta)


def load_weights(path, backend=None, dtype=np.float32):
    """Load a weights file saved by :func:`save_weights` and rebuild its network.

    Returns
    -------
    net : Sequential on ``backend``
    meta : dict, with the extra arrays saved beside the weights under ``meta["extra"]`` (name -> array)

    Raises
    ------
    UserError
        the file is missing or malformed, lacks the architecture config, or its arrays do not match
        that architecture (names, shapes, non-finite values).
    """
    from zfscratch.models import build_model

    arrays, meta = load_npz(path, "weights file")
    if meta.get("format") != WEIGHTS_FORMAT or "config" not in meta:
        raise UserError(f"weights file {path} has no zfscratch metadata (expected {META_KEY} with format "
                        f"{WEIGHTS_FORMAT!r} and an architecture config)")
    try:
        net = build_model(meta["config"], dtype=dtype, init=False)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"weights file {path}: cannot build its architecture: {e}") from None
    meta["extra"] = {k[len(EXTRA_PREFIX):]: arrays.pop(k) for k in list(arrays) if k.startswith(EXTRA_PREFIX)}
    check_arrays(arrays, dict(net.params()), path)
    net.load_state_dict(arrays)
    if backend is not None:
        net.to(backend)
    return net, meta


def check_arrays(arrays, expected, path):
    """Validate ``arrays`` against ``expected`` (name -> array): names, shapes, numeric, finite."""
    missing = [k for k in expected if k not in arrays]
    extra = [k for k in arrays if k not in expected]
    if missing:
        raise UserError(f"weights file {path} does not match the architecture: missing {', '.join(missing[:5])}")
    if extra:
        raise UserError(f"weights file {path} does not match the architecture: unexpected {', '.join(extra[:5])}")
    for k, ref in expected.items():
        a = arrays[k]
        if tuple(a.shape) != tuple(ref.shape):
            raise UserError(f"weights file {path}: {k} has shape {tuple(a.shape)}, the architecture "
                            f"expects {tuple(ref.shape)}")
        if a.dtype.kind not in "fiu":
            raise UserError(f"weights file {path}: {k} has dtype {a.dtype}, expected floating point")
        if not np.all(np.isfinite(a)):
            raise UserError(f"weights file {path}: {k} holds NaN or infinite values")


def load_onnx(path, **kw):
    """Import an ONNX model as ``(net, meta)``, like :func:`load_weights` (needs ``zfscratch[onnx]``).

    Keyword arguments (``input_size``, ``labels``, ``mean``, ``scale``, ``std``, ``bgr``, ``backend``) are
    those of :func:`zfscratch.onnx_io.load_onnx`.
    """
    from zfscratch import onnx_io
    return onnx_io.load_onnx(path, **kw)
