"""Convolutions with a thin patch dimension (ZFNet's conv1: K = 3*7*7 = 147) by row blocks: im2col of a
few output rows of one image at a time, into a small per-thread buffer that stays in cache, and the
GEMM on it right away.

The whole-chunk im2col of :mod:`.conv` writes ``K x (4 images x Ho*Wo)`` columns to memory (conv1:
28 MB per chunk) and the GEMM reads them back; with K = 147 the GEMM does only 96 multiply-adds per
value it reads, so that round trip through memory costs as much as the arithmetic. Here:

* **Forward.** The padded input of the whole batch is split into stride phases once (as in
  :mod:`.conv`); then each task takes ``rows`` output rows of one image, copies their patches into a
  ``(K+1, rows*Wo)`` buffer (the ones row folds the bias in) and multiplies ``[W | b]`` by it straight
  into the output (a strided view of ``y``: no scatter pass).
* **Filter gradient.** The same blocks, ``[dW | db] += dY[:, block] @ cols_block^T``, each thread
  summing into its own accumulator (the threads' sums are added at the end): the long ``Ho*Wo``
  dimension of this product is split over the threads, no full ``cols`` buffer exists.

Tasks are taken dynamically by the threads of :func:`.threads._run_blocks`, each calling
single-threaded BLAS; the im2col of a block is a serial Numba loop (``nogil``), so the two run side by
side in the threads.
"""
from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit

from .memory import _copy_run, _fill_run, _workspace
from .threads import _BLAS, _run_blocks

#: convolutions with at most this many patch values (C*kh*kw) per output take the row-block path
_ROWBLOCK_MAX_K = 512
#: about this many output columns per block: (K+1) x 2048 float32 is 1.2 MB for conv1 (fits L2)
_ROWBLOCK_COLS = 2048


def _use_rowblock(geo):
    return geo.k <= _ROWBLOCK_MAX_K and geo.hw >= 256


@njit(cache=True, nogil=True)
def _im2col_rows(xph, g, oy0, oy1, kh, kw, wo, ones_row, cols):
    """Patches of output rows ``oy0 .. oy1-1`` of image ``g`` (phase space) -> ``cols``.

    xph : (G, C, s, s, Hq, Wq) from :func:`.conv._phase_split` ; cols : (K or K+1, (oy1-oy0)*Wo), row
    ``(c*kh + i)*kw + j``, column ``(oy-oy0)*Wo + ox``; the row ``K`` is set to ones when ``ones_row``.
    """
    c_n, s, hq, wq = xph.shape[1], xph.shape[2], xph.shape[4], xph.shape[5]
    k = c_n * kh * kw
    ncol = (oy1 - oy0) * wo
    pf, cf = xph.reshape(xph.size), cols.reshape(cols.size)
    for r in range(k):
        c, i, j = r // (kh * kw), (r // kw) % kh, r % kw
        src = ((((g * c_n + c) * s + i % s) * s + j % s) * hq + i // s) * wq + j // s
        for oy in range(oy0, oy1):
            _copy_run(cf, r * ncol + (oy - oy0) * wo, pf, src + oy * wq, wo, 1)
    if ones_row:
        _fill_run(cf, k * ncol, ncol, 1)


def _blocks(geo):
    """``(image, first output row, end row)`` of every block."""
    rows = max(1, min(geo.ho, _ROWBLOCK_COLS // geo.wo))
    nb = -(-geo.ho // rows)
    rows = -(-geo.ho // nb)  # balanced blocks
    return [(g, oy0, min(oy0 + rows, geo.ho)) for g in range(geo.n) for oy0 in range(0, geo.ho, rows)]


def _run(nblocks, work):
    nt = numba.get_num_threads()
    if nt < 2 or nblocks < 2 or _BLAS.set is None:
        for i in range(nblocks):
            work(i)
    else:
        _run_blocks(min(nt, nblocks), nblocks, work)


def rowblock_forward(xph, wm, geo, y3, dt):
    """``y3[g][:, block] = wm @ cols(block)`` for every row block.

    xph : (N, C, s, s, Hq, Wq) phases of the whole batch ; wm : (F, K or K+1) (bias as the last column
    when K+1) ; y3 : (N, F, Ho*Wo) output.
    """
    blocks = _blocks(geo)
    rows = wm.shape[1]
    ones = rows == geo.k + 1

    def work(i):
        g, oy0, oy1 = blocks[i]
        ncol = (oy1 - oy0) * geo.wo
        cols = _workspace("rowblock_cols", (rows, ncol), dt)
        _im2col_rows(xph, g, oy0, oy1, geo.kh, geo.kw, geo.wo, ones, cols)
        np.matmul(wm, cols, out=y3[g][:, oy0 * geo.wo:oy1 * geo.wo])

    _run(len(blocks), work)


def rowblock_filter_grad(xph, dy3, geo, dt):
    """``[dW | db] = sum over blocks of dY[:, block] @ cols(block)^T``: (F, K+1), a new array."""
    blocks = _blocks(geo)
    f, k = geo.f, geo.k
    accs = {}
    lock = threading.Lock()

    def work(i):
        g, oy0, oy1 = blocks[i]
        ncol = (oy1 - oy0) * geo.wo
        cols = _workspace("rowblock_cols", (k + 1, ncol), dt)
        _im2col_rows(xph, g, oy0, oy1, geo.kh, geo.kw, geo.wo, True, cols)
        tid = threading.get_ident()
        acc = accs.get(tid)
        if acc is None:
            with lock:
                acc = accs[tid] = np.zeros((f, k + 1), dt)
        part = _workspace("rowblock_part", (f, k + 1), dt)
        np.matmul(dy3[g][:, oy0 * geo.wo:oy1 * geo.wo], cols.T, out=part)
        acc += part

    _run(len(blocks), work)
    out = None
    for tid in sorted(accs):
        out = accs[tid] if out is None else out + accs[tid]
    return out if out is not None else np.zeros((f, k + 1), dt)
