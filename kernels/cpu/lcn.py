"""Numba kernels of local contrast normalization (twin of ``reference.lcn_forward`` / ``lcn_backward``).

The Gaussian window is separable, so each windowed mean is a row pass and a column pass over one
(H, W) plane (``2 * size`` multiply-adds per pixel instead of ``size**2``), and the border correction
``den[i, j] = rows[i] * cols[j]`` is a product of two vectors. Every map-sized step (channel sums,
the subtractive step, the output) is one pass over the (C, H, W) block of an image; images run in
parallel. The window is symmetric, so the adjoint of the windowed mean ``A(a) = W(a) / den`` is
``A^T(t) = W(t / den)``.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from zfscratch.kernels.reference import gaussian_window


@nb.njit(cache=True, fastmath=False)
def _window(a, g, dr, dc, adjoint, tmp, out):
    """Separable Gaussian window over one plane a (H, W) into out (H, W).

    ``adjoint=False``: the border-corrected mean ``W(a) / den``; ``True``: its adjoint ``W(a / den)``.
    """
    h, w = a.shape
    s = g.size
    r = s // 2
    for i in range(h):
        for j in range(w):
            acc = 0.0
            for q in range(s):
                jj = j + q - r
                if 0 <= jj < w:
                    t = a[i, jj]
                    if adjoint:
                        t = t / (dr[i] * dc[jj])
                    acc += g[q] * t
            tmp[i, j] = acc
    for i in range(h):
        for j in range(w):
            acc = 0.0
            for p in range(s):
                ii = i + p - r
                if 0 <= ii < h:
                    acc += g[p] * tmp[ii, j]
            out[i, j] = acc if adjoint else acc / (dr[i] * dc[j])


@nb.njit(parallel=True, cache=True)
def _lcn_fwd(x, g, dr, dc, floor, y, v, sig, msig):
    n, c, h, w = x.shape
    for b in nb.prange(n):
        s = np.zeros((h, w), x.dtype)
        m = np.empty((h, w), x.dtype)
        tmp = np.empty((h, w), x.dtype)
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    s[i, j] += x[b, ch, i, j]
        _window(s, g, dr, dc, False, tmp, m)
        s[:, :] = 0
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    t = x[b, ch, i, j] - m[i, j] / c
                    v[b, ch, i, j] = t
                    s[i, j] += t * t
        _window(s, g, dr, dc, False, tmp, m)
        total = 0.0
        for i in range(h):
            for j in range(w):
                q = np.sqrt(m[i, j] / c)
                sig[b, i, j] = q
                total += q
        msig[b] = total / (h * w)
        cc = max(msig[b], floor)
        for i in range(h):
            for j in range(w):
                m[i, j] = 1.0 / max(cc, sig[b, i, j])
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    y[b, ch, i, j] = v[b, ch, i, j] * m[i, j]


@nb.njit(parallel=True, cache=True)
def _lcn_bwd(dy, v, sig, msig, g, dr, dc, floor, dx):
    n, c, h, w = dy.shape
    for b in nb.prange(n):
        t = np.zeros((h, w), dy.dtype)
        inv = np.empty((h, w), dy.dtype)
        tmp = np.empty((h, w), dy.dtype)
        dq = np.empty((h, w), dy.dtype)
        cc = max(msig[b], floor)
        for i in range(h):
            for j in range(w):
                inv[i, j] = 1.0 / max(cc, sig[b, i, j])
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    t[i, j] += dy[b, ch, i, j] * v[b, ch, i, j]
        # dd = -t / d^2, routed to sig where sig > c, else to c (then to every sig, if mean > floor)
        dcs = 0.0
        for i in range(h):
            for j in range(w):
                dd = -t[i, j] * inv[i, j] * inv[i, j]
                if sig[b, i, j] > cc:
                    t[i, j] = dd
                else:
                    t[i, j] = 0.0
                    dcs += dd
        share = dcs / (h * w) if msig[b] > floor else 0.0
        for i in range(h):
            for j in range(w):
                q = sig[b, i, j]
                t[i, j] = (t[i, j] + share) / (2.0 * q) if q > 0 else 0.0
        _window(t, g, dr, dc, True, tmp, dq)
        t[:, :] = 0
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    a = dy[b, ch, i, j] * inv[i, j] + 2.0 * v[b, ch, i, j] * dq[i, j] / c
                    dx[b, ch, i, j] = a
                    t[i, j] += a
        _window(t, g, dr, dc, True, tmp, dq)
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    dx[b, ch, i, j] -= dq[i, j] / c


def _weights(size, sigma, h, w, dtype):
    """1-D window ``g (size,)`` and the row/column in-map weights ``dr (H,)``, ``dc (W,)``."""
    g = gaussian_window(size, sigma)
    r = size // 2

    def inside(n):
        idx = np.arange(n)[:, None] + np.arange(size)[None, :] - r
        return (g[None, :] * ((idx >= 0) & (idx < n))).sum(axis=1)
    return g.astype(dtype), inside(h).astype(dtype), inside(w).astype(dtype)


def _check(x, size):
    if x.ndim != 4:
        raise ValueError(f"lcn: expected (N, C, H, W), got {tuple(x.shape)}")
    if size < 1 or size % 2 == 0 or size > min(x.shape[2], x.shape[3]):
        raise ValueError(f"lcn: window {size} must be odd and fit the {x.shape[2]}x{x.shape[3]} maps")


def lcn_forward(x, size, sigma, floor):
    """Local contrast normalization; see ``reference.lcn_forward``. x (N, C, H, W) ->
    y, v (N, C, H, W), sig (N, H, W), mean_sig (N,)."""
    _check(x, size)
    x = np.ascontiguousarray(x)
    n, c, h, w = x.shape
    g, dr, dc = _weights(size, sigma, h, w, x.dtype)
    y, v = np.empty_like(x), np.empty_like(x)
    sig, msig = np.empty((n, h, w), x.dtype), np.empty(n, x.dtype)
    _lcn_fwd(x, g, dr, dc, x.dtype.type(floor), y, v, sig, msig)
    return y, v, sig, msig


def lcn_backward(dy, v, sig, mean_sig, size, sigma, floor):
    """Gradient of :func:`lcn_forward` with respect to x; see ``reference.lcn_backward``. -> dx (N, C, H, W)."""
    _check(dy, size)
    if v.shape != dy.shape or sig.shape != (dy.shape[0],) + dy.shape[2:] or mean_sig.shape != dy.shape[:1]:
        raise ValueError(f"lcn backward: shapes dy {dy.shape}, v {v.shape}, sig {sig.shape}, "
                         f"mean_sig {mean_sig.shape} do not match")
    dy = np.ascontiguousarray(dy)
    dt = dy.dtype
    n, c, h, w = dy.shape
    g, dr, dc = _weights(size, sigma, h, w, dt)
    dx = np.empty_like(dy)
    _lcn_bwd(dy, np.ascontiguousarray(v, dt), np.ascontiguousarray(sig, dt), np.ascontiguousarray(mean_sig, dt),
             g, dr, dc, dt.type(floor), dx)
    return dx
