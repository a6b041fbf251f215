"""The Numba CPU kernels against the NumPy reference (docs/design.md section 3: a fast kernel is done only
when this passes).

Random inputs in float32 and float64, batch 1 and odd batches, odd spatial sizes, every
(kernel, stride, pad, ceil) the models use plus random ones, ties and -inf in pooling. Switches must be
identical; values agree to 1e-5 (float32) / 1e-12 (float64) relative to the largest reference value.
"""
from __future__ import annotations

import numpy as np
import pytest

from zfscratch.kernels import CONTRACT, reference as ref

cpu = pytest.importorskip("zfscratch.kernels.cpu", reason="numba is not installed")

DTYPES = (np.float32, np.float64)
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}

# (kernel, stride, pad) of every convolution in zfnet / zfnet_small / alexnet_like
MODEL_CONVS = [(7, 2, 1), (5, 2, 0), (5, 1, 2), (3, 1, 1), (11, 4, 0), (11, 4, 2), (7, 2, 3)]
_r = np.random.default_rng(1234)
RANDOM_CONVS = [(int(k), int(s), int(_r.integers(0, k))) for k, s in zip(_r.integers(1, 6, 4), _r.integers(1, 4, 4))]
RANDOM_CONVS.append((3, 1, 0))  # the stride-1 unpadded path (no phase split)
MODEL_POOLS = [(3, 2, True), (3, 2, False), (2, 2, True), (2, 2, False)]
RANDOM_POOLS = [(int(k), int(s), bool(c)) for k, s, c in
                zip(_r.integers(1, 5, 4), _r.integers(1, 4, 4), _r.integers(0, 2, 4))]


