"""CPU kernels: Numba for the data movement and the element-wise work, BLAS (through NumPy) for the GEMMs.

Same functions and the same semantics as :mod:`zfscratch.kernels.reference` (DESIGN §3, §4); the tests
in ``tests/test_cpu_kernels.py`` hold them to it (identical switches, values to rounding).

How the convolution is done
---------------------------
A convolution is one GEMM per chunk of images, ``Y (F, P) = W (F, K) @ cols (K, P)``, with
``K = C*kh*kw`` and ``P = images_in_chunk * Ho*Wo`` (DESIGN §10):

* **Polyphase im2col.** The padded input is first split into its ``stride x stride`` phases,
  ``xph[c, a, b, u, v] = xpad[c, u*s + a, v*s + b]``. In phase space every row of ``cols`` is a set of
  *contiguous* runs (``xph[c, i%s, j%s, oy + i//s, j//s : j//s + Wo]``), so im2col is a plain vectorised
  copy for every stride and the padding costs no branch. The adjoint (col2im) accumulates into phase
  space the same way, then merges the phases back.
* **Bias folded into the GEMM.** ``cols`` gets an extra row of ones and ``W`` the bias as an extra
  column, so ``y = W @ x + b`` costs no extra pass; in backward the same row makes the GEMM return
  ``db`` as the last column of ``dW``.
* **Batch folding.** Several images go side by side into one GEMM: as many as fit a ``cols`` workspace
  of ``_CHUNK_BYTES`` (conv1 and conv2 of ZFNet: 4 images), and at least ``_TARGET_COLS`` columns for
  small maps. Fewer, larger GEMMs run closer to the BLAS's peak and cost fewer thread hand-offs (on a
  busy machine each hand-off can wait a scheduler slice).
* **Split GEMMs.** Each GEMM is split by columns over Numba's thread count, every part calling
  single-threaded BLAS from its own thread (:func:`_matmul`): OpenBLAS's own threads busy-wait.
* **Winograd for 3x3 stride-1 layers** (conv3-5): F(2x2, 3x3), 16 GEMMs on transformed tiles, 2.25x
  fewer multiply-adds; backward through the exact adjoints of the transforms (see that section).
* **Workspaces.** The ``cols``, phase and Winograd buffers are kept per thread and reused across calls
  (DESIGN §10: fresh large buffers cost page faults). They never leave this module: every array a
  kernel returns is freshly allocated.

Winograd changes the rounding, not the result: the tests hold it to the reference like the rest.

Numba rules (DESIGN §2): ``cache=True``; ``prange`` only on the outermost loop and every iteration
writes its own slice (no races); no ``fastmath`` (pooling sees ``-inf`` and NaN must propagate).
"""
from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

# Numba's parallel loops run on GNU OpenMP here; by default its idle threads spin after every parallel
# region, taking the cores from BLAS's threads (2 cores) and, on a busy machine, from the thread that
# still has work (measured: the kernel tests ran 9x slower under load). Sleep instead. Must be set
# before the OpenMP runtime loads (numba loads it at the first parallel call); a user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from . import reference as _reference
from .reference import conv_output_size, pool_output_size

NAME = "cpu"

#: at least this many columns per convolution GEMM (measured: ~2000-3000 columns reach the BLAS's
#: large-matrix speed on conv3-5 shapes)
_TARGET_COLS = 2048
#: and as many images as fit a ``cols`` workspace of this size
_CHUNK_BYTES = 32 << 20

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


# ============================================================================= GEMM
# OpenBLAS's own threads busy-wait (sched_yield loops) for their next job. On 2 cores, and even more
# on a machine shared with other jobs, they then fight the threads that have work: measured under
# load, a 2-thread OpenBLAS sgemm ran 1.2-4x slower than two single-threaded sgemms on the two halves
# of the product in two threads. So the convolutions split each GEMM by columns over Numba's thread
# count themselves (NUMBA_NUM_THREADS / numba.set_num_threads), every part running single-threaded
# BLAS; nothing spins while another kernel runs. Elsewhere NumPy's BLAS keeps its own setting.
class _OpenBLAS:
    """``get``/``set`` of the thread count of NumPy's OpenBLAS, found among the loaded libraries."""

    def __init__(self):
        self.get = self.set = None
        try:
            with open("/proc/self/maps") as f:
                paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln})
        except OSError:
            paths = []
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"),
                                   ("openblas", "")):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype = ctypes.c_int
                    self.get, self.set = get, put
                    return


_BLAS = _OpenBLAS()
_BLAS_LOCK = threading.Lock()
_BLAS_USERS = [0, None]  # [kernels inside a split GEMM, thread count to restore]
_GEMM_POOL = [None, 0]  # [ThreadPoolExecutor, its size]
#: products smaller than this (multiply-adds) are not split
_SPLIT_MIN_MACS = 1 << 22


