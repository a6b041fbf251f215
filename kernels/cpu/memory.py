"""Per-thread scratch workspaces and the Numba helpers that copy or add runs of flat arrays."""
from __future__ import annotations

import threading

import numpy as np
from numba import njit

#: options of every parallel kernel of this package (see the Numba rules in the package docstring)
_JIT = dict(parallel=True, cache=True, nogil=True)


# ============================================================================= workspaces
_TLS = threading.local()


def _workspace(key, shape, dtype):
    """A scratch array of ``shape`` and ``dtype`` backed by a buffer reused across calls.

    One buffer per ``(key, dtype)`` and per Python thread; it only grows. The returned array is
    contiguous and its contents are undefined. It must not escape the kernel that asked for it.
    """
    pool = getattr(_TLS, "pool", None)
    if pool is None:
        pool = _TLS.pool = {}
    dtype = np.dtype(dtype)
    n = 1
    for s in shape:
        n *= int(s)
    buf = pool.get((key, dtype))
    if buf is None or buf.size < n:
        buf = pool[(key, dtype)] = np.empty(max(n, 1), dtype)
    return buf[:n].reshape(shape)


def clear_workspaces():
    """Free the calling thread's scratch buffers (they are re-created on demand)."""
    if getattr(_TLS, "pool", None):
        _TLS.pool.clear()


def _float_dtype(*arrays):
    dt = np.result_type(*arrays)
    if dt.kind != "f":
        dt = np.dtype(np.float64)
    return dt


# ============================================================================= runs of memory
# The inner loops below copy or add contiguous (or evenly strided) runs of flat arrays. Offsets are
# unsigned: Numba then emits no negative-index wraparound, and LLVM vectorises the loops (measured
# 2-3x faster than multi-dimensional indexing on the im2col shapes of ZFNet).
@njit(cache=True, inline="always")
def _copy_run(dst, d0, src, s0, n, step):
    """``dst[d0 + q] = src[s0 + q*step]`` for q < n (flat arrays)."""
    d, s, st = np.uint64(d0), np.uint64(s0), np.uint64(step)
    for q in range(n):
        uq = np.uint64(q)
        dst[d + uq] = src[s + uq * st]


@njit(cache=True, inline="always")
def _put_run(dst, d0, step, src, s0, n):
    """``dst[d0 + q*step] = src[s0 + q]`` for q < n (flat arrays)."""
    d, s, st = np.uint64(d0), np.uint64(s0), np.uint64(step)
    for q in range(n):
        uq = np.uint64(q)
        dst[d + uq * st] = src[s + uq]


@njit(cache=True, inline="always")
def _add_run(dst, d0, src, s0, n):
    """``dst[d0 + q] += src[s0 + q]`` for q < n (flat arrays)."""
    d, s = np.uint64(d0), np.uint64(s0)
    for q in range(n):
        uq = np.uint64(q)
        dst[d + uq] += src[s + uq]


@njit(cache=True, inline="always")
def _fill_run(dst, d0, n, value):
    """``dst[d0 + q] = value`` for q < n (flat array)."""
    d = np.uint64(d0)
    for q in range(n):
        dst[d + np.uint64(q)] = value
