"""Reference kernels: plain, readable NumPy. The oracle every fast backend is tested against.

Every function follows the kernel contract of DESIGN §3 and works in float32 and float64 (the
output dtype is the input dtype). Clarity beats speed here: convolution is im2col + one matmul,
pooling loops over output positions, LRN sums a channel window explicitly.

Conventions (DESIGN §4)
-----------------------
* Layout NCHW. Convolution is cross-correlation with weights ``w : (F, C, kh, kw)``; ``stride``
  and ``pad`` are ints (same for both axes), padding is zeros.
* Max-pool has no padding; ``ceil_mode`` lets the last window hang over the edge, clipped to the
  input. Ties go to the first maximum in row-major order of the window. ``switches`` are int32
  flat indices ``h * W + w`` into each (n, c) input plane.
* LRN is cross-channel: ``scale = k + alpha/size * sum_{c' in window(c)} x_{c'}^2`` and
  ``y = x * scale**-beta``, window ``[c - size//2, c + (size-1)//2]`` clipped to the channels.
"""
from __future__ import annotations

import numpy as np

NAME = "reference"


# ----------------------------------------------------------------------------- sizes
def conv_output_size(h, k, stride, pad):
    """Output length of a convolution along one axis: ``(h + 2*pad - k) // stride + 1``."""
    out = (h + 2 * pad - k) // stride + 1
    if out < 1:
        raise ValueError(f"convolution of size {k} stride {stride} pad {pad} does not fit input of size {h}")
    return out


