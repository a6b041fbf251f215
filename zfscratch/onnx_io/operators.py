"""The operators of the ONNX import, one method per operator (``op_<OpType>``): each checks its
node against the current tensor shape and appends the equivalent layer spec.

A mixin of :class:`~zfscratch.onnx_io.importer._Importer`, which holds the state (``shape``, ``consts``,
``specs``, ``params``) and the helpers they call (``fail``, ``const``, ``weight``, ``add``)."""
from __future__ import annotations

import numpy as np

from .reading import _attrs, _f32


SUPPORTED_OPS = ("Conv", "Relu", "MaxPool", "LRN", "Gemm", "MatMul", "Add", "Flatten", "Reshape",
                 "Dropout", "Softmax", "Identity", "Constant", "AveragePool (1x1, stride 1: identity)")


class _Operators:
    """``op_<OpType>(node, idx)`` for every supported operator, and the attribute checks they share."""

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

