"""The CuPy backend (``zfscratch.kernels.gpu``) against the reference kernels, and the engine on it.

Every test runs on two implementations of the GPU module:

* ``cupy``: the real module on a CUDA GPU (marked ``gpu``; skipped without CuPy or a device);
* ``emulated``: the *same* ``kernels/gpu.py`` loaded with a stand-in for CuPy built on NumPy, whose
  ``RawModule`` compiles the module's CUDA source as C++ with the host compiler and runs each launch
  thread by thread (grid and block loops in C). It checks the kernels' index arithmetic, launch
  geometry, argument types (exact NumPy scalar types, contiguous arrays of the declared dtype) and
  out-of-bounds accesses (every array is surrounded by NaN/sentinel guard zones that must stay
  untouched) on any machine with ``g++``. It cannot see races, atomics or device limits other than
  the grid/block sizes: those need the real GPU (``scripts/gpu_check.sh``).

Tolerances: float32 ``1e-5`` and float64 ``1e-12``, relative to the largest reference magnitude;
max-pool values, switches and ReLU are compared exactly.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest

import zfscratch.kernels as kernels_pkg
from zfscratch.kernels import CONTRACT
from zfscratch.kernels import reference as ref

GPU_PY = Path(kernels_pkg.__file__).with_name("gpu.py")
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
DTYPES = (np.float32, np.float64)

# every (k, stride, pad) of the models' convolutions (zfnet, zfnet_small, alexnet_like) and a few more
CONV_CASES = [
    (7, 2, 1, (17, 15)),   # zfnet conv1
    (5, 2, 0, (15, 13)),   # zfnet conv2
    (5, 1, 2, (11, 9)),    # zfnet_small conv2
    (3, 1, 1, (9, 7)),     # conv3-5
    (11, 4, 0, (27, 23)),  # AlexNet conv1
    (11, 4, 2, (25, 21)),  # alexnet_like conv1
    (7, 2, 3, (13, 11)),   # zfnet_small conv1
    (3, 2, 0, (8, 9)),
    (1, 1, 0, (5, 4)),
]
POOL_CASES = [(3, 2, True), (3, 2, False), (2, 2, False), (2, 2, True), (3, 1, True), (5, 3, True)]
POOL_SHAPES = [(13, 11), (8, 7), (7, 9), (55, 54), (3, 4), (2, 5), (1, 1)]


# ============================================================================== emulated CuPy
_SIG = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)
_TYPEDEF = re.compile(r"typedef\s+([\w ]+?)\s+(\w+)\s*;")
_BASE = {"float": (np.float32, ctypes.c_float), "double": (np.float64, ctypes.c_double),
         "int": (np.int32, ctypes.c_int), "long long": (np.int64, ctypes.c_longlong)}
_SHIM = r"""
#include <math.h>
#include <string.h>
struct emu_dim3 { unsigned int x, y, z; };
static emu_dim3 threadIdx, blockIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
static inline float atomicAdd(float* a, float v) { float o = *a; *a = o + v; return o; }
static inline double atomicAdd(double* a, double v) { double o = *a; *a = o + v; return o; }
static inline double __longlong_as_double(long long v) { double d; memcpy(&d, &v, 8); return d; }
static inline long long __double_as_longlong(double v) { long long d; memcpy(&d, &v, 8); return d; }
"""
_LAUNCHER = """
extern "C" void emu_launch_{name}(unsigned emu_gx, unsigned emu_gy, unsigned emu_gz, unsigned emu_bx,
                                  unsigned emu_by, unsigned emu_bz, {plist})
{{
    gridDim.x = emu_gx; gridDim.y = emu_gy; gridDim.z = emu_gz;
    blockDim.x = emu_bx; blockDim.y = emu_by; blockDim.z = emu_bz;
    for (unsigned emu_z = 0; emu_z < emu_gz; ++emu_z)
    for (unsigned emu_y = 0; emu_y < emu_gy; ++emu_y)
    for (unsigned emu_x = 0; emu_x < emu_gx; ++emu_x) {{
        blockIdx.x = emu_x; blockIdx.y = emu_y; blockIdx.z = emu_z;
        for (unsigned emu_tz = 0; emu_tz < emu_bz; ++emu_tz)
        for (unsigned emu_ty = 0; emu_ty < emu_by; ++emu_ty)
        for (unsigned emu_tx = 0; emu_tx < emu_bx; ++emu_tx) {{
            threadIdx.x = emu_tx; threadIdx.y = emu_ty; threadIdx.z = emu_tz;
            {name}({names});
        }}
    }}
}}
"""


def _cxx():
    return shutil.which("g++") or shutil.which("c++")


def _parse_params(plist, typedefs):
    params = []
    for raw in plist.split(","):
        tok = raw.replace("*", " * ").split()
        base = " ".join(t for t in tok[:-1] if t not in ("const", "__restrict__", "*"))
        params.append((tok[-1], "*" in tok, typedefs.get(base, base)))
    return params


class _EmuKernel:
    """One kernel of an emulated module: checks a launch like CUDA/CuPy would, then runs it."""

    def __init__(self, lib, name, params):
        self.name, self.params = name, params
        self.fn = getattr(lib, f"emu_launch_{name}")
        self.fn.restype = None
        self.fn.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_void_p if ptr else _BASE[base][1]
                                                  for _, ptr, base in params]

    def __call__(self, grid, block, args, **kw):
        grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        block = tuple(int(b) for b in block) + (1,) * (3 - len(block))
        assert 1 <= grid[0] < 2 ** 31 and 1 <= grid[1] <= 65535 and 1 <= grid[2] <= 65535, (self.name, grid)
        assert all(b >= 1 for b in block) and np.prod(block) <= 1024 and block[2] <= 64, (self.name, block)
        assert len(args) == len(self.params), f"{self.name}: {len(args)} arguments for {len(self.params)}"
        cargs, guarded = [], []
        for a, (pname, ptr, base) in zip(args, self.params):
            want = np.dtype(_BASE[base][0])
            if ptr:
                assert isinstance(a, np.ndarray), f"{self.name}({pname}): expected an array, got {type(a)}"
                assert a.dtype == want, f"{self.name}({pname}): array of {a.dtype}, kernel expects {want}"
                assert a.flags.c_contiguous, f"{self.name}({pname}): array is not C-contiguous"
                g = min(a.size, 4096) + 16  # guard zones: NaN (floats) or a sentinel (ints)
                buf = np.empty(a.size + 2 * g, dtype=a.dtype)
                buf[:g] = buf[a.size + g:] = np.nan if a.dtype.kind == "f" else np.iinfo(a.dtype).min + 7
                buf[g:g + a.size] = a.reshape(-1)
                guarded.append((a, buf, buf[:g].tobytes(), g))
                cargs.append(buf.ctypes.data + g * a.itemsize)
            else:
                assert type(a) is want.type, \
                    f"{self.name}({pname}): scalar of type {type(a).__name__}, kernel expects {want}"
                cargs.append(a.item())
        self.fn(*grid, *block, *cargs)
        for a, buf, guard, g in guarded:
            n = a.size
            assert buf[:g].tobytes() == guard and buf[g + n:].tobytes() == guard, \
                f"{self.name}: write out of bounds"
            if a.flags.writeable:
                a.reshape(-1)[...] = buf[g:g + n]


class _EmuRawModule:
    """Stand-in for ``cupy.RawModule``: compiles the CUDA source as C++ (cached by content)."""

    def __init__(self, code, options=(), **kw):
        typedefs = {alias: base.strip() for base, alias in _TYPEDEF.findall(code)}
        sigs = [(name, plist, _parse_params(plist, typedefs)) for name, plist in _SIG.findall(code)]
        src = _SHIM + code + "".join(
            _LAUNCHER.format(name=name, plist=plist, names=", ".join(p[0] for p in params))
            for name, plist, params in sigs)
        cache = Path(tempfile.gettempdir()) / "zfscratch_gpu_emulation"
        cache.mkdir(exist_ok=True)
        lib_path = cache / (hashlib.sha256(src.encode()).hexdigest()[:24] + ".so")
        if not lib_path.exists():
            cpp = cache / f"{lib_path.stem}.{os.getpid()}.cpp"
            cpp.write_text(src)
            tmp = cache / f"{lib_path.stem}.{os.getpid()}.so"
            res = subprocess.run([_cxx(), "-O2", "-std=c++14", "-shared", "-fPIC", "-w", "-o", str(tmp), str(cpp)],
                                 capture_output=True, text=True)
            assert res.returncode == 0, f"emulated compile failed:\n{res.stderr[-4000:]}"
            os.replace(tmp, lib_path)
            cpp.unlink()
        lib = ctypes.CDLL(str(lib_path))
        self._kernels = {name: _EmuKernel(lib, name, params) for name, _, params in sigs}

    def get_function(self, name):
        return self._kernels[name]


class _FakeCupy(types.ModuleType):
    """NumPy dressed as CuPy: unknown attributes come from numpy."""

    def __getattr__(self, name):
        return getattr(np, name)


def _fake_cupy():
    m = _FakeCupy("cupy")
    m.ndarray = np.ndarray
    m.RawModule = _EmuRawModule
    m.asnumpy = np.asarray
    m.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, getDevice=lambda: 0),
                                   Device=lambda *a: types.SimpleNamespace(synchronize=lambda: None))
    return m


def _load_emulated():
    fake = _fake_cupy()
    missing = object()
    saved = sys.modules.get("cupy", missing)
    sys.modules["cupy"] = fake
    try:
        spec = importlib.util.spec_from_file_location("zfscratch_kernels_gpu_emulated", GPU_PY)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        if saved is missing:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = saved
    return mod, fake


# ============================================================================== implementations
class Impl:
    def __init__(self, name, mod, xp):
        from zfscratch.backend import Backend
        self.name, self.mod, self.xp = name, mod, xp
        self.backend = Backend("cupy-emulated" if name == "emulated" else "cupy", xp, mod)

    def dev(self, a):
        return self.xp.asarray(a)

    @staticmethod
    def host(a):
        return np.asarray(a.get() if hasattr(a, "get") else a)


_IMPLS = {}


def _real_gpu():
    try:
        from zfscratch.kernels import gpu
    except ImportError as e:
        pytest.skip(f"CuPy not importable: {e}")
    if not gpu.is_available():
        pytest.skip("no usable CUDA GPU")
    return gpu


@pytest.fixture(scope="module", params=["emulated", pytest.param("cupy", marks=pytest.mark.gpu)])
def impl(request):
    name = request.param
    if name not in _IMPLS:
        if name == "emulated":
            if not _cxx():
                pytest.skip("no C++ compiler for the emulated GPU kernels")
            mod, fake = _load_emulated()
            _IMPLS[name] = Impl(name, mod, fake)
        else:
            gpu = _real_gpu()
            import cupy
            _IMPLS[name] = Impl(name, gpu, cupy)
    return _IMPLS[name]


def assert_close(got, want, dtype, what, rtol=None):
    got = np.asarray(Impl.host(got), dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if want.size == 0:
        return
    rtol = RTOL[np.dtype(dtype)] if rtol is None else rtol
    scale = max(float(np.max(np.abs(want))), 1e-30)
    err = float(np.max(np.abs(got - want))) / scale
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"


# ============================================================================== module-level facts
def test_import_does_not_load_cupy():
    code = ("import sys, zfscratch, zfscratch.kernels, zfscratch.backend, zfscratch.layers, zfscratch.net, "
            "zfscratch.models; zfscratch.kernels.available(); "
            "assert 'cupy' not in sys.modules or 'zfscratch.kernels.gpu' in sys.modules, 'cupy imported'")
    # available() may import kernels.gpu (and so cupy) on purpose; the plain imports must not
    plain = ("import sys, zfscratch, zfscratch.kernels, zfscratch.backend, zfscratch.layers, zfscratch.net, "
             "zfscratch.models; assert 'cupy' not in sys.modules, sorted(m for m in sys.modules if 'cupy' in m)")
    for c in (plain, code):
        res = subprocess.run([sys.executable, "-c", c], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr


def test_is_available_is_a_bool_and_backend_fails_cleanly():
    try:
        from zfscratch.kernels import gpu
    except ImportError:
        from zfscratch.backend import BackendError, get_backend
        with pytest.raises(BackendError):
            get_backend("cupy")
        return
    assert gpu.is_available() in (True, False)
    assert "gpu" in kernels_pkg.available() or not gpu.is_available()
    if not gpu.is_available():
        from zfscratch.backend import BackendError, get_backend
        with pytest.raises(BackendError):
            get_backend("cupy")


def test_contract_is_complete(impl):
    for name in CONTRACT:
        assert callable(getattr(impl.mod, name)), name
    assert impl.mod.is_available() is True


# ============================================================================== convolution
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,stride,pad,hw", CONV_CASES)
def test_conv_matches_reference(impl, k, stride, pad, hw, dtype):
    rng = np.random.default_rng(k * 100 + stride * 10 + pad)
    n, c, f = 3, 3, 5
    x = rng.standard_normal((n, c) + hw).astype(dtype)
    w = rng.standard_normal((f, c, k, k)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    y_ref = ref.conv2d_forward(x, w, b, stride, pad)
    y = impl.mod.conv2d_forward(impl.dev(x), impl.dev(w), impl.dev(b), stride, pad)
    assert y.dtype == dtype
    assert_close(y, y_ref, dtype, "conv forward")
    assert_close(impl.mod.conv2d_forward(impl.dev(x), impl.dev(w), None, stride, pad),
                 ref.conv2d_forward(x, w, None, stride, pad), dtype, "conv forward without bias")

    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    dx_ref, dw_ref, db_ref = ref.conv2d_backward(dy, x, w, stride, pad)
    dx, dw, db = impl.mod.conv2d_backward(impl.dev(dy), impl.dev(x), impl.dev(w), stride, pad)
    assert dx.dtype == dw.dtype == db.dtype == dtype
    assert_close(dx, dx_ref, dtype, "conv dx")
    assert_close(dw, dw_ref, dtype, "conv dw")
    assert_close(db, db_ref, dtype, "conv db")
    none, dw2, _ = impl.mod.conv2d_backward(impl.dev(dy), impl.dev(x), impl.dev(w), stride, pad, need_dx=False)
    assert none is None
    assert_close(dw2, dw_ref, dtype, "conv dw (need_dx=False)")
    assert_close(impl.mod.conv2d_backward_data(impl.dev(dy), impl.dev(w), x.shape, stride, pad),
                 ref.conv2d_backward_data(dy, w, x.shape, stride, pad), dtype, "conv backward_data")


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_chunked_and_64bit_index(impl, dtype, monkeypatch):
    """Batch cut into chunks (tiny column budget) and the 64-bit index variant of every kernel."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 4, 12, 11)).astype(dtype)
    w = rng.standard_normal((6, 4, 5, 5)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    dy = rng.standard_normal(ref.conv2d_forward(x, w, b, 2, 2).shape).astype(dtype)
    want = (ref.conv2d_forward(x, w, b, 2, 2),) + ref.conv2d_backward(dy, x, w, 2, 2)
    for limit, index_limit in [(1, impl.mod.INT32_INDEX_LIMIT), (3000, 0), (10 ** 9, 0)]:
        monkeypatch.setattr(impl.mod, "COLS_BYTES_LIMIT", limit)
        monkeypatch.setattr(impl.mod, "INT32_INDEX_LIMIT", index_limit)
        got = (impl.mod.conv2d_forward(impl.dev(x), impl.dev(w), impl.dev(b), 2, 2),) + \
            impl.mod.conv2d_backward(impl.dev(dy), impl.dev(x), impl.dev(w), 2, 2)
        for g, r, what in zip(got, want, ("y", "dx", "dw", "db")):
            assert_close(g, r, dtype, f"{what} (limit {limit}, index limit {index_limit})")
        assert_close(impl.mod.conv2d_backward_data(impl.dev(dy), impl.dev(w), x.shape, 2, 2), want[1], dtype,
                     "backward_data chunked")


def test_conv_rejects_bad_input(impl):
    x = impl.dev(np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(ValueError):
        impl.mod.conv2d_forward(x, impl.dev(np.zeros((2, 4, 3, 3), np.float32)), None, 1, 0)
    with pytest.raises(ValueError):
        impl.mod.conv2d_forward(x, impl.dev(np.zeros((2, 3, 7, 7), np.float32)), None, 1, 0)
    with pytest.raises(TypeError):
        impl.mod.relu_forward(impl.dev(np.zeros(4, np.int32)))


# ============================================================================== max-pool
def _pool_inputs(rng, shape, dtype):
    yield "random", rng.standard_normal(shape).astype(dtype)
    yield "ties", rng.integers(0, 3, size=shape).astype(dtype)
    yield "constant", np.zeros(shape, dtype)
    x = rng.standard_normal(shape).astype(dtype)
    x[..., :3, :] = -np.inf
    x[..., :, -2:] = -np.inf
    yield "-inf", x
    x = rng.standard_normal(shape).astype(dtype)
    x.reshape(-1)[::7] = np.nan
    yield "nan", x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,stride,ceil", POOL_CASES)
def test_maxpool_matches_reference(impl, k, stride, ceil, dtype):
    rng = np.random.default_rng(k * 10 + stride)
    for hw in POOL_SHAPES:
        for what, x in _pool_inputs(rng, (3, 2) + hw, dtype):
            try:
                y_ref, sw_ref = ref.maxpool_forward(x, k, stride, ceil)
            except ValueError:  # the window does not fit (floor mode)
                with pytest.raises(ValueError):
                    impl.mod.maxpool_forward(impl.dev(x), k, stride, ceil)
                continue
            y, sw = impl.mod.maxpool_forward(impl.dev(x), k, stride, ceil)
            assert y.dtype == dtype and sw.dtype == np.int32
            tag = f"{what} {hw} k{k} s{stride} ceil={ceil}"
            np.testing.assert_array_equal(Impl.host(sw), sw_ref, err_msg=f"switches {tag}")
            np.testing.assert_array_equal(Impl.host(y), y_ref, err_msg=f"values {tag}")
            if what == "nan":
                continue
            dy = rng.standard_normal(y_ref.shape).astype(dtype)
            dx_ref = ref.maxpool_backward(dy, sw_ref, x.shape, k, stride)
            # gather with the pool's geometry: same order of sums -> identical
            dx = impl.mod.maxpool_backward(impl.dev(dy), sw, x.shape, k, stride)
            np.testing.assert_array_equal(Impl.host(dx), dx_ref, err_msg=f"unpool {tag}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_unpool_with_shared_shapes_and_foreign_switches(impl, dtype):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, size=(2, 3, 55, 54)).astype(dtype)
    # 2/2 floor and 3/2 ceil both map 55x54 -> 27x27: the geometry handed over decides the windows
    for k, s, ceil in [(2, 2, False), (3, 2, True)]:
        y_ref, sw_ref = ref.maxpool_forward(x, k, s, ceil)
        dy = rng.standard_normal(y_ref.shape).astype(dtype)
        dx_ref = ref.maxpool_backward(dy, sw_ref, x.shape, k, s)
        np.testing.assert_array_equal(Impl.host(impl.mod.maxpool_backward(impl.dev(dy), impl.dev(sw_ref), x.shape,
                                                                          k, s)), dx_ref)
    # switches from anywhere in the plane: outside their own windows the gather cannot see them, so the
    # GPU refuses them (the CPU backends route any in-plane switch); outside the plane: IndexError
    sw_any = rng.integers(0, 55 * 54, size=y_ref.shape).astype(np.int32)
    with pytest.raises(ValueError, match="outside their"):
        impl.mod.maxpool_backward(impl.dev(dy), impl.dev(sw_any), x.shape, 3, 2)
    sw_bad = sw_ref.copy()
    sw_bad[0, 0, 0, 0] = 55 * 54
    with pytest.raises(IndexError):
        impl.mod.maxpool_backward(impl.dev(dy), impl.dev(sw_bad), x.shape, 3, 2)
    with pytest.raises(ValueError):  # a geometry that does not map 55x54 to 27x27
        impl.mod.maxpool_backward(impl.dev(dy), impl.dev(sw_ref), x.shape, 3, 3)


def test_padded_pool_layer_matches_numpy_backend(impl):
    """MaxPool2d(pad=1) (ONNX models) pools a padded copy and maps switches back: unpooling still right."""
    from zfscratch.layers import MaxPool2d
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 14, 13))
    dy = None
    outs = []
    for be in ("numpy", impl.backend):
        layer = MaxPool2d(3, 2, ceil_mode=False, pad=1).set_backend(be)
        y = layer.forward(layer.backend.to_device(x))
        if dy is None:
            dy = rng.standard_normal(y.shape)
        outs.append((Impl.host(y), Impl.host(layer.switches), Impl.host(layer.backward(layer.backend.to_device(dy)))))
    np.testing.assert_array_equal(outs[1][0], outs[0][0])
    np.testing.assert_array_equal(outs[1][1], outs[0][1])
    assert_close(outs[1][2], outs[0][2], np.float64, "padded pool dx")


# ============================================================================== ReLU, LRN, softmax
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_matches_reference(impl, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 7, 9)).astype(dtype)
    x.reshape(-1)[::5] = 0
    dy = rng.standard_normal(x.shape).astype(dtype)
    y = impl.mod.relu_forward(impl.dev(x))
    np.testing.assert_array_equal(Impl.host(y), ref.relu_forward(x))
    np.testing.assert_array_equal(Impl.host(impl.mod.relu_backward(impl.dev(dy), impl.dev(x))),
                                  ref.relu_backward(dy, x))
    np.testing.assert_array_equal(Impl.host(impl.mod.relu_forward(impl.dev(x[0, 0]))), ref.relu_forward(x[0, 0]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size,alpha,beta,k,c", [(5, 1e-4, 0.75, 2.0, 7), (3, 2.0, 0.75, 1.0, 7),
                                                 (4, 1.5, 0.6, 1.0, 6), (5, 1.0, 0.75, 2.0, 2),
                                                 (1, 0.5, 0.5, 1.0, 3)])
