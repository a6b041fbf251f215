"""Convolution by polyphase im2col and split BLAS GEMMs (see the package docstring)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..shapes import conv_output_size
from .gemm import _matmul
from .convblock import _use_rowblock, rowblock_filter_grad, rowblock_forward
from .memory import _JIT, _add_run, _copy_run, _fill_run, _float_dtype, _put_run, _workspace
from .winograd import _WINOGRAD_MIN_CHANNELS, _use_winograd, _wino_backward, _wino_forward

#: at least this many columns per convolution GEMM (measured: ~2000-3000 columns reach the BLAS's
#: large-matrix speed on conv3-5 shapes)
_TARGET_COLS = 2048
#: and as many images as fit a ``cols`` workspace of this size
_CHUNK_BYTES = 32 << 20


# ============================================================================= convolution: Numba parts
@njit(**_JIT)
def _phase_split(x, n0, pad, xph):
    """Pad and split images ``x[n0 : n0+G]`` into stride phases.

    Parameters
    ----------
    x : (N, C, H, W) float
    n0 : int, first image of the chunk
    pad : int
    xph : (G, C, s, s, Hq, Wq) float, output: ``xph[g, c, a, b, u, v] = x[n0+g, c, u*s+a-pad, v*s+b-pad]``
        (zero outside the image)
    """
    g_n, c_n, s, hq, wq = xph.shape[0], xph.shape[1], xph.shape[2], xph.shape[4], xph.shape[5]
    h, w = x.shape[2], x.shape[3]
    xf, pf = x.reshape(x.size), xph.reshape(xph.size)
    for t in prange(g_n * c_n * s):  # one (image, channel, row phase) per task
        g, c, a = t // (c_n * s), (t // s) % c_n, t % s
        src_plane = ((n0 + g) * c_n + c) * h * w
        for b in range(s):
            # columns v with 0 <= v*s + b - pad < w
            v0 = min(max(0, -((b - pad) // s)), wq)
            v1 = min(max(v0, (w - 1 + pad - b) // s + 1), wq)
            for u in range(hq):
                dst = (((g * c_n + c) * s + a) * s + b) * hq * wq + u * wq
                yy = u * s + a - pad
                if yy < 0 or yy >= h:
                    _fill_run(pf, dst, wq, 0)
                else:
                    _fill_run(pf, dst, v0, 0)
                    _copy_run(pf, dst + v0, xf, src_plane + yy * w + v0 * s + b - pad, v1 - v0, s)
                    _fill_run(pf, dst + v1, wq - v1, 0)


@njit(**_JIT)
def _im2col(xph, kh, kw, ho, wo, cols):
    """Patches in phase space -> columns.

    Parameters
    ----------
    xph : (G, C, s, s, Hq, Wq) float, from :func:`_phase_split`
    kh, kw, ho, wo : int
    cols : (K or K+1, G*Ho*Wo) float, output; row ``(c*kh + i)*kw + j``, column ``g*Ho*Wo + oy*Wo + ox``
        holds ``xpad[g, c, oy*s + i, ox*s + j]`` = ``xph[g, c, i%s, j%s, oy + i//s, ox + j//s]``.
        A row ``K`` (if present) is set to ones (the bias row).
    """
    g_n, c_n, s, hq, wq = xph.shape[0], xph.shape[1], xph.shape[2], xph.shape[4], xph.shape[5]
    k = c_n * kh * kw
    hw = ho * wo
    ncols = cols.shape[1]
    pf, cf = xph.reshape(xph.size), cols.reshape(cols.size)
    for t in prange(cols.shape[0] * g_n):  # one (row, image) per task
        r, g = t // g_n, t % g_n
        dst = r * ncols + g * hw
        if r == k:
            _fill_run(cf, dst, hw, 1)
            continue
        c, i, j = r // (kh * kw), (r // kw) % kh, r % kw
        src = ((((g * c_n + c) * s + i % s) * s + j % s) * hq + i // s) * wq + j // s
        for oy in range(ho):
            _copy_run(cf, dst + oy * wo, pf, src + oy * wq, wo, 1)


@njit(**_JIT)
def _col2im(dcols, kh, kw, ho, wo, dxph):
    """Adjoint of :func:`_im2col`: accumulate columns into phase space.

    Parameters
    ----------
    dcols : (K, G*Ho*Wo) float
    dxph : (G, C, s, s, Hq, Wq) float, output (overwritten). Each pixel sums its contributions in
        row-major ``(i, j)`` order, as the reference does.
    """
    g_n, c_n, s, hq, wq = dxph.shape[0], dxph.shape[1], dxph.shape[2], dxph.shape[4], dxph.shape[5]
    hw = ho * wo
    ncols = dcols.shape[1]
    df, pf = dcols.reshape(dcols.size), dxph.reshape(dxph.size)
    for t in prange(g_n * c_n * s):  # one (image, channel, row phase) per task: disjoint outputs
        g, c, a = t // (c_n * s), (t // s) % c_n, t % s
        base = ((g * c_n + c) * s + a) * s * hq * wq
        _fill_run(pf, base, s * hq * wq, 0)
        for i in range(a, kh, s):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                dst = base + (j % s) * hq * wq + (i // s) * wq + j // s
                src = r * ncols + g * hw
                for oy in range(ho):
                    _add_run(pf, dst + oy * wq, df, src + oy * wo, wo)


@njit(**_JIT)
def _phase_merge(dxph, pad, n0, dx):
    """Inverse of :func:`_phase_split`, dropping the padding: ``dx[n0+g, c, y, x] = dxph[g, c, (y+pad)%s,
    (x+pad)%s, (y+pad)//s, (x+pad)//s]``.

    dxph : (G, C, s, s, Hq, Wq) float ; dx : (N, C, H, W) float, output slice ``[n0 : n0+G]``
    """
    g_n, c_n, s, hq, wq = dxph.shape[0], dxph.shape[1], dxph.shape[2], dxph.shape[4], dxph.shape[5]
    h, w = dx.shape[2], dx.shape[3]
    pf, xf = dxph.reshape(dxph.size), dx.reshape(dx.size)
    for t in prange(g_n * c_n * h):  # one output row per task
        g, c, y = t // (c_n * h), (t // h) % c_n, t % h
        yy = y + pad
        dst_row = (((n0 + g) * c_n + c) * h + y) * w
        for b in range(s):
            # x = v*s + b - pad for v in [v0, v1)
            v0 = max(0, -((b - pad) // s))
            v1 = min(wq, (w - 1 + pad - b) // s + 1)
            if v1 > v0:
                src = ((((g * c_n + c) * s + yy % s) * s + b) * hq + yy // s) * wq + v0
                _put_run(xf, dst_row + v0 * s + b - pad, s, pf, src, v1 - v0)


@njit(**_JIT)
def _scatter_images(yc, n0, y):
    """GEMM result (F, G*HW) -> ``y[n0 : n0+G]`` viewed as (N, F, HW)."""
    f_n, hw = y.shape[1], y.shape[2]
    g_n = yc.shape[1] // hw
    ycf, yf = yc.reshape(yc.size), y.reshape(y.size)
    for t in prange(g_n * f_n):
        g, f = t // f_n, t % f_n
        _copy_run(yf, ((n0 + g) * f_n + f) * hw, ycf, f * yc.shape[1] + g * hw, hw, 1)


@njit(**_JIT)
def _gather_images(dy, n0, dyc):
    """``dy[n0 : n0+G]`` viewed as (N, F, HW) -> (F, G*HW) (inverse of :func:`_scatter_images`)."""
    f_n, hw = dy.shape[1], dy.shape[2]
    g_n = dyc.shape[1] // hw
    dyf, dcf = dy.reshape(dy.size), dyc.reshape(dyc.size)
    for t in prange(g_n * f_n):
        g, f = t // f_n, t % f_n
        _copy_run(dcf, f * dyc.shape[1] + g * hw, dyf, ((n0 + g) * f_n + f) * hw, hw, 1)


# ============================================================================= convolution: drivers
class _ConvGeom:
    """Sizes of one convolution, and the chunking of its batch into GEMMs."""

    def __init__(self, x_shape, w_shape, stride, pad):
        n, c, h, w = (int(v) for v in x_shape)
        f, c2, kh, kw = (int(v) for v in w_shape)
        if c != c2:
            raise ValueError(f"conv: input has {c} channels but weights {tuple(w_shape)} expect {c2}")
        stride, pad = int(stride), int(pad)
        if stride < 1 or pad < 0:
            raise ValueError(f"conv: stride must be >= 1 and pad >= 0, got stride={stride} pad={pad}")
        self.n, self.c, self.h, self.w = n, c, h, w
        self.f, self.kh, self.kw, self.s, self.p = f, kh, kw, stride, pad
        self.ho = conv_output_size(h, kh, stride, pad)
        self.wo = conv_output_size(w, kw, stride, pad)
        self.hw = self.ho * self.wo
        self.k = c * kh * kw
        self.hq = -(-(h + 2 * pad) // stride)
        self.wq = -(-(w + 2 * pad) // stride)
        self.direct = stride == 1 and pad == 0  # phase space is the input itself
        g_bytes = _CHUNK_BYTES // ((self.k + 1) * self.hw * 4)
        g = min(max(n, 1), max(1, g_bytes, -(-_TARGET_COLS // self.hw)))
        nchunks = -(-n // g) if n else 0
        self.g = -(-n // nchunks) if nchunks else 1  # balance the chunks

    def chunks(self):
        """``(n0, images)`` per GEMM."""
        for n0 in range(0, self.n, self.g):
            yield n0, min(self.g, self.n - n0)

    def phases(self, x, n0, gn, dt):
        """Phase-space view (``direct``) or filled workspace of images ``x[n0 : n0+gn]``."""
        if self.direct:
            return x[n0:n0 + gn].reshape(gn, self.c, 1, 1, self.h, self.w)
        xph = _workspace("conv_phase", (gn, self.c, self.s, self.s, self.hq, self.wq), dt)
        _phase_split(x, n0, self.p, xph)
        return xph

    def all_phases(self, x, dt):
        """Phase space of the whole batch (N, C, s, s, Hq, Wq): a view (``direct``) or a filled workspace."""
        if self.direct:
            return x.reshape(self.n, self.c, 1, 1, self.h, self.w)
        xph = _workspace("conv_phase_all", (self.n, self.c, self.s, self.s, self.hq, self.wq), dt)
        _phase_split(x, 0, self.p, xph)
        return xph

    def columns(self, x, n0, gn, rows, dt):
        """im2col of images ``x[n0 : n0+gn]`` into the ``cols`` workspace: (rows, gn*HW)."""
        xph = self.phases(x, n0, gn, dt)
        cols = _workspace("conv_cols", (rows, gn * self.hw), dt)
        _im2col(xph, self.kh, self.kw, self.ho, self.wo, cols)
        return cols

    def add_columns_to_image(self, dcols, n0, gn, dx, dt):
        """col2im of ``dcols (K, gn*HW)`` into ``dx[n0 : n0+gn]`` (overwritten)."""
        if self.direct:
            dxph = dx[n0:n0 + gn].reshape(gn, self.c, 1, 1, self.h, self.w)
            _col2im(dcols, self.kh, self.kw, self.ho, self.wo, dxph)
        else:
            dxph = _workspace("conv_phase", (gn, self.c, self.s, self.s, self.hq, self.wq), dt)
            _col2im(dcols, self.kh, self.kw, self.ho, self.wo, dxph)
            _phase_merge(dxph, self.p, n0, dx)


# ============================================================================= strided layers: phases + Winograd
# A stride-s convolution with a k x k kernel is a stride-1 convolution of the s*s stride phases of the
# padded input (as channels: ``x2[n, c*s*s + a*s + b] = xph[n, c, a, b]``) with the sub-kernels
# ``w2[f, c*s*s + a*s + b, u, v] = w[f, c, s*u + a, s*v + b]`` (zero where ``s*u + a >= k``):
# ``y[oy] = sum_i w[i] xpad[s*oy + i] = sum_{a,u} w[s*u + a] xph[a][oy + u]``. When those sub-kernels are
# 3x3 (ZFNet's conv2: 5x5 stride 2, sub-kernels 3x3, 3x2, 2x3, 2x2 padded to 3x3), the stride-1
# convolution goes through Winograd F(2x2, 3x3): (3*3*4)/(5*5) = 1.44x the direct multiply-adds, then
# 2.25x fewer, 1.56x fewer in all than im2col (measured on conv2: 23% less CPU time forward). The phase
# convolution's output is at least Ho x Wo (``ceil((H+2p)/s) - 2 >= Ho`` when ``k <= 3s``) and is cropped;
# backward pads dY with zeros to that size, and the exact adjoints carry the gradients back (phase
# merge for dx, the sub-kernel gather for dW).


def _use_phase_winograd(geo):
    return (geo.s > 1 and geo.kh == geo.kw and -(-geo.kh // geo.s) == 3
            and min(geo.c * geo.s * geo.s, geo.f) >= _WINOGRAD_MIN_CHANNELS)


def _phase_weights(w, s, dt):
    """(F, C, k, k) -> (F, C*s*s, 3, 3): ``w2[f, c*s*s + a*s + b, u, v] = w[f, c, s*u + a, s*v + b]`` or 0."""
    f, c, k, _ = w.shape
    w2 = np.zeros((f, c, s, s, 3, 3), dt)
    for a in range(s):
        for b in range(s):
            sub = w[:, :, a::s, b::s]
            w2[:, :, a, b, :sub.shape[2], :sub.shape[3]] = sub
    return w2.reshape(f, c * s * s, 3, 3)


def _phase_weights_adjoint(dw2, c, s, k, dt):
    """Adjoint of :func:`_phase_weights` (the taps it padded with zeros are dropped): -> (F, C, k, k)."""
    f = dw2.shape[0]
    d6 = dw2.reshape(f, c, s, s, 3, 3)
    dw = np.empty((f, c, k, k), dt)
    for a in range(s):
        for b in range(s):
            dst = dw[:, :, a::s, b::s]
            dst[...] = d6[:, :, a, b, :dst.shape[2], :dst.shape[3]]
    return dw


def _phase_input(x, geo, dt):
    """The stride phases of the padded batch as channels: (N, C*s*s, Hq, Wq), a workspace."""
    xph = _workspace("phase_wino_x", (geo.n, geo.c, geo.s, geo.s, geo.hq, geo.wq), dt)
    _phase_split(x, 0, geo.p, xph)
    return xph.reshape(geo.n, geo.c * geo.s * geo.s, geo.hq, geo.wq)


def _phase_wino_forward(x, w, b, geo, dt):
    x2 = _phase_input(x, geo, dt)
    w2 = _phase_weights(w, geo.s, dt)
    g2 = _ConvGeom(x2.shape, w2.shape, 1, 0)
    y2 = _wino_forward(x2, w2, b, g2, dt)
    if (g2.ho, g2.wo) == (geo.ho, geo.wo):
        return y2
    return np.ascontiguousarray(y2[:, :, :geo.ho, :geo.wo])


def _phase_wino_backward(dy, x, w, geo, dt, need_dx, need_dw):
    """(dx or None, dw or None) of a strided layer through its phase convolution; x None when only dx."""
    g2 = _ConvGeom((geo.n, geo.c * geo.s * geo.s, geo.hq, geo.wq), (geo.f, geo.c * geo.s * geo.s, 3, 3), 1, 0)
    dy = np.ascontiguousarray(dy, dtype=dt)
    if (g2.ho, g2.wo) != (geo.ho, geo.wo):
        dy2 = np.zeros((geo.n, geo.f, g2.ho, g2.wo), dt)
        dy2[:, :, :geo.ho, :geo.wo] = dy
    else:
        dy2 = dy
    x2 = _phase_input(x, geo, dt) if need_dw else None
    w2 = _phase_weights(w, geo.s, dt)
    dx2, dw2 = _wino_backward(dy2, x2, w2, g2, dt, need_dx, need_dw)
    dx = dw = None
    if need_dx:
        dx = np.empty((geo.n, geo.c, geo.h, geo.w), dt)
        _phase_merge(dx2.reshape(geo.n, geo.c, geo.s, geo.s, geo.hq, geo.wq), geo.p, 0, dx)
    if need_dw:
        dw = _phase_weights_adjoint(dw2, geo.c, geo.s, geo.kh, dt)
    return dx, dw


def conv2d_forward(x, w, b, stride, pad):
    """Cross-correlation: im2col + BLAS GEMM with the bias folded in.

    Parameters
    ----------
    x : (N, C, H, W) float
    w : (F, C, kh, kw) float
    b : (F,) float or None
    stride, pad : int

    Returns
    -------
    y : (N, F, Ho, Wo) float, a new array
    """
    dt = _float_dtype(x, w) if b is None else _float_dtype(x, w, b)
    x = np.ascontiguousarray(x, dtype=dt)
    geo = _ConvGeom(x.shape, w.shape, stride, pad)
    if _use_winograd(geo):
        return _wino_forward(x, w, b, geo, dt)
    if _use_phase_winograd(geo):
        return _phase_wino_forward(x, w, b, geo, dt)
    f, k, hw = geo.f, geo.k, geo.hw
    rows = k + (b is not None)
    wm = np.empty((f, rows), dt)
    wm[:, :k] = np.reshape(w, (f, k))
    if b is not None:
        wm[:, k] = b
    y = np.empty((geo.n, f, geo.ho, geo.wo), dt)
    y3 = y.reshape(geo.n, f, hw)
    if _use_rowblock(geo):
        rowblock_forward(geo.all_phases(x, dt), wm, geo, y3, dt)
        return y
    for n0, gn in geo.chunks():
        cols = geo.columns(x, n0, gn, rows, dt)
        if gn == 1:
            _matmul(wm, cols, y3[n0])
        else:
            yc = _workspace("conv_gemm", (f, gn * hw), dt)
            _matmul(wm, cols, yc)
            _scatter_images(yc, n0, y3)
    return y


def _dy_chunk(dy3, n0, gn, dt):
    """``dy`` of images ``[n0 : n0+gn]`` as one (F, gn*HW) matrix (a view when gn == 1)."""
    if gn == 1:
        return dy3[n0]
    dyc = _workspace("conv_gemm", (dy3.shape[1], gn * dy3.shape[2]), dt)
    _gather_images(dy3, n0, dyc)
    return dyc


def conv2d_backward(dy, x, w, stride, pad, need_dx=True):
    """Gradients of :func:`conv2d_forward`.

    Per chunk of images: im2col (with the ones row), ``[dW | db] += dY @ cols.T``, then, if ``need_dx``,
    ``dcols = W.T @ dY`` (into the same workspace) and col2im.

    Parameters
    ----------
    dy : (N, F, Ho, Wo) float
    x : (N, C, H, W) float
    w : (F, C, kh, kw) float
    stride, pad : int
    need_dx : bool, when False ``dx`` is not computed and None is returned in its place

    Returns
    -------
    dx : (N, C, H, W) or None, dw : (F, C, kh, kw), db : (F,)
    """
    dt = _float_dtype(dy, x, w)
    x = np.ascontiguousarray(x, dtype=dt)
    geo = _ConvGeom(x.shape, w.shape, stride, pad)
    _check_dy(dy, geo)
    if _use_winograd(geo):
        dyc = np.ascontiguousarray(dy, dtype=dt)
        dx, dw = _wino_backward(dyc, x, w, geo, dt, need_dx, True)
        return dx, dw, dyc.sum(axis=(0, 2, 3))
    if _use_phase_winograd(geo):
        dyc = np.ascontiguousarray(dy, dtype=dt)
        dx, dw = _phase_wino_backward(dyc, x, w, geo, dt, need_dx, True)
        return dx, dw, dyc.sum(axis=(0, 2, 3))
    f, k, hw = geo.f, geo.k, geo.hw
    dy3 = np.ascontiguousarray(dy, dtype=dt).reshape(geo.n, f, hw)
    wm = np.ascontiguousarray(np.reshape(w, (f, k)), dtype=dt)
    rowblock = _use_rowblock(geo)
    if rowblock:  # the filter gradient by row blocks; dx (if needed) by the chunks below
        dwb = rowblock_filter_grad(geo.all_phases(x, dt), dy3, geo, dt)
    else:
        dwb = np.zeros((f, k + 1), dt)
        part = np.empty((f, k + 1), dt)
    dx = np.empty(x.shape, dt) if need_dx else None
    for n0, gn in geo.chunks():
        if rowblock and not need_dx:
            break
        dyc = _dy_chunk(dy3, n0, gn, dt)
        if not rowblock:
            cols = geo.columns(x, n0, gn, k + 1, dt)
            _matmul(dyc, cols.T, part)
            dwb += part
        if need_dx:
            dcols = _workspace("conv_cols", (k, gn * hw), dt)  # reuses the cols buffer
            _matmul(wm.T, dyc, dcols)
            geo.add_columns_to_image(dcols, n0, gn, dx, dt)
    dw = np.ascontiguousarray(dwb[:, :k]).reshape(f, geo.c, geo.kh, geo.kw)
    db = np.ascontiguousarray(dwb[:, k])
    return dx, dw, db


def _check_dy(dy, geo):
    want = (geo.n, geo.f, geo.ho, geo.wo)
    if tuple(dy.shape) != want:
        raise ValueError(f"conv: gradient of shape {tuple(dy.shape)} does not match the output shape {want}")


def conv2d_backward_data(dy, w, x_shape, stride, pad):
    """Gradient with respect to the input only, i.e. the transposed convolution (the DeconvNet's filter).

    Parameters
    ----------
    dy : (N, F, Ho, Wo) float
    w : (F, C, kh, kw) float
    x_shape : tuple (N, C, H, W)
    stride, pad : int

    Returns
    -------
    dx : (N, C, H, W) float, a new array
    """
    dt = _float_dtype(dy, w)
    geo = _ConvGeom(x_shape, w.shape, stride, pad)
    _check_dy(dy, geo)
    if _use_winograd(geo):
        return _wino_backward(np.ascontiguousarray(dy, dtype=dt), None, w, geo, dt, True, False)[0]
    if _use_phase_winograd(geo):
        return _phase_wino_backward(dy, None, w, geo, dt, True, False)[0]
    f, k, hw = geo.f, geo.k, geo.hw
    dy3 = np.ascontiguousarray(dy, dtype=dt).reshape(geo.n, f, hw)
    wm = np.ascontiguousarray(np.reshape(w, (f, k)), dtype=dt)
    dx = np.empty(tuple(int(v) for v in x_shape), dt)
    for n0, gn in geo.chunks():
        dyc = _dy_chunk(dy3, n0, gn, dt)
        dcols = _workspace("conv_cols", (k, gn * hw), dt)
        _matmul(wm.T, dyc, dcols)
        geo.add_columns_to_image(dcols, n0, gn, dx, dt)
    return dx
