"""ONNX import and export for networks of the AlexNet/ZFNet family (optional: needs ``onnx``).

Import (:func:`load_onnx`, :func:`zfscratch.io.import_onnx`, ``zfscratch import-onnx``) turns a *chain* of
supported operators into a :class:`~zfscratch.net.Sequential` of this engine, stored like a trained
model (``io.save_weights``: ``config = {"arch": "custom", "layers": specs, ...}``, class names,
preprocessing, the mean beside the weights), so every command (visualize, occlude, invariance, run)
takes it. Files are parsed with the ``onnx`` package (protobuf) and never executed; the weights are
validated (shapes against the graph, floating point, finite).

=============  ================================================================================
ONNX operator  becomes
=============  ================================================================================
Conv           ``Conv2d`` (square kernel, equal strides, dilation 1, any ``group``; pads equal on
               every side, or asymmetric pads that give the same output as a symmetric pad;
               ``auto_pad`` resolved)
Relu           ``ReLU``
MaxPool        ``MaxPool2d`` (square kernel, equal strides, ``ceil_mode``, pads: a leading pad
               equal on both axes plus any trailing pad that ends up in the output count — e.g.
               Caffe2's ``pads=[0, 0, 1, 1]`` becomes ``ceil_mode=True``)
LRN            ``LocalResponseNorm(size, alpha, beta, k=bias)`` (odd ``size`` only: ONNX centres
               even windows on ``[c-(size-2)/2, c+size/2]``, this engine on ``[c-size/2, c+size/2-1]``)
Gemm           ``Linear`` (``transA=0``; ``transB`` 0 or 1; ``alpha``/``beta`` folded into w and b)
MatMul (+Add)  ``Linear`` (constant right operand; a following constant ``Add`` is its bias)
Add            folded into the bias of the Conv/Gemm/MatMul right before it
Flatten        ``Flatten`` (axis 1), Reshape ``(N, C, H, W) -> (N, C*H*W)`` likewise
Dropout        ``Dropout(p=ratio)`` (identity at inference)
Softmax        only as the last node: dropped (this engine's networks output logits); recorded in
               ``meta["source"]["softmax_output"]``
Identity       skipped; ``Constant`` nodes feed constant inputs (shapes, ratios); an ``AveragePool``
               of kernel 1x1, stride 1 (PyTorch's export of an ``AdaptiveAvgPool2d`` that changes
               nothing, e.g. torchvision's AlexNet at 224 px) is skipped too
=============  ================================================================================

Anything else raises :class:`~zfscratch.errors.UserError` with one line naming the node, its
operator and the supported operators (the CLI exits 2). Initializers may also be listed as graph
inputs (older opsets); the image input is the one graph input that is not an initializer.

Channel order and per-channel std are folded into ``conv1``: an imported network always takes RGB
input ``(pixel - mean) * scale`` (the :mod:`zfscratch.preprocess` convention, mean in 0..255 units),
whatever order/normalization the ONNX file expects (``bgr=True`` reverses conv1's input channels,
``std`` divides them).

Export (:func:`export_onnx`, ``zfscratch export-onnx``) writes the inverse mapping (opset 10 and up,
13 by default), with class names, preprocessing and mean in the model's ``metadata_props`` so that
``import(export(net))`` gives back the same layers, weights and metadata.
"""
from __future__ import annotations

import base64
import json
import math
import os

import numpy as np

from zfscratch.errors import UserError

INSTALL_HINT = "pip install 'zfscratch[onnx]'"
SUPPORTED_OPS = ("Conv", "Relu", "MaxPool", "LRN", "Gemm", "MatMul", "Add", "Flatten", "Reshape",
                 "Dropout", "Softmax", "Identity", "Constant", "AveragePool (1x1, stride 1: identity)")
DEFAULT_OPSET = 13
MIN_EXPORT_OPSET = 10
META_PREFIX = "zfscratch."
#: RGB mean (0..255) the ONNX model zoo's demo code subtracts for ZFNet-512, CaffeNet and AlexNet
ZOO_MEAN_RGB = (123.68, 116.779, 103.939)


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


# ============================================================================= reading
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


