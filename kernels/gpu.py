"""CuPy kernels: the kernel contract of docs/design.md section 3 on an NVIDIA GPU.

Everything stays on the device: inputs are CuPy arrays (host arrays are copied over), outputs are
CuPy arrays, and no function waits for the GPU except :func:`softmax_xent`, whose loss is a Python
float (one synchronisation per call).

Design
------
* **Convolution** = im2col + one cuBLAS GEMM per layer with the batch folded into the GEMM's columns,
  then one pass that reorders the result to NCHW and adds the bias:

  - ``im2col``: ``cols (C*kh*kw, N*Ho*Wo)``; grid y = input channel, grid x = column; each thread
    computes its (n, oh, ow) once and writes the ``kh*kw`` rows of its channel (coalesced writes).
  - forward: ``tmp = w (F, C*kh*kw) @ cols``; ``unfold_bias`` writes ``y[n, f, p] = tmp[f, n*P + p] + b[f]``.
  - backward: ``fold`` writes ``dyT (F, N*P)``; ``dw = dyT @ cols.T``; ``db = sum(dyT, axis=1)``;
    ``dcols = w.T @ dyT``; ``col2im`` is a gather: one thread per input pixel sums the column entries
    of the kernel taps that read it, in the reference's (i, j) order. No atomics, deterministic.
  - when the column matrix of the whole batch would exceed :data:`COLS_BYTES_LIMIT`, the batch is cut
    into chunks (still one GEMM per chunk).
* **Max-pool**: one thread per output scans its window (clipped to the input) in row-major order and
  keeps the first maximum (NaN wins like ``np.argmax``); switches are int32 ``h*W + w``.
  **Unpooling** (``maxpool_backward``) is a deterministic gather: one thread per input pixel visits the
  pooling windows that contain it and sums ``dy`` where the switch points at it, in output order (the
  reference's order, so results are bit-identical). The layer hands it the pool's geometry (``k``,
  ``stride``, ``pad``: the kernel contract), so the gather visits exactly the windows that can hold each
  pixel; a check first rejects switches outside their own windows (ValueError) or planes (IndexError).
* **ReLU**, **LRN** (one thread per element, looping over its channel window) and **softmax
  cross-entropy** (one thread per row, accumulating in float64) are single kernels.

All kernels live in one CUDA source compiled once per (dtype, index width) with NVRTC and memoized
in :data:`_MODULES` (CuPy also caches the binaries on disk). The source is templated on the element
type (``real``) and the index type (``idx_t``: 32-bit unless an array is too large); scalar arguments
are passed as exact NumPy scalars (``np.int32``, ``np.int64``, ``np.float32``/``np.float64``).

TF32: cuBLAS float32 GEMMs run in full float32 unless ``CUPY_TF32=1`` is set in the environment
(CuPy's default is off); :func:`tf32_enabled` tells which.
"""
from __future__ import annotations

import numpy as np

try:
    import cupy
except Exception as e:  # ImportError, or a broken CUDA install raising something else on import
    raise ImportError(f"the gpu kernels need CuPy ({type(e).__name__}: {e})") from e

from zfscratch.kernels import reference as _reference
from zfscratch.kernels.shapes import check_pool_geometry, conv_output_size, pool_output_size

NAME = "gpu"

#: threads per block of every launch
BLOCK = 256
#: upper bound on blocks in a 1-D launch (kernels use grid-stride loops)
MAX_BLOCKS = 1 << 20
#: CUDA's limit on gridDim.y
MAX_GRID_Y = 65535
#: arrays with at least this many elements use the 64-bit index variant of the kernels
INT32_INDEX_LIMIT = 2 ** 31 - BLOCK * MAX_BLOCKS - 1
#: largest im2col matrix (bytes) built at once; bigger batches are processed in chunks
COLS_BYTES_LIMIT = 1 << 30


# ============================================================================== availability
_AVAILABLE = None


def is_available():
    """True when CuPy imports and at least one CUDA device is usable (never raises)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            _AVAILABLE = int(cupy.cuda.runtime.getDeviceCount()) > 0
        except Exception:
            _AVAILABLE = False
    return _AVAILABLE


def tf32_enabled():
    """Whether CuPy's float32 matmul may use TF32 tensor cores (``CUPY_TF32=1``); False if unknown."""
    try:
        from cupy._core import _routines_linalg as lin
        return lin.get_compute_type(np.dtype(np.float32)) == lin.COMPUTE_TYPE_TF32
    except Exception:
        return False