def test_lrn_matches_reference(impl, size, alpha, beta, k, c, dtype):
    rng = np.random.default_rng(size * 10 + c)
    x = rng.standard_normal((3, c, 5, 7)).astype(dtype)
    y_ref, s_ref = ref.lrn_forward(x, size, alpha, beta, k)
    y, s = impl.mod.lrn_forward(impl.dev(x), size, alpha, beta, k)
    assert y.dtype == s.dtype == dtype
    assert_close(y, y_ref, dtype, "lrn y")
    assert_close(s, s_ref, dtype, "lrn scale")
    dy = rng.standard_normal(x.shape).astype(dtype)
    assert_close(impl.mod.lrn_backward(impl.dev(dy), impl.dev(x), y, s, size, alpha, beta, k),
                 ref.lrn_backward(dy, x, y_ref, s_ref, size, alpha, beta, k), dtype, "lrn dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size,sigma,floor,shape", [(3, 1.0, 1e-4, (2, 5, 6, 7)), (5, 1.5, 1e-4, (1, 3, 7, 9)),
                                                    (3, 1.0, 10.0, (2, 2, 5, 5)), (1, 1.0, 1e-4, (2, 3, 1, 1))])
def test_lcn_matches_reference(impl, size, sigma, floor, shape, dtype):
    rng = np.random.default_rng(size + shape[1])
    x = rng.standard_normal(shape).astype(dtype)
    want = ref.lcn_forward(x, size, sigma, floor)
    got = impl.mod.lcn_forward(impl.dev(x), size, sigma, floor)
    for g, w, what in zip(got, want, ("y", "v", "sig", "mean_sig")):
        assert g.dtype == dtype
        assert_close(g, w, dtype, f"lcn {what}")
    dy = rng.standard_normal(shape).astype(dtype)
    assert_close(impl.mod.lcn_backward(impl.dev(dy), *got[1:], size, sigma, floor),
                 ref.lcn_backward(dy, *want[1:], size, sigma, floor), dtype, "lcn dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,scale", [(5, 7, 1.0), (3, 1000, 3.0), (1, 2, 50.0), (4, 10, 1e3)])