# ============================================================================= import
class _Importer:
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

    def _need4(self, node, idx):
        if len(self.shape) != 4:
            self.fail(node, idx, f"expects an image tensor (N, C, H, W), got shape {self.shape}")

    # -- spatial attribute helpers -----------------------------------------------------------
    def _pads(self, node, idx, a, k, s, mode):
        """Resolve pads (auto_pad included) -> (top, left, bottom, right)."""
        h = self.shape[2]
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-h // s)
            total = max((out - 1) * s + k - h, 0)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            return (lo, lo, total - lo, total - lo)
        if auto == "VALID":
            return (0, 0, 0, 0)
        if auto not in ("NOTSET", ""):
            self.fail(node, idx, f"auto_pad {auto!r} is not supported")
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if len(pads) != 4:
            self.fail(node, idx, f"pads {pads}: expected 4 values for a 2-D {mode}")
        if min(pads) < 0:
            self.fail(node, idx, f"negative pads {pads} are not supported")
        return tuple(int(p) for p in pads)

    def _square(self, node, idx, a, k_from_w=None):
        ks = list(a.get("kernel_shape", k_from_w or []))
        if len(ks) != 2:
            self.fail(node, idx, f"kernel_shape {ks}: only 2-D operators are supported")
        if ks[0] != ks[1]:
            self.fail(node, idx, f"kernel {ks[0]}x{ks[1]} is not square; this engine uses square kernels")
        st = list(a.get("strides", [1, 1]))
        if len(st) != 2 or st[0] != st[1]:
            self.fail(node, idx, f"strides {st}: only equal strides along height and width are supported")
        dil = list(a.get("dilations", [1, 1]))
        if any(d != 1 for d in dil):
            self.fail(node, idx, f"dilations {dil}: only dilation 1 is supported")
        from zfscratch.net import MAX_KERNEL
        if not 1 <= int(ks[0]) <= MAX_KERNEL or not 1 <= int(st[0]) <= MAX_KERNEL:
            self.fail(node, idx, f"kernel_shape {ks} strides {st}: expected kernel and stride in [1, {MAX_KERNEL}]")
        return int(ks[0]), int(st[0])

    # -- operators --------------------------------------------------------------------------
    def op_Identity(self, node, idx):
        pass

    def op_AveragePool(self, node, idx):
        """Only the identity form PyTorch exports for ``AdaptiveAvgPool2d`` when the map already has the
        target size (torchvision's AlexNet at 224 px)."""
        a = _attrs(node)
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if (list(a.get("kernel_shape", [])) != [1, 1] or list(a.get("strides", [1, 1])) != [1, 1]
                or any(pads) or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID")):
            self.fail(node, idx, f"only the identity AveragePool (kernel 1x1, stride 1, no pads) is supported; "
                                 f"supported operators: {', '.join(SUPPORTED_OPS)}")

    def op_Relu(self, node, idx):
        self.add("ReLU", f"relu{self._block()}", node, {})

    def op_Conv(self, node, idx):
        from zfscratch.kernels.shapes import conv_output_size
        self._need4(node, idx)
        a = _attrs(node)
        w = self.const(node, idx, node.input[1], "weight") if len(node.input) > 1 else None
        if w is None:
            self.fail(node, idx, "has no weight input")
        if w.ndim != 4:
            self.fail(node, idx, f"weight of shape {tuple(w.shape)}: only 2-D convolutions are supported")
        f, cg, kh, kw = (int(v) for v in w.shape)
        k, s = self._square(node, idx, a, [kh, kw])
        if (kh, kw) != (k, k):
            self.fail(node, idx, f"kernel_shape {k}x{k} does not match the weight {tuple(w.shape)}")
        g = int(a.get("group", 1))
        c = self.shape[1] if self.shape[1] is not None else cg * g
        if g < 1 or c != cg * g or f % g:
            self.fail(node, idx, f"weight {tuple(w.shape)} with group={g} does not fit {c} input channels")
        w = self.weight(node, idx, w, "weight")
        if len(node.input) > 2 and node.input[2]:
            b = self.weight(node, idx, self.const(node, idx, node.input[2], "bias"), "bias", (f,))
        else:
            b = np.zeros(f, np.float32)
        t, l, bo, r = self._pads(node, idx, a, k, s, "convolution")
        h = self.shape[2]
        try:
            ho = (h + t + bo - k) // s + 1
            wo = (h + l + r - k) // s + 1
            if ho < 1 or wo < 1:
                raise ValueError
            same = t == l and conv_output_size(h, k, s, t) == ho and conv_output_size(h, k, s, t) == wo
        except ValueError:
            self.fail(node, idx, f"kernel {k} stride {s} pads {[t, l, bo, r]} do not fit a {h}x{h} input")
        if not same:
            self.fail(node, idx, f"pads {[t, l, bo, r]} cannot be expressed as one symmetric pad (this "
                                 f"engine's Conv2d pads all sides equally)")
        if self.in_channels is None and not self.specs:
            self.in_channels = c
        self.n_conv += 1
        self.add("Conv2d", f"conv{self.n_conv}", node,
                 dict(in_ch=c, out_ch=f, k=k, stride=s, pad=t, groups=g), {"w": w, "b": b})
        self.shape = (1, f, ho, ho)

    def op_MaxPool(self, node, idx):
        from zfscratch.kernels.shapes import padded_pool_output_size
        self._need4(node, idx)
        a = _attrs(node)
        if "kernel_shape" not in a:
            self.fail(node, idx, "has no kernel_shape")
        k, s = self._square(node, idx, a)
        t, l, bo, r = self._pads(node, idx, a, k, s, "pool")
        ceil = bool(a.get("ceil_mode", 0))
        h = self.shape[2]
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)

        def onnx_size(p0, p1):
            span = h + p0 + p1 - k
            if span < 0:
                self.fail(node, idx, f"kernel {k} stride {s} pads {[t, l, bo, r]} do not fit a {h}x{h} input")
            if auto.startswith("SAME"):
                return -(-h // s)
            if ceil:
                out = -(-span // s) + 1
                return out - 1 if (out - 1) * s >= h + p0 else out
            return span // s + 1

        want = (onnx_size(t, bo), onnx_size(l, r))
        if t != l:
            self.fail(node, idx, f"pads {[t, l, bo, r]}: the leading pads of height and width differ")
        if t >= k:
            self.fail(node, idx, f"pads {[t, l, bo, r]}: pads must be smaller than the kernel ({k})")
        # equal counts mean identical windows; prefer ceil when ONNX says so or when asymmetric trailing
        # pads stand for it (Caffe2's and export_onnx's way of writing ceil pooling)
        first = ceil or bo != t or r != l
        for mode in (first, not first):
            got = padded_pool_output_size(h, k, s, t, mode)
            if (got, got) == want:
                cfg = dict(k=k, stride=s, ceil_mode=mode)
                if t:
                    cfg["pad"] = t
                self.add("MaxPool2d", f"pool{self._block()}", node, cfg)
                self.shape = (1, self.shape[1], got, got)
                return
        self.fail(node, idx, f"pads {[t, l, bo, r]} with ceil_mode={int(ceil)} give a {want[0]}x{want[1]} "
                             f"output that no symmetric pad gives (this engine pads pools equally)")

    def op_LRN(self, node, idx):
        self._need4(node, idx)
        a = _attrs(node)
        size = int(a.get("size", 0))
        if size < 1:
            self.fail(node, idx, "has no valid size")
        if size % 2 == 0:
            self.fail(node, idx, f"size {size} is even: ONNX centres even windows on channels "
                                 f"[c-{(size - 1) // 2}, c+{size // 2}], this engine on [c-{size // 2}, "
                                 f"c+{(size - 1) // 2}]; only odd sizes are supported")
        cfg = dict(size=size, alpha=_f32(a.get("alpha", 1e-4)), beta=_f32(a.get("beta", 0.75)),
                   k=_f32(a.get("bias", 1.0)))
        self.add("LocalResponseNorm", f"norm{self._block()}", node, cfg)

    def op_Flatten(self, node, idx):
        axis = int(_attrs(node).get("axis", 1))
        if axis < 0:
            axis += len(self.shape)
        if axis != 1:
            self.fail(node, idx, f"axis {axis}: only Flatten(axis=1) is supported")
        self._flatten(node)

    def _flatten(self, node):
        if len(self.shape) == 4:
            self.add("Flatten", "flatten", node, {})
            self.shape = (1, int(np.prod(self.shape[1:])))

    def op_Reshape(self, node, idx):
        a = _attrs(node)
        if len(node.input) > 1:
            target = self.const(node, idx, node.input[1], "target shape")
        elif "shape" in a:
            target = a["shape"]
        else:
            self.fail(node, idx, "has no target shape")
        target = [int(v) for v in np.asarray(target).reshape(-1)]
        feat = int(np.prod(self.shape[1:]))
        batch = self.input_dims[0] if self.input_dims else None
        ok = (len(target) == 2 and target != [-1, -1] and target[1] in (-1, feat) and
              (target[0] in (0, -1) or target[0] == batch or (target[0] == 1 and target[1] == feat)))
        if ok and int(a.get("allowzero", 0)) and 0 in target:
            ok = False
        if not ok:
            self.fail(node, idx, f"target shape {target} on a {list(self.shape)} tensor: only flattening "
                                 f"(N, ...) -> (N, {feat}) is supported")
        self._flatten(node)

    def _linear(self, node, idx, w, b):
        if len(self.shape) != 2:
            self.fail(node, idx, f"expects (N, features) input, got shape {self.shape}; flatten first")
        out_f, in_f = w.shape
        if in_f != self.shape[1]:
            self.fail(node, idx, f"weight of {in_f} inputs does not fit the {self.shape[1]} features before it")
        self.n_fc += 1
        self.last_kind_param = "Linear"
        self.add("Linear", f"fc{self.n_conv + self.n_fc}", node, dict(in_f=int(in_f), out_f=int(out_f)),
                 {"w": w, "b": b})
        self.shape = (1, int(out_f))

    def op_Gemm(self, node, idx):
        a = _attrs(node)
        if int(a.get("transA", 0)):
            self.fail(node, idx, "transA=1 is not supported")
        bmat = self.const(node, idx, node.input[1], "weight")
        if bmat.ndim != 2:
            self.fail(node, idx, f"weight of shape {tuple(bmat.shape)}, expected 2-D")
        w = self.weight(node, idx, bmat, "weight")
        w = w if int(a.get("transB", 0)) else np.ascontiguousarray(w.T)
        w = w * np.float32(a.get("alpha", 1.0)) if float(a.get("alpha", 1.0)) != 1.0 else w
        out_f = w.shape[0]
        if len(node.input) > 2 and node.input[2]:
            c = self.weight(node, idx, self.const(node, idx, node.input[2], "bias"), "bias")
            b = self._vector(node, idx, c, out_f, "bias C") * np.float32(a.get("beta", 1.0))
        else:
            b = np.zeros(out_f, np.float32)
        self._linear(node, idx, np.ascontiguousarray(w, np.float32), np.ascontiguousarray(b, np.float32))

    def op_MatMul(self, node, idx):
        if node.input[0] in self.consts:
            self.fail(node, idx, "only x @ W with a constant right-hand W is supported")
        bmat = self.const(node, idx, node.input[1], "weight")
        if bmat.ndim != 2:
            self.fail(node, idx, f"weight of shape {tuple(bmat.shape)}, expected 2-D")
        w = np.ascontiguousarray(self.weight(node, idx, bmat, "weight").T)
        self._linear(node, idx, w, np.zeros(w.shape[0], np.float32))

    def _vector(self, node, idx, c, n, what):
        """A bias-like constant of shape (), (1,), (n,), (1, n) [, (n, 1, 1), (1, n, 1, 1)] -> (n,)."""
        allowed = {(), (1,), (n,), (1, n), (n, 1, 1), (1, n, 1, 1), (1, 1), (1, 1, 1), (1, 1, 1, 1)}
        if tuple(c.shape) not in allowed:
            self.fail(node, idx, f"{what} of shape {tuple(c.shape)} is not a per-output vector of length {n}")
        return np.broadcast_to(c.reshape(-1), (n,)).astype(np.float32)

    def op_Add(self, node, idx):
        spec = self.last_param
        others = [i for i in node.input if i in self.consts]
        if spec is None or len(others) != 1:
            self.fail(node, idx, "Add is supported only as a constant bias right after a Conv, Gemm or MatMul")
        c = self.weight(node, idx, self.consts[others[0]], "addend")
        if spec["kind"] == "Linear":
            vec = self._vector(node, idx, c, spec["config"]["out_f"], "addend")
            if c.ndim > 2:
                self.fail(node, idx, f"addend of shape {tuple(c.shape)} does not fit a (N, features) tensor")
        else:
            f = spec["config"]["out_ch"]
            if tuple(c.shape) not in {(), (1,), (f, 1, 1), (1, f, 1, 1), (1, 1, 1), (1, 1, 1, 1)}:
                self.fail(node, idx, f"addend of shape {tuple(c.shape)} is not a per-channel bias of {f} maps")
            vec = np.broadcast_to(c.reshape(-1), (f,)).astype(np.float32)
        key = f"{spec['name']}.b"
        self.params[key] = (self.params[key] + vec).astype(np.float32)
        self.last_param = spec  # Add(Add(...)) keeps folding

    def op_Dropout(self, node, idx):
        a = _attrs(node)
        ratio = _f32(a.get("ratio", 0.5))
        if len(node.input) > 1 and node.input[1]:
            ratio = _f32(np.asarray(self.const(node, idx, node.input[1], "ratio")).reshape(-1)[0])
        if len(node.input) > 2 and node.input[2]:
            if bool(np.asarray(self.const(node, idx, node.input[2], "training_mode")).reshape(-1)[0]):
                self.fail(node, idx, "training_mode=true is not supported (inference graphs only)")
        if not 0.0 <= ratio < 1.0:
            self.fail(node, idx, f"ratio {ratio} must lie in [0, 1)")
        self.add("Dropout", f"drop{self._block()}", node, dict(p=ratio))
        self.last_param = None

    def op_Softmax(self, node, idx):
        axis = int(_attrs(node).get("axis", 1 if self.opset < 13 else -1))
        if len(self.shape) != 2 or axis not in (1, -1):
            self.fail(node, idx, f"only a Softmax over the classes of an (N, classes) tensor is supported "
                                 f"(axis {axis}, shape {self.shape})")
        self.softmax = True


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


def import_model(model, source="model", input_size=None, labels=None, mean=None, scale=None, std=None,
                 bgr=None, backend=None):
    """Convert a parsed ONNX ``ModelProto`` into ``(net, meta)`` (see :func:`load_onnx`)."""
    imp = _Importer(model, source, input_size).run()
    props = _parse_meta_props(model)
    specs, params = imp.specs, imp.params
    num_classes = imp.shape[1]
    in_ch = imp.in_channels or specs[0]["config"].get("in_ch", 3)

    # -- preprocessing: explicit arguments win over metadata written by export_onnx ----------
    saved_pre = json.loads(props["preprocessing"]) if "preprocessing" in props else {}
    if mean is None and "mean" in props:
        mean_arr = _decode_array(props["mean"])
    elif mean is not None:
        mean_arr = read_mean(mean, imp.input_size)
    else:
        mean_arr = None
    explicit_scale = scale is not None
    if scale is None:
        scale = saved_pre.get("scale", 1.0) if saved_pre else 1.0
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise UserError(f"--scale {scale}: expected a positive number")
    std_arr = None if std is None else (parse_triple(std, "--std") if isinstance(std, str)
                                       else np.asarray(std, np.float32).reshape(-1))
    if std_arr is not None and (std_arr.shape != (3,) or np.any(std_arr <= 0)):
        raise UserError(f"--std {std}: expected three positive numbers R,G,B")

    # -- fold channel order / std into the first convolution ---------------------------------
    first = specs[0]
    if bgr or std_arr is not None:
        if first["kind"] != "Conv2d" or first["config"]["groups"] != 1 or first["config"]["in_ch"] != 3:
            raise UserError(f"{source}: --bgr/--std need a first layer that is an ungrouped convolution of "
                            f"3 input channels")
        w = params[f"{first['name']}.w"]
        if std_arr is not None:
            # the ONNX input channel j is RGB channel j (or 2 - j when the model wants BGR)
            order = std_arr[::-1] if bgr else std_arr
            w = w / order.reshape(1, 3, 1, 1)
        if bgr:
            w = w[:, ::-1]
        params[f"{first['name']}.w"] = np.ascontiguousarray(w, np.float32)

    if labels is not None:
        classes = read_labels(labels, num_classes) if not isinstance(labels, (list, tuple)) else list(labels)
        if len(classes) != num_classes:
            raise UserError(f"{len(classes)} class names given, the model has {num_classes} outputs")
    elif "classes" in props:
        classes = json.loads(props["classes"])
    else:
        classes = [str(i) for i in range(num_classes)]

    overridden = mean is not None or std is not None or bool(bgr) or explicit_scale
    if saved_pre and not overridden and saved_pre.get("input_size") == imp.input_size:
        pre = dict(saved_pre)  # written by export_onnx: keep it as it was
    else:
        resize = imp.input_size
        if mean_arr is not None and mean_arr.ndim == 3:
            resize = int(mean_arr.shape[0])
        mean_mode = "none" if mean_arr is None else ("channel" if mean_arr.ndim == 1 else "pixel")
        pre = {"input_size": imp.input_size, "resize": resize, "pad": 0, "scale": scale,
               "mean_mode": mean_mode, "mean_shape": None if mean_arr is None else list(mean_arr.shape),
               "layout": "NCHW float32 = (centre_crop(resize(img)) - mean) * scale; img uint8 RGB 0..255",
               "channel_order": "RGB"}
        if std_arr is not None:
            pre["std_folded_into_conv1"] = [_f32(v) for v in std_arr]

    config = {"arch": "custom", "layers": specs, "input_size": imp.input_size, "in_channels": int(in_ch),
              "num_classes": int(num_classes)}
    net = _build(specs, config, params)
    if backend is not None:
        net.to(backend)
    source_info = {
        "format": "onnx", "file": os.path.basename(source), "producer": f"{model.producer_name} "
        f"{model.producer_version}".strip(), "ir_version": int(model.ir_version), "opset": imp.opset,
        "input": imp.input_name, "output": imp.output_name, "softmax_output": imp.softmax,
        "input_channel_order": "BGR" if bgr else "RGB", "layer_nodes": imp.nodes,
    }
    meta = {"classes": classes, "preprocessing": pre, "output": "logits", "source": source_info,
            "extra": {} if mean_arr is None else {"mean": mean_arr}}
    return net, meta


class _NoInit:
    """Stands in for the weight-init generator: the weights are overwritten right away, so skip
    drawing ~10^8 normals for a ZFNet-sized model."""

    @staticmethod
    def normal(loc=0.0, scale=1.0, size=None):
        return np.zeros(size, np.float32)


def _build(specs, config, params):
    """Sequential from layer specs with ``params`` loaded (shapes checked by ``load_state_dict``)."""
    from zfscratch.layers import layer_class
    from zfscratch.net import Sequential
    layers = []
    for i, spec in enumerate(specs):
        kw = dict(spec["config"])
        if spec["kind"] in ("Conv2d", "Linear"):
            kw["rng"] = _NoInit()
        elif spec["kind"] == "Dropout":
            kw["seed"] = i
        layers.append(layer_class(spec["kind"], spec["config"])(name=spec["name"], **kw))
    net = Sequential(layers, config=config)
    net.load_state_dict(params)
    return net


def load_onnx(path, input_size=None, labels=None, mean=None, scale=None, std=None, bgr=None, backend=None):
    """Import an ONNX model as a network of this engine.

    Parameters
    ----------
    path : str, the ``.onnx`` file
    input_size : int, needed only when the graph's input has no fixed height/width
    labels : labels file (one class name per line) or a list of names
    mean : ``"R,G,B"`` (0..255), a (3,) or (R, R, 3) array, or a file (see :func:`read_mean`)
    scale : float multiplying ``pixel - mean`` (default 1: raw 0..255 values, as Caffe models expect)
    std : ``"R,G,B"`` or 3 numbers dividing the scaled input per channel (folded into conv1)
    bgr : the ONNX model expects BGR input (conv1's input channels are reversed so the imported
        network takes RGB)
    backend : backend name for the returned network (default numpy)

    Returns
    -------
    net : Sequential with ``net.config = {"arch": "custom", "layers": specs, "input_size", ...}``
    meta : dict like :func:`zfscratch.io.load_weights` returns: ``classes``, ``preprocessing`` (the
        :class:`~zfscratch.preprocess.Preprocess` record), ``output`` ("logits"), ``source`` (what was
        imported: file, opset, input/output names, ``softmax_output``, layer -> node names) and
        ``extra`` ({"mean": array} when a mean is known).
    """
    model = read_model(path)
    return import_model(model, source=os.fspath(path), input_size=input_size, labels=labels, mean=mean,
                        scale=scale, std=std, bgr=bgr, backend=backend)


# ============================================================================= export
def _min_ir_version(opset):
    from onnx import helper
    try:
        return int(helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
    except Exception:  # pragma: no cover - very old onnx
        return 7


def to_model(net, meta=None, opset=DEFAULT_OPSET, softmax=False, input_name="input", output_name=None):
    """Build an ONNX ``ModelProto`` from a network (see :func:`export_onnx`)."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    from zfscratch.models import input_shape

    meta = dict(meta or {})
    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_EXPORT_OPSET <= int(opset) <= max_opset:
        raise UserError(f"--opset {opset}: expected {MIN_EXPORT_OPSET}..{max_opset}")
    opset = int(opset)
    try:
        c, s, _ = input_shape(net)
    except (KeyError, TypeError):
        raise UserError("the network's config has no input_size; cannot export it") from None
    shapes = net.output_shapes((1, c, s, s))
    state = net.state_dict()
    nodes, inits = [], []
    cur, in_shape = input_name, (1, c, s, s)
    for layer, (_, out_shape) in zip(net.layers, shapes):
        name, kind, cfg = layer.name, layer.kind, layer.config()
        out = f"{name}.out"
        if kind == "Conv2d":
            inits += [numpy_helper.from_array(state[f"{name}.w"].astype(np.float32), f"{name}.w"),
                      numpy_helper.from_array(state[f"{name}.b"].astype(np.float32), f"{name}.b")]
            p = cfg["pad"]
            nodes.append(helper.make_node("Conv", [cur, f"{name}.w", f"{name}.b"], [out], name=name,
                                          kernel_shape=[cfg["k"]] * 2, strides=[cfg["stride"]] * 2,
                                          pads=[p] * 4, dilations=[1, 1], group=cfg["groups"]))
        elif kind == "ReLU":
            nodes.append(helper.make_node("Relu", [cur], [out], name=name))
        elif kind == "MaxPool2d":
            nodes.append(_pool_node(helper, name, cur, out, cfg, in_shape[2], out_shape[2]))
        elif kind == "LocalContrastNorm":
            raise UserError(f"layer {name}: LocalContrastNorm (subtractive + divisive, Jarrett et al. 2009) has no "
                            f"ONNX operator; only the cross-channel LRN (LocalResponseNorm) can be exported")
        elif kind == "LocalResponseNorm":
            if cfg["size"] % 2 == 0:
                raise UserError(f"layer {name}: LRN size {cfg['size']} is even; ONNX centres even windows "
                                f"differently from this engine, so it cannot be exported exactly")
            nodes.append(helper.make_node("LRN", [cur], [out], name=name, size=cfg["size"], alpha=cfg["alpha"],
                                          beta=cfg["beta"], bias=cfg["k"]))
        elif kind == "Flatten":
            nodes.append(helper.make_node("Flatten", [cur], [out], name=name, axis=1))
        elif kind == "Linear":
            inits += [numpy_helper.from_array(state[f"{name}.w"].astype(np.float32), f"{name}.w"),
                      numpy_helper.from_array(state[f"{name}.b"].astype(np.float32), f"{name}.b")]
            nodes.append(helper.make_node("Gemm", [cur, f"{name}.w", f"{name}.b"], [out], name=name,
                                          transB=1))
        elif kind == "Dropout":
            if opset >= 12:
                inits.append(numpy_helper.from_array(np.asarray(cfg["p"], np.float32), f"{name}.ratio"))
                nodes.append(helper.make_node("Dropout", [cur, f"{name}.ratio"], [out], name=name))
            else:
                nodes.append(helper.make_node("Dropout", [cur], [out], name=name, ratio=cfg["p"]))
        else:
            raise UserError(f"layer {name} ({kind}) has no ONNX export")
        cur, in_shape = out, out_shape
    k = shapes[-1][1][1]
    out_name = output_name or ("probabilities" if softmax else "logits")
    if softmax:
        nodes.append(helper.make_node("Softmax", [cur], [out_name], name="softmax", axis=1))
    else:
        nodes[-1].output[0] = out_name
    graph = helper.make_graph(
        nodes, "zfscratch", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", c, s, s])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", k])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="zfscratch", ir_version=_min_ir_version(opset))
    from zfscratch import __version__
    model.producer_version = __version__
    model.doc_string = ("zfscratch network; input: RGB (pixel - mean) * scale, NCHW float32 (see metadata "
                        "zfscratch.preprocessing); output: " + ("softmax probabilities" if softmax else "logits"))
    props = {"output": "softmax" if softmax else "logits"}
    if meta.get("classes") is not None:
        props["classes"] = json.dumps(list(meta["classes"]))
    if meta.get("preprocessing") is not None:
        props["preprocessing"] = json.dumps(meta["preprocessing"], sort_keys=True)
    mean = (meta.get("extra") or {}).get("mean")
    if mean is not None:
        props["mean"] = _encode_array(np.asarray(mean))
    helper.set_model_props(model, {META_PREFIX + k: v for k, v in props.items()})
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # pragma: no cover - would be a bug in the exporter
        raise UserError(f"the exported graph fails the ONNX checker: {_one_line(e)}") from None
    return model


def _pool_node(helper, name, cur, out, cfg, h, ho):
    """MaxPool node with this engine's exact output size.

    ``ceil_mode=1`` is used when ONNX's ceil formula gives our size; otherwise (our ceil rule dropped a
    last window that would start in the padding) floor mode with explicit trailing pads.
    """
    k, s, p = cfg["k"], cfg["stride"], cfg.get("pad", 0)
    span = h + 2 * p - k
    if not cfg["ceil_mode"] or -(-span // s) + 1 == ho:
        return helper.make_node("MaxPool", [cur], [out], name=name, kernel_shape=[k, k], strides=[s, s],
                                pads=[p] * 4, ceil_mode=int(cfg["ceil_mode"]))
    q = (ho - 1) * s + k - h - p
    if q < 0 or (h + p + q - k) // s + 1 != ho:  # pragma: no cover - cannot happen for valid pools
        raise UserError(f"layer {name}: cannot express its pooling output size in ONNX")
    return helper.make_node("MaxPool", [cur], [out], name=name, kernel_shape=[k, k], strides=[s, s],
                            pads=[p, p, q, q], ceil_mode=0)


def export_onnx(net, path, meta=None, opset=DEFAULT_OPSET, softmax=False, input_name="input", output_name=None):
    """Write a network as an ONNX model, atomically.

    Parameters
    ----------
    net : Sequential of Conv2d/ReLU/MaxPool2d/LocalResponseNorm/Flatten/Linear/Dropout layers with
        ``config["input_size"]`` (every model of this engine, and imported ones)
    path : output ``.onnx`` file
    meta : weights metadata (``classes``, ``preprocessing``, ``extra["mean"]``), stored in the model's
        ``metadata_props`` under ``zfscratch.*`` so :func:`load_onnx` restores it
    opset : ONNX opset (10 .. what the installed onnx knows; default 13)
    softmax : append a Softmax (output ``probabilities``) instead of returning logits

    Returns the ``ModelProto``. The graph takes ``input`` (N, C, S, S) RGB float32, preprocessed as
    the metadata says, and gives ``logits`` (N, classes).
    """
    from zfscratch.util.files import atomic_write_bytes
    model = to_model(net, meta=meta, opset=opset, softmax=softmax, input_name=input_name,
                     output_name=output_name)
    try:
        data = model.SerializeToString()
    except ValueError as e:  # protobuf's 2 GiB limit
        raise UserError(f"cannot serialize the model to {path}: {_one_line(e)}") from None
    atomic_write_bytes(path, data)
    return model
