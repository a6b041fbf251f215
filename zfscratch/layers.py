"""Layers with explicit forward and backward passes.

One contract for every layer:

* ``forward(x, train=False) -> y`` computes the output and caches what ``backward`` needs;
* ``backward(dy) -> dx`` returns the gradient with respect to the input of the last forward call
  and **accumulates** parameter gradients into ``self.grads`` (call ``zero_grads()`` between steps).

Parameters live in ``self.params`` (``"w"``, ``"b"``) as arrays of the layer's backend; the compute
goes through ``self.backend.kernels`` (docs/design.md section 3) so that the same layer runs on NumPy, Numba or CuPy.
Shapes are validated on the way in, with errors that name the layer and both shapes.
"""
from __future__ import annotations

import numpy as np

from zfscratch import kernels
from zfscratch.backend import get_backend
from zfscratch.kernels.shapes import padded_pool_output_size  # noqa: F401  (re-exported: its old home)


class Layer:
    """Base class. Subclasses set ``kind``, fill ``params`` in ``__init__`` and implement forward/backward."""

    kind = "Layer"

    def __init__(self, name=None):
        self.name = name or self.kind.lower()
        self.backend = get_backend("numpy")
        self.params = {}
        self.grads = {}

    # -- parameters -----------------------------------------------------------------------
    def _add_param(self, key, value):
        self.params[key] = value
        self.grads[key] = np.zeros_like(value)

    def zero_grads(self):
        """Set every parameter gradient to zero."""
        for g in self.grads.values():
            g[...] = 0

    def set_backend(self, backend, dtype=None):
        """Move parameters (and gradients) to ``backend``, optionally casting to ``dtype``."""
        self.backend = get_backend(backend)
        for key in list(self.params):
            dt = dtype or self.params[key].dtype
            self.params[key] = self.backend.to_device(self.backend.to_host(self.params[key]), dt)
            self.grads[key] = self.backend.xp.zeros_like(self.params[key])
        self._clear_cache()
        return self

    def _clear_cache(self):
        """Forget what the last forward cached (arrays of the old backend)."""

    def config(self):
        """Constructor arguments, JSON-serializable (rebuilds the layer with ``LAYER_KINDS``)."""
        return {}

    def forward(self, x, train=False):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dy):  # pragma: no cover - abstract
        raise NotImplementedError

    def output_shape(self, in_shape):
        """Shape of the output for an input of shape ``in_shape`` (batch included)."""
        return tuple(in_shape)

    def _check_input(self, x, ndim, channels=None, what="channels"):
        if x.ndim != ndim or (channels is not None and x.shape[1] != channels):
            want = "(N, C, H, W)" if ndim == 4 else "(N, F)"
            if channels is not None:
                want = want.replace("C" if ndim == 4 else "F", str(channels))
            raise ValueError(f"layer {self.name} ({self.kind}): expected input {want}, got {tuple(x.shape)}")

    def _check_grad(self, dy, expected):
        if tuple(dy.shape) != tuple(expected):
            raise ValueError(f"layer {self.name} ({self.kind}): gradient shape {tuple(dy.shape)} "
                             f"does not match output shape {tuple(expected)}")

    def __repr__(self):
        cfg = ", ".join(f"{k}={v}" for k, v in self.config().items())
        return f"{self.kind}({self.name}: {cfg})"