def test_softmax_xent_matches_reference(impl, n, k, scale, dtype):
    rng = np.random.default_rng(n + k)
    logits = (rng.standard_normal((n, k)) * scale).astype(dtype)
    labels = rng.integers(0, k, size=n)
    loss_ref, p_ref = ref.softmax_xent(logits, labels)
    loss, p = impl.mod.softmax_xent(impl.dev(logits), impl.dev(labels))
    assert isinstance(loss, float) and p.dtype == dtype
    assert abs(loss - loss_ref) <= RTOL[np.dtype(dtype)] * max(1.0, abs(loss_ref))
    assert_close(p, p_ref, dtype, "softmax probs")
    loss2, _ = impl.mod.softmax_xent(impl.dev(logits), labels.astype(np.int32))  # host labels
    assert loss2 == pytest.approx(loss, rel=1e-12)
    bad = np.full(n, k)
    assert np.isnan(impl.mod.softmax_xent(impl.dev(logits), impl.dev(bad))[0])  # device labels: NaN loss
    if impl.name != "emulated":  # (emulated "device" arrays are host arrays)
        with pytest.raises(IndexError):
            impl.mod.softmax_xent(impl.dev(logits), bad)


# ============================================================================== engine on the backend
def test_gradcheck_every_layer(impl):
    from zfscratch import gradcheck
    results = gradcheck.run_all(impl.backend)
    bad = [(name, err) for name, err, ok in results if not ok]
    assert not bad, f"gradient checks failed on {impl.name}: {bad}"


