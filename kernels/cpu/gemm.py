"""GEMMs split by columns (or by matrices of a stack) over Numba's thread count."""
from __future__ import annotations

import numba
import numpy as np

from .memory import _float_dtype
from .threads import _BLAS, _run_blocks

_SPLIT_MIN_MACS = 1 << 22

#: a split GEMM is cut into about this many column blocks per thread, each at least _MIN_BLOCK_COLS wide
_BLOCKS_PER_THREAD = 4
_MIN_BLOCK_COLS = 256


def _matmul(a, b, out):
    """``out[...] = a @ b`` for 2-D arrays, the columns of ``b``/``out`` split over the threads.

    a : (M, K), b : (K, N) (any BLAS-compatible strides, e.g. a transposed view), out : (M, N).
    """
    nt = numba.get_num_threads()
    m, k = a.shape
    n = out.shape[1]
    if nt < 2 or _BLAS.set is None or n < 2 * nt or m * k * n < _SPLIT_MIN_MACS:
        np.matmul(a, b, out=out)
        return
    nblocks = min(nt * _BLOCKS_PER_THREAD, max(nt, n // _MIN_BLOCK_COLS))
    edges = [n * i // nblocks for i in range(nblocks + 1)]

    def work(i):
        np.matmul(a, b[:, edges[i]:edges[i + 1]], out=out[:, edges[i]:edges[i + 1]])

    _run_blocks(nt, nblocks, work)


def matmul(a, b):
    """``a @ b`` for 2-D float arrays through the split GEMM above (not part of the kernel contract).

    a : (M, K), b : (K, N) -> (M, N), a new array. For layers that want the same threading as the
    convolutions (e.g. fully connected layers).
    """
    dt = _float_dtype(a, b)
    a = np.asarray(a, dtype=dt)
    b = np.asarray(b, dtype=dt)
    out = np.empty((a.shape[0], b.shape[1]), dt)
    _matmul(a, b, out)
    return out


def _matmul_stack(a, b, out):
    """``out[i] = a[i] @ b[i]`` for stacks of matrices, one product per block over the threads
    (single-threaded BLAS in each, see :func:`_run_blocks`)."""
    nt = min(numba.get_num_threads(), out.shape[0])
    if nt < 2 or _BLAS.set is None:
        np.matmul(a, b, out=out)
        return

    def work(i):
        np.matmul(a[i], b[i], out=out[i])

    _run_blocks(nt, out.shape[0], work)
