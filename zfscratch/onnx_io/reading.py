"""Reading and validating an ``.onnx`` file, the optional-dependency gate, and the small helpers
that read a graph's attributes (nothing here imports ``onnx`` at module level)."""
from __future__ import annotations

import os

import numpy as np

from ..errors import UserError

INSTALL_HINT = "pip install 'zfscratch[onnx]'"


def _onnx():
    """The ``onnx`` module, or a one-line UserError saying how to install it."""
    try:
        import onnx  # noqa: F401
        from onnx import numpy_helper  # noqa: F401
    except ImportError:
        raise UserError(f"ONNX support needs the onnx package: {INSTALL_HINT}") from None
    return onnx


def available():
    """True when the ``onnx`` package imports."""
    try:
        _onnx()
        return True
    except UserError:
        return False


def read_model(path):
    """Parse an ``.onnx`` file (protobuf only; nothing is executed). UserError on missing/bad files."""
    onnx = _onnx()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"ONNX model {path} does not exist")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise UserError(f"ONNX model {path} is not a valid ONNX file: {_one_line(e)}") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise UserError(f"ONNX model {path} is not a valid ONNX file: it holds no graph nodes")
    try:
        from onnx.external_data_helper import load_external_data_for_model, uses_external_data
        if any(uses_external_data(t) for t in model.graph.initializer):
            load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
    except Exception as e:
        raise UserError(f"ONNX model {path}: cannot read its external weight data: {_one_line(e)}") from None
    return model


def _one_line(e):
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def _opset(model):
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 1


def _attrs(node):
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _f32(v):
    """A float32 attribute as the shortest decimal that rounds to it (1e-4, not 9.9999997e-05)."""
    return float(str(np.float32(v)))


def _dims(value_info):
    """Shape of a graph input as a list of ints / None (unknown or symbolic)."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]


def drop_final_softmax(model):
    """Make a graph that ends in Softmax output the logits instead (in place; returns ``model``).

    Used to compare an import with onnxruntime on logits (saturated probabilities hide differences).
    """
    g = model.graph
    if len(g.node) and g.node[-1].op_type == "Softmax" and g.node[-1].output[0] == g.output[0].name:
        logits = g.node[-1].input[0]
        del g.node[-1]
        g.output[0].name = logits
        g.output[0].type.tensor_type.ClearField("shape")
    return model