def _zfnet_small(impl, dtype=np.float32, seed=0, size=32):
    from zfscratch.models import zfnet_small
    net = zfnet_small(num_classes=10, input_size=size, seed=seed)
    if dtype != np.float32:
        net.astype(dtype)
    return net.to(impl.backend)


def test_net_matches_numpy_backend(impl):
    """zfnet_small forward + backward (float64) on the GPU backend equals the numpy backend."""
    from zfscratch.layers import SoftmaxCrossEntropy
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, 32, 32))
    labels = rng.integers(0, 10, size=3)
    outs = []
    for be in ("numpy", impl.backend):
        net = _zfnet_small(impl, np.float64)
        net.to(be)
        for layer in net.layers:
            if hasattr(layer, "need_dx"):
                layer.need_dx = True
        loss = SoftmaxCrossEntropy(be)
        logits = net.forward(net.backend.to_device(x), train=False)
        value = loss.forward(logits, labels)
        net.zero_grads()
        dx = net.backward(loss.backward())
        outs.append((value, Impl.host(logits), Impl.host(dx), [Impl.host(g) for g in net.grads()]))
    (l0, y0, dx0, g0), (l1, y1, dx1, g1) = outs
    assert l1 == pytest.approx(l0, rel=1e-10)
    assert_close(y1, y0, np.float64, "logits", rtol=1e-10)
    assert_close(dx1, dx0, np.float64, "dx", rtol=1e-10)
    for a, b, (name, _) in zip(g1, g0, net.params()):
        assert_close(a, b, np.float64, f"grad {name}", rtol=1e-10)


