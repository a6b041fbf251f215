"""Reference kernels: plain, readable NumPy. The oracle every fast backend is tested against.

Every function follows the kernel contract of docs/design.md section 3 and works in float32 and float64 (the
output dtype is the input dtype). Clarity beats speed here: convolution is im2col + one matmul,
pooling loops over output positions, LRN sums a channel window explicitly.

Conventions (docs/design.md section 4)
-----------------------
* Layout NCHW. Convolution is cross-correlation with weights ``w : (F, C, kh, kw)``; ``stride``
  and ``pad`` are ints (same for both axes), padding is zeros.
* Max-pool has no padding; ``ceil_mode`` lets the last window hang over the edge, clipped to the
  input. Ties go to the first maximum in row-major order of the window. ``switches`` are int32
  flat indices ``h * W + w`` into each (n, c) input plane.
* LRN is cross-channel: ``scale = k + alpha/size * sum_{c' in window(c)} x_{c'}^2`` and
  ``y = x * scale**-beta``, window ``[c - size//2, c + (size-1)//2]`` clipped to the channels.
* LCN (local contrast normalization, Jarrett et al. 2009) is spatial and across all maps: a
  subtractive step ``v = x - A(sum_c x) / C`` then a divisive step ``y = v / max(c, sigma)`` with
  ``sigma = sqrt(A(sum_c v^2) / C)`` and ``c = max(mean_ij sigma, floor)`` per image. ``A`` is a
  Gaussian-weighted mean over a ``size x size`` window (odd size), zero outside the map and
  renormalized by the weight that falls inside it (border-corrected).
"""
from __future__ import annotations

import numpy as np

from .shapes import check_pool_geometry, conv_output_size, pool_output_size  # noqa: F401  (sizes: one home)

NAME = "reference"


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


def maxpool_backward(dy, switches, x_shape, k, stride, pad=0):
    """Route ``dy`` to the switch positions (sums where windows overlap). Also the DeconvNet's unpooling.

    Parameters
    ----------
    dy : (N, C, Ho, Wo) float
    switches : (N, C, Ho, Wo) int32
    x_shape : tuple (N, C, H, W)
    k, stride, pad : int, the pool's geometry (checked against the shapes; ValueError if it does not
        map ``x_shape`` to ``dy``'s shape)

    Returns
    -------
    dx : (N, C, H, W) float
    """
    check_pool_geometry(x_shape, dy.shape, k, stride, pad)
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


# ----------------------------------------------------------------------------- LCN
def gaussian_window(size, sigma):
    """Normalized 1-D Gaussian weights ``(size,)`` float64 (odd ``size``), summing to one.

    The 2-D window of :func:`lcn_forward` is the outer product of this with itself.
    """
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-0.5 * (r / sigma) ** 2)
    return g / g.sum()


def _window_sum2d(a, g2, xp=np):
    """``out[n, i, j] = sum_{p,q} g2[p, q] * a[n, i+p-r, j+q-r]``, zero outside. a (N, H, W), g2 (s, s) host."""
    s = g2.shape[0]
    r = s // 2
    n, h, w = a.shape
    ap = xp.zeros((n, h + 2 * r, w + 2 * r), dtype=a.dtype)
    ap[:, r:r + h, r:r + w] = a
    out = xp.zeros_like(a)
    for p in range(s):
        for q in range(s):
            out += float(g2[p, q]) * ap[:, p:p + h, q:q + w]
    return out


def _lcn_window(size, sigma, h, w, dtype, xp):
    """The 2-D Gaussian window ``(size, size)`` (host) and its in-map weight ``den (1, H, W)`` (border correction)."""
    g = gaussian_window(size, sigma)
    g2 = np.outer(g, g)
    den = _window_sum2d(xp.ones((1, h, w), dtype), g2, xp)
    return g2, den