def assert_close(got, want, dtype):
    """``max|got - want| <= tol * max|want|``, with the dtype's tolerance; dtypes must match."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-30)
    err = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
    assert err <= TOL[np.dtype(dtype)] * scale, f"max abs error {err:.3g} vs max |ref| {scale:.3g}"


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def test_contract_complete():
    missing = [name for name in CONTRACT if not callable(getattr(cpu, name, None))]
    assert not missing


def test_numba_backend_uses_cpu_kernels():
    from zfscratch.backend import get_backend
    be = get_backend("numba")
    assert be.kernels is cpu and be.xp is np
    assert get_backend("auto").name in ("numba", "cupy")


# ----------------------------------------------------------------------------- convolution
def _conv_case(rng, k, s, p, n, dtype, c=3, f=5):
    # odd input size that fits the kernel, a little different along H and W
    h = max(k - 2 * p, 1) + 2 * s + 3 + (k % 2 == 0)
    w = h + 2
    x = _rand(rng, (n, c, h, w), dtype)
    wt = _rand(rng, (f, c, k, k), dtype)
    b = _rand(rng, (f,), dtype)
    return x, wt, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p", MODEL_CONVS + RANDOM_CONVS)
@pytest.mark.parametrize("n", [1, 3])
def test_conv(k, s, p, n, dtype):
    rng = np.random.default_rng(k * 100 + s * 10 + p + n)
    x, wt, b = _conv_case(rng, k, s, p, n, dtype)
    y = cpu.conv2d_forward(x, wt, b, s, p)
    assert_close(y, ref.conv2d_forward(x, wt, b, s, p), dtype)
    assert_close(cpu.conv2d_forward(x, wt, None, s, p), ref.conv2d_forward(x, wt, None, s, p), dtype)
    dy = _rand(rng, y.shape, dtype)
    dx, dw, db = cpu.conv2d_backward(dy, x, wt, s, p)
    rdx, rdw, rdb = ref.conv2d_backward(dy, x, wt, s, p)
    assert_close(dx, rdx, dtype)
    assert_close(dw, rdw, dtype)
    assert_close(db, rdb, dtype)
    assert_close(cpu.conv2d_backward_data(dy, wt, x.shape, s, p), rdx, dtype)
    none, dw2, db2 = cpu.conv2d_backward(dy, x, wt, s, p, need_dx=False)
    assert none is None
    assert_close(dw2, rdw, dtype)
    assert_close(db2, rdb, dtype)


@pytest.mark.parametrize("target", [1, 2, 10 ** 6])
def test_conv_batch_folding(monkeypatch, target):
    """One image per GEMM, ragged chunks of images, and the whole batch in one GEMM agree."""
    hw = 7 * 7
    monkeypatch.setattr(cpu.conv, "_TARGET_COLS", target * hw)
    monkeypatch.setattr(cpu.conv, "_CHUNK_BYTES", 0)
    rng = np.random.default_rng(target)
    x = _rand(rng, (5, 4, 13, 13), np.float32)
    wt = _rand(rng, (6, 4, 3, 3), np.float32)
    b = _rand(rng, (6,), np.float32)
    y = cpu.conv2d_forward(x, wt, b, 2, 1)
    assert y.shape == (5, 6, 7, 7)
    assert_close(y, ref.conv2d_forward(x, wt, b, 2, 1), np.float32)
    dy = _rand(rng, y.shape, np.float32)
    for got, want in zip(cpu.conv2d_backward(dy, x, wt, 2, 1), ref.conv2d_backward(dy, x, wt, 2, 1)):
        assert_close(got, want, np.float32)
    assert_close(cpu.conv2d_backward_data(dy, wt, x.shape, 2, 1),
                 ref.conv2d_backward_data(dy, wt, x.shape, 2, 1), np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0, 1, 2])
@pytest.mark.parametrize("n,h,w,tiles", [(1, 13, 13, 1024), (3, 8, 11, 1024), (5, 7, 6, 20)])
def test_conv_winograd(monkeypatch, p, n, h, w, tiles, dtype):
    """3x3 stride-1 layers take the Winograd F(2x2, 3x3) path; odd sizes, ragged chunks of images."""
    monkeypatch.setattr(cpu.winograd, "_WINOGRAD_MIN_CHANNELS", 4)
    monkeypatch.setattr(cpu.winograd, "_WINO_TARGET_TILES", tiles)
    rng = np.random.default_rng(n * 10 + p)
    x = _rand(rng, (n, 5, h, w), dtype)
    wt = _rand(rng, (6, 5, 3, 3), dtype)
    b = _rand(rng, (6,), dtype)
    assert cpu._use_winograd(cpu._ConvGeom(x.shape, wt.shape, 1, p))
    y = cpu.conv2d_forward(x, wt, b, 1, p)
    assert_close(y, ref.conv2d_forward(x, wt, b, 1, p), dtype)
    assert_close(cpu.conv2d_forward(x, wt, None, 1, p), ref.conv2d_forward(x, wt, None, 1, p), dtype)
    dy = _rand(rng, y.shape, dtype)
    for got, want in zip(cpu.conv2d_backward(dy, x, wt, 1, p), ref.conv2d_backward(dy, x, wt, 1, p)):
        assert_close(got, want, dtype)
    none, dw, db = cpu.conv2d_backward(dy, x, wt, 1, p, need_dx=False)
    assert none is None
    assert_close(dw, ref.conv2d_backward(dy, x, wt, 1, p)[1], dtype)
    assert_close(cpu.conv2d_backward_data(dy, wt, x.shape, 1, p), ref.conv2d_backward_data(dy, wt, x.shape, 1, p),
                 dtype)


def test_conv_winograd_default_dispatch():
    """With the default threshold, a 32-channel 3x3 stride-1 layer (as in zfnet_small) uses Winograd."""
    rng = np.random.default_rng(11)
    x = _rand(rng, (2, 32, 8, 8), np.float32)
    wt = _rand(rng, (32, 32, 3, 3), np.float32)
    assert cpu._use_winograd(cpu._ConvGeom(x.shape, wt.shape, 1, 1))
    assert not cpu._use_winograd(cpu._ConvGeom(x.shape, wt.shape, 2, 1))
    assert_close(cpu.conv2d_forward(x, wt, None, 1, 1), ref.conv2d_forward(x, wt, None, 1, 1), np.float32)


def test_conv_zfnet_conv1_geometry():
    """conv1 of ZFNet (7x7 s2 p1) on a 224-wide input, whose last padded row no window reaches."""
    rng = np.random.default_rng(7)
    x = _rand(rng, (1, 3, 224, 224), np.float32)
    wt = _rand(rng, (4, 3, 7, 7), np.float32)
    y = cpu.conv2d_forward(x, wt, None, 2, 1)
    assert y.shape == (1, 4, 110, 110)
    assert_close(y, ref.conv2d_forward(x, wt, None, 2, 1), np.float32)
    dy = _rand(rng, y.shape, np.float32)
    assert_close(cpu.conv2d_backward_data(dy, wt, x.shape, 2, 1),
                 ref.conv2d_backward_data(dy, wt, x.shape, 2, 1), np.float32)


def test_conv_results_are_not_workspaces():
    """A later call must not overwrite an array returned earlier (workspaces stay inside)."""
    rng = np.random.default_rng(3)
    x1, x2 = _rand(rng, (2, 3, 9, 9), np.float32), _rand(rng, (2, 3, 9, 9), np.float32)
    wt = _rand(rng, (4, 3, 3, 3), np.float32)
    y1 = cpu.conv2d_forward(x1, wt, None, 1, 1)
    keep = y1.copy()
    dy = _rand(rng, y1.shape, np.float32)
    dx1, dw1, _ = cpu.conv2d_backward(dy, x1, wt, 1, 1)
    keep_dx, keep_dw = dx1.copy(), dw1.copy()
    cpu.conv2d_forward(x2, wt, None, 1, 1)
    cpu.conv2d_backward(dy, x2, wt, 1, 1)
    cpu.conv2d_backward_data(dy, wt, x2.shape, 1, 1)
    np.testing.assert_array_equal(y1, keep)
    np.testing.assert_array_equal(dx1, keep_dx)
    np.testing.assert_array_equal(dw1, keep_dw)


def test_conv_noncontiguous_and_shape_errors():
    rng = np.random.default_rng(4)
    x = _rand(rng, (2, 3, 11, 10), np.float32)[:, :, :, ::-1]  # negative strides
    wt = _rand(rng, (4, 3, 3, 3), np.float32)
    assert_close(cpu.conv2d_forward(x, wt, None, 2, 1), ref.conv2d_forward(x, wt, None, 2, 1), np.float32)
    with pytest.raises(ValueError):
        cpu.conv2d_forward(x, _rand(rng, (4, 2, 3, 3), np.float32), None, 1, 0)
    with pytest.raises(ValueError):
        cpu.conv2d_backward_data(_rand(rng, (2, 4, 3, 3), np.float32), wt, (2, 3, 11, 10), 1, 0)


# ----------------------------------------------------------------------------- max-pool
def _pool_input(rng, shape, dtype, kind):
    if kind == "ties":  # few distinct values: many ties inside each window
        return rng.integers(-2, 3, size=shape).astype(dtype)
    x = _rand(rng, shape, dtype)
    if kind == "-inf":  # scattered -inf, plus a plane that is -inf everywhere
        x[rng.random(shape) < 0.3] = -np.inf
        x[0, 0] = -np.inf
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,ceil", MODEL_POOLS + RANDOM_POOLS)
@pytest.mark.parametrize("n,h,w", [(1, 13, 13), (3, 12, 17), (2, 7, 8), (1, 9, 71), (2, 26, 26)])  # 26: pool2
@pytest.mark.parametrize("kind", ["random", "ties", "-inf"])
def test_maxpool(k, s, ceil, n, h, w, dtype, kind):
    rng = np.random.default_rng(k * 1000 + s * 100 + h + w + n)
    x = _pool_input(rng, (n, 3, h, w), dtype, kind)
    y, sw = cpu.maxpool_forward(x, k, s, ceil)
    ry, rsw = ref.maxpool_forward(x, k, s, ceil)
    assert sw.dtype == np.int32 and y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(sw, rsw)
    np.testing.assert_array_equal(y, ry)
    dy = _rand(rng, y.shape, dtype)
    dx = cpu.maxpool_backward(dy, sw, x.shape, k, s)
    assert_close(dx, ref.maxpool_backward(dy, rsw, x.shape, k, s), dtype)


def test_maxpool_nan_matches_argmax():
    """A NaN wins its window (np.argmax semantics: the first NaN), as in the reference."""
    rng = np.random.default_rng(5)
    x = _rand(rng, (2, 2, 9, 9), np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    y, sw = cpu.maxpool_forward(x, 3, 2, True)
    ry, rsw = ref.maxpool_forward(x, 3, 2, True)
    np.testing.assert_array_equal(sw, rsw)
    np.testing.assert_array_equal(y, ry)  # NaNs at the same places count as equal


def test_maxpool_backward_bad_switches():
    dy = np.ones((1, 1, 2, 2), np.float32)
    sw = np.array([[[[0, 1], [2, 99]]]], np.int32)
    with pytest.raises(IndexError):
        cpu.maxpool_backward(dy, sw, (1, 1, 3, 3), 2, 1)


# ----------------------------------------------------------------------------- ReLU
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu(dtype):
    rng = np.random.default_rng(6)
    x = _rand(rng, (3, 5, 7, 9), dtype)
    x.flat[::7] = 0
    x.flat[1::11] = -np.inf
    x.flat[2::13] = np.inf
    dy = _rand(rng, x.shape, dtype)
    y = cpu.relu_forward(x)
    np.testing.assert_array_equal(y, ref.relu_forward(x))
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(cpu.relu_backward(dy, x), ref.relu_backward(dy, x))
    np.testing.assert_array_equal(cpu.relu_backward(dy, y), ref.relu_backward(dy, x))  # mask from y
    xn = np.array([np.nan, -1.0, 2.0], dtype)
    np.testing.assert_array_equal(cpu.relu_forward(xn), ref.relu_forward(xn))
    v = _rand(rng, (11,), dtype)[::2]  # non-contiguous
    np.testing.assert_array_equal(cpu.relu_forward(v), ref.relu_forward(v))


# ----------------------------------------------------------------------------- LRN
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 2.0), (5, 0.5, 0.75, 1.0), (3, 0.3, 0.6, 1.5),
                                               (4, 0.2, 0.5, 1.0), (1, 1.0, 1.0, 2.0), (7, 0.1, 0.75, 2.0)])
@pytest.mark.parametrize("shape", [(1, 6, 5, 7), (3, 4, 3, 3)])
def test_lrn(size, alpha, beta, k, shape, dtype):
    rng = np.random.default_rng(size + shape[0])
    x = _rand(rng, shape, dtype) * 2
    y, scale = cpu.lrn_forward(x, size, alpha, beta, k)
    ry, rscale = ref.lrn_forward(x, size, alpha, beta, k)
    assert_close(y, ry, dtype)
    assert_close(scale, rscale, dtype)
    dy = _rand(rng, shape, dtype)
    assert_close(cpu.lrn_backward(dy, x, y, scale, size, alpha, beta, k),
                 ref.lrn_backward(dy, x, ry, rscale, size, alpha, beta, k), dtype)


# ----------------------------------------------------------------------------- softmax
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,kk", [(1, 10), (5, 7), (16, 1000)])
def test_softmax_xent(n, kk, dtype):
    rng = np.random.default_rng(n + kk)
    z = _rand(rng, (n, kk), dtype) * 5
    z[0, 0] = 80.0  # large logits stay finite after the max shift
    labels = rng.integers(0, kk, n)
    if kk > 1:
        z[0, 1] = -np.inf
        labels[0] = 0
    loss, probs = cpu.softmax_xent(z, labels)
    rloss, rprobs = ref.softmax_xent(z, labels)
    assert isinstance(loss, float)
    assert abs(loss - rloss) <= TOL[np.dtype(dtype)] * max(abs(rloss), 1.0)
    assert_close(probs, rprobs, dtype)


def test_softmax_xent_bad_labels():
    with pytest.raises(IndexError):
        cpu.softmax_xent(np.zeros((2, 3), np.float32), np.array([0, 3]))


# ----------------------------------------------------------------------------- split GEMM
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_split_and_blas_threads_restored(dtype):
    rng = np.random.default_rng(8)
    a = _rand(rng, (67, 301), dtype)
    b = _rand(rng, (301, 403), dtype)
    before = cpu._BLAS.get() if cpu._BLAS.get is not None else None
    got = cpu.matmul(a, b)
    assert_close(got, a.astype(np.float64) @ b, dtype)
    assert_close(cpu.matmul(a, np.ascontiguousarray(b.T).T), a.astype(np.float64) @ b, dtype)  # transposed view
    assert_close(cpu.matmul(a[:, :3], b[:3]), a[:, :3].astype(np.float64) @ b[:3], dtype)  # too small to split
    if before is not None:
        assert cpu._BLAS.get() == before