def test_training_reduces_the_loss(impl):
    """20 SGD steps of zfnet_small on a fixed random batch: the (eval-mode) loss goes down."""
    from zfscratch.layers import SoftmaxCrossEntropy
    from zfscratch.optim import SGD
    rng = np.random.default_rng(1)
    net = _zfnet_small(impl)
    be = net.backend
    x = be.to_device(rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    labels = rng.integers(0, 10, size=8)
    loss = SoftmaxCrossEntropy(be)
    opt = SGD(net, lr=0.01, momentum=0.9)
    before = loss.forward(net.forward(x), labels)
    losses = []
    for _ in range(20):
        net.zero_grads()
        losses.append(loss.forward(net.forward(x, train=True), labels))
        net.backward(loss.backward())
        opt.step()
    after = loss.forward(net.forward(x), labels)
    assert all(np.isfinite(losses)), losses
    assert after < 0.85 * before, (before, after, losses)
    assert type(net.params()[0][1]) is type(be.to_device(np.zeros(1, np.float32)))


def test_weights_move_between_devices(impl, tmp_path):
    from zfscratch.io import load_weights, save_weights
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    net = _zfnet_small(impl, seed=5)
    y_dev = Impl.host(net.forward(net.backend.to_device(x)))
    path = tmp_path / "w.npz"
    save_weights(path, net)
    host_net, _ = load_weights(path, backend="numpy")
    y_host = host_net.forward(x)
    assert_close(y_host, y_dev, np.float32, "logits numpy vs gpu", rtol=1e-4)
    host_net.to(impl.backend)
    np.testing.assert_array_equal(Impl.host(host_net.forward(host_net.backend.to_device(x))), y_dev)
    back, _ = load_weights(path, backend=impl.backend)
    np.testing.assert_array_equal(Impl.host(back.forward(back.backend.to_device(x))), y_dev)
    for (name, a), (_, b) in zip(back.params(), net.params()):
        np.testing.assert_array_equal(Impl.host(a), Impl.host(b), err_msg=name)


# ============================================================================== real GPU only
@pytest.mark.gpu
def test_backend_moves_arrays():
    gpu = _real_gpu()
    import cupy
    from zfscratch.backend import get_backend
    be = get_backend("cupy")
    assert be.kernels is gpu and be.xp is cupy
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)[:, ::2]  # non-contiguous
    d = be.to_device(a, np.float32)
    assert isinstance(d, cupy.ndarray) and d.dtype == np.float32 and d.flags.c_contiguous
    h = be.to_host(d)
    assert isinstance(h, np.ndarray)
    np.testing.assert_array_equal(h, a.astype(np.float32))
    assert be.to_device(d) is d or np.array_equal(be.to_host(be.to_device(d)), h)
    np.testing.assert_array_equal(get_backend("numpy").to_device(d), h)
    be.synchronize()


