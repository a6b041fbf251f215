"""Element-wise and per-row kernels: ReLU, LRN, softmax cross-entropy, the fused SGD step."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import reference as _reference
from .memory import _JIT, _add_run, _fill_run, _workspace

# ============================================================================= ReLU
@njit(**_JIT)
def _relu_fwd(x, y):
    """``y = max(x, 0)`` over flat arrays; NaN propagates as in ``np.maximum``."""
    for i in prange(x.size):
        v = x[np.uint64(i)]
        if v <= 0:
            y[np.uint64(i)] = 0
        else:
            y[np.uint64(i)] = v


@njit(**_JIT)
def _relu_bwd(dy, x, dx):
    """``dx = dy where x > 0 else 0`` over flat arrays."""
    for i in prange(x.size):
        ui = np.uint64(i)
        if x[ui] > 0:
            dx[ui] = dy[ui]
        else:
            dx[ui] = 0


# Below this many elements an element-wise pass runs on the calling thread: waking Numba's sleeping
# threads (OMP_WAIT_POLICY=PASSIVE) costs more than the work, and on a loaded machine each wake-up can
# wait a scheduler slice (measured: relu6 at batch 1, 4096 values, 23 ms in parallel on a busy 2-core box).
_SERIAL_BELOW = 1 << 16
_relu_fwd_serial = njit(cache=True, nogil=True)(_relu_fwd.py_func)
_relu_bwd_serial = njit(cache=True, nogil=True)(_relu_bwd.py_func)


def relu_forward(x):
    """``y = max(x, 0)``. x : (...) float -> y : same shape, a new array."""
    x = np.ascontiguousarray(x)
    y = np.empty(x.shape, x.dtype)
    (_relu_fwd_serial if x.size < _SERIAL_BELOW else _relu_fwd)(x.reshape(-1), y.reshape(-1))
    return y


def relu_backward(dy, x):
    """``dx = dy where x > 0 else 0``. dy, x : same shape (x may be the forward output)."""
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"relu_backward: dy {tuple(dy.shape)} and x {tuple(x.shape)} differ in shape")
    dy = np.ascontiguousarray(dy)
    x = np.ascontiguousarray(x)
    dx = np.empty(dy.shape, dy.dtype)
    (_relu_bwd_serial if x.size < _SERIAL_BELOW else _relu_bwd)(dy.reshape(-1), x.reshape(-1), dx.reshape(-1))
    return dx


# ============================================================================= LRN
# beta as a mode, so that the ZFNet value 0.75 costs two square roots instead of a scalar pow
_POW_GENERAL, _POW_075, _POW_05, _POW_1 = 0, 1, 2, 3


def _pow_mode(beta):
    return {0.75: _POW_075, 0.5: _POW_05, 1.0: _POW_1}.get(float(beta), _POW_GENERAL)


@njit(cache=True, inline="always")
def _pow_beta(s, beta, mode):
    """``s ** beta`` for s > 0 (exact forms for beta in {0.75, 0.5, 1})."""
    if mode == 1:
        r = np.sqrt(s)
        return r * np.sqrt(r)
    if mode == 2:
        return np.sqrt(s)
    if mode == 3:
        return s
    return s ** beta


@njit(**_JIT)
def _lrn_fwd(x, lo, hi, a_n, k, beta, mode, y, scale):
    """Cross-channel LRN, one (n, c) plane per task.

    x, y, scale : (N, C, H, W) ; window of channel c: ``[c-lo, c+hi]`` clipped ; a_n = alpha/size.
    The window sum of squares is accumulated in the ``scale`` plane, in channel order (as the reference).
    """
    n_n, c_n, h, w = x.shape
    hw = h * w
    xf, yf, sf = x.reshape(x.size), y.reshape(y.size), scale.reshape(scale.size)
    for t in prange(n_n * c_n):
        n, c = t // c_n, t % c_n
        o = np.uint64(t * hw)
        _fill_run(sf, o, hw, 0)
        for cc in range(max(0, c - lo), min(c_n, c + hi + 1)):
            src = np.uint64((n * c_n + cc) * hw)
            for q in range(hw):
                v = xf[src + np.uint64(q)]
                sf[o + np.uint64(q)] += v * v
        for q in range(hw):
            uq = o + np.uint64(q)
            sc = k + a_n * sf[uq]
            sf[uq] = sc
            yf[uq] = xf[uq] / _pow_beta(sc, beta, mode)


@njit(**_JIT)
def _lrn_bwd(dy, x, y, scale, lo, hi, coef, beta, mode, tmp, dx):
    """Gradient of :func:`_lrn_fwd`; transposed window ``[c-lo, c+hi]`` ; coef = 2*alpha*beta/size.

    tmp : (N, C, H, W) scratch for ``dy*y/scale``; the window sum of it is accumulated in ``dx``.
    """
    n_n, c_n, h, w = x.shape
    hw = h * w
    dyf, xf, yf, sf = dy.reshape(dy.size), x.reshape(x.size), y.reshape(y.size), scale.reshape(scale.size)
    tf, dxf = tmp.reshape(tmp.size), dx.reshape(dx.size)
    for t in prange(n_n * c_n):
        o = np.uint64(t * hw)
        for q in range(hw):
            uq = o + np.uint64(q)
            tf[uq] = dyf[uq] * yf[uq] / sf[uq]
    for t in prange(n_n * c_n):
        n, c = t // c_n, t % c_n
        o = np.uint64(t * hw)
        _fill_run(dxf, o, hw, 0)
        for cc in range(max(0, c - lo), min(c_n, c + hi + 1)):
            _add_run(dxf, o, tf, (n * c_n + cc) * hw, hw)
        for q in range(hw):
            uq = o + np.uint64(q)
            dxf[uq] = dyf[uq] / _pow_beta(sf[uq], beta, mode) - coef * xf[uq] * dxf[uq]


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
    x = np.ascontiguousarray(x)
    if x.ndim != 4:
        raise ValueError(f"lrn_forward: expected (N, C, H, W), got {x.shape}")
    f = x.dtype.type
    size = int(size)
    y = np.empty_like(x)
    scale = np.empty_like(x)
    _lrn_fwd(x, size // 2, (size - 1) // 2, f(alpha / size), f(k), f(beta), _pow_mode(beta), y, scale)
    return y, scale


def lrn_backward(dy, x, y, scale, size, alpha, beta, k):
    """Gradient of :func:`lrn_forward`.

    ``dx = dy*scale**-beta - (2*alpha*beta/size) * x * window_sum^T(dy*y/scale)``, transposed window
    ``[c - (size-1)//2, c + size//2]``.

    Parameters
    ----------
    dy, x, y, scale : (N, C, H, W) float

    Returns
    -------
    dx : (N, C, H, W) float
    """
    dt = dy.dtype
    dy, x, y, scale = (np.ascontiguousarray(a, dtype=dt) for a in (dy, x, y, scale))
    if not (dy.shape == x.shape == y.shape == scale.shape) or x.ndim != 4:
        raise ValueError("lrn_backward: dy, x, y and scale must share one (N, C, H, W) shape")
    f = dt.type
    size = int(size)
    dx = np.empty_like(dy)
    tmp = _workspace("lrn_tmp", dy.shape, dt)
    _lrn_bwd(dy, x, y, scale, (size - 1) // 2, size // 2, f(2.0 * alpha * beta / size), f(beta),
             _pow_mode(beta), tmp, dx)
    return dx


# ============================================================================= softmax
@njit(**_JIT)
def _softmax_xent(z, labels, probs, logp):
    """Row-wise softmax and the log-likelihood of the label; one row per task.

    z, probs : (N, K) ; labels : (N,) int64 in [0, K) ; logp : (N,) float64 output. The
    exponentials are summed in float64.
    """
    n_n, k_n = z.shape
    for n in prange(n_n):
        m = z[n, 0]
        for q in range(k_n):
            v = z[n, q]
            if m == m and not v <= m:  # max with NaN propagation, as np.max
                m = v
        s = 0.0
        for q in range(k_n):
            e = np.exp(z[n, q] - m)
            probs[n, q] = e
            s += e
        for q in range(k_n):
            probs[n, q] = probs[n, q] / s
        logp[n] = (z[n, labels[n]] - m) - np.log(s)


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
    z = np.ascontiguousarray(logits)
    if z.ndim != 2:
        raise ValueError(f"softmax_xent: expected logits (N, K), got {z.shape}")
    n, kk = z.shape
    lab = np.asarray(labels).astype(np.int64).reshape(-1)
    if lab.shape != (n,):
        raise ValueError(f"softmax_xent: expected {n} labels, got shape {np.shape(labels)}")
    if n and (lab.min() < -kk or lab.max() >= kk):
        raise IndexError(f"softmax_xent: labels out of range for {kk} classes")
    lab = np.where(lab < 0, lab + kk, lab)  # NumPy indexing semantics, as the reference
    probs = np.empty_like(z)
    logp = np.empty(n, np.float64)
    _softmax_xent(z, lab, probs, logp)
    return float(-logp.mean()), probs


# ============================================================================= optimizer (optional extra)
@njit(parallel=True, cache=True)
def _sgd_update(p, g, v, lr, momentum, weight_decay):
    for i in prange(p.size):
        vi = momentum * v[i] - lr * (g[i] + weight_decay * p[i])
        v[i] = vi
        p[i] += vi


_sgd_update_serial = njit(cache=True, nogil=True)(_sgd_update.py_func)


def sgd_update(p, g, v, lr, momentum, weight_decay):
    """One SGD-with-momentum step in place, fused into a single parallel pass (no temporaries).

    ``v = momentum*v - lr*(g + weight_decay*p)``; ``p += v``. p, g, v : contiguous, same shape/dtype.
    Same contract as ``reference.sgd_update``.
    """
    if not (p.flags.c_contiguous and g.flags.c_contiguous and v.flags.c_contiguous):
        return _reference.sgd_update(p, g, v, lr, momentum, weight_decay)
    t = p.dtype.type
    update = _sgd_update_serial if p.size < _SERIAL_BELOW else _sgd_update
    update(p.reshape(-1), g.reshape(-1), v.reshape(-1), t(lr), t(momentum), t(weight_decay))
