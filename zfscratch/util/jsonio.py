"""JSON of results: NumPy values converted, non-finite floats written as ``null`` (never invalid JSON)."""
from __future__ import annotations

import json
import math
import os

import numpy as np


def jsonable(o):
    """``o`` with NumPy scalars and arrays turned into Python values, tuples into lists, dict keys into
    strings, and NaN/inf into ``None`` (JSON has no NaN: ``json.dumps`` would write the invalid token
    ``NaN``). Other objects are returned unchanged."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if math.isfinite(f) else None
    return o


def dumps(obj, indent=1, sort_keys=False):
    """Strict JSON text of ``jsonable(obj)`` (``allow_nan=False``: a NaN that slipped through raises)."""
    return json.dumps(jsonable(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


def write_json(path, obj, indent=2, sort_keys=False):
    """Atomic write of ``obj`` as JSON (see :func:`dumps`) followed by a newline; returns the path."""
    from zfscratch.util.files import atomic_write_text
    atomic_write_text(path, dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")
    return os.fspath(path)
