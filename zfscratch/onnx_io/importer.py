"""The importer's graph walk: checks the graph's inputs and outputs, that it is a simple chain of
supported nodes, and hands each node to its ``op_<OpType>`` method (:mod:`.operators`)."""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from .operators import SUPPORTED_OPS, _Operators
from .reading import _attrs, _dims, _one_line, _opset


class _Importer(_Operators):
    """Walks the graph once, node by node, and builds layer specs + parameters."""

    def __init__(self, model, source, input_size=None):
        from onnx import numpy_helper
        self.np_helper = numpy_helper
        self.model, self.src = model, source
        self.opset = _opset(model)
        g = model.graph
        self.consts = {}
        for init in g.initializer:
            try:
                self.consts[init.name] = numpy_helper.to_array(init)
            except Exception as e:
                raise UserError(f"{source}: initializer {init.name!r} cannot be read: {_one_line(e)}") from None
        if len(g.sparse_initializer):
            raise UserError(f"{source}: sparse initializers are not supported")
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise UserError(f"{source}: expected one image input, found {len(inputs)} "
                            f"({', '.join(i.name for i in inputs) or 'none'})")
        if len(g.output) != 1:
            raise UserError(f"{source}: expected one output, found {len(g.output)} "
                            f"({', '.join(o.name for o in g.output)})")
        self.input_name, self.output_name = inputs[0].name, g.output[0].name
        self.input_dims = _dims(inputs[0])
        self._init_shape(input_size)
        self.consumers = {}
        for n in g.node:
            for i in n.input:
                if i:
                    self.consumers[i] = self.consumers.get(i, 0) + 1
        self.specs, self.params, self.nodes = [], {}, {}
        self.n_conv = self.n_fc = 0
        self.last_param = None  # spec of the Conv2d/Linear whose output is the current tensor
        self.softmax = False

    # -- shapes ---------------------------------------------------------------------------
    def _init_shape(self, input_size):
        d = self.input_dims
        if d is not None and len(d) != 4:
            raise UserError(f"{self.src}: input {self.input_name!r} has {len(d)} dimensions, expected an "
                            f"image batch (N, C, H, W)")
        c, h, w = (d[1], d[2], d[3]) if d else (None, None, None)
        if input_size is not None:
            s = int(input_size)
            if (h is not None and h != s) or (w is not None and w != s):
                raise UserError(f"{self.src}: input {self.input_name!r} is {h}x{w}, not the requested "
                                f"input size {s}")
            h = w = s
        if h is None or w is None:
            raise UserError(f"{self.src}: input {self.input_name!r} has no fixed height/width; give the "
                            f"input size (--input-size)")
        if h != w:
            raise UserError(f"{self.src}: input {self.input_name!r} is {h}x{w}; only square inputs are "
                            f"supported")
        from zfscratch.models import MAX_INPUT_SIZE
        if not 1 <= int(h) <= MAX_INPUT_SIZE or (c is not None and not 1 <= int(c) <= 64):
            raise UserError(f"{self.src}: input {self.input_name!r} is {c}x{h}x{w}; at most 64 channels of "
                            f"{MAX_INPUT_SIZE}x{MAX_INPUT_SIZE} pixels are supported (refused before allocating)")
        self.in_channels, self.input_size = c, int(h)
        self.shape = (1, c, h, w)

    # -- errors ---------------------------------------------------------------------------
    def where(self, node, idx):
        return f"node {node.name or '#' + str(idx)!r} ({node.op_type})"

    def fail(self, node, idx, msg):
        raise UserError(f"{self.src}: {self.where(node, idx)}: {msg}")

    def const(self, node, idx, name, what):
        if name not in self.consts:
            self.fail(node, idx, f"its {what} ({name!r}) must be a constant initializer")
        return self.consts[name]

    def weight(self, node, idx, arr, what, shape=None):
        """Validate a weight array (floating point, finite, optional exact shape) -> float32."""
        a = np.asarray(arr)
        if a.dtype.kind != "f":
            self.fail(node, idx, f"{what} has dtype {a.dtype}, expected floating point")
        if shape is not None and tuple(a.shape) != tuple(shape):
            self.fail(node, idx, f"{what} has shape {tuple(a.shape)}, expected {tuple(shape)}")
        if not np.all(np.isfinite(a)):
            self.fail(node, idx, f"{what} holds NaN or infinite values")
        return np.ascontiguousarray(a, dtype=np.float32)

    # -- naming ---------------------------------------------------------------------------
    def _name(self, base):
        names = {s["name"] for s in self.specs}
        if base not in names:
            return base
        for suffix in "bcdefghijklmnopqrstuvwxyz":
            if base + suffix not in names:
                return base + suffix
        return f"{base}_{len(self.specs)}"  # pragma: no cover

    def _block(self):
        """Number of the block the current layer belongs to: conv i -> i, fc j -> n_conv + j."""
        if self.last_kind_param == "Linear":
            return self.n_conv + self.n_fc
        return self.n_conv

    last_kind_param = None

    def add(self, kind, base, node, config, params=None):
        name = self._name(base)
        spec = {"kind": kind, "name": name, "config": config}
        self.specs.append(spec)
        self.nodes[name] = node.name or node.op_type
        for k, v in (params or {}).items():
            self.params[f"{name}.{k}"] = v
        self.last_param = spec if params else None
        if params:
            self.last_kind_param = kind
        return spec

    # -- the walk ---------------------------------------------------------------------------
    def run(self):
        g = self.model.graph
        cur = self.input_name
        last = len(g.node) - 1
        for idx, node in enumerate(g.node):
            op = node.op_type
            if node.domain not in ("", "ai.onnx"):
                self.fail(node, idx, f"operators of domain {node.domain!r} are not supported; supported: "
                                     f"{', '.join(SUPPORTED_OPS)} (default domain)")
            if op == "Constant":
                self.consts[node.output[0]] = self._constant(node, idx)
                continue
            if op not in SUPPORTED_OPS and op != "AveragePool":
                self.fail(node, idx, f"operator {op} is not supported; supported operators: "
                                     f"{', '.join(SUPPORTED_OPS)}")
            data = [i for i in node.input if i and i not in self.consts]
            if data != [cur]:
                self.fail(node, idx, f"reads {', '.join(data) or 'only constants'}, but the graph must be a "
                                     f"simple chain whose next node reads {cur!r}")
            if self.consumers.get(cur, 0) > 1:
                self.fail(node, idx, f"tensor {cur!r} feeds {self.consumers[cur]} nodes; only simple chains "
                                     f"of layers are supported")
            for extra in node.output[1:]:
                if extra and (self.consumers.get(extra) or extra == self.output_name):
                    self.fail(node, idx, f"its second output {extra!r} is used; only the first is supported")
            if self.softmax:
                self.fail(node, idx, "Softmax is supported only as the last node")
            getattr(self, "op_" + op)(node, idx)
            if op == "Softmax" and idx != last:
                self.fail(node, idx, "Softmax is supported only as the last node")
            cur = node.output[0]
        if cur != self.output_name:
            raise UserError(f"{self.src}: the graph output {self.output_name!r} is not the end of the layer "
                            f"chain ({cur!r})")
        if len(self.shape) != 2:
            raise UserError(f"{self.src}: the network ends with shape {self.shape[1:]}, expected class "
                            f"scores (N, classes) from a fully connected layer")
        return self

    def _constant(self, node, idx):
        a = _attrs(node)
        if "value" in a:
            return self.np_helper.to_array(a["value"])
        for key, dt in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                        ("value_ints", np.int64)):
            if key in a:
                return np.asarray(a[key], dtype=dt)
        self.fail(node, idx, "only tensor/float/int constants are supported")