# ============================================================================== CUDA source
_PRELUDE = {
    "f": "typedef float real;\n#define RPOW powf\n#define REXP expf\n",
    "d": "typedef double real;\n#define RPOW pow\n#define REXP exp\n",
}

_SOURCE = r"""
// ---------------------------------------------------------------- helpers
__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

#define FIRST_INDEX ((idx_t)blockIdx.x * (idx_t)blockDim.x + (idx_t)threadIdx.x)
#define GRID_STRIDE ((idx_t)blockDim.x * (idx_t)gridDim.x)

// ---------------------------------------------------------------- convolution
// cols (C*kh*kw, ncols), ncols = N*Ho*Wo; column q = n*Ho*Wo + oh*Wo + ow; row (c*kh + i)*kw + j.
// grid: x over columns, y over input channels.
extern "C" __global__ void im2col(const real* __restrict__ x, real* __restrict__ cols,
                                  int C, int H, int W, int kh, int kw, int stride, int pad,
                                  int Ho, int Wo, long long ncols)
{
    const idx_t NP = (idx_t)ncols;
    const int P = Ho * Wo;
    for (int c = blockIdx.y; c < C; c += gridDim.y) {
        for (idx_t q = FIRST_INDEX; q < NP; q += GRID_STRIDE) {
            const idx_t n = q / P;
            const int p = (int)(q - n * P);
            const int oh = p / Wo;
            const int ow = p - oh * Wo;
            const int h0 = oh * stride - pad;
            const int w0 = ow * stride - pad;
            const real* xc = x + (n * C + c) * ((idx_t)H * W);
            real* out = cols + (idx_t)c * kh * kw * NP + q;
            for (int i = 0; i < kh; ++i) {
                const int hh = h0 + i;
                const bool hok = (unsigned)hh < (unsigned)H;
                for (int j = 0; j < kw; ++j) {
                    const int ww = w0 + j;
                    *out = (hok && (unsigned)ww < (unsigned)W) ? xc[hh * W + ww] : (real)0;
                    out += NP;
                }
            }
        }
    }
}

// Adjoint of im2col as a gather: one thread per input element x[n, c, h, w] (total = N*C*H*W).
extern "C" __global__ void col2im(const real* __restrict__ cols, real* __restrict__ x,
                                  int C, int H, int W, int kh, int kw, int stride, int pad,
                                  int Ho, int Wo, long long ncols, long long total)
{
    const idx_t NP = (idx_t)ncols;
    const idx_t T = (idx_t)total;
    const int P = Ho * Wo;
    for (idx_t idx = FIRST_INDEX; idx < T; idx += GRID_STRIDE) {
        const int w = (int)(idx % W);
        idx_t t = idx / W;
        const int h = (int)(t % H);
        t /= H;
        const int c = (int)(t % C);
        const idx_t n = t / C;
        const int hp = h + pad;
        const int wp = w + pad;
        const idx_t colbase = n * P;
        real acc = (real)0;
        for (int i = hp % stride; i < kh && i <= hp; i += stride) {
            const int oh = (hp - i) / stride;
            if (oh >= Ho) continue;
            for (int j = wp % stride; j < kw && j <= wp; j += stride) {
                const int ow = (wp - j) / stride;
                if (ow >= Wo) continue;
                acc += cols[(idx_t)((c * kh + i) * kw + j) * NP + colbase + oh * Wo + ow];
            }
        }
        x[idx] = acc;
    }
}

// y[n, f, p] = tmp[f, n*P + p] (+ b[f]); total = N*F*P.
extern "C" __global__ void unfold_bias(const real* __restrict__ tmp, const real* __restrict__ b,
                                       real* __restrict__ y, int F, int P, int has_bias,
                                       long long ncols, long long total)
{
    const idx_t NP = (idx_t)ncols;
    const idx_t T = (idx_t)total;
    for (idx_t idx = FIRST_INDEX; idx < T; idx += GRID_STRIDE) {
        const int p = (int)(idx % P);
        const idx_t t = idx / P;
        const int f = (int)(t % F);
        const idx_t n = t / F;
        real v = tmp[(idx_t)f * NP + n * P + p];
        if (has_bias) v += b[f];
        y[idx] = v;
    }
}

// dyT[f, n*P + p] = dy[n, f, p]; total = N*F*P.
extern "C" __global__ void fold(const real* __restrict__ dy, real* __restrict__ dyT,
                                int F, int P, long long ncols, long long total)
{
    const idx_t NP = (idx_t)ncols;
    const idx_t T = (idx_t)total;
    for (idx_t idx = FIRST_INDEX; idx < T; idx += GRID_STRIDE) {
        const int p = (int)(idx % P);
        const idx_t t = idx / P;
        const int f = (int)(t % F);
        const idx_t n = t / F;
        dyT[(idx_t)f * NP + n * P + p] = dy[idx];
    }
}

// ---------------------------------------------------------------- max-pool
// One thread per output (total = N*C*Ho*Wo). First maximum in row-major window order wins; a NaN
// wins over numbers (np.argmax). Windows are clipped to the input (ceil mode).
extern "C" __global__ void maxpool_fwd(const real* __restrict__ x, real* __restrict__ y,
                                       int* __restrict__ sw, int H, int W, int Ho, int Wo,
                                       int k, int stride, long long total)
{
    const idx_t T = (idx_t)total;
    for (idx_t idx = FIRST_INDEX; idx < T; idx += GRID_STRIDE) {
        const int ow = (int)(idx % Wo);
        const idx_t t = idx / Wo;
        const int oh = (int)(t % Ho);
        const idx_t plane = t / Ho;
        const real* xp = x + plane * ((idx_t)H * W);
        const int h0 = oh * stride, w0 = ow * stride;
        const int h1 = imin(h0 + k, H), w1 = imin(w0 + k, W);
        int best_i = h0 * W + w0;
        real best = xp[best_i];
        for (int h = h0; h < h1; ++h) {
            for (int w = w0; w < w1; ++w) {
                const real v = xp[h * W + w];
                if (v > best || (v != v && best == best)) {
                    best = v;
                    best_i = h * W + w;
                }
            }
        }
        y[idx] = best;
        sw[idx] = best_i;
    }
}

// Unpooling as a gather: one thread per input pixel (total = N*C*H*W) sums dy over the windows
// [oh*stride - pad, oh*stride - pad + k) x [ow*stride - pad, ...) that contain it and whose switch is this
// pixel, in output order (the reference's order of sums: bit-identical results).
extern "C" __global__ void maxpool_bwd_gather(const real* __restrict__ dy, const int* __restrict__ sw,
                                              real* __restrict__ dx, int H, int W, int Ho, int Wo,
                                              int k, int stride, int pad, long long total)
{
    const idx_t T = (idx_t)total;
    for (idx_t idx = FIRST_INDEX; idx < T; idx += GRID_STRIDE) {
        const int w = (int)(idx % W);
        const idx_t t = idx / W;
        const int h = (int)(t % H);
        const idx_t plane = t / H;
        const int hp = h + pad, wp = w + pad;
        const int oh0 = hp < k ? 0 : (hp - k + stride) / stride;   // ceil((hp - k + 1) / stride)
        const int ow0 = wp < k ? 0 : (wp - k + stride) / stride;
        const int oh1 = imin(hp / stride, Ho - 1);
        const int ow1 = imin(wp / stride, Wo - 1);
        const int target = h * W + w;
        const idx_t base = plane * ((idx_t)Ho * Wo);
        real acc = (real)0;
        for (int oh = oh0; oh <= oh1; ++oh) {
            for (int ow = ow0; ow <= ow1; ++ow) {
                const idx_t o = base + oh * Wo + ow;
                if (sw[o] == target) acc += dy[o];
            }
        }
        dx[idx] = acc;
    }
}

// ---------------------------------------------------------------- ReLU
extern "C" __global__ void relu_fwd(const real* __restrict__ x, real* __restrict__ y, long long total)
{
    const idx_t T = (idx_t)total;
    for (idx_t idx = FIRST_INDEX; idx < T; idx += GRID_STRIDE) {
        const real v = x[idx];
        y[idx] = (v > (real)0 || v != v) ? v : (real)0;   // NaN propagates like np.maximum
    }
}

extern "C" __global__ void relu_bwd(const real* __restrict__ dy, const real* __restrict__ x,
                                    real* __restrict__ dx, long long total)
{
    const idx_t T = (idx_t)total;
    for (idx_t idx = FIRST_INDEX; idx < T; idx += GRID_STRIDE) {
        dx[idx] = x[idx] > (real)0 ? dy[idx] : (real)0;
    }
}

// ---------------------------------------------------------------- LRN (cross-channel)
// scale = k + alpha/size * sum_{c' in [c - size/2, c + (size-1)/2]} x^2 ; y = x * scale^-beta.
extern "C" __global__ void lrn_fwd(const real* __restrict__ x, real* __restrict__ y,
                                   real* __restrict__ scale, int C, int HW, int size,
                                   real alpha_over_size, real beta, real kk, long long total)
{
    const idx_t T = (idx_t)total;
    for (idx_t idx = FIRST_INDEX; idx < T; idx += GRID_STRIDE) {
        const int c = (int)((idx / HW) % C);
        const int lo = imax(c - size / 2, 0);
        const int hi = imin(c + (size - 1) / 2, C - 1);
        const real* xp = x + idx + (idx_t)(lo - c) * HW;
        real ss = (real)0;
        for (int cc = lo; cc <= hi; ++cc) {
            const real v = *xp;
            ss += v * v;
            xp += HW;
        }
        const real sc = kk + alpha_over_size * ss;
        scale[idx] = sc;
        y[idx] = x[idx] * RPOW(sc, -beta);
    }
}

// dx = dy*scale^-beta - coef * x * sum_{c' in [c - (size-1)/2, c + size/2]} dy*y/scale, coef = 2*alpha*beta/size.
extern "C" __global__ void lrn_bwd(const real* __restrict__ dy, const real* __restrict__ x,
                                   const real* __restrict__ y, const real* __restrict__ scale,
                                   real* __restrict__ dx, int C, int HW, int size, real coef,
                                   real beta, long long total)
{
    const idx_t T = (idx_t)total;
    for (idx_t idx = FIRST_INDEX; idx < T; idx += GRID_STRIDE) {
        const int c = (int)((idx / HW) % C);
        const int lo = imax(c - (size - 1) / 2, 0);
        const int hi = imin(c + size / 2, C - 1);
        idx_t o = idx + (idx_t)(lo - c) * HW;
        real acc = (real)0;
        for (int cc = lo; cc <= hi; ++cc) {
            acc += dy[o] * y[o] / scale[o];
            o += HW;
        }
        dx[idx] = dy[idx] * RPOW(scale[idx], -beta) - coef * x[idx] * acc;
    }
}

// ---------------------------------------------------------------- softmax cross-entropy
// One thread per row; sums in double. nll[r] = log(sum exp(z - max)) - (z[label] - max), NaN for a
// label outside [0, K).
extern "C" __global__ void softmax_xent_rows(const real* __restrict__ logits,
                                             const long long* __restrict__ labels,
                                             real* __restrict__ probs, double* __restrict__ nll,
                                             int N, int K)
{
    for (idx_t r = FIRST_INDEX; r < (idx_t)N; r += GRID_STRIDE) {
        const real* z = logits + r * K;
        real* pr = probs + r * K;
        real m = z[0];
        for (int j = 1; j < K; ++j) m = z[j] > m ? z[j] : m;
        double s = 0.0;
        for (int j = 0; j < K; ++j) s += (double)REXP(z[j] - m);
        for (int j = 0; j < K; ++j) pr[j] = (real)((double)REXP(z[j] - m) / s);
        const long long lab = labels[r];
        double v = 0.0;
        if (lab >= 0 && lab < K) v = log(s) - (double)(z[lab] - m);
        else v = __longlong_as_double(0x7ff8000000000000LL);
        nll[r] = v;
    }
}
"""