def _blas_single(enter):
    """Make NumPy's BLAS single-threaded while any split GEMM runs (nesting-safe), then restore it."""
    with _BLAS_LOCK:
        if enter:
            if _BLAS_USERS[0] == 0:
                _BLAS_USERS[1] = _BLAS.get()
                _BLAS.set(ctypes.c_int(1))
            _BLAS_USERS[0] += 1
        else:
            _BLAS_USERS[0] -= 1
            if _BLAS_USERS[0] == 0:
                _BLAS.set(ctypes.c_int(_BLAS_USERS[1]))


def _gemm_pool(nt):
    """The worker threads (``nt - 1`` of them; the caller is the other) of the split GEMMs."""
    with _BLAS_LOCK:
        if _GEMM_POOL[1] < nt - 1:  # grows only: a pool another thread is using is never shut down
            _GEMM_POOL[0] = ThreadPoolExecutor(nt - 1, thread_name_prefix="zfscratch-gemm")
            _GEMM_POOL[1] = nt - 1
        return _GEMM_POOL[0]


def _run_blocks(nt, nblocks, work):
    """Call ``work(i)`` for ``i < nblocks`` on ``nt`` threads (the caller and ``nt - 1`` pool workers),
    each thread taking the next block when it is done (dynamic: a thread slowed down by another job
    on its core takes fewer blocks). BLAS is single-threaded meanwhile."""
    blocks = iter(range(nblocks))
    lock = threading.Lock()

    def loop():
        while True:
            with lock:
                i = next(blocks, None)
            if i is None:
                return
            work(i)

    pool = _gemm_pool(nt)
    _blas_single(True)
    try:
        futs = [pool.submit(loop) for _ in range(nt - 1)]
        loop()
        for f in futs:
            f.result()
    finally:
        _blas_single(False)


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
    f, k, hw = geo.f, geo.k, geo.hw
    rows = k + (b is not None)
    wm = np.empty((f, rows), dt)
    wm[:, :k] = np.reshape(w, (f, k))
    if b is not None:
        wm[:, k] = b
    y = np.empty((geo.n, f, geo.ho, geo.wo), dt)
    y3 = y.reshape(geo.n, f, hw)
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
    f, k, hw = geo.f, geo.k, geo.hw
    dy3 = np.ascontiguousarray(dy, dtype=dt).reshape(geo.n, f, hw)
    wm = np.ascontiguousarray(np.reshape(w, (f, k)), dtype=dt)
    dwb = np.zeros((f, k + 1), dt)
    part = np.empty((f, k + 1), dt)
    dx = np.empty(x.shape, dt) if need_dx else None
    for n0, gn in geo.chunks():
        cols = geo.columns(x, n0, gn, k + 1, dt)
        dyc = _dy_chunk(dy3, n0, gn, dt)
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


# ============================================================================= max-pool
#: output rows narrower than this are pooled one window at a time (the vector loops would be too short)
_POOL_VECTOR_MIN_WO = 16


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


def maxpool_backward(dy, switches, x_shape):
    """Route ``dy`` to the switch positions (sums where windows overlap); also the DeconvNet's unpooling.

    Parameters
    ----------
    dy : (N, C, Ho, Wo) float
    switches : (N, C, Ho, Wo) int32
    x_shape : tuple (N, C, H, W)

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
    p = n * c
    dy2 = np.ascontiguousarray(dy).reshape(p, -1)
    sw2 = np.ascontiguousarray(switches, dtype=np.int32).reshape(p, -1)
    dx = np.empty((p, h * w), dy2.dtype)
    bad = np.zeros(p, np.uint8)
    _maxpool_bwd(dy2, sw2, dx, bad)
    if bad.any():
        raise IndexError(f"maxpool_backward: switches out of range [0, {h * w}) for planes of {h}x{w}")
    return dx.reshape(n, c, h, w)


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


def relu_forward(x):
    """``y = max(x, 0)``. x : (...) float -> y : same shape, a new array."""
    x = np.ascontiguousarray(x)
    y = np.empty(x.shape, x.dtype)
    _relu_fwd(x.reshape(-1), y.reshape(-1))
    return y


def relu_backward(dy, x):
    """``dx = dy where x > 0 else 0``. dy, x : same shape (x may be the forward output)."""
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"relu_backward: dy {tuple(dy.shape)} and x {tuple(x.shape)} differ in shape")
    dy = np.ascontiguousarray(dy)
    x = np.ascontiguousarray(x)
    dx = np.empty(dy.shape, dy.dtype)
    _relu_bwd(dy.reshape(-1), x.reshape(-1), dx.reshape(-1))
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


def sgd_update(p, g, v, lr, momentum, weight_decay):
    """One SGD-with-momentum step in place, fused into a single parallel pass (no temporaries).

    ``v = momentum*v - lr*(g + weight_decay*p)``; ``p += v``. p, g, v : contiguous, same shape/dtype.
    Same contract as ``reference.sgd_update``.
    """
    if not (p.flags.c_contiguous and g.flags.c_contiguous and v.flags.c_contiguous):
        return _reference.sgd_update(p, g, v, lr, momentum, weight_decay)
    t = p.dtype.type
    _sgd_update(p.reshape(-1), g.reshape(-1), v.reshape(-1), t(lr), t(momentum), t(weight_decay))
