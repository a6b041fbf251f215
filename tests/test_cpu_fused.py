"""Fused CPU kernels beyond the layer contract (fully connected backward; the strided-convolution paths)
against their NumPy reference twins: float32 to 1e-5 and float64 to 1e-12 relative to the largest
reference value, odd sizes, accumulation into non-zero gradients."""
from __future__ import annotations

import numpy as np
import pytest

from zfscratch.kernels import reference as ref

cpu = pytest.importorskip("zfscratch.kernels.cpu", reason="numba is not installed")

DTYPES = (np.float32, np.float64)
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def assert_close(got, want, dtype):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-30)
    err = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
    assert err <= TOL[np.dtype(dtype)] * scale, f"max abs error {err:.3g} vs max |ref| {scale:.3g}"


# ----------------------------------------------------------------------------- fully connected backward
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,m", [(1, 37, 1), (3, 1031, 7), (5, 2053, 33), (16, 3000, 9), (17, 129, 64),
                                   (64, 300, 5), (65, 40, 6)])
@pytest.mark.parametrize("threads", [1, 2])
def test_linear_backward(n, k, m, dtype, threads):
    import numba
    rng = np.random.default_rng(n * 1000 + k + m)
    dy = rng.standard_normal((n, m)).astype(dtype)
    x = rng.standard_normal((n, k)).astype(dtype)
    w = rng.standard_normal((m, k)).astype(dtype)
    gw0 = rng.standard_normal((m, k)).astype(dtype)  # accumulate onto what is already there
    gb0 = rng.standard_normal(m).astype(dtype)
    rgw, rgb = gw0.copy(), gb0.copy()
    rdx = ref.linear_backward(dy, x, w, rgw, rgb)
    gw, gb = gw0.copy(), gb0.copy()
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        dx = cpu.linear_backward(dy, x, w, gw, gb)
    finally:
        numba.set_num_threads(before)
    assert_close(dx, rdx, dtype)
    assert_close(gw, rgw, dtype)
    assert_close(gb, rgb, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,m", [(1, 37, 4), (3, 1031, 7), (5, 2053, 33), (16, 3000, 515), (17, 129, 64),
                                   (64, 300, 1000), (65, 40, 6)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward(n, k, m, dtype, threads, bias):
    import numba
    rng = np.random.default_rng(n * 1000 + k + m)
    x = rng.standard_normal((n, k)).astype(dtype)
    w = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype) if bias else None
    want = x.astype(np.float64) @ w.T.astype(np.float64) + (b if bias else 0)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        y = cpu.linear_forward(x, w, b)
    finally:
        numba.set_num_threads(before)
    assert_close(y, want, dtype)
    assert_close(ref.linear_forward(x, w, b), want, dtype)


def test_linear_forward_views_nan_and_shape_errors():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 50)).astype(np.float32)[:, ::2]  # a strided view
    w = rng.standard_normal((40, 25)).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    w[7, 3] = np.nan
    y = cpu.linear_forward(x, w, b)
    want = ref.linear_forward(x, w, b)
    assert np.array_equal(np.isnan(y), np.isnan(want)) and np.isnan(y[:, 7]).all()
    ok = ~np.isnan(want)
    assert np.allclose(y[ok], want[ok], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        cpu.linear_forward(x, w[:, :24], b)
    with pytest.raises(ValueError, match="do not match"):
        cpu.linear_forward(x, w, b[:5])


def test_linear_backward_views_nan_and_shape_errors():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 50)).astype(np.float32)[:, ::2]  # a strided view
    dy = rng.standard_normal((4, 6)).astype(np.float32)
    w = rng.standard_normal((6, 25)).astype(np.float32)
    w[2, 3] = np.nan
    gw, gb = np.zeros((6, 25), np.float32), np.zeros(6, np.float32)
    dx = cpu.linear_backward(dy, x, w, gw, gb)
    rgw, rgb = np.zeros_like(gw), np.zeros_like(gb)
    rdx = ref.linear_backward(dy, x, w, rgw, rgb)
    assert np.array_equal(np.isnan(dx), np.isnan(rdx)) and np.isnan(dx[:, 3]).all()
    ok = ~np.isnan(rdx)
    assert np.allclose(dx[ok], rdx[ok], rtol=1e-5, atol=1e-5) and np.allclose(gw, rgw, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        cpu.linear_backward(dy, x, w[:, :24], gw, gb)


def test_linear_layer_uses_fused_backward_and_matches_numpy_backend():
    from zfscratch.backend import get_backend
    from zfscratch.layers import Linear
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 300)).astype(np.float32)
    dy = rng.standard_normal((7, 11)).astype(np.float32)
    out = {}
    for name in ("numba", "numpy"):
        layer = Linear(300, 11, rng=np.random.default_rng(0))
        layer.set_backend(get_backend(name))
        layer.forward(x, train=True)
        dx = layer.backward(dy)
        dx = layer.backward(dy)  # twice: gradients accumulate
        out[name] = (dx, layer.grads["w"].copy(), layer.grads["b"].copy())
    for got, want in zip(out["numba"], out["numpy"]):
        assert_close(got, want.astype(np.float64), np.float32)