@pytest.mark.gpu
def test_tf32_is_off_unless_asked():
    gpu = _real_gpu()
    if os.environ.get("CUPY_TF32", "0") in ("", "0"):
        assert not gpu.tf32_enabled()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 512)).astype(np.float32)
    b = rng.standard_normal((512, 256)).astype(np.float32)
    import cupy
    got = cupy.asnumpy(cupy.matmul(cupy.asarray(a), cupy.asarray(b)))
    want = a.astype(np.float64) @ b.astype(np.float64)
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    if not gpu.tf32_enabled() and os.environ.get("NVIDIA_TF32_OVERRIDE", "0") != "1":
        assert err < 1e-5, f"float32 GEMM error {err:.2e}: TF32 seems to be on"


@pytest.mark.gpu
def test_zfnet_layers_at_full_size_match_reference():
    """Each layer of the real ZFNet (224x224, batch 2, float32) on the GPU vs the reference kernels."""
    _real_gpu()
    from zfscratch.models import zfnet
    rng = np.random.default_rng(0)
    cpu = zfnet(num_classes=1000, seed=0)
    gpu_net = zfnet(num_classes=1000, seed=0, backend="cupy")
    x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    for lc, lg in zip(cpu.layers, gpu_net.layers):
        y = lc.forward(x, train=False)
        yg = lg.forward(gpu_net.backend.to_device(x), train=False)
        assert_close(yg, y, np.float32, f"{lc.name} forward", rtol=1e-5)
        if lc.kind == "MaxPool2d":
            np.testing.assert_array_equal(Impl.host(lg.switches), lc.switches)
        x = y