KERNEL_NAMES = ("im2col", "col2im", "unfold_bias", "fold", "maxpool_fwd", "maxpool_bwd_gather",
                "relu_fwd", "relu_bwd", "lrn_fwd", "lrn_bwd", "softmax_xent_rows")


def kernel_source(dtype, index64=False):
    """The CUDA source of every kernel for ``dtype`` (float32/float64) and the index width."""
    char = _dtype(dtype).char
    return (_PRELUDE[char] + ("typedef long long idx_t;\n" if index64 else "typedef int idx_t;\n")
            + _SOURCE)


#: (dtype char, index64) -> cupy.RawModule; (name, dtype char, index64, device) -> kernel function
_MODULES = {}
_FUNCTIONS = {}


def _kernel(name, dtype, index64=False):
    key = (name, _dtype(dtype).char, bool(index64), cupy.cuda.runtime.getDevice())
    fn = _FUNCTIONS.get(key)
    if fn is None:
        mod = _MODULES.get(key[1:3])
        if mod is None:
            mod = _MODULES[key[1:3]] = cupy.RawModule(code=kernel_source(dtype, index64))
        fn = _FUNCTIONS[key] = mod.get_function(name)  # loaded on the current device
    return fn


def _launch(name, dtype, total, args, index_size=None):
    """Launch kernel ``name`` over ``total`` work items with a grid-stride 1-D grid."""
    total = int(total)
    if total <= 0:
        return
    big = max(total, int(index_size or 0)) >= INT32_INDEX_LIMIT
    grid = min(-(-total // BLOCK), MAX_BLOCKS)
    _kernel(name, dtype, big)((grid,), (BLOCK,), args)


# ============================================================================== helpers
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in _FLOATS:
        raise TypeError(f"gpu kernels support float32 and float64 arrays, got {dt}")
    return dt


def _dev(a, dtype=None):
    """``a`` as a C-contiguous CuPy array of ``dtype`` (default: its own, which must be float32/64)."""
    if not isinstance(a, cupy.ndarray):
        a = cupy.asarray(a)
    dt = _dtype(a.dtype if dtype is None else dtype)
    if a.dtype != dt:
        a = a.astype(dt)
    return cupy.ascontiguousarray(a)


def _scalar(dtype, v):
    return np.float32(v) if np.dtype(dtype) == np.float32 else np.float64(v)


def _i(v):
    return np.int32(v)


def _ll(v):
    return np.int64(v)


def _check_int(name, v, minimum):
    if int(v) != v or int(v) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _chunks(n, bytes_per_sample):
    """Split range(n) into consecutive chunks whose im2col matrix stays under COLS_BYTES_LIMIT."""
    per = max(1, int(COLS_BYTES_LIMIT // max(1, bytes_per_sample)))
    return [(i, min(n, i + per)) for i in range(0, n, per)]


def _im2col(x, kh, kw, stride, pad, ho, wo):
    """x (n, C, H, W) contiguous -> cols (C*kh*kw, n*ho*wo)."""
    n, c, h, w = x.shape
    ncols = n * ho * wo
    cols = cupy.empty((c * kh * kw, ncols), dtype=x.dtype)
    if cols.size == 0:
        return cols
    big = cols.size >= INT32_INDEX_LIMIT or x.size >= INT32_INDEX_LIMIT
    grid = (min(-(-ncols // BLOCK), MAX_BLOCKS), min(c, MAX_GRID_Y))
    _kernel("im2col", x.dtype, big)(grid, (BLOCK,), (
        x, cols, _i(c), _i(h), _i(w), _i(kh), _i(kw), _i(stride), _i(pad), _i(ho), _i(wo), _ll(ncols)))
    return cols


def _col2im(dcols, dx, kh, kw, stride, pad, ho, wo):
    """dcols (C*kh*kw, n*ho*wo) -> dx (n, C, H, W) (written in place, every element)."""
    n, c, h, w = dx.shape
    ncols = n * ho * wo
    _launch("col2im", dx.dtype, dx.size, (
        dcols, dx, _i(c), _i(h), _i(w), _i(kh), _i(kw), _i(stride), _i(pad), _i(ho), _i(wo),
        _ll(ncols), _ll(dx.size)), index_size=dcols.size)


def _fold(dy):
    """dy (n, F, Ho, Wo) contiguous -> dyT (F, n*Ho*Wo)."""
    n, f, ho, wo = dy.shape
    p = ho * wo
    dyt = cupy.empty((f, n * p), dtype=dy.dtype)
    _launch("fold", dy.dtype, dy.size, (dy, dyt, _i(f), _i(p), _ll(n * p), _ll(dy.size)))
    return dyt


def _conv_shapes(x_shape, w_shape, stride, pad):
    n, c, h, wd = (int(s) for s in x_shape)
    f, cw, kh, kw = (int(s) for s in w_shape)
    if cw != c:
        raise ValueError(f"conv: input has {c} channels but weights {tuple(w_shape)} expect {cw}")
    ho = conv_output_size(h, kh, stride, pad)
    wo = conv_output_size(wd, kw, stride, pad)
    return n, c, h, wd, f, kh, kw, ho, wo


# ============================================================================== convolution
def conv2d_forward(x, w, b, stride, pad):
    """Cross-correlation. x (N, C, H, W), w (F, C, kh, kw), b (F,) or None -> y (N, F, Ho, Wo)."""
    stride, pad = _check_int("stride", stride, 1), _check_int("pad", pad, 0)
    x = _dev(x)
    dt = x.dtype
    w = _dev(w, dt)
    n, c, h, wd, f, kh, kw, ho, wo = _conv_shapes(x.shape, w.shape, stride, pad)
    if b is not None:
        b = _dev(b, dt).reshape(-1)
        if b.shape[0] != f:
            raise ValueError(f"conv: bias has {b.shape[0]} entries, expected {f}")
    y = cupy.empty((n, f, ho, wo), dtype=dt)
    if y.size == 0:
        return y
    w2 = w.reshape(f, c * kh * kw)
    p = ho * wo
    for n0, n1 in _chunks(n, c * kh * kw * p * dt.itemsize):
        cols = _im2col(x[n0:n1], kh, kw, stride, pad, ho, wo)
        tmp = cupy.matmul(w2, cols)  # (F, nc*P): one GEMM for the whole chunk
        del cols
        yc = y[n0:n1]
        _launch("unfold_bias", dt, yc.size, (
            tmp, tmp if b is None else b, yc, _i(f), _i(p), _i(0 if b is None else 1),
            _ll((n1 - n0) * p), _ll(yc.size)), index_size=tmp.size)
    return y


def conv2d_backward(dy, x, w, stride, pad, need_dx=True):
    """Gradients of :func:`conv2d_forward`: (dx or None when ``need_dx`` is False, dw, db)."""
    stride, pad = _check_int("stride", stride, 1), _check_int("pad", pad, 0)
    x = _dev(x)
    dt = x.dtype
    w = _dev(w, dt)
    dy = _dev(dy, dt)
    n, c, h, wd, f, kh, kw, ho, wo = _conv_shapes(x.shape, w.shape, stride, pad)
    if tuple(dy.shape) != (n, f, ho, wo):
        raise ValueError(f"conv backward: dy has shape {tuple(dy.shape)}, expected {(n, f, ho, wo)}")
    k = c * kh * kw
    p = ho * wo
    w2 = w.reshape(f, k)
    dw2 = cupy.zeros((f, k), dtype=dt)
    db = cupy.zeros((f,), dtype=np.float64)
    dx = cupy.empty((n, c, h, wd), dtype=dt) if need_dx else None
    if dy.size == 0:
        if need_dx:
            dx[...] = 0
        return dx, dw2.reshape(w.shape), db.astype(dt)
    for n0, n1 in _chunks(n, k * p * dt.itemsize):
        dyt = _fold(dy[n0:n1])  # (F, nc*P)
        db += dyt.sum(axis=1, dtype=np.float64)
        cols = _im2col(x[n0:n1], kh, kw, stride, pad, ho, wo)
        dw2 += cupy.matmul(dyt, cols.T)
        del cols
        if need_dx:
            dcols = cupy.matmul(w2.T, dyt)  # (C*kh*kw, nc*P)
            _col2im(dcols, dx[n0:n1], kh, kw, stride, pad, ho, wo)
            del dcols
    return dx, dw2.reshape(w.shape), db.astype(dt)


def conv2d_backward_data(dy, w, x_shape, stride, pad):
    """Transposed convolution (gradient w.r.t. the input): dy (N, F, Ho, Wo) -> (N, C, H, W)."""
    stride, pad = _check_int("stride", stride, 1), _check_int("pad", pad, 0)
    dy = _dev(dy)
    dt = dy.dtype
    w = _dev(w, dt)
    n, c, h, wd, f, kh, kw, ho, wo = _conv_shapes(x_shape, w.shape, stride, pad)
    if tuple(dy.shape) != (n, f, ho, wo):
        raise ValueError(f"conv backward_data: dy has shape {tuple(dy.shape)}, expected {(n, f, ho, wo)} "
                         f"for input shape {tuple(x_shape)}")
    k = c * kh * kw
    p = ho * wo
    w2t = w.reshape(f, k).T
    dx = cupy.empty((n, c, h, wd), dtype=dt)
    if dx.size == 0:
        return dx
    if dy.size == 0:
        dx[...] = 0
        return dx
    for n0, n1 in _chunks(n, k * p * dt.itemsize):
        dyt = _fold(dy[n0:n1])
        dcols = cupy.matmul(w2t, dyt)
        del dyt
        _col2im(dcols, dx[n0:n1], kh, kw, stride, pad, ho, wo)
        del dcols
    return dx


# ============================================================================== max-pool
def maxpool_forward(x, k, stride, ceil_mode):
    """Max-pool with switches. x (N, C, H, W) -> y (N, C, Ho, Wo), switches int32 ``h*W + w``."""
    k, stride = _check_int("k", k, 1), _check_int("stride", stride, 1)
    x = _dev(x)
    n, c, h, w = x.shape
    ho = pool_output_size(h, k, stride, ceil_mode)
    wo = pool_output_size(w, k, stride, ceil_mode)
    y = cupy.empty((n, c, ho, wo), dtype=x.dtype)
    sw = cupy.empty((n, c, ho, wo), dtype=np.int32)
    _launch("maxpool_fwd", x.dtype, y.size, (
        x, y, sw, _i(h), _i(w), _i(ho), _i(wo), _i(k), _i(stride), _ll(y.size)), index_size=x.size)
    return y, sw


def _check_switch_windows(sw, h, w, k, stride, pad):
    """IndexError for a switch outside its (N, C) plane, ValueError for one outside its own pooling
    window (the gather only looks inside the windows; switches of ``maxpool_forward`` and of a padded
    ``MaxPool2d`` always are)."""
    ho, wo = sw.shape[2], sw.shape[3]
    if bool(((sw < 0) | (sw >= h * w)).any()):
        raise IndexError(f"maxpool backward: switches out of range [0, {h * w}) for planes of {h}x{w}")
    r, q = sw // w, sw % w
    h0 = (cupy.arange(ho, dtype=np.int32) * stride - pad).reshape(1, 1, ho, 1)
    w0 = (cupy.arange(wo, dtype=np.int32) * stride - pad).reshape(1, 1, 1, wo)
    outside = (r < h0) | (r >= h0 + k) | (q < w0) | (q >= w0 + k)
    if bool(outside.any()):
        raise ValueError(f"maxpool backward: {int(outside.sum())} switches lie outside their {k}x{k} "
                         f"stride-{stride} pad-{pad} pooling windows")


def maxpool_backward(dy, switches, x_shape, k, stride, pad=0):
    """Route ``dy`` to the switch positions, summing where windows overlap (also the unpooling).

    dy, switches (N, C, Ho, Wo) -> dx (N, C, H, W); ``k``, ``stride``, ``pad``: the pool's geometry
    (checked against the shapes). A deterministic gather, one thread per input pixel, over the windows
    that can hold it; every switch must lie inside its own window (ValueError otherwise; IndexError
    outside its plane).
    """
    dy = _dev(dy)
    dt = dy.dtype
    sw = switches if isinstance(switches, cupy.ndarray) else cupy.asarray(switches)
    sw = cupy.ascontiguousarray(sw.astype(np.int32, copy=False))
    n, c, h, w = (int(s) for s in x_shape)
    if tuple(sw.shape) != tuple(dy.shape) or dy.ndim != 4 or tuple(dy.shape[:2]) != (n, c):
        raise ValueError(f"maxpool backward: dy {tuple(dy.shape)} and switches {tuple(sw.shape)} do not "
                         f"match each other or the input shape {tuple(x_shape)}")
    kk, st, pd = check_pool_geometry(x_shape, dy.shape, k, stride, pad, what="maxpool backward")
    ho, wo = dy.shape[2], dy.shape[3]
    if n * c * h * w == 0 or dy.size == 0:
        return cupy.zeros((n, c, h, w), dtype=dt)
    _check_switch_windows(sw, h, w, kk, st, pd)
    dx = cupy.empty((n, c, h, w), dtype=dt)
    _launch("maxpool_bwd_gather", dt, dx.size, (dy, sw, dx, _i(h), _i(w), _i(ho), _i(wo), _i(kk), _i(st), _i(pd),
                                                _ll(dx.size)), index_size=dy.size)
    return dx


# ============================================================================== ReLU
def relu_forward(x):
    """``y = max(x, 0)``, any shape."""
    x = _dev(x)
    y = cupy.empty_like(x)
    _launch("relu_fwd", x.dtype, x.size, (x, y, _ll(x.size)))
    return y


def relu_backward(dy, x):
    """``dx = dy where x > 0 else 0`` (``x`` may be the forward output: same mask)."""
    dy = _dev(dy)
    x = _dev(x, dy.dtype)
    if x.shape != dy.shape:
        raise ValueError(f"relu backward: dy {tuple(dy.shape)} and x {tuple(x.shape)} differ")
    dx = cupy.empty_like(dy)
    _launch("relu_bwd", dy.dtype, dy.size, (dy, x, dx, _ll(dy.size)))
    return dx


# ============================================================================== LRN
def _lrn_check(x, size):
    if x.ndim != 4:
        raise ValueError(f"lrn: expected (N, C, H, W), got {tuple(x.shape)}")
    return _check_int("size", size, 1)


def lrn_forward(x, size, alpha, beta, k):
    """Cross-channel LRN. x (N, C, H, W) -> y, scale (same shape)."""
    x = _dev(x)
    size = _lrn_check(x, size)
    n, c, h, w = x.shape
    y = cupy.empty_like(x)
    scale = cupy.empty_like(x)
    dt = x.dtype
    _launch("lrn_fwd", dt, x.size, (
        x, y, scale, _i(c), _i(h * w), _i(size), _scalar(dt, alpha / size), _scalar(dt, beta),
        _scalar(dt, k), _ll(x.size)))
    return y, scale


def lrn_backward(dy, x, y, scale, size, alpha, beta, k):
    """Gradient of :func:`lrn_forward` w.r.t. x."""
    dy = _dev(dy)
    dt = dy.dtype
    x, y, scale = _dev(x, dt), _dev(y, dt), _dev(scale, dt)
    size = _lrn_check(dy, size)
    if not (dy.shape == x.shape == y.shape == scale.shape):
        raise ValueError("lrn backward: dy, x, y and scale must have the same shape")
    n, c, h, w = dy.shape
    dx = cupy.empty_like(dy)
    _launch("lrn_bwd", dt, dy.size, (
        dy, x, y, scale, dx, _i(c), _i(h * w), _i(size), _scalar(dt, 2.0 * alpha * beta / size),
        _scalar(dt, beta), _ll(dy.size)))
    return dx


# ============================================================================== LCN
def _lcn_check(x, size):
    if x.ndim != 4:
        raise ValueError(f"lcn: expected (N, C, H, W), got {tuple(x.shape)}")
    size = _check_int("size", size, 1)
    if size % 2 == 0 or size > min(x.shape[2], x.shape[3]):
        raise ValueError(f"lcn: window {size} must be odd and fit the {x.shape[2]}x{x.shape[3]} maps")
    return size


def lcn_forward(x, size, sigma, floor):
    """Local contrast normalization, as CuPy array operations on the reference formulas (no custom
    kernel yet: the windowed means are ``size**2`` shifted adds over (N, H, W) planes, C times smaller
    than the maps). x (N, C, H, W) -> y, v (N, C, H, W), sig (N, H, W), mean_sig (N,)."""
    x = _dev(x)
    return _reference.lcn_forward(x, _lcn_check(x, size), sigma, floor, xp=cupy)


def lcn_backward(dy, v, sig, mean_sig, size, sigma, floor):
    """Gradient of :func:`lcn_forward` w.r.t. x -> dx (N, C, H, W)."""
    dy = _dev(dy)
    dt = dy.dtype
    return _reference.lcn_backward(dy, _dev(v, dt), _dev(sig, dt), _dev(mean_sig, dt), _lcn_check(dy, size),
                                   sigma, floor, xp=cupy)


# ============================================================================== softmax
def softmax_xent(logits, labels):
    """Softmax cross-entropy. logits (N, K), labels (N,) int -> (mean NLL as a float, probs (N, K)).

    Labels outside ``[0, K)`` raise IndexError when they are a host array; on the device they make
    the loss NaN (checking them there would cost a synchronisation).
    """
    logits = _dev(logits)
    if logits.ndim != 2:
        raise ValueError(f"softmax_xent: expected logits (N, K), got {tuple(logits.shape)}")
    n, kc = logits.shape
    if not isinstance(labels, cupy.ndarray):
        host = np.asarray(labels).reshape(-1)
        if host.size and (host.min() < 0 or host.max() >= kc):
            raise IndexError(f"softmax_xent: labels must lie in [0, {kc}), got [{host.min()}, {host.max()}]")
    lab = cupy.ascontiguousarray(cupy.asarray(labels).reshape(-1).astype(np.int64, copy=False))
    if lab.shape[0] != n:
        raise ValueError(f"softmax_xent: {lab.shape[0]} labels for {n} rows")
    probs = cupy.empty_like(logits)
    if n == 0 or kc == 0:
        return float("nan"), probs
    nll = cupy.empty((n,), dtype=np.float64)
    _launch("softmax_xent_rows", logits.dtype, n, (logits, lab, probs, nll, _i(n), _i(kc)),
            index_size=logits.size)
    return float(nll.sum()) / n, probs