# ----------------------------------------------------------------------------- strided convolutions
def _check_conv(x, wt, b, s, p, dtype):
    y = cpu.conv2d_forward(x, wt, b, s, p)
    assert_close(y, ref.conv2d_forward(x, wt, b, s, p), dtype)
    assert_close(cpu.conv2d_forward(x, wt, None, s, p), ref.conv2d_forward(x, wt, None, s, p), dtype)
    dy = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
    rdx, rdw, rdb = ref.conv2d_backward(dy, x, wt, s, p)
    dx, dw, db = cpu.conv2d_backward(dy, x, wt, s, p)
    for got, want in ((dx, rdx), (dw, rdw), (db, rdb)):
        assert_close(got, want, dtype)
    none, dw1, db1 = cpu.conv2d_backward(dy, x, wt, s, p, need_dx=False)
    assert none is None
    assert_close(dw1, rdw, dtype)
    assert_close(db1, rdb, dtype)
    assert_close(cpu.conv2d_backward_data(dy, wt, x.shape, s, p), rdx, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p", [(5, 2, 0), (5, 2, 2), (6, 2, 1), (6, 2, 0), (7, 3, 0), (9, 3, 4), (11, 4, 2)])
@pytest.mark.parametrize("n,h", [(1, 17), (3, 20)])
def test_conv_stride_phases_winograd(k, s, p, n, h, dtype):
    """Strided k x k layers whose stride-phase sub-kernels are 3x3 go through Winograd on the phases
    (ZFNet's conv2); odd and even padded sizes (the phase convolution's output is cropped for some)."""
    from zfscratch.kernels.cpu import conv
    rng = np.random.default_rng(k * 100 + s * 10 + p + n)
    c, f = -(-32 // (s * s)), 33  # just enough phase channels for the Winograd dispatch
    h = max(h, k + 2 * s)
    x = rng.standard_normal((n, c, h, h + 3)).astype(dtype)
    wt = rng.standard_normal((f, c, k, k)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    assert conv._use_phase_winograd(conv._ConvGeom(x.shape, wt.shape, s, p))
    _check_conv(x, wt, b, s, p, dtype)


def test_conv_stride_phases_dispatch():
    from zfscratch.kernels.cpu import conv
    geo = lambda c, f, k, s: conv._ConvGeom((1, c, 40, 40), (f, c, k, k), s, 0)
    assert conv._use_phase_winograd(geo(96, 256, 5, 2))  # ZFNet conv2
    assert not conv._use_phase_winograd(geo(3, 96, 7, 2))  # conv1: sub-kernels 4x4
    assert not conv._use_phase_winograd(geo(4, 256, 5, 2))  # too few phase channels
    assert not conv._use_phase_winograd(geo(96, 256, 3, 1))  # stride 1: plain Winograd's


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p", [(7, 2, 1), (7, 2, 3), (3, 1, 0), (11, 4, 2), (1, 1, 0), (4, 3, 2)])
@pytest.mark.parametrize("block_cols", [7, 50, 2048])
@pytest.mark.parametrize("threads", [1, 2])
def test_conv_row_blocks(monkeypatch, k, s, p, block_cols, threads, dtype):
    """Thin-K layers (ZFNet's conv1) by row blocks of one image: blocks of one output row, uneven
    blocks and whole images; one thread and two."""
    import numba
    from zfscratch.kernels.cpu import conv, convblock
    monkeypatch.setattr(convblock, "_ROWBLOCK_COLS", block_cols)
    rng = np.random.default_rng(k * 100 + s * 10 + p + block_cols)
    h = 16 * s + k - 2 * p + 1  # at least 16 x 17 outputs: the row-block dispatch
    x = rng.standard_normal((3, 3, h, h + 2)).astype(dtype)
    wt = rng.standard_normal((5, 3, k, k)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    geo = conv._ConvGeom(x.shape, wt.shape, s, p)
    assert conv._use_rowblock(geo) and not conv._use_phase_winograd(geo)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        _check_conv(x, wt, b, s, p, dtype)
    finally:
        numba.set_num_threads(before)


# ----------------------------------------------------------------------------- small vs large element-wise
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [7, 4096, (1 << 16) + 3])  # serial below 1 << 16, parallel above
def test_relu_and_sgd_serial_and_parallel_paths(size, dtype):
    rng = np.random.default_rng(size)
    x = rng.standard_normal(size).astype(dtype)
    x[::5] = 0
    x[1::9] = np.nan
    dy = rng.standard_normal(size).astype(dtype)
    np.testing.assert_array_equal(cpu.relu_forward(x), ref.relu_forward(x))
    np.testing.assert_array_equal(cpu.relu_backward(dy, x), ref.relu_backward(dy, x))
    p, g, v = (rng.standard_normal(size).astype(dtype) for _ in range(3))
    p2, g2, v2 = p.copy(), g.copy(), v.copy()
    ref.sgd_update(p, g, v, 0.1, 0.9, 5e-4)
    cpu.sgd_update(p2, g2, v2, 0.1, 0.9, 5e-4)
    assert_close(p2, p.astype(np.float64), dtype)
    assert_close(v2, v.astype(np.float64), dtype)
