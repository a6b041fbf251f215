"""One conformance table over every backend's kernel module: reference, numba, the GPU module under the CPU
emulation of ``tests/test_gpu.py``, and the real GPU when CuPy sees one (each skips cleanly when it cannot
run). Every REQUIRED kernel is compared with ``kernels.reference`` on the same random inputs (float32 1e-5,
float64 1e-12 relative to the largest reference magnitude; switches exactly); OPTIONAL kernels a backend
defines are compared too. The backends' own test files go deeper (edge cases, threading, chunking).
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from zfscratch import kernels
from zfscratch.kernels import reference as ref

RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
DTYPES = (np.float32, np.float64)


class Kern:
    """A kernel module and how to move arrays to and from it."""

    def __init__(self, name, mod, xp):
        self.name, self.mod, self.xp = name, mod, xp

    def dev(self, a):
        return self.xp.asarray(a)

    @staticmethod
    def host(a):
        return np.asarray(a.get() if hasattr(a, "get") else a)


def _emulated():
    import shutil
    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("no C++ compiler for the emulated GPU kernels")
    import test_gpu  # the emulation lives beside the GPU tests
    mod, fake = test_gpu._load_emulated()
    return Kern("gpu-emulated", mod, fake)


def _real_gpu():
    try:
        from zfscratch.kernels import gpu
    except ImportError as e:
        pytest.skip(f"CuPy not importable: {e}")
    if not gpu.is_available():
        pytest.skip("no usable CUDA GPU")
    import cupy
    return Kern("gpu", gpu, cupy)


def _cpu():
    return Kern("numba", pytest.importorskip("zfscratch.kernels.cpu", reason="numba is not installed"), np)


_MAKERS = {"reference": lambda: Kern("reference", ref, np), "numba": _cpu, "gpu-emulated": _emulated,
           "gpu": _real_gpu}
_CACHE = {}


@pytest.fixture(scope="module", params=["reference", "numba", "gpu-emulated",
                                        pytest.param("gpu", marks=pytest.mark.gpu)])
def kern(request):
    if request.param not in _CACHE:
        _CACHE[request.param] = _MAKERS[request.param]()
    return _CACHE[request.param]


def _close(got, want, dtype, what):
    got = np.asarray(Kern.host(got), np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-30)
    err = float(np.max(np.abs(got - want))) / scale if want.size else 0.0
    assert err <= RTOL[np.dtype(dtype)], f"{what}: relative error {err:.3g}"


# ----------------------------------------------------------------------------- the table
def case_conv(k, rng, dt, kk, stride, pad):
    x = rng.standard_normal((2, 3, 11, 9)).astype(dt)
    w = rng.standard_normal((4, 3, kk, kk)).astype(dt)
    b = rng.standard_normal(4).astype(dt)
    y_ref = ref.conv2d_forward(x, w, b, stride, pad)
    _close(k.mod.conv2d_forward(k.dev(x), k.dev(w), k.dev(b), stride, pad), y_ref, dt, "conv2d_forward")
    dy = rng.standard_normal(y_ref.shape).astype(dt)
    want = ref.conv2d_backward(dy, x, w, stride, pad)
    got = k.mod.conv2d_backward(k.dev(dy), k.dev(x), k.dev(w), stride, pad)
    for g, r, what in zip(got, want, ("dx", "dw", "db")):
        _close(g, r, dt, f"conv2d_backward {what}")
    _close(k.mod.conv2d_backward_data(k.dev(dy), k.dev(w), x.shape, stride, pad), want[0], dt,
           "conv2d_backward_data")


def case_pool(k, rng, dt, kk, stride, ceil):
    x = rng.standard_normal((2, 3, 13, 10)).astype(dt)
    y_ref, sw_ref = ref.maxpool_forward(x, kk, stride, ceil)
    y, sw = k.mod.maxpool_forward(k.dev(x), kk, stride, ceil)
    np.testing.assert_array_equal(Kern.host(sw), sw_ref)
    np.testing.assert_array_equal(Kern.host(y), y_ref)
    dy = rng.standard_normal(y_ref.shape).astype(dt)
    _close(k.mod.maxpool_backward(k.dev(dy), sw, x.shape, kk, stride), ref.maxpool_backward(dy, sw_ref, x.shape,
                                                                                            kk, stride),
           dt, "maxpool_backward")
    with pytest.raises(ValueError):  # a geometry that does not map the shapes
        k.mod.maxpool_backward(k.dev(dy), sw, x.shape, kk + 5, stride)


def case_relu(k, rng, dt):
    x = rng.standard_normal((2, 3, 5, 4)).astype(dt)
    np.testing.assert_array_equal(Kern.host(k.mod.relu_forward(k.dev(x))), ref.relu_forward(x))
    dy = rng.standard_normal(x.shape).astype(dt)
    np.testing.assert_array_equal(Kern.host(k.mod.relu_backward(k.dev(dy), k.dev(x))), ref.relu_backward(dy, x))


def case_lrn(k, rng, dt):
    x = rng.standard_normal((2, 7, 4, 5)).astype(dt)
    args = (5, 1e-4, 0.75, 2.0)
    y_ref, s_ref = ref.lrn_forward(x, *args)
    y, s = k.mod.lrn_forward(k.dev(x), *args)
    _close(y, y_ref, dt, "lrn_forward y")
    _close(s, s_ref, dt, "lrn_forward scale")
    dy = rng.standard_normal(x.shape).astype(dt)
    _close(k.mod.lrn_backward(k.dev(dy), k.dev(x), y, s, *args), ref.lrn_backward(dy, x, y_ref, s_ref, *args),
           dt, "lrn_backward")


def case_lcn(k, rng, dt):
    x = rng.standard_normal((2, 3, 7, 6)).astype(dt)
    args = (3, 1.0, 1e-4)
    want = ref.lcn_forward(x, *args)
    got = k.mod.lcn_forward(k.dev(x), *args)
    for g, r, what in zip(got, want, ("y", "v", "sig", "mean_sig")):
        _close(g, r, dt, f"lcn_forward {what}")
    dy = rng.standard_normal(x.shape).astype(dt)
    _close(k.mod.lcn_backward(k.dev(dy), *got[1:], *args), ref.lcn_backward(dy, *want[1:], *args), dt,
           "lcn_backward")


def case_softmax(k, rng, dt):
    z = (rng.standard_normal((6, 5)) * 4).astype(dt)
    lab = rng.integers(0, 5, 6)
    loss_ref, p_ref = ref.softmax_xent(z, lab)
    loss, p = k.mod.softmax_xent(k.dev(z), k.dev(lab))
    assert abs(float(loss) - loss_ref) <= RTOL[np.dtype(dt)] * max(1.0, abs(loss_ref))
    _close(p, p_ref, dt, "softmax_xent probs")


CASES = [
    ("conv 3x3 s1 p1", case_conv, (3, 1, 1)), ("conv 5x5 s2 p0", case_conv, (5, 2, 0)),
    ("conv 7x7 s2 p1", case_conv, (7, 2, 1)), ("conv 3x3 s3 p2", case_conv, (3, 3, 2)),
    ("pool 3/2 ceil", case_pool, (3, 2, True)), ("pool 2/2 floor", case_pool, (2, 2, False)),
    ("pool 3/1 floor", case_pool, (3, 1, False)), ("relu", case_relu, ()), ("lrn", case_lrn, ()),
    ("lcn", case_lcn, ()), ("softmax_xent", case_softmax, ()),
]


def test_every_required_kernel_is_defined(kern):
    assert kernels.missing(kern.mod) == []


def test_the_table_covers_the_contract():
    covered = {"conv": ("conv2d_forward", "conv2d_backward", "conv2d_backward_data"),
               "pool": ("maxpool_forward", "maxpool_backward"), "relu": ("relu_forward", "relu_backward"),
               "lrn": ("lrn_forward", "lrn_backward"), "lcn": ("lcn_forward", "lcn_backward"),
               "softmax_xent": ("softmax_xent",)}
    names = {n for label, _, _ in CASES for key, ks in covered.items() if label.startswith(key) for n in ks}
    assert names == set(kernels.REQUIRED)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label,case,args", CASES, ids=[c[0] for c in CASES])
def test_conforms_to_reference(kern, label, case, args, dtype):
    case(kern, np.random.default_rng(zlib.crc32(label.encode())), dtype, *args)


@pytest.mark.parametrize("dtype", DTYPES)
def test_optional_kernels_conform(kern, dtype):
    rng = np.random.default_rng(7)
    mm = kernels.optional(kern.mod, "matmul")
    if mm is not None:
        a, b = rng.standard_normal((17, 9)).astype(dtype), rng.standard_normal((9, 13)).astype(dtype)
        _close(mm(kern.dev(a), kern.dev(b)), a.astype(np.float64) @ b, dtype, "matmul")
    upd = kernels.optional(kern.mod, "sgd_update")
    if upd is not None:
        p, g, v = (rng.standard_normal(50).astype(dtype) for _ in range(3))
        pr, vr = p.copy(), v.copy()
        ref.sgd_update(pr, g, vr, 0.1, 0.9, 5e-4)
        pd, vd = kern.dev(p.copy()), kern.dev(v.copy())
        upd(pd, kern.dev(g), vd, 0.1, 0.9, 5e-4)
        _close(pd, pr, dtype, "sgd_update p")
        _close(vd, vr, dtype, "sgd_update v")
    lf = kernels.optional(kern.mod, "linear_forward")
    if lf is not None:
        x, w, b = (rng.standard_normal(s).astype(dtype) for s in ((4, 5), (6, 5), (6,)))
        _close(lf(kern.dev(x), kern.dev(w), kern.dev(b)), ref.linear_forward(x, w, b), dtype, "linear_forward")
    lb = kernels.optional(kern.mod, "linear_backward")
    if lb is not None:
        dy, x, w = (rng.standard_normal(s).astype(dtype) for s in ((4, 6), (4, 5), (6, 5)))
        gw, gb = np.ones((6, 5), dtype), np.ones(6, dtype)
        gwr, gbr = gw.copy(), gb.copy()
        dx_ref = ref.linear_backward(dy, x, w, gwr, gbr)
        gwd, gbd = kern.dev(gw), kern.dev(gb)
        _close(lb(kern.dev(dy), kern.dev(x), kern.dev(w), gwd, gbd), dx_ref, dtype, "linear_backward dx")
        _close(gwd, gwr, dtype, "linear_backward gw")
        _close(gbd, gbr, dtype, "linear_backward gb")
    with pytest.raises(KeyError):
        kernels.optional(kern.mod, "not_a_kernel")