class Conv2d(Layer):
    """2-D convolution (cross-correlation), optionally grouped.

    Parameters
    ----------
    in_ch, out_ch : int
    k : int, square kernel size
    stride, pad : int
    groups : int, channels split into ``groups`` independent convolutions (AlexNet/CaffeNet use 2);
        done in the layer by slicing, so the kernel contract is unchanged.
    init_std : float, weights drawn from N(0, init_std^2); biases start at ``init_bias``.

    Shapes: x (N, in_ch, H, W) -> y (N, out_ch, Ho, Wo), ``w : (out_ch, in_ch/groups, k, k)``.
    """

    kind = "Conv2d"

    def __init__(self, in_ch, out_ch, k, stride=1, pad=0, groups=1, name=None, init_std=0.01,
                 init_bias=0.0, rng=None, dtype=np.float32):
        super().__init__(name)
        if in_ch % groups or out_ch % groups:
            raise ValueError(f"layer {self.name}: channels {in_ch}->{out_ch} not divisible by groups={groups}")
        self.in_ch, self.out_ch, self.k = int(in_ch), int(out_ch), int(k)
        self.stride, self.pad, self.groups = int(stride), int(pad), int(groups)
        rng = rng if rng is not None else np.random.default_rng(0)
        shape = (out_ch, in_ch // groups, k, k)
        # init_std=0 allocates zeros without drawing (fast rebuild before loading saved weights)
        w = rng.normal(0.0, init_std, size=shape).astype(dtype) if init_std else np.zeros(shape, dtype)
        self._add_param("w", w)
        self._add_param("b", np.full(out_ch, init_bias, dtype=dtype))
        self.need_dx = True
        self._x = None

    def config(self):
        return dict(in_ch=self.in_ch, out_ch=self.out_ch, k=self.k, stride=self.stride, pad=self.pad,
                    groups=self.groups)

    def _clear_cache(self):
        self._x = None

    def output_shape(self, in_shape):
        from zfscratch.kernels.shapes import conv_output_size
        n, _, h, w = in_shape
        return (n, self.out_ch, conv_output_size(h, self.k, self.stride, self.pad),
                conv_output_size(w, self.k, self.stride, self.pad))

    def _group_slices(self):
        ci, co = self.in_ch // self.groups, self.out_ch // self.groups
        return [(slice(g * ci, (g + 1) * ci), slice(g * co, (g + 1) * co)) for g in range(self.groups)]

    def forward(self, x, train=False):
        self._check_input(x, 4, self.in_ch)
        kern, w, b = self.backend.kernels, self.params["w"], self.params["b"]
        self._x = x
        if self.groups == 1:
            return kern.conv2d_forward(x, w, b, self.stride, self.pad)
        xp = self.backend.xp
        outs = [kern.conv2d_forward(xp.ascontiguousarray(x[:, si]), w[so], b[so], self.stride, self.pad)
                for si, so in self._group_slices()]
        return xp.concatenate(outs, axis=1)

    def backward(self, dy):
        x = self._x
        self._check_grad(dy, self.output_shape(x.shape))
        kern, w = self.backend.kernels, self.params["w"]
        if self.groups == 1:
            dx, dw, db = kern.conv2d_backward(dy, x, w, self.stride, self.pad, need_dx=self.need_dx)
            self.grads["w"] += dw
            self.grads["b"] += db
            return dx
        xp = self.backend.xp
        dxs = []
        for si, so in self._group_slices():
            dxg, dw, db = kern.conv2d_backward(xp.ascontiguousarray(dy[:, so]), xp.ascontiguousarray(x[:, si]),
                                               xp.ascontiguousarray(w[so]), self.stride, self.pad,
                                               need_dx=self.need_dx)
            self.grads["w"][so] += dw
            self.grads["b"][so] += db
            dxs.append(dxg)
        return xp.concatenate(dxs, axis=1) if self.need_dx else None

    def backward_data(self, dy, x_shape):
        """Transposed convolution of ``dy`` with this layer's weights (no bias): the DeconvNet's filtering.

        dy : (N, out_ch, Ho, Wo) -> (N, in_ch, H, W) for ``x_shape = (N, in_ch, H, W)``.
        """
        kern, w, xp = self.backend.kernels, self.params["w"], self.backend.xp
        if self.groups == 1:
            return kern.conv2d_backward_data(dy, w, tuple(x_shape), self.stride, self.pad)
        n, _, h, ww = x_shape
        parts = [kern.conv2d_backward_data(xp.ascontiguousarray(dy[:, so]), xp.ascontiguousarray(w[so]),
                                           (n, self.in_ch // self.groups, h, ww), self.stride, self.pad)
                 for _, so in self._group_slices()]
        return xp.concatenate(parts, axis=1)


class ReLU(Layer):
    """Rectified linear unit, ``y = max(x, 0)``. Any shape."""

    kind = "ReLU"

    def __init__(self, name=None):
        super().__init__(name)
        self._y = None

    def _clear_cache(self):
        self._y = None

    def forward(self, x, train=False):
        y = self.backend.kernels.relu_forward(x)
        self._y = y  # y > 0 exactly where x > 0, so the output serves as the mask
        return y

    def backward(self, dy):
        self._check_grad(dy, self._y.shape)
        return self.backend.kernels.relu_backward(dy, self._y)


class MaxPool2d(Layer):
    """Max-pooling that records its switches (the argmax positions) for backward and the DeconvNet.

    Parameters
    ----------
    k, stride : int
    ceil_mode : bool, default True (ZFNet's 3x3 stride-2 pools; docs/design.md section 4 output size rule)
    pad : int, default 0. Padding of ``-inf`` on every side (PyTorch's ``MaxPool2d(padding=...)``;
        used by imported ONNX models). Output size: floor mode ``(H + 2*pad - k) // stride + 1``;
        ceil mode ``ceil((H + 2*pad - k) / stride) + 1``, minus one if the last window would start
        in the bottom padding. ``pad`` must be smaller than ``k``. With ``pad=0`` (the default) the
        layer is exactly the unpadded pool of the kernel contract (sizes: ``kernels/shapes.py``).

    After ``forward``: ``switches : (N, C, Ho, Wo) int32`` flat ``h*W + w`` indices into the
    *unpadded* input plane and ``x_shape`` (the unpadded input shape), so that
    :meth:`unpool` (``maxpool_backward`` with this layer's geometry) is both the backward pass and the
    DeconvNet's unpooling.
    """

    kind = "MaxPool2d"

    def __init__(self, k, stride=None, ceil_mode=True, name=None, pad=0):
        super().__init__(name)
        self.k, self.stride, self.ceil_mode = int(k), int(stride or k), bool(ceil_mode)
        self.pad = int(pad or 0)
        if not 0 <= self.pad < self.k:
            raise ValueError(f"layer {self.name}: max-pool pad must lie in [0, k={self.k}), got {pad}")
        self.switches = None
        self.x_shape = None

    def config(self):
        cfg = dict(k=self.k, stride=self.stride, ceil_mode=self.ceil_mode)
        if self.pad:
            cfg["pad"] = self.pad
        return cfg

    def _clear_cache(self):
        self.switches = None

    def _size(self, h):
        return padded_pool_output_size(h, self.k, self.stride, self.pad, self.ceil_mode)

    def output_shape(self, in_shape):
        n, c, h, w = in_shape
        return (n, c, self._size(h), self._size(w))

    def forward(self, x, train=False):
        self._check_input(x, 4)
        if self.pad:
            y, self.switches = self._forward_padded(x)
        else:
            y, self.switches = self.backend.kernels.maxpool_forward(x, self.k, self.stride, self.ceil_mode)
        self.x_shape = tuple(x.shape)
        return y

    def _forward_padded(self, x):
        """Pool a ``-inf``-padded copy that holds exactly the output's windows (floor mode), then map
        the switches back to the unpadded plane. Ties: first maximum in row-major window order."""
        xp, p = self.backend.xp, self.pad
        n, c, h, w = x.shape
        ho, wo = self._size(h), self._size(w)
        lh, lw = (ho - 1) * self.stride + self.k, (wo - 1) * self.stride + self.k
        hh, ww = min(h, lh - p), min(w, lw - p)
        buf = xp.full((n, c, lh, lw), -xp.inf, dtype=x.dtype)
        buf[:, :, p:p + hh, p:p + ww] = x[:, :, :hh, :ww]
        y, sw = self.backend.kernels.maxpool_forward(buf, self.k, self.stride, False)
        r = xp.clip(sw // lw - p, 0, h - 1)  # clipping matters only for all -inf windows
        q = xp.clip(sw % lw - p, 0, w - 1)
        return y, (r * w + q).astype(xp.int32)

    def backward(self, dy):
        self._check_grad(dy, self.switches.shape)
        return self.unpool(dy, self.switches, self.x_shape)

    def unpool(self, dy, switches, x_shape):
        """Route ``dy`` (N, C, Ho, Wo) to ``switches`` in planes of ``x_shape`` (sums where windows overlap),
        handing the kernel this layer's geometry (k, stride, pad)."""
        return self.backend.kernels.maxpool_backward(dy, switches, x_shape, self.k, self.stride, self.pad)


class LocalResponseNorm(Layer):
    """Cross-channel local *response* normalization (AlexNet/Caffe LRN).

    ``scale = k + alpha/size * sum_{c' in window(c)} x_{c'}^2``, ``y = x * scale^-beta``; window of
    ``size`` channels centred on c, zero-padded at the ends (docs/design.md, "Numerical conventions").
    ZFNet: 5, 1e-4, 0.75, 2. This is what most ZFNet re-implementations use for the paper's
    "contrast normalized across feature maps"; :class:`LocalContrastNorm` is the subtractive and
    divisive normalization of the paper's lineage (Jarrett et al. 2009).

    Weights files written before this layer had its own name call it ``LocalContrastNorm`` (with
    ``alpha``, ``beta``, ``k`` in its config); :func:`layer_class` still reads them as this layer.
    """

    kind = "LocalResponseNorm"

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0, name=None):
        super().__init__(name)
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)
        self._cache = None

    def config(self):
        return dict(size=self.size, alpha=self.alpha, beta=self.beta, k=self.k)

    def _clear_cache(self):
        self._cache = None

    def forward(self, x, train=False):
        self._check_input(x, 4)
        y, scale = self.backend.kernels.lrn_forward(x, self.size, self.alpha, self.beta, self.k)
        self._cache = (x, y, scale)
        return y

    def backward(self, dy):
        x, y, scale = self._cache
        self._check_grad(dy, x.shape)
        return self.backend.kernels.lrn_backward(dy, x, y, scale, self.size, self.alpha, self.beta, self.k)


class LocalContrastNorm(Layer):
    """Local contrast normalization (Jarrett, Kavukcuoglu, Ranzato & LeCun 2009): subtractive, then divisive.

    Across all maps and a Gaussian ``size x size`` spatial window ``w`` (normalized to sum to one
    over the window and the C maps, renormalized at the borders by the weight inside the map)::

        v[c, i, j] = x[c, i, j] - sum_{c', p, q} w[p, q] x[c', i+p, j+q]
        sig[i, j]  = sqrt(sum_{c', p, q} w[p, q] v[c', i+p, j+q]^2)
        y[c, i, j] = v[c, i, j] / max(c_n, sig[i, j]),   c_n = max(mean_ij sig, floor)   (per image)

    Parameters
    ----------
    size : int, odd window side (at most the map's height and width)
    sigma : float > 0, Gaussian standard deviation in pixels
    floor : float > 0, lower bound of ``c_n`` (keeps flat images finite)

    Shapes: x, y (N, C, H, W). The backward pass follows the ``max`` switches (see
    ``kernels.reference.lcn_backward``).
    """

    kind = "LocalContrastNorm"

    def __init__(self, size=5, sigma=1.0, floor=1e-4, name=None):
        super().__init__(name)
        try:
            self.size, self.sigma, self.floor = int(size), float(sigma), float(floor)
        except (TypeError, ValueError):
            raise ValueError(f"layer {self.name} (LocalContrastNorm): size, sigma and floor must be numbers, "
                             f"got {size!r}, {sigma!r}, {floor!r}") from None
        if self.size < 1 or self.size % 2 == 0 or self.size != size:
            raise ValueError(f"layer {self.name} (LocalContrastNorm): window size must be an odd integer >= 1, "
                             f"got {size!r}")
        if not (np.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"layer {self.name} (LocalContrastNorm): sigma must be a positive number, got {sigma!r}")
        if not (np.isfinite(self.floor) and self.floor > 0):
            raise ValueError(f"layer {self.name} (LocalContrastNorm): the divisor floor must be a positive number, "
                             f"got {floor!r}")
        self._cache = None

    def config(self):
        return dict(size=self.size, sigma=self.sigma, floor=self.floor)

    def _clear_cache(self):
        self._cache = None

    def output_shape(self, in_shape):
        if len(in_shape) == 4 and (self.size > in_shape[2] or self.size > in_shape[3]):
            raise ValueError(f"layer {self.name} (LocalContrastNorm): window {self.size}x{self.size} does not fit "
                             f"its {in_shape[2]}x{in_shape[3]} input maps")
        return tuple(in_shape)

    def forward(self, x, train=False):
        self._check_input(x, 4)
        self.output_shape(x.shape)
        y, v, sig, mean_sig = self.backend.kernels.lcn_forward(x, self.size, self.sigma, self.floor)
        self._cache = (x.shape, v, sig, mean_sig)
        return y

    def backward(self, dy):
        shape, v, sig, mean_sig = self._cache
        self._check_grad(dy, shape)
        return self.backend.kernels.lcn_backward(dy, v, sig, mean_sig, self.size, self.sigma, self.floor)


#: normalization layer kinds (the DeconvNet passes them through unchanged, paper section 2.1)
NORM_KINDS = ("LocalResponseNorm", "LocalContrastNorm")


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), in C-order (matches PyTorch/ONNX flattening)."""

    kind = "Flatten"

    def forward(self, x, train=False):
        self._shape = tuple(x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._shape)

    def output_shape(self, in_shape):
        return (in_shape[0], int(np.prod(in_shape[1:])))


class Linear(Layer):
    """Fully connected layer ``y = x @ w.T + b``.

    Shapes: x (N, in_f) -> y (N, out_f); ``w : (out_f, in_f)``, ``b : (out_f,)``.
    """

    kind = "Linear"

    def __init__(self, in_f, out_f, name=None, init_std=0.01, init_bias=0.0, rng=None, dtype=np.float32):
        super().__init__(name)
        self.in_f, self.out_f = int(in_f), int(out_f)
        rng = rng if rng is not None else np.random.default_rng(0)
        self._add_param("w", rng.normal(0.0, init_std, size=(out_f, in_f)).astype(dtype) if init_std
                        else np.zeros((out_f, in_f), dtype))
        self._add_param("b", np.full(out_f, init_bias, dtype=dtype))
        self._x = None

    def config(self):
        return dict(in_f=self.in_f, out_f=self.out_f)

    def _clear_cache(self):
        self._x = None

    def output_shape(self, in_shape):
        return (in_shape[0], self.out_f)

    def forward(self, x, train=False):
        self._check_input(x, 2, self.in_f)
        self._x = x
        fused = kernels.optional(self.backend.kernels, "linear_forward")
        if fused is not None:  # numba: row blocks of w, the bias added in the same pass
            return fused(x, self.params["w"], self.params["b"])
        y = self._mm(x, self.params["w"].T)
        y += self.params["b"]
        return y

    def _mm(self, a, b):
        """Matrix product through the backend's ``matmul`` when it has one (the numba backend splits
        GEMMs over its own threads, avoiding OpenBLAS's spin-waiting threads), else ``@``."""
        mm = kernels.optional(self.backend.kernels, "matmul")
        return mm(a, b) if mm is not None else a @ b

    def backward(self, dy):
        self._check_grad(dy, (self._x.shape[0], self.out_f))
        # the backend's fused pass when it has one (numba: dW accumulated in place and dx from one read of w)
        fused = kernels.optional(self.backend.kernels, "linear_backward")
        if fused is not None:
            return fused(dy, self._x, self.params["w"], self.grads["w"], self.grads["b"])
        self.grads["w"] += self._mm(dy.T, self._x)
        self.grads["b"] += dy.sum(axis=0)
        return self._mm(dy, self.params["w"])


class Dropout(Layer):
    """Inverted dropout: in training, zero each unit with probability ``p`` and scale the rest by
    ``1/(1-p)``; identity in evaluation. The mask comes from a seeded NumPy generator whose state is
    part of checkpoints (exact resume) -- or, when :attr:`sample_rng` is set (a
    :class:`zfscratch.samplerng.SampleRNG` for the batch, see ``Sequential.set_sample_rng``), from
    each sample's own stream keyed by its global index and epoch, so that the masks do not depend on
    how a global batch is split over data-parallel workers."""

    kind = "Dropout"

    def __init__(self, p=0.5, name=None, seed=0):
        super().__init__(name)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"layer {self.name}: dropout p must be in [0, 1), got {p}")
        self.p = float(p)
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        self.sample_rng = None
        self._mask = None

    def config(self):
        return dict(p=self.p)

    def _clear_cache(self):
        self._mask = None

    def forward(self, x, train=False):
        if not train or self.p == 0.0:
            self._mask = None
            return x
        if self.sample_rng is not None:
            if len(self.sample_rng) != x.shape[0]:
                raise ValueError(f"layer {self.name}: sample keys for {len(self.sample_rng)} samples, batch "
                                 f"of {x.shape[0]}")
            u = self.sample_rng.stream(self.seed).random(x.shape)
        else:
            u = self.rng.random(x.shape)
        keep = (u >= self.p).astype(np.dtype(x.dtype)) / np.dtype(x.dtype).type(1 - self.p)
        self._mask = self.backend.to_device(keep)
        return x * self._mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask


