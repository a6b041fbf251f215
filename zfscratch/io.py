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


#: most bytes an ``.npz`` may unpack to (all entries together); a full ZFNet checkpoint is ~0.8 GB
MAX_NPZ_BYTES = 4 << 30
#: entries larger than this must not be compressed more than :data:`MAX_RATIO` times (zip bombs)
_RATIO_FLOOR = 1 << 20
MAX_RATIO = 100
MAX_ENTRIES = 4096
MAX_META_BYTES = 16 << 20
MAX_META_DEPTH = 32


def _json_depth(obj, limit):
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > limit:
            return d
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return 0


def parse_meta_json(raw, where):
    """JSON metadata bytes -> dict, UserError (naming ``where``) when invalid, too large or too deeply nested."""
    if len(raw) > MAX_META_BYTES:
        raise UserError(f"{where}: metadata is {len(raw)} bytes, more than the {MAX_META_BYTES} allowed")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise UserError(f"{where}: metadata JSON is nested more than {MAX_META_DEPTH} levels deep") from None
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{where}: metadata entry {META_KEY} is not valid JSON") from None
    if not isinstance(meta, dict):
        raise UserError(f"{where}: metadata entry {META_KEY} is a JSON {type(meta).__name__}, expected an object")
    if _json_depth(meta, MAX_META_DEPTH):
        raise UserError(f"{where}: metadata JSON is nested more than {MAX_META_DEPTH} levels deep")
    return meta


def _not_npz(what, path, msg):
    """The one-line error for a file that is not a readable ``.npz``; ``msg`` says why."""
    return UserError(f"{what} {path} is not a valid .npz file: {msg}")


def _check_zip_signature(path, what):
    """Refuse a file that does not start with a zip local-file header.

    Checked before ``zipfile`` sees it because ``np.load`` would otherwise try to unpickle unknown files.
    """
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise UserError(f"{what} {path} is not a valid .npz file (no zip signature)")


def _check_zip_directory(infos, path, what, max_bytes):
    """Check the zip directory's declared sizes before anything is decompressed.

    Parameters
    ----------
    infos : list of zipfile.ZipInfo, the archive's entries
    max_bytes : int, most bytes all entries may unpack to together

    Raises
    ------
    UserError
        more than :data:`MAX_ENTRIES` entries, more than ``max_bytes`` in all, or an entry over 1 MiB
        compressed more than :data:`MAX_RATIO` times (a zip bomb).
    """
    if len(infos) > MAX_ENTRIES:
        raise _not_npz(what, path, f"{len(infos)} entries, more than {MAX_ENTRIES}")
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise UserError(f"{what} {path} declares {total} bytes of arrays, more than the {max_bytes} "
                        f"allowed (refused before reading)")
    for i in infos:
        if i.file_size > _RATIO_FLOOR and i.file_size > MAX_RATIO * max(i.compress_size, 1):
            raise UserError(f"{what} {path}: entry {i.filename} unpacks {i.file_size} bytes from "
                            f"{i.compress_size} (ratio over {MAX_RATIO}: refused as a zip bomb)")


def _read_npy_entry(z, info, path, what):
    """Read one ``.npy`` entry of an open zip, its header checked before its data is read.

    Parameters
    ----------
    z : zipfile.ZipFile, open for reading
    info : zipfile.ZipInfo, the entry (its ``file_size`` already checked by :func:`_check_zip_directory`)

    Returns
    -------
    numpy array of the header's shape and dtype, writeable (copied when the buffer is read-only)

    Raises
    ------
    UserError
        an unsupported ``.npy`` version, an object dtype (never unpickled), a shape whose bytes exceed
        the entry's declared size, or truncated data.
    """
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise _not_npz(what, path, f"entry {info.filename}: unsupported .npy version {version}")
        if dtype.hasobject:
            raise UserError(f"{what} {path} holds object arrays, which are refused (no pickles)")
        # object-dtype product: a hostile shape must not overflow int64 into a small, passing size
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if nbytes > info.file_size:
            raise _not_npz(what, path, f"entry {info.filename} declares shape {shape} ({nbytes} bytes) but "
                                       f"holds {info.file_size} bytes")
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise _not_npz(what, path, f"entry {info.filename} is truncated")
    a = np.frombuffer(data, dtype=dtype)
    if shape:
        a = a.reshape(shape[::-1]).T if fortran else a.reshape(shape)
    else:
        a = a.reshape(())
    return a.copy() if not a.flags.writeable else a