def pool_output_size(h, k, stride, ceil_mode):
    """Output length of a max-pool along one axis (no padding).

    Ceil mode: ``ceil((h - k) / stride) + 1``, minus one if the last window would start outside the
    input (Caffe/PyTorch rule). Floor mode: ``(h - k) // stride + 1``.
    """
    if ceil_mode:
        out = -(-(h - k) // stride) + 1
        if (out - 1) * stride >= h:
            out -= 1
    else:
        out = (h - k) // stride + 1
    if out < 1:
        raise ValueError(f"max-pool of size {k} stride {stride} does not fit input of size {h}")
    return out


# ----------------------------------------------------------------------------- convolution
def _im2col(x, kh, kw, stride, pad):
    """Patches of ``x``: (N, C, H, W) -> cols (N, C*kh*kw, Ho*Wo), plus (Ho, Wo)."""
    n, c, h, w = x.shape
    ho = conv_output_size(h, kh, stride, pad)
    wo = conv_output_size(w, kw, stride, pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
    return cols.reshape(n, c * kh * kw, ho * wo), ho, wo


def _col2im(cols, x_shape, kh, kw, stride, pad, ho, wo):
    """Adjoint of :func:`_im2col`: scatter-add patches back. cols (N, C*kh*kw, Ho*Wo) -> (N, C, H, W)."""
    n, c, h, w = x_shape
    cols = cols.reshape(n, c, kh, kw, ho, wo)
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride] += cols[:, :, i, j]
    return xp[:, :, pad:pad + h, pad:pad + w]


def conv2d_forward(x, w, b, stride, pad):
    """Cross-correlation.

    Parameters
    ----------
    x : (N, C, H, W) float
    w : (F, C, kh, kw) float
    b : (F,) float or None
    stride, pad : int

    Returns
    -------
    y : (N, F, Ho, Wo) float
    """
    f, c, kh, kw = w.shape
    cols, ho, wo = _im2col(x, kh, kw, stride, pad)
    y = np.matmul(w.reshape(f, -1), cols)  # (N, F, Ho*Wo)
    if b is not None:
        y += b.reshape(1, f, 1)
    return y.reshape(x.shape[0], f, ho, wo)


def conv2d_backward(dy, x, w, stride, pad, need_dx=True):
    """Gradients of :func:`conv2d_forward`.

    Parameters
    ----------
    dy : (N, F, Ho, Wo) float
    x : (N, C, H, W) float
    w : (F, C, kh, kw) float
    need_dx : bool, when False ``dx`` is not computed and None is returned in its place (the first
        layer of a network needs no input gradient).

    Returns
    -------
    dx : (N, C, H, W) or None, dw : (F, C, kh, kw), db : (F,)
    """
    f, c, kh, kw = w.shape
    cols, ho, wo = _im2col(x, kh, kw, stride, pad)
    dy2 = dy.reshape(dy.shape[0], f, ho * wo)
    dw = np.einsum("nfp,nkp->fk", dy2, cols).reshape(w.shape)
    db = dy2.sum(axis=(0, 2))
    dx = conv2d_backward_data(dy, w, x.shape, stride, pad) if need_dx else None
    return dx, dw.astype(x.dtype, copy=False), db.astype(x.dtype, copy=False)


def conv2d_backward_data(dy, w, x_shape, stride, pad):
    """Gradient with respect to the input only, i.e. the transposed convolution.

    Parameters
    ----------
    dy : (N, F, Ho, Wo) float
    w : (F, C, kh, kw) float
    x_shape : tuple (N, C, H, W)

    Returns
    -------
    dx : (N, C, H, W) float
    """
    f, c, kh, kw = w.shape
    n, _, ho, wo = dy.shape
    dcols = np.matmul(w.reshape(f, -1).T, dy.reshape(n, f, ho * wo))  # (N, C*kh*kw, Ho*Wo)
    return _col2im(dcols, tuple(x_shape), kh, kw, stride, pad, ho, wo)


# ----------------------------------------------------------------------------- max-pool
def maxpool_forward(x, k, stride, ceil_mode):
    """Max-pool with switches.

    Parameters
    ----------
    x : (N, C, H, W) float
    k, stride : int
    ceil_mode : bool

    Returns
    -------
    y : (N, C, Ho, Wo) float
    switches : (N, C, Ho, Wo) int32, flat index ``h * W + w`` of the winner in its input plane
    """
    n, c, h, w = x.shape
    ho = pool_output_size(h, k, stride, ceil_mode)
    wo = pool_output_size(w, k, stride, ceil_mode)
    y = np.empty((n, c, ho, wo), dtype=x.dtype)
    sw = np.empty((n, c, ho, wo), dtype=np.int32)
    for i in range(ho):
        h0, h1 = i * stride, min(i * stride + k, h)
        for j in range(wo):
            w0, w1 = j * stride, min(j * stride + k, w)
            win = x[:, :, h0:h1, w0:w1].reshape(n, c, -1)
            arg = np.argmax(win, axis=2)  # first maximum in row-major order
            y[:, :, i, j] = np.take_along_axis(win, arg[..., None], axis=2)[..., 0]
            ww = w1 - w0
            sw[:, :, i, j] = (h0 + arg // ww) * w + (w0 + arg % ww)
    return y, sw


def maxpool_backward(dy, switches, x_shape):
    """Route ``dy`` to the switch positions (sums where windows overlap). Also the DeconvNet's unpooling.

    Parameters
    ----------
    dy : (N, C, Ho, Wo) float
    switches : (N, C, Ho, Wo) int32
    x_shape : tuple (N, C, H, W)

    Returns
    -------
    dx : (N, C, H, W) float
    """
    n, c, h, w = x_shape
    dx = np.zeros((n * c, h * w), dtype=dy.dtype)
    rows = np.repeat(np.arange(n * c), dy.shape[2] * dy.shape[3])
    np.add.at(dx, (rows, switches.reshape(-1).astype(np.int64)), dy.reshape(-1))
    return dx.reshape(n, c, h, w)


# ----------------------------------------------------------------------------- ReLU
def relu_forward(x):
    """``y = max(x, 0)``. x : (...) float -> y : same shape."""
    return np.maximum(x, 0).astype(x.dtype, copy=False)


def relu_backward(dy, x):
    """``dx = dy where x > 0 else 0``. dy, x : same shape."""
    return np.where(x > 0, dy, 0).astype(dy.dtype, copy=False)


# ----------------------------------------------------------------------------- LRN
def _window_sum(a, lo, hi):
    """``out[:, c] = sum_{c' = c-lo .. c+hi, clipped} a[:, c']`` for a (N, C, H, W) array."""
    c = a.shape[1]
    out = np.zeros_like(a)
    for ch in range(c):
        out[:, ch] = a[:, max(0, ch - lo):min(c, ch + hi + 1)].sum(axis=1)
    return out


def lrn_forward(x, size, alpha, beta, k):
    """Cross-channel local response (contrast) normalization.

    Parameters
    ----------
    x : (N, C, H, W) float
    size : int, channels in the window; alpha, beta, k : float

    Returns
    -------
    y : (N, C, H, W) float, ``x * scale**-beta``
    scale : (N, C, H, W) float, ``k + alpha/size * window_sum(x**2)``
    """
    scale = k + (alpha / size) * _window_sum(x * x, size // 2, (size - 1) // 2)
    scale = scale.astype(x.dtype, copy=False)
    return (x * scale ** -beta).astype(x.dtype, copy=False), scale


def lrn_backward(dy, x, y, scale, size, alpha, beta, k):
    """Gradient of :func:`lrn_forward`.

    ``dx = dy*scale**-beta - (2*alpha*beta/size) * x * window_sum^T(dy*y/scale)`` where the transposed
    window of channel c is ``[c - (size-1)//2, c + size//2]`` (the channels whose window holds c).

    Parameters
    ----------
    dy, x, y, scale : (N, C, H, W) float

    Returns
    -------
    dx : (N, C, H, W) float
    """
    t = _window_sum(dy * y / scale, (size - 1) // 2, size // 2)
    dx = dy * scale ** -beta - (2.0 * alpha * beta / size) * x * t
    return dx.astype(dy.dtype, copy=False)


# ----------------------------------------------------------------------------- softmax
def softmax_xent(logits, labels):
    """Softmax cross-entropy, mean over the batch.

    Parameters
    ----------
    logits : (N, K) float
    labels : (N,) int

    Returns
    -------
    loss : float, mean negative log-likelihood
    probs : (N, K) float, softmax of the logits; the loss gradient is ``(probs - onehot) / N``
    """
    z = logits - logits.max(axis=1, keepdims=True)
    ez = np.exp(z)
    s = ez.sum(axis=1, keepdims=True)
    probs = (ez / s).astype(logits.dtype, copy=False)
    n = logits.shape[0]
    logp = z[np.arange(n), labels] - np.log(s[:, 0])
    return float(-logp.mean()), probs


# ----------------------------------------------------------------------------- optimizer (optional extra)
def sgd_update(p, g, v, lr, momentum, weight_decay):
    """One SGD-with-momentum step in place (not part of the layer contract; used by ``optim.SGD``).

    ``v = momentum*v - lr*(g + weight_decay*p)``; ``p += v``. p, g, v : same shape and dtype.
    """
    v *= momentum
    v -= lr * (g + weight_decay * p) if weight_decay else lr * g
    p += v