class SoftmaxCrossEntropy:
    """Softmax + mean negative log-likelihood. Not a Sequential layer: the loss at the end of the net.

    ``forward(logits (N, K), labels (N,) int) -> loss`` (float) and stores ``probs (N, K)``;
    ``backward() -> dlogits = (probs - onehot(labels)) / N``.
    """

    kind = "SoftmaxCrossEntropy"

    def __init__(self, backend=None):
        self.backend = get_backend(backend or "numpy")
        self.probs = None
        self._labels = None

    def forward(self, logits, labels):
        if logits.ndim != 2 or labels.shape != (logits.shape[0],):
            raise ValueError(f"loss: expected logits (N, K) and labels (N,), got {tuple(logits.shape)} "
                             f"and {tuple(labels.shape)}")
        labels = self.backend.to_device(labels, np.int64)
        xp = self.backend.xp
        if int(xp.min(labels)) < 0 or int(xp.max(labels)) >= logits.shape[1]:
            raise ValueError(f"loss: labels must lie in [0, {logits.shape[1]}), got range "
                             f"[{int(xp.min(labels))}, {int(xp.max(labels))}]")
        loss, self.probs = self.backend.kernels.softmax_xent(logits, labels)
        self._labels = labels
        return loss

    def backward(self):
        n = self.probs.shape[0]
        d = self.probs.copy()
        d[self.backend.xp.arange(n), self._labels] -= 1
        d /= n
        return d


#: kind -> class, used to rebuild networks from their saved configuration
LAYER_KINDS = {cls.kind: cls for cls in (Conv2d, ReLU, MaxPool2d, LocalResponseNorm, LocalContrastNorm, Flatten,
                                         Linear, Dropout)}


def layer_class(kind, config=None):
    """The layer class for a saved ``kind`` and its ``config``; None for an unknown kind.

    A ``LocalContrastNorm`` whose config holds ``alpha``/``beta``/``k`` comes from a file written when
    the cross-channel LRN had that name: it is read as :class:`LocalResponseNorm` (deprecated alias).
    """
    if kind == "LocalContrastNorm" and config and any(key in config for key in ("alpha", "beta", "k")):
        return LocalResponseNorm
    return LAYER_KINDS.get(kind)