def lcn_forward(x, size, sigma, floor, xp=np):
    """Local contrast normalization (subtractive, then divisive), across all maps.

    Parameters
    ----------
    x : (N, C, H, W) float
    size : int, odd side of the Gaussian window, at most min(H, W)
    sigma : float > 0, the Gaussian's standard deviation in pixels
    floor : float > 0, lower bound of the per-image divisor ``c``
    xp : the array module (NumPy here; the CuPy backend passes ``cupy``)

    Returns
    -------
    y : (N, C, H, W) float, ``v / max(c, sig)``
    v : (N, C, H, W) float, ``x - A(sum_c x) / C`` (the subtractive step)
    sig : (N, H, W) float, ``sqrt(A(sum_c v^2) / C)``
    mean_sig : (N,) float, ``mean_ij sig`` (``c = max(mean_sig, floor)``)
    """
    n, c, h, w = x.shape
    g2, den = _lcn_window(size, sigma, h, w, x.dtype, xp)
    m = _window_sum2d(x.sum(axis=1), g2, xp) / den / c
    v = (x - m[:, None]).astype(x.dtype, copy=False)
    sig = xp.sqrt(_window_sum2d((v * v).sum(axis=1), g2, xp) / den / c).astype(x.dtype, copy=False)
    mean_sig = sig.mean(axis=(1, 2)).astype(x.dtype)
    d = xp.maximum(xp.maximum(mean_sig, floor)[:, None, None], sig)
    return (v / d[:, None]).astype(x.dtype, copy=False), v, sig, mean_sig


def lcn_backward(dy, v, sig, mean_sig, size, sigma, floor, xp=np):
    """Gradient of :func:`lcn_forward` with respect to x.

    The divisor ``d = max(c, sig)`` routes its gradient to ``sig[i, j]`` where ``sig > c`` and to
    ``c`` elsewhere; ``c = max(mean_sig, floor)`` passes it on to every ``sig`` (divided by H*W)
    only where ``mean_sig > floor``. Where ``sig == 0`` its square root has no finite derivative and
    the gradient through it is taken as zero.

    Parameters
    ----------
    dy, v : (N, C, H, W) float; sig : (N, H, W) float; mean_sig : (N,) float; xp : array module

    Returns
    -------
    dx : (N, C, H, W) float
    """
    n, c, h, w = dy.shape
    g2, den = _lcn_window(size, sigma, h, w, dy.dtype, xp)
    cc = xp.maximum(mean_sig, floor)[:, None, None]
    d = xp.maximum(cc, sig)
    dv = dy / d[:, None]
    dd = -(dy * v).sum(axis=1) / (d * d)
    use_sig = sig > cc
    dsig = xp.where(use_sig, dd, 0)
    dc = xp.where(use_sig, 0, dd).sum(axis=(1, 2))
    dc = xp.where(mean_sig > floor, dc, 0)
    dsig = dsig + dc[:, None, None] / (h * w)
    safe = xp.where(sig > 0, sig, 1)
    dsig2 = xp.where(sig > 0, dsig / (2 * safe), 0)
    dq = _window_sum2d(dsig2 / den, g2, xp) / c   # adjoint of A: the window is symmetric
    dv = dv + 2 * v * dq[:, None]
    dm = _window_sum2d(dv.sum(axis=1) / den, g2, xp) / c
    return (dv - dm[:, None]).astype(dy.dtype, copy=False)


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


# ----------------------------------------------------------------------------- fully connected (optional extra)
def linear_forward(x, w, b):
    """``y = x @ w.T + b`` (not part of the layer contract; ``layers.Linear`` uses a backend's when it
    has one).

    Parameters
    ----------
    x : (N, K) float ; w : (M, K) float ; b : (M,) float or None

    Returns
    -------
    y : (N, M) float, a new array
    """
    y = x @ w.T
    if b is not None:
        y += b
    return y


def linear_backward(dy, x, w, gw, gb):
    """Backward of ``y = x @ w.T + b`` with the parameter gradients accumulated in place (not part of the
    layer contract; ``layers.Linear`` uses a backend's when it has one).

    Parameters
    ----------
    dy : (N, M) float ; x : (N, K) float ; w : (M, K) float
    gw : (M, K) float, ``gw += dy.T @ x`` ; gb : (M,) float, ``gb += dy.sum(0)``

    Returns
    -------
    dx : (N, K) float, ``dy @ w``
    """
    gw += dy.T @ x
    gb += dy.sum(axis=0)
    return dy @ w


# ----------------------------------------------------------------------------- optimizer (optional extra)
def sgd_update(p, g, v, lr, momentum, weight_decay):
    """One SGD-with-momentum step in place (not part of the layer contract; used by ``optim.SGD``).

    ``v = momentum*v - lr*(g + weight_decay*p)``; ``p += v``. p, g, v : same shape and dtype.
    """
    v *= momentum
    v -= lr * (g + weight_decay * p) if weight_decay else lr * g
    p += v
