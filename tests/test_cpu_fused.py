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
