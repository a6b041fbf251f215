"""Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions, forward and exact adjoints."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .gemm import _matmul_stack
from .memory import _JIT, _copy_run, _fill_run, _workspace

# ============================================================================= Winograd F(2x2, 3x3)
# Stride-1 3x3 layers (ZFNet's conv3-5: 45% of its FLOPs) go through Winograd's minimal filtering
# F(2x2, 3x3) (Lavin & Gray 2016): every 2x2 output tile is ``A^T [(G g G^T) * (B^T d B)] A`` for its 4x4
# input patch d, so a layer becomes 16 GEMMs ``M[xi] = U[xi] (F, C) @ V[xi] (C, tiles)``, 2.25x fewer
# multiply-adds than im2col (measured 1.7x less GEMM time on conv4's shape). Backward uses the exact
# adjoints: ``dV[xi] = U[xi]^T @ dM[xi]`` (input gradient, then B dV B^T scattered into the image) and
# ``dU[xi] = dM[xi] @ V[xi]^T`` (filter gradient, then G^T dU G), with ``dM = A dy A^T``.

#: Winograd is used for 3x3 stride-1 convolutions with at least this many input and output channels
_WINOGRAD_MIN_CHANNELS = 32
#: tiles per chunk of images (the 16 V and M matrices are (C or F) x tiles)
_WINO_TARGET_TILES = 1024
# G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]], B^T = [[1, 0, -1, 0], [0, 1, 1, 0],
# [0, -1, 1, 0], [0, 1, 0, -1]], A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]; xi = 4*alpha + beta.


def _use_winograd(geo):
    return (geo.kh == 3 and geo.kw == 3 and geo.s == 1
            and min(geo.c, geo.f) >= _WINOGRAD_MIN_CHANNELS)


@njit(**_JIT)
def _wino_input(x, n0, pad, th, tw, v):
    """Input transform: ``V[xi, c, t] = (B^T d B)[xi]`` for the 4x4 patch d of tile t.

    x : (N, C, H, W) ; v : (16, C, T) output, ``T = G*th*tw`` tiles of images ``n0 .. n0+G-1``, tile
    ``t = (g*th + ti)*tw + tj`` reading padded rows/columns ``2ti .. 2ti+3`` / ``2tj .. 2tj+3``.
    """
    c_n, h, w = x.shape[1], x.shape[2], x.shape[3]
    t_n = v.shape[2]
    g_n = t_n // (th * tw)
    wp = 2 * tw + 2
    ps = c_n * t_n  # distance between two xi planes of v
    xf, vf = x.reshape(x.size), v.reshape(v.size)
    x0, x1 = min(pad, wp), min(max(pad, w + pad), wp)  # padded columns that hold image data
    for task in prange(g_n * c_n):
        g, c = task // c_n, task % c_n
        rows = np.empty(4 * wp, x.dtype)
        tr = np.empty(4 * wp, x.dtype)
        src = ((n0 + g) * c_n + c) * h * w
        for ti in range(th):
            for a in range(4):
                yy = 2 * ti + a - pad
                if yy < 0 or yy >= h:
                    _fill_run(rows, a * wp, wp, 0)
                else:
                    _fill_run(rows, a * wp, x0, 0)
                    _copy_run(rows, a * wp + x0, xf, src + yy * w + x0 - pad, x1 - x0, 1)
                    _fill_run(rows, a * wp + x1, wp - x1, 0)
            for u in range(wp):  # B^T d: along the rows
                r0, r1, r2, r3 = rows[u], rows[wp + u], rows[2 * wp + u], rows[3 * wp + u]
                tr[u] = r0 - r2
                tr[wp + u] = r1 + r2
                tr[2 * wp + u] = r2 - r1
                tr[3 * wp + u] = r1 - r3
            tb = c * t_n + (g * th + ti) * tw
            for al in range(4):  # (B^T d) B: along the columns
                for tj in range(tw):
                    q = al * wp + 2 * tj
                    q0, q1, q2, q3 = tr[q], tr[q + 1], tr[q + 2], tr[q + 3]
                    o = 4 * al * ps + tb + tj
                    vf[np.uint64(o)] = q0 - q2
                    vf[np.uint64(o + ps)] = q1 + q2
                    vf[np.uint64(o + 2 * ps)] = q2 - q1
                    vf[np.uint64(o + 3 * ps)] = q1 - q3


@njit(**_JIT)
def _wino_output(m, bias, n0, th, tw, y):
    """Output transform: ``y[n0+g, f, 2ti:2ti+2, 2tj:2tj+2] = (A^T M A) + bias[f]`` (clipped to y).

    m : (16, F, T) ; bias : (F,) ; y : (N, F, Ho, Wo) output slice ``[n0 : n0+G]``
    """
    f_n, t_n = m.shape[1], m.shape[2]
    ho, wo = y.shape[2], y.shape[3]
    g_n = t_n // (th * tw)
    ps = f_n * t_n
    mf, yf = m.reshape(m.size), y.reshape(y.size)
    for task in prange(g_n * f_n):
        g, f = task // f_n, task % f_n
        bf = bias[f]
        yb = ((n0 + g) * f_n + f) * ho * wo
        for ti in range(th):
            for tj in range(tw):
                o = f * t_n + (g * th + ti) * tw + tj
                m00, m01 = mf[np.uint64(o)], mf[np.uint64(o + ps)]
                m02, m03 = mf[np.uint64(o + 2 * ps)], mf[np.uint64(o + 3 * ps)]
                m10, m11 = mf[np.uint64(o + 4 * ps)], mf[np.uint64(o + 5 * ps)]
                m12, m13 = mf[np.uint64(o + 6 * ps)], mf[np.uint64(o + 7 * ps)]
                m20, m21 = mf[np.uint64(o + 8 * ps)], mf[np.uint64(o + 9 * ps)]
                m22, m23 = mf[np.uint64(o + 10 * ps)], mf[np.uint64(o + 11 * ps)]
                m30, m31 = mf[np.uint64(o + 12 * ps)], mf[np.uint64(o + 13 * ps)]
                m32, m33 = mf[np.uint64(o + 14 * ps)], mf[np.uint64(o + 15 * ps)]
                s00, s01, s02, s03 = m00 + m10 + m20, m01 + m11 + m21, m02 + m12 + m22, m03 + m13 + m23
                s10, s11, s12, s13 = m10 - m20 - m30, m11 - m21 - m31, m12 - m22 - m32, m13 - m23 - m33
                r, q = 2 * ti, 2 * tj
                yf[np.uint64(yb + r * wo + q)] = s00 + s01 + s02 + bf
                if q + 1 < wo:
                    yf[np.uint64(yb + r * wo + q + 1)] = s01 - s02 - s03 + bf
                if r + 1 < ho:
                    yf[np.uint64(yb + (r + 1) * wo + q)] = s10 + s11 + s12 + bf
                    if q + 1 < wo:
                        yf[np.uint64(yb + (r + 1) * wo + q + 1)] = s11 - s12 - s13 + bf


@njit(**_JIT)
def _wino_output_adjoint(dy, n0, th, tw, dm):
    """Adjoint of :func:`_wino_output` (without bias): ``dM[xi, f, t] = (A dy A^T)[xi]``.

    dy : (N, F, Ho, Wo) ; dm : (16, F, T) output. The dy plane is first copied into a zero-padded
    (2*th, 2*tw) plane, so that tiles hanging over the output edge read zeros. Rows of ``A dy`` are
    ``(d0, d0 + d1, d0 - d1, -d1)``; the columns get the same combination.
    """
    f_n, t_n = dm.shape[1], dm.shape[2]
    ho, wo = dy.shape[2], dy.shape[3]
    g_n = t_n // (th * tw)
    hp, wp = 2 * th, 2 * tw
    ps = f_n * t_n
    dyf, df = dy.reshape(dy.size), dm.reshape(dm.size)
    for task in prange(g_n * f_n):
        g, f = task // f_n, task % f_n
        pl = np.zeros(hp * wp, dy.dtype)
        e = np.empty(4 * wp, dy.dtype)
        src = ((n0 + g) * f_n + f) * ho * wo
        for r in range(ho):
            _copy_run(pl, r * wp, dyf, src + r * wo, wo, 1)
        for ti in range(th):
            r0 = 2 * ti * wp
            for u in range(wp):  # the rows of A dy, from the tile row's two dy rows
                d0, d1 = pl[np.uint64(r0 + u)], pl[np.uint64(r0 + wp + u)]
                e[u] = d0
                e[wp + u] = d0 + d1
                e[2 * wp + u] = d0 - d1
                e[3 * wp + u] = -d1
            for al in range(4):
                ob = f * t_n + (g * th + ti) * tw + 4 * al * ps
                for tj in range(tw):  # (A dy) A^T along the columns, four xi planes at a time
                    e0, e1 = e[al * wp + 2 * tj], e[al * wp + 2 * tj + 1]
                    df[np.uint64(ob + tj)] = e0
                    df[np.uint64(ob + ps + tj)] = e0 + e1
                    df[np.uint64(ob + 2 * ps + tj)] = e0 - e1
                    df[np.uint64(ob + 3 * ps + tj)] = -e1


@njit(**_JIT)
def _wino_input_adjoint(dv, n0, pad, th, tw, dx):
    """Adjoint of :func:`_wino_input`: ``dx[n0+g, c] = sum over tiles of B dV B^T`` placed at the patches.

    dv : (16, C, T) ; dx : (N, C, H, W) output slice ``[n0 : n0+G]`` (overwritten). One (g, c) plane per
    task, accumulated in a padded plane and cropped.
    """
    c_n, h, w = dx.shape[1], dx.shape[2], dx.shape[3]
    t_n = dv.shape[2]
    g_n = t_n // (th * tw)
    hp, wp = 2 * th + 2, 2 * tw + 2
    ps = c_n * t_n
    dvf, dxf = dv.reshape(dv.size), dx.reshape(dx.size)
    for task in prange(g_n * c_n):
        g, c = task // c_n, task % c_n
        acc = np.zeros(hp * wp, dx.dtype)
        for ti in range(th):
            for tj in range(tw):
                o = c * t_n + (g * th + ti) * tw + tj
                v00, v01 = dvf[np.uint64(o)], dvf[np.uint64(o + ps)]
                v02, v03 = dvf[np.uint64(o + 2 * ps)], dvf[np.uint64(o + 3 * ps)]
                v10, v11 = dvf[np.uint64(o + 4 * ps)], dvf[np.uint64(o + 5 * ps)]
                v12, v13 = dvf[np.uint64(o + 6 * ps)], dvf[np.uint64(o + 7 * ps)]
                v20, v21 = dvf[np.uint64(o + 8 * ps)], dvf[np.uint64(o + 9 * ps)]
                v22, v23 = dvf[np.uint64(o + 10 * ps)], dvf[np.uint64(o + 11 * ps)]
                v30, v31 = dvf[np.uint64(o + 12 * ps)], dvf[np.uint64(o + 13 * ps)]
                v32, v33 = dvf[np.uint64(o + 14 * ps)], dvf[np.uint64(o + 15 * ps)]
                # B dV: rows (v0, v1 - v2 + v3, -v0 + v1 + v2, -v3), per column beta
                f00, f01, f02, f03 = v00, v01, v02, v03
                f10, f11, f12, f13 = v10 - v20 + v30, v11 - v21 + v31, v12 - v22 + v32, v13 - v23 + v33
                f20, f21, f22, f23 = v10 + v20 - v00, v11 + v21 - v01, v12 + v22 - v02, v13 + v23 - v03
                f30, f31, f32, f33 = -v30, -v31, -v32, -v33
                base = (2 * ti) * wp + 2 * tj
                for a in range(4):
                    if a == 0:
                        c0, c1, c2, c3 = f00, f01, f02, f03
                    elif a == 1:
                        c0, c1, c2, c3 = f10, f11, f12, f13
                    elif a == 2:
                        c0, c1, c2, c3 = f20, f21, f22, f23
                    else:
                        c0, c1, c2, c3 = f30, f31, f32, f33
                    rb = np.uint64(base + a * wp)
                    # (B dV) B^T: columns (c0, c1 - c2 + c3, -c0 + c1 + c2, -c3)
                    acc[rb] += c0
                    acc[rb + np.uint64(1)] += c1 - c2 + c3
                    acc[rb + np.uint64(2)] += c1 + c2 - c0
                    acc[rb + np.uint64(3)] += -c3
        dst = ((n0 + g) * c_n + c) * h * w
        for yy in range(h):
            _copy_run(dxf, dst + yy * w, acc, (yy + pad) * wp + pad, w, 1)


class _Wino:
    """Tiling of a Winograd layer: ``th x tw`` tiles per image, images chunked to ~_WINO_TARGET_TILES."""

    def __init__(self, geo):
        self.th, self.tw = -(-geo.ho // 2), -(-geo.wo // 2)
        per = self.th * self.tw
        g = min(max(geo.n, 1), max(1, _WINO_TARGET_TILES // per))
        nchunks = -(-geo.n // g) if geo.n else 0
        self.g = -(-geo.n // nchunks) if nchunks else 1
        self.per = per

    def chunks(self, n):
        for n0 in range(0, n, self.g):
            yield n0, min(self.g, n - n0)


@njit(**_JIT)
def _wino_weights_kernel(w, half, u):
    """``U[xi] = (G g G^T)[xi]`` for every filter: w (F, C, 3, 3) -> u (16, F, C); half = 0.5 typed."""
    f_n, c_n = w.shape[0], w.shape[1]
    ps = f_n * c_n
    uf = u.reshape(u.size)
    for f in prange(f_n):
        t = np.empty((4, 3), w.dtype)
        for c in range(c_n):
            for j in range(3):  # G g: rows (g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2)
                g0, g1, g2 = w[f, c, 0, j], w[f, c, 1, j], w[f, c, 2, j]
                t[0, j], t[1, j], t[2, j], t[3, j] = g0, (g0 + g1 + g2) * half, (g0 - g1 + g2) * half, g2
            o = f * c_n + c
            for a in range(4):  # (G g) G^T: the same along the columns
                r0, r1, r2 = t[a, 0], t[a, 1], t[a, 2]
                ob = o + 4 * a * ps
                uf[np.uint64(ob)] = r0
                uf[np.uint64(ob + ps)] = (r0 + r1 + r2) * half
                uf[np.uint64(ob + 2 * ps)] = (r0 - r1 + r2) * half
                uf[np.uint64(ob + 3 * ps)] = r2


@njit(**_JIT)
def _wino_weights_adjoint(du, half, dw):
    """Adjoint of :func:`_wino_weights_kernel`: ``dw[f, c] = G^T dU G``; du (16, F, C) -> dw (F, C, 3, 3)."""
    f_n, c_n = dw.shape[0], dw.shape[1]
    ps = f_n * c_n
    df = du.reshape(du.size)
    for f in prange(f_n):
        t = np.empty((3, 4), dw.dtype)
        for c in range(c_n):
            o = f * c_n + c
            for b in range(4):  # G^T X: rows (x0 + (x1+x2)/2, (x1-x2)/2, (x1+x2)/2 + x3), per column b
                x0 = df[np.uint64(o + b * ps)]
                x1 = df[np.uint64(o + (4 + b) * ps)]
                x2 = df[np.uint64(o + (8 + b) * ps)]
                x3 = df[np.uint64(o + (12 + b) * ps)]
                t[0, b], t[1, b], t[2, b] = x0 + (x1 + x2) * half, (x1 - x2) * half, (x1 + x2) * half + x3
            for i in range(3):  # (G^T X) G: the same along the columns
                x0, x1, x2, x3 = t[i, 0], t[i, 1], t[i, 2], t[i, 3]
                dw[f, c, i, 0] = x0 + (x1 + x2) * half
                dw[f, c, i, 1] = (x1 - x2) * half
                dw[f, c, i, 2] = (x1 + x2) * half + x3


def _wino_weights(w, dt):
    """``U[xi] = (G g G^T)[xi]``: (F, C, 3, 3) -> (16, F, C)."""
    w = np.ascontiguousarray(w, dtype=dt)
    u = np.empty((16, w.shape[0], w.shape[1]), dt)
    _wino_weights_kernel(w, dt.type(0.5), u)
    return u


def _wino_forward(x, w, b, geo, dt):
    wt = _Wino(geo)
    u = _wino_weights(w, dt)
    bias = np.zeros(geo.f, dt) if b is None else np.ascontiguousarray(b, dtype=dt)
    y = np.empty((geo.n, geo.f, geo.ho, geo.wo), dt)
    for n0, gn in wt.chunks(geo.n):
        t = gn * wt.per
        v = _workspace("wino_v", (16, geo.c, t), dt)
        m = _workspace("wino_m", (16, geo.f, t), dt)
        _wino_input(x, n0, geo.p, wt.th, wt.tw, v)
        _matmul_stack(u, v, m)
        _wino_output(m, bias, n0, wt.th, wt.tw, y)
    return y


def _wino_backward(dy, x, w, geo, dt, need_dx, need_dw):
    """(dx or None, dw or None) of a Winograd layer; x may be None when only dx is needed."""
    wt = _Wino(geo)
    u = _wino_weights(w, dt)
    dx = np.empty((geo.n, geo.c, geo.h, geo.w), dt) if need_dx else None
    du = np.zeros((16, geo.f, geo.c), dt) if need_dw else None
    part = np.empty((16, geo.f, geo.c), dt) if need_dw else None
    for n0, gn in wt.chunks(geo.n):
        t = gn * wt.per
        dm = _workspace("wino_m", (16, geo.f, t), dt)
        _wino_output_adjoint(dy, n0, wt.th, wt.tw, dm)
        v = _workspace("wino_v", (16, geo.c, t), dt)
        if need_dw:
            _wino_input(x, n0, geo.p, wt.th, wt.tw, v)
            _matmul_stack(dm, v.transpose(0, 2, 1), part)
            du += part
        if need_dx:
            _matmul_stack(u.transpose(0, 2, 1), dm, v)  # dV overwrites V
            _wino_input_adjoint(v, n0, geo.p, wt.th, wt.tw, dx)
    dw = None
    if need_dw:
        dw = np.empty((geo.f, geo.c, 3, 3), dt)
        _wino_weights_adjoint(du, dt.type(0.5), dw)
    return dx, dw
