"""Fully connected layers: the forward pass by row blocks of the weight matrix (:func:`linear_forward`)
and the backward pass with one read of it.

At small batch (ZFNet's fc6 at batch 16: ``w`` is 4096 x 9216, 151 MB in float32) a fully connected
layer is bound by memory traffic, not by multiply-adds: two separate GEMMs ``dW = dY^T X`` and
``dX = dY W`` read ``w`` once and write a fresh ``dW`` (then ``grads += dW`` reads it again, reads and
writes ``grads``), about 5 passes over 151 MB plus the page faults of the fresh array. Here one parallel
pass over column blocks of ``w`` does both: ``gw[j, blk] += sum_n dy[n, j] x[n, blk]`` straight into
the gradient accumulator and ``dx[n, blk] = sum_j dy[n, j] w[j, blk]``, with ``x[:, blk]`` and
``dx[:, blk]`` kept in L1 (3 passes over 151 MB, nothing allocated but ``dx``).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .. import reference as _reference
from .memory import _JIT
from .gemm import matmul
from .threads import _BLAS, _run_blocks

#: about this many columns of ``w`` per task: rows of 4 KiB and more stream well (narrower blocks touch a
#: new page per row of w and gw: measured 1.7x slower at 128 columns), and x and dx blocks of
#: batch x 1024 values stay in L2
_LINEAR_BLOCK = 1024
#: batches above this go through the reference (two BLAS GEMMs: the product is compute-bound there and
#: BLAS wins; measured CPU time on fc6: fused 0.7x at batch 16, even at 32, 1.6x at 64)
_LINEAR_MAX_BATCH = 24
#: forward: batches up to this go through row blocks of ``w`` (see :func:`linear_forward`)
_LINEAR_FWD_MAX_BATCH = 64
#: rows of ``w`` per forward block: about 8 blocks per thread on fc6/fc7, so a thread slowed by
#: another job takes fewer of them
_LINEAR_FWD_ROWS = 256


@njit(parallel=True, cache=True, nogil=True, fastmath={"contract"})
def _linear_bwd(dyt, x, w, gw, dx, blk):
    """One pass over column blocks of ``w``.

    dyt : (M, N) = dy.T, contiguous ; x : (N, K) ; w, gw : (M, K) ; dx : (N, K) output (overwritten);
    gw accumulates (``+=``). Flat unsigned offsets, innermost loop over contiguous columns (vectorised);
    four batch rows (for ``gw``) or four weight rows (for ``dx``) per inner loop, so that each load or
    store of the accumulators serves four products. ``contract`` lets LLVM fuse multiply-adds (no other
    fast-math: NaN and infinities propagate as in the reference).
    """
    m, n = dyt.shape
    k = x.shape[1]
    nblk = (k + blk - 1) // blk
    n4, m4 = n - n % 4, m - m % 4
    dyf, xf, wf, gf, dxf = dyt.reshape(dyt.size), x.reshape(x.size), w.reshape(w.size), gw.reshape(gw.size), \
        dx.reshape(dx.size)
    for t in prange(nblk):
        c0 = t * blk
        nb = min(blk, k - c0)
        acc = np.zeros(n * blk, dx.dtype)  # dx[:, c0:c0+nb], row stride blk
        for j in range(m):  # gw[j, blk] += sum_i dy[i, j] x[i, blk]
            row = np.uint64(j * k + c0)
            for i in range(0, n4, 4):
                d = np.uint64(j * n + i)
                a0, a1, a2, a3 = dyf[d], dyf[d + np.uint64(1)], dyf[d + np.uint64(2)], dyf[d + np.uint64(3)]
                x0 = np.uint64(i * k + c0)
                x1, x2, x3 = x0 + np.uint64(k), x0 + np.uint64(2 * k), x0 + np.uint64(3 * k)
                for c in range(nb):
                    uc = np.uint64(c)
                    gf[row + uc] += (a0 * xf[x0 + uc] + a1 * xf[x1 + uc]) + (a2 * xf[x2 + uc] + a3 * xf[x3 + uc])
            for i in range(n4, n):
                a = dyf[np.uint64(j * n + i)]
                xo = np.uint64(i * k + c0)
                for c in range(nb):
                    uc = np.uint64(c)
                    gf[row + uc] += a * xf[xo + uc]
        for j in range(0, m4, 4):  # dx[i, blk] += sum_j dy[i, j] w[j, blk], four rows of w at a time
            w0 = np.uint64(j * k + c0)
            w1, w2, w3 = w0 + np.uint64(k), w0 + np.uint64(2 * k), w0 + np.uint64(3 * k)
            for i in range(n):
                b0, b1 = dyf[np.uint64(j * n + i)], dyf[np.uint64((j + 1) * n + i)]
                b2, b3 = dyf[np.uint64((j + 2) * n + i)], dyf[np.uint64((j + 3) * n + i)]
                ao = np.uint64(i * blk)
                for c in range(nb):
                    uc = np.uint64(c)
                    acc[ao + uc] += (b0 * wf[w0 + uc] + b1 * wf[w1 + uc]) + (b2 * wf[w2 + uc] + b3 * wf[w3 + uc])
        for j in range(m4, m):
            wo = np.uint64(j * k + c0)
            for i in range(n):
                b = dyf[np.uint64(j * n + i)]
                ao = np.uint64(i * blk)
                for c in range(nb):
                    uc = np.uint64(c)
                    acc[ao + uc] += b * wf[wo + uc]
        for i in range(n):
            for c in range(nb):
                dxf[np.uint64(i * k + c0 + c)] = acc[np.uint64(i * blk + c)]


def linear_backward(dy, x, w, gw, gb):
    """Backward of ``y = x @ w.T + b``, accumulating the parameter gradients in place.

    Parameters
    ----------
    dy : (N, M) float
    x : (N, K) float, the layer's input
    w : (M, K) float
    gw : (M, K) float, weight-gradient accumulator: ``gw += dy.T @ x`` (in place)
    gb : (M,) float, bias-gradient accumulator: ``gb += dy.sum(0)`` (in place)

    Returns
    -------
    dx : (N, K) float, ``dy @ w``, a new array

    Same contract as ``reference.linear_backward``. Small batches (the memory-bound case) go through
    one fused pass over ``w``; others, or non-contiguous / mixed-dtype arrays, through the reference.
    """
    n, m = dy.shape
    k = x.shape[1]
    if x.shape[0] != n or tuple(w.shape) != (m, k) or tuple(gw.shape) != (m, k) or tuple(gb.shape) != (m,):
        raise ValueError(f"linear_backward: dy {tuple(dy.shape)}, x {tuple(x.shape)}, w {tuple(w.shape)}, "
                         f"gw {tuple(gw.shape)}, gb {tuple(gb.shape)} do not match")
    dt = w.dtype
    if (n > _LINEAR_MAX_BATCH or n == 0 or dt.kind != "f" or not gw.flags.c_contiguous or gw.dtype != dt
            or not w.flags.c_contiguous):
        return _reference.linear_backward(dy, x, w, gw, gb)
    dyt = np.ascontiguousarray(np.asarray(dy, dtype=dt).T)
    xc = np.ascontiguousarray(x, dtype=dt)
    dx = np.empty((n, k), dt)
    nt = numba.get_num_threads()
    tasks = nt * max(1, round(k / (nt * _LINEAR_BLOCK)))  # a multiple of the threads: balanced
    blk = -(-k // tasks)
    blk = min(k, -(-blk // 16) * 16)  # whole vectors
    _linear_bwd(dyt, xc, w, gw, dx, blk)
    gb += dyt.sum(axis=1).astype(gb.dtype, copy=False)
    return dx


def linear_forward(x, w, b):
    """``y = x @ w.T + b``, at small batch by row blocks of ``w``.

    Parameters
    ----------
    x : (N, K) float
    w : (M, K) float
    b : (M,) float or None

    Returns
    -------
    y : (N, M) float, a new array

    At batch 16 the product is bound by the one read of ``w`` (fc6: 151 MB). Splitting the columns of
    ``w.T`` (as :func:`.gemm.matmul` does) leaves OpenBLAS a thin, strided ``B`` that it packs per
    block; instead each task multiplies a contiguous block of rows ``w[r0:r1] @ x.T`` (single-threaded
    BLAS, the threads of :func:`.threads._run_blocks`) and writes ``y[:, r0:r1]`` with the bias added.
    Measured on fc6/fc7 at batch 16: 1.2-1.6x faster than the column split, at 64 1.0-1.4x; at batch 1
    (a matrix-vector product) 1.5x slower. So a single row, larger batches, one thread or a BLAS whose
    threads cannot be set go through that column split (:func:`.gemm.matmul`, as before), mixed or
    non-float arrays through the reference formula.
    """
    n, k = x.shape
    m = w.shape[0]
    if tuple(w.shape) != (m, k) or (b is not None and tuple(b.shape) != (m,)):
        raise ValueError(f"linear_forward: x {tuple(x.shape)}, w {tuple(w.shape)}, "
                         f"b {None if b is None else tuple(b.shape)} do not match")
    dt = w.dtype
    if dt.kind != "f" or x.dtype != dt:
        return _reference.linear_forward(x, w, b)
    nt = numba.get_num_threads()
    if not 2 <= n <= _LINEAR_FWD_MAX_BATCH or nt < 2 or _BLAS.set is None or m < 2 * nt:
        y = matmul(x, w.T)
        if b is not None:
            y += b
        return y
    xt = x.T
    y = np.empty((n, m), dt)
    nblocks = max(nt, min(m // 16, -(-m // _LINEAR_FWD_ROWS)))
    edges = [m * i // nblocks for i in range(nblocks + 1)]

    def work(i):
        r0, r1 = edges[i], edges[i + 1]
        part = w[r0:r1] @ xt  # (rows, N)
        if b is not None:
            part += b[r0:r1, None]
        y[:, r0:r1] = part.T

    _run_blocks(nt, nblocks, work)
    return y
