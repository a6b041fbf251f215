"""Max-pool with switches, forward (vectorised over window offsets) and backward (scatter-add)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..shapes import check_pool_geometry, pool_output_size
from .memory import _JIT, _copy_run, _fill_run

# ============================================================================= max-pool
#: output rows narrower than this are pooled one window at a time (the vector loops would be too short;
#: measured on ZFNet's pool2, 13 outputs wide, batch 16: vector path 2.9 ms, window by window 6.2 ms)
_POOL_VECTOR_MIN_WO = 8


@njit(cache=True, inline="always")
def _maxpool_plane_scalar(xf, t, h, w, k, s, ho, wo, yf, swf):
    """Max-pool of plane ``t`` one window at a time (same rule as :func:`_maxpool_fwd`)."""
    ib = np.uint64(t * h * w)
    for i in range(ho):
        h0 = i * s
        h1 = min(h0 + k, h)
        ob = np.uint64((t * ho + i) * wo)
        for j in range(wo):
            w0 = j * s
            w1 = min(w0 + k, w)
            best = xf[ib + np.uint64(h0 * w + w0)]
            arg = h0 * w + w0
            for hh in range(h0, h1):
                for ww in range(w0, w1):
                    v = xf[ib + np.uint64(hh * w + ww)]
                    if best == best and not v <= best:
                        best = v
                        arg = hh * w + ww
            yf[ob + np.uint64(j)] = best
            swf[ob + np.uint64(j)] = arg


@njit(**_JIT)
def _maxpool_fwd(x, k, s, y, sw):
    """Max over clipped windows; ``sw`` gets the first maximum in row-major window order.

    x : (N, C, H, W) ; y : (N, C, Ho, Wo) ; sw : (N, C, Ho, Wo) int32 (outputs)

    One (n, c) plane per task. Narrow planes go window by window; for wider ones, for each output row,
    the input rows of its windows are split into their
    ``s`` column phases, so that window offset ``dj`` of every output column is one contiguous run
    (``phase[dj % s][j + dj // s]``); the running max over the window offsets, taken in row-major order,
    then vectorises. An offset replaces the running max when it is larger, or when it is the first NaN
    (``np.argmax`` semantics: once the max is NaN nothing replaces it).
    """
    n_n, c_n, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    wq = (w + s - 1) // s
    xf, yf, swf = x.reshape(x.size), y.reshape(y.size), sw.reshape(sw.size)
    for t in prange(n_n * c_n):
        if wo < _POOL_VECTOR_MIN_WO:
            _maxpool_plane_scalar(xf, t, h, w, k, s, ho, wo, yf, swf)
            continue
        ph = np.empty(s * wq, x.dtype)
        best = np.empty(wo, x.dtype)
        arg = np.empty(wo, np.int32)
        for i in range(ho):
            h0 = i * s
            for hh in range(h0, min(h0 + k, h)):
                for b in range(s):
                    _copy_run(ph, b * wq, xf, (t * h + hh) * w + b, (w - 1 - b) // s + 1, s)
                for dj in range(k):
                    jmax = min(wo, (w - 1 - dj) // s + 1)  # windows that reach column offset dj
                    src = np.uint64((dj % s) * wq + dj // s)
                    p0 = hh * w + dj
                    if hh == h0 and dj == 0:
                        for j in range(jmax):
                            best[j] = ph[src + np.uint64(j)]
                            arg[j] = p0 + j * s
                    else:
                        for j in range(jmax):
                            v = ph[src + np.uint64(j)]
                            m = best[j]
                            take = (m == m) & (not v <= m)
                            best[j] = v if take else m
                            arg[j] = (p0 + j * s) if take else arg[j]
            _copy_run(yf, (t * ho + i) * wo, best, 0, wo, 1)
            _copy_run(swf, (t * ho + i) * wo, arg, 0, wo, 1)


def maxpool_forward(x, k, stride, ceil_mode):
    """Max-pool with switches (no padding; ceil-mode windows clipped to the input).

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
    x = np.ascontiguousarray(x)
    n, c, h, w = x.shape
    ho = pool_output_size(h, int(k), int(stride), ceil_mode)
    wo = pool_output_size(w, int(k), int(stride), ceil_mode)
    y = np.empty((n, c, ho, wo), x.dtype)
    sw = np.empty((n, c, ho, wo), np.int32)
    _maxpool_fwd(x, int(k), int(stride), y, sw)
    return y, sw


@njit(**_JIT)
def _maxpool_bwd(dy, sw, dx, bad):
    """Scatter-add ``dy`` to the switch positions, one (n, c) plane per task (in the plane's order).

    dy, sw : (P, Ho*Wo) ; dx : (P, H*W) output (overwritten) ; bad : (P,) uint8, set where a switch
    is out of range (that entry is skipped).
    """
    p_n, m = dy.shape
    hw = dx.shape[1]
    dyf, swf, dxf = dy.reshape(dy.size), sw.reshape(sw.size), dx.reshape(dx.size)
    for t in prange(p_n):
        _fill_run(dxf, t * hw, hw, 0)
        for q in range(m):
            uq = np.uint64(t * m + q)
            idx = swf[uq]
            if idx < 0 or idx >= hw:
                bad[t] = 1
            else:
                dxf[np.uint64(t * hw + idx)] += dyf[uq]


def maxpool_backward(dy, switches, x_shape, k, stride, pad=0):
    """Route ``dy`` to the switch positions (sums where windows overlap); also the DeconvNet's unpooling.

    Parameters
    ----------
    dy : (N, C, Ho, Wo) float
    switches : (N, C, Ho, Wo) int32
    x_shape : tuple (N, C, H, W)
    k, stride, pad : int, the pool's geometry (checked against the shapes)

    Returns
    -------
    dx : (N, C, H, W) float

    Raises
    ------
    IndexError
        when a switch does not index its input plane.
    """
    n, c, h, w = (int(v) for v in x_shape)
    if tuple(switches.shape) != tuple(dy.shape) or tuple(dy.shape[:2]) != (n, c):
        raise ValueError(f"maxpool_backward: dy {tuple(dy.shape)}, switches {tuple(switches.shape)} and "
                         f"x_shape {(n, c, h, w)} do not match")
    check_pool_geometry(x_shape, dy.shape, k, stride, pad)
    p = n * c
    dy2 = np.ascontiguousarray(dy).reshape(p, -1)
    sw2 = np.ascontiguousarray(switches, dtype=np.int32).reshape(p, -1)
    dx = np.empty((p, h * w), dy2.dtype)
    bad = np.zeros(p, np.uint8)
    _maxpool_bwd(dy2, sw2, dx, bad)
    if bad.any():
        raise IndexError(f"maxpool_backward: switches out of range [0, {h * w}) for planes of {h}x{w}")
    return dx.reshape(n, c, h, w)