def read_npz(path, what="npz file", max_bytes=None):
    """Read every array of an ``.npz`` with sizes checked before anything is decompressed or allocated.

    The zip directory's declared sizes are checked first (at most :data:`MAX_ENTRIES` entries, in all at
    most ``max_bytes`` = :data:`MAX_NPZ_BYTES` unpacked, no entry over 1 MiB compressed more than
    :data:`MAX_RATIO` times), then each ``.npy`` header: no object dtype (never unpickled), and the shape
    times the item size must fit the entry's declared size. ``zipfile`` stops every entry at its declared
    size, so a lying directory cannot unpack more.

    Returns
    -------
    dict name -> numpy array (``.npy`` suffix removed)

    Raises
    ------
    UserError
        one line naming the file and what was wrong.
    """
    import zipfile

    path = os.fspath(path)
    max_bytes = MAX_NPZ_BYTES if max_bytes is None else int(max_bytes)
    if not os.path.exists(path):
        raise UserError(f"{what} {path} does not exist")
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} is not a regular file")
    # every step below runs inside this try: whatever the libraries raise on a malformed file
    # becomes the one-line "not a valid .npz file" error
    try:
        _check_zip_signature(path, what)
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            _check_zip_directory(infos, path, what, max_bytes)
            arrays = {}
            for i in infos:
                name = i.filename[:-4] if i.filename.endswith(".npy") else i.filename
                arrays[name] = _read_npy_entry(z, i, path, what)
        return arrays
    except UserError:
        raise
    except MemoryError:
        raise UserError(f"{what} {path}: not enough memory to read its arrays") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError, NotImplementedError, RuntimeError) as e:
        raise _not_npz(what, path, str(e) or type(e).__name__) from None


def load_npz(path, what="npz file", max_bytes=None):
    """Load an ``.npz`` written by :func:`atomic_savez` through the size-checked :func:`read_npz`.

    Returns
    -------
    arrays : dict name -> numpy array
    meta : dict (the ``__meta__`` JSON: at most 16 MiB, 32 levels deep)

    Raises
    ------
    UserError
        missing file, not an npz, a zip bomb, object arrays, unreadable metadata — one line naming the file.
    """
    path = os.fspath(path)
    arrays = read_npz(path, what, max_bytes=max_bytes)
    meta = {}
    if META_KEY in arrays:
        raw = arrays.pop(META_KEY)
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise UserError(f"{what} {path}: metadata entry {META_KEY} is not a uint8 byte array")
        meta = parse_meta_json(raw.tobytes(), f"{what} {path}")
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
    check_weights_meta(meta, path)
    net.load_state_dict(arrays)
    if backend is not None:
        net.to(backend)
    return net, meta


def check_weights_meta(meta, path):
    """Validate the non-architecture metadata of a weights file: class names, preprocessing, mean image."""
    from zfscratch.preprocess import Preprocess

    classes = meta.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not all(isinstance(c, str) and 0 < len(c) <= 200 for c in classes):
            raise UserError(f"weights file {path}: classes must be a list of names (strings of 1 to 200 characters)")
        n = (meta.get("config") or {}).get("num_classes")
        if isinstance(n, int) and len(classes) not in (0, n):
            raise UserError(f"weights file {path}: {len(classes)} class names for a model with {n} outputs")
    mean = meta.get("extra", {}).get("mean")
    if mean is not None and mean.dtype.kind not in "fiu":
        raise UserError(f"weights file {path}: extra/mean has dtype {mean.dtype}, expected numbers")
    if meta.get("preprocessing") is not None or mean is not None:
        Preprocess.from_meta(meta, source=f"weights file {path}")


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


def import_onnx(path, out, **kw):
    """Import the ONNX model ``path`` (see :func:`load_onnx`) and save it to ``out`` with :func:`save_weights`.

    Returns ``(net, meta)``.
    """
    net, meta = load_onnx(path, **kw)
    extra = meta.get("extra") or {}
    save_weights(out, net, meta={k: v for k, v in meta.items() if k != "extra"}, extra=extra)
    return net, meta
