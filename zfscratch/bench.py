"""Benchmarks: per-layer and whole-network timings, optionally side by side with PyTorch.

:func:`run_bench` measures, for one network and batch:

* the machine's sgemm speed (best of square float32 products through the backend's BLAS), the
  yardstick of the ``% sgemm`` column;
* the JIT cost: every kernel run once on tiny inputs before anything is timed (Numba compiles on
  the first call, or loads its on-disk cache), reported apart from the timings;
* per layer: forward and backward milliseconds (median of ``repeats`` runs after one warm-up run),
  GFLOP/s of the convolutions and linear layers, and their share of the sgemm speed;
* the whole network: images/s of the forward pass (inference) and of one training step (forward,
  loss, backward, SGD update), and the peak resident memory a training step adds;
* with ``compare="torch"``: the same network in PyTorch (same weights, same input; dropout off for
  the agreement check), the largest output and gradient differences, and the same timings, with
  the ratio ``torch time / our time`` (above 1: we are faster).

Only wall-clock time is measured (``time.perf_counter``, the backend synchronized around each run).
"""
from __future__ import annotations

import ctypes
import gc
import os
import platform
import sys
import time

import numpy as np

#: sizes of the square sgemm products whose best speed is the yardstick
SGEMM_SIZES = (1024, 2048)


# ============================================================================= threads
def _blas_libraries():
    """Paths of the BLAS shared libraries loaded in this process (from /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if ".so" in line}
    except OSError:
        return []
    return sorted(p for p in paths if any(k in os.path.basename(p).lower() for k in ("openblas", "mkl_rt", "blis")))


def set_blas_threads(n):
    """Set the thread count of the BLAS that NumPy uses, at run time.

    Uses threadpoolctl when installed, else the BLAS's own ``*_set_num_threads`` through ctypes.
    Returns True when some BLAS accepted the setting.
    """
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=int(n), user_api="blas")
        return True
    except ImportError:
        pass
    ok = False
    names = ("openblas_set_num_threads", "openblas_set_num_threads64_", "scipy_openblas_set_num_threads64_",
             "scipy_openblas_set_num_threads", "MKL_Set_Num_Threads", "bli_thread_set_num_threads")
    for path in _blas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(ctypes.c_int(int(n)))
                ok = True
                break
    return ok


def get_blas_threads():
    """Thread count of NumPy's BLAS (None when it cannot be asked)."""
    names = ("openblas_get_num_threads", "openblas_get_num_threads64_", "scipy_openblas_get_num_threads64_",
             "scipy_openblas_get_num_threads", "MKL_Get_Max_Threads")
    for path in _blas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                return int(fn())
    return None


def set_threads(n):
    """Use ``n`` threads in Numba's parallel loops and in the BLAS (and in PyTorch when imported).

    Returns a dict of what was set. Numba cannot go above the ``NUMBA_NUM_THREADS`` it started with.
    """
    n = int(n)
    out = {"requested": n}
    try:
        import numba
        limit = numba.config.NUMBA_NUM_THREADS
        numba.set_num_threads(min(n, limit))
        out["numba"] = min(n, limit)
    except ImportError:
        pass
    out["blas"] = n if set_blas_threads(n) else None
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
        out["torch"] = n
    return out


def thread_info():
    """Current thread counts: numba, BLAS, torch (when imported)."""
    info = {"cpus": os.cpu_count()}
    try:
        import numba
        info["numba"] = int(numba.get_num_threads())
        try:
            info["numba_layer"] = numba.threading_layer()
        except ValueError:  # no parallel region has run yet
            info["numba_layer"] = None
    except ImportError:
        info["numba"] = None
    info["blas"] = get_blas_threads()
    if "torch" in sys.modules:
        info["torch"] = int(sys.modules["torch"].get_num_threads())
    return info


# ============================================================================= memory
def _proc_status_kb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _malloc_trim():
    """Give free C-heap memory back to the OS (glibc), so that RSS shows what is in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_of(fn):
    """Run ``fn()`` once and return ``(peak RSS during it, RSS before it)`` in MiB.

    Resets the kernel's high-water mark first (``/proc/self/clear_refs``); where that is not possible
    the peak is the whole process's (``getrusage``), and the first value says so by being the larger.
    """
    gc.collect()
    _malloc_trim()  # memory freed earlier but still held by the C heap must not count as in use
    before = _proc_status_kb("VmRSS")
    reset = False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        pass
    fn()
    peak = _proc_status_kb("VmHWM") if reset else None
    if peak is None:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return peak / 1024.0, (before or 0) / 1024.0


# ============================================================================= timing helpers
def time_runs(fn, repeats, sync=lambda: None, warmup=1):
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def sgemm_gflops(xp=np, sizes=SGEMM_SIZES, repeats=3, sync=lambda: None):
    """Best float32 GEMM speed (GFLOP/s) over square products of ``sizes`` (min time of ``repeats``)."""
    best = 0.0
    rng = np.random.default_rng(0)
    for n in sizes:
        a = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
        b = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
        c = xp.empty((n, n), dtype=np.float32)
        ts = time_runs(lambda: xp.matmul(a, b, out=c), repeats, sync)
        best = max(best, 2.0 * n ** 3 / min(ts) / 1e9)
    return best


def warm_up_kernels(backend, dtype=np.float32):
    """Call every kernel once on tiny inputs (JIT compile or cache load). Returns seconds taken."""
    k, xp = backend.kernels, backend.xp
    rng = np.random.default_rng(0)
    dev = lambda *shape: backend.to_device(rng.standard_normal(shape).astype(dtype))
    t0 = time.perf_counter()
    for n, s, p in ((1, 2, 1), (3, 1, 0), (2, 1, 1)):
        x, w, b = dev(n, 3, 9, 9), dev(4, 3, 3, 3), dev(4)
        y = k.conv2d_forward(x, w, b, s, p)
        dy = xp.ones_like(y)
        k.conv2d_backward(dy, x, w, s, p)
        k.conv2d_backward(dy, x, w, s, p, need_dx=False)
        k.conv2d_backward_data(dy, w, x.shape, s, p)
        r = k.relu_forward(y)
        k.relu_backward(dy, r)
        yp, sw = k.maxpool_forward(y, 3, 2, True)
        k.maxpool_backward(xp.ones_like(yp), sw, y.shape)
        for beta in (0.75, 0.6):
            yl, sc = k.lrn_forward(y, 5, 1e-4, beta, 2.0)
            k.lrn_backward(dy, y, yl, sc, 5, 1e-4, beta, 2.0)
    k.softmax_xent(dev(2, 5), backend.to_device(np.array([0, 3])))
    backend.synchronize()
    return time.perf_counter() - t0


# ============================================================================= FLOPs
def layer_flops(layer, in_shape, out_shape):
    """``(forward, backward)`` floating-point operations of a conv or linear layer (0, 0 for the others).

    Multiply-adds count 2. Conv backward = weight gradient + (unless the layer skips it) input gradient.
    """
    if layer.kind == "Conv2d":
        n, f, ho, wo = out_shape
        fwd = 2.0 * n * f * (layer.in_ch // layer.groups) * layer.k * layer.k * ho * wo
        return fwd, fwd * (2 if getattr(layer, "need_dx", True) else 1)
    if layer.kind == "Linear":
        fwd = 2.0 * in_shape[0] * layer.in_f * layer.out_f
        return fwd, 2 * fwd
    return 0.0, 0.0


# ============================================================================= our network
def _median_ms(ts):
    return float(np.median(ts) * 1e3)


def bench_layers(net, x, repeats, progress=lambda s: None):
    """Per-layer forward/backward times of ``net`` on input ``x`` (train mode, as in a training step).

    Returns a list of dicts: name, kind, in_shape, out_shape, fwd_ms, bwd_ms, fwd_gflop, bwd_gflop.
    """
    be = net.backend
    rng = np.random.default_rng(1)
    rows = []
    a = x
    for layer in net.layers:
        y = layer.forward(a, train=True)
        in_shape, out_shape = tuple(a.shape), tuple(y.shape)
        dy = be.to_device(rng.standard_normal(out_shape).astype(np.dtype(y.dtype)) * 1e-3)
        fwd = time_runs(lambda: layer.forward(a, train=True), repeats, be.synchronize)
        bwd = time_runs(lambda: layer.backward(dy), repeats, be.synchronize)
        f_fl, b_fl = layer_flops(layer, in_shape, out_shape)
        rows.append(dict(name=layer.name, kind=layer.kind, in_shape=in_shape, out_shape=out_shape,
                         fwd_ms=_median_ms(fwd), bwd_ms=_median_ms(bwd), fwd_gflop=f_fl / 1e9, bwd_gflop=b_fl / 1e9))
        progress(f"  {layer.name:<8} fwd {rows[-1]['fwd_ms']:8.2f} ms  bwd {rows[-1]['bwd_ms']:8.2f} ms")
        layer.forward(a, train=True)  # leave the layer's cache consistent with its input
        a = y
    net.zero_grads()
    return rows


def bench_network(net, x, labels, repeats, progress=lambda s: None):
    """Whole-network timings: inference forward, and a training step (forward, loss, backward, SGD).

    Returns a dict: fwd_ms, step_ms (medians), fwd_img_s, step_img_s, step_peak_rss_mb,
    step_rss_before_mb, step_rss_added_mb.
    """
    from zfscratch.layers import SoftmaxCrossEntropy
    from zfscratch.optim import SGD

    be = net.backend
    n = x.shape[0]
    loss = SoftmaxCrossEntropy(be)
    opt = SGD(net, lr=1e-4, momentum=0.9, weight_decay=5e-4)

    def step():
        net.zero_grads()
        logits = net.forward(x, train=True)
        loss.forward(logits, labels)
        net.backward(loss.backward())
        opt.step()

    progress("  forward (inference)")
    fwd = time_runs(lambda: net.forward(x, train=False), repeats, be.synchronize)
    progress("  training step (forward + backward + SGD)")
    st = time_runs(step, repeats, be.synchronize)
    clear = getattr(be.kernels, "clear_workspaces", None)
    if clear is not None:
        clear()  # the step's scratch buffers count in its memory
    peak, before = peak_rss_of(lambda: (step(), be.synchronize()))
    out = dict(fwd_ms=_median_ms(fwd), step_ms=_median_ms(st), fwd_ms_all=[t * 1e3 for t in fwd],
               step_ms_all=[t * 1e3 for t in st])
    out.update(fwd_img_s=n / (out["fwd_ms"] / 1e3), step_img_s=n / (out["step_ms"] / 1e3),
               step_peak_rss_mb=peak, step_rss_before_mb=before, step_rss_added_mb=max(peak - before, 0.0))
    return out


# ============================================================================= PyTorch twin
def import_torch():
    """Import PyTorch, or raise ImportError with a one-line explanation."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ImportError("--compare torch needs PyTorch, which is not installed "
                          "(pip install torch, or pip install 'zfscratch[bench]')") from None
    return sys.modules["torch"]


def torch_twin(net, device="cpu"):
    """The same network in PyTorch, with a copy of the weights. Returns a list of (name, module)."""
    torch = import_torch()
    nn = torch.nn
    mods = []
    for l in net.layers:
        if l.kind == "Conv2d":
            m = nn.Conv2d(l.in_ch, l.out_ch, l.k, stride=l.stride, padding=l.pad, groups=l.groups)
        elif l.kind == "ReLU":
            m = nn.ReLU()
        elif l.kind == "MaxPool2d":
            m = nn.MaxPool2d(l.k, l.stride, ceil_mode=l.ceil_mode)
        elif l.kind == "LocalContrastNorm":
            m = nn.LocalResponseNorm(l.size, alpha=l.alpha, beta=l.beta, k=l.k)
        elif l.kind == "Flatten":
            m = nn.Flatten()
        elif l.kind == "Linear":
            m = nn.Linear(l.in_f, l.out_f)
        elif l.kind == "Dropout":
            m = nn.Dropout(l.p)
        else:  # pragma: no cover - every layer kind is listed above
            raise ValueError(f"no PyTorch equivalent for layer {l.name} ({l.kind})")
        if l.params:
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(np.ascontiguousarray(net.backend.to_host(l.params["w"]))))
                m.bias.copy_(torch.from_numpy(np.ascontiguousarray(net.backend.to_host(l.params["b"]))))
        mods.append((l.name, m.to(device)))
    return mods


def _torch_sync(torch, device):
    if device != "cpu":
        return lambda: torch.cuda.synchronize()
    return lambda: None


def check_agreement(net, mods, x_host, labels_host, device="cpu"):
    """Outputs and gradients of our network and its PyTorch twin in eval mode (dropout off).

    Returns dict: logits_max_abs_diff, logits_max_rel_diff, loss_diff, grads_max_rel_diff (worst
    parameter, relative to that parameter's largest gradient), grads_worst_param.
    """
    torch = import_torch()
    from zfscratch.layers import SoftmaxCrossEntropy
    be = net.backend
    model = torch.nn.Sequential(*[m for _, m in mods]).eval()
    net.zero_grads()
    x = be.to_device(x_host)
    logits = net.forward(x, train=False)
    lossf = SoftmaxCrossEntropy(be)
    loss = lossf.forward(logits, be.to_device(labels_host))
    net.backward(lossf.backward())
    ours = be.to_host(logits)
    model.zero_grad()
    tx = torch.from_numpy(x_host).to(device)
    tl = model(tx)
    tloss = torch.nn.functional.cross_entropy(tl, torch.from_numpy(labels_host.astype(np.int64)).to(device))
    tloss.backward()
    theirs = tl.detach().cpu().numpy()
    diff = float(np.max(np.abs(ours.astype(np.float64) - theirs)))
    worst, worst_name = 0.0, None
    for (name, m) in mods:
        l = net.layer(name)
        for key, tp in (("w", getattr(m, "weight", None)), ("b", getattr(m, "bias", None))):
            if tp is None or key not in l.grads:
                continue
            g = be.to_host(l.grads[key]).astype(np.float64)
            tg = tp.grad.detach().cpu().numpy().astype(np.float64)
            rel = float(np.max(np.abs(g - tg)) / max(np.max(np.abs(tg)), 1e-30))
            if rel >= worst:
                worst, worst_name = rel, f"{name}.{key}"
    net.zero_grads()
    model.zero_grad()
    return dict(logits_max_abs_diff=diff, logits_max_rel_diff=diff / max(float(np.max(np.abs(theirs))), 1e-30),
                loss_diff=abs(float(loss) - float(tloss.item())), grads_max_rel_diff=worst,
                grads_worst_param=worst_name)


def bench_torch_layers(mods, x_host, repeats, first_needs_grad=False, device="cpu", progress=lambda s: None):
    """Per-layer forward/backward times of the PyTorch twin (same protocol as :func:`bench_layers`)."""
    torch = import_torch()
    sync = _torch_sync(torch, device)
    rng = np.random.default_rng(1)
    rows = []
    a = torch.from_numpy(x_host).to(device)
    for i, (name, m) in enumerate(mods):
        m.train()
        with torch.no_grad():
            y = m(a)
        dy = torch.from_numpy((rng.standard_normal(tuple(y.shape)) * 1e-3).astype(x_host.dtype)).to(device)
        fwd = time_runs(lambda: m(a), repeats, sync)
        need_input = i > 0 or first_needs_grad
        ain = a.detach().requires_grad_(need_input)
        yg = m(ain)
        inputs = ([ain] if need_input else []) + [p for p in m.parameters()]
        if inputs and yg.requires_grad:
            bwd = time_runs(lambda: torch.autograd.grad(yg, inputs, grad_outputs=dy, retain_graph=True), repeats, sync)
            bwd_ms = _median_ms(bwd)
        else:
            bwd_ms = 0.0
        rows.append(dict(name=name, fwd_ms=_median_ms(fwd), bwd_ms=bwd_ms))
        progress(f"  {name:<8} fwd {rows[-1]['fwd_ms']:8.2f} ms  bwd {rows[-1]['bwd_ms']:8.2f} ms")
        a = y
        del yg, ain
    return rows


def bench_torch_network(mods, x_host, labels_host, repeats, device="cpu", progress=lambda s: None):
    """Whole-network PyTorch timings, same protocol and keys as :func:`bench_network`."""
    torch = import_torch()
    sync = _torch_sync(torch, device)
    model = torch.nn.Sequential(*[m for _, m in mods])
    x = torch.from_numpy(x_host).to(device)
    labels = torch.from_numpy(labels_host.astype(np.int64)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    n = x_host.shape[0]

    def fwd():
        with torch.no_grad():
            model(x)

    def step():
        opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()

    progress("  forward (inference)")
    model.eval()
    f = time_runs(fwd, repeats, sync)
    model.train()
    progress("  training step (forward + backward + SGD)")
    st = time_runs(step, repeats, sync)
    peak, before = peak_rss_of(lambda: (step(), sync()))
    out = dict(fwd_ms=_median_ms(f), step_ms=_median_ms(st), fwd_ms_all=[t * 1e3 for t in f],
               step_ms_all=[t * 1e3 for t in st])
    out.update(fwd_img_s=n / (out["fwd_ms"] / 1e3), step_img_s=n / (out["step_ms"] / 1e3),
               step_peak_rss_mb=peak, step_rss_before_mb=before, step_rss_added_mb=max(peak - before, 0.0))
    return out


# ============================================================================= driver
_ENV_KEYS = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
             "OMP_WAIT_POLICY", "NUMBA_THREADING_LAYER", "ZFSCRATCH_BACKEND")
_ENV_AT_IMPORT = {k: os.environ[k] for k in _ENV_KEYS if k in os.environ}


def _versions():
    out = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
           "processor": _cpu_model()}
    try:
        import numba
        out["numba"] = numba.__version__
    except ImportError:
        pass
    if "torch" in sys.modules:
        out["torch"] = sys.modules["torch"].__version__
    try:
        blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
        out["blas"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older numpy without dict mode
        out["blas"] = None
    return out


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def run_bench(model="zfnet", batch=16, size=224, backend="numba", repeats=5, threads=None, compare=None,
              num_classes=None, seed=0, sgemm_sizes=SGEMM_SIZES, progress=lambda s: None):
    """Run the whole benchmark and return every figure as a JSON-serializable dict.

    Parameters
    ----------
    model : str, architecture (``zfnet``, ``zfnet_small``, ``alexnet_like``)
    batch, size : int, images per batch and their side (pixels)
    backend : str, ``numba``, ``numpy``, ``cupy`` or ``auto``
    repeats : int, timed runs per measurement (after one untimed warm-up run); medians are reported
    threads : int or None, threads for Numba and the BLAS (and PyTorch); None leaves the defaults
    compare : None or ``"torch"``
    sgemm_sizes : sizes of the square products that measure the sgemm yardstick
    progress : callable(str), told about each stage

    Raises
    ------
    ImportError
        ``compare="torch"`` without PyTorch (one-line message).
    ValueError
        bad sizes (the message says which).
    """
    if batch < 1 or size < 1 or repeats < 1:
        raise ValueError("batch, size and repeats must be positive")
    if compare not in (None, "torch"):
        raise ValueError(f"unknown comparison {compare!r}; expected torch")
    env = dict(_ENV_AT_IMPORT)  # as the user set it, before our kernels set OMP_WAIT_POLICY
    torch = import_torch() if compare == "torch" else None  # before our kernels set any OpenMP variable
    from zfscratch.backend import get_backend
    from zfscratch.models import build_model

    be = get_backend(backend)
    res = {"config": dict(model=model, batch=int(batch), size=int(size), backend=be.name, repeats=int(repeats),
                          dtype="float32", compare=compare, seed=int(seed))}
    if threads is not None:
        res["threads_set"] = set_threads(threads)

    cfg = {"arch": model, "input_size": int(size)}
    if num_classes is not None:
        cfg["num_classes"] = int(num_classes)
    net = build_model(cfg, backend=be, seed=seed)
    c = net.config.get("in_channels", 3)
    k = net.config["num_classes"]
    rng = np.random.default_rng(seed)
    x_host = rng.standard_normal((batch, c, size, size)).astype(np.float32)
    labels_host = rng.integers(0, k, batch)
    x = be.to_device(x_host)
    labels = be.to_device(labels_host)
    progress("JIT: compiling or loading the kernels")
    res["jit_s"] = warm_up_kernels(be)
    progress(f"sgemm: square float32 products {', '.join(map(str, sgemm_sizes))}")
    res["sgemm_gflops"] = sgemm_gflops(be.xp, sizes=sgemm_sizes, sync=be.synchronize)
    res["threads"] = thread_info()

    progress(f"per layer: {model} {size}x{size}, batch {batch}, backend {be.name}")
    layers = bench_layers(net, x, repeats, progress)
    progress("whole network")
    res["network"] = bench_network(net, x, labels, repeats, progress)
    peak = res["sgemm_gflops"]
    for r in layers:
        r["in_shape"], r["out_shape"] = list(r["in_shape"]), list(r["out_shape"])
        r["fwd_gflops"] = r["fwd_gflop"] / (r["fwd_ms"] / 1e3) if r["fwd_gflop"] and r["fwd_ms"] > 0 else None
        r["bwd_gflops"] = r["bwd_gflop"] / (r["bwd_ms"] / 1e3) if r["bwd_gflop"] and r["bwd_ms"] > 0 else None
        r["fwd_pct_sgemm"] = 100.0 * r["fwd_gflops"] / peak if r["fwd_gflops"] and peak else None
        r["bwd_pct_sgemm"] = 100.0 * r["bwd_gflops"] / peak if r["bwd_gflops"] and peak else None
    res["layers"] = layers
    res["gflop_per_image_fwd"] = sum(r["fwd_gflop"] for r in layers) / batch

    if torch is not None:
        device = "cuda" if be.name == "cupy" and torch.cuda.is_available() else "cpu"
        mods = torch_twin(net, device)
        progress("PyTorch: agreement (eval mode, dropout off)")
        res["agreement"] = check_agreement(net, mods, x_host, labels_host, device)
        progress("PyTorch: per layer")
        first_needs = bool(getattr(net.layers[0], "need_dx", False))
        tl = bench_torch_layers(mods, x_host, repeats, first_needs, device, progress)
        for r, t in zip(layers, tl):
            r["torch_fwd_ms"], r["torch_bwd_ms"] = t["fwd_ms"], t["bwd_ms"]
            r["fwd_speedup"] = t["fwd_ms"] / r["fwd_ms"] if r["fwd_ms"] > 0 else None
            r["bwd_speedup"] = t["bwd_ms"] / r["bwd_ms"] if r["bwd_ms"] > 0 and t["bwd_ms"] > 0 else None
        progress("PyTorch: whole network")
        tn = bench_torch_network(mods, x_host, labels_host, repeats, device, progress)
        res["torch"] = dict(device=device, **tn)
        ours = res["network"]
        res["speedup"] = dict(fwd=tn["fwd_ms"] / ours["fwd_ms"], step=tn["step_ms"] / ours["step_ms"],
                              step_rss_added=(ours["step_rss_added_mb"] / tn["step_rss_added_mb"]
                                              if tn["step_rss_added_mb"] > 0 else None))
        res["threads"] = thread_info()
    res["versions"] = _versions()
    res["env"] = env
    return res


# ============================================================================= report
def _f(v, fmt, width):
    return f"{'-':>{width}}" if v is None else f"{v:{width}{fmt}}"


def format_report(res):
    """Human-readable table of :func:`run_bench` results."""
    cfg, th = res["config"], res.get("threads", {})
    cmp_ = "torch" in res
    lines = [
        f"zfscratch bench: {cfg['model']} {cfg['size']}x{cfg['size']}, batch {cfg['batch']}, backend {cfg['backend']}, "
        f"float32, median of {cfg['repeats']} after 1 warm-up",
        f"threads: numba {th.get('numba')} ({th.get('numba_layer') or '?'}), BLAS {th.get('blas')}"
        + (f", torch {th.get('torch')}" if cmp_ else "") + f"; {th.get('cpus')} CPUs",
        f"sgemm {res['sgemm_gflops']:.0f} GFLOP/s (best square float32 product); JIT compile / cache load "
        f"{res['jit_s']:.2f} s (excluded)",
        "",
    ]
    head = f"{'layer':<8} {'kind':<17} {'output':<13} {'fwd ms':>8} {'bwd ms':>8} {'fwd GF/s':>8} {'bwd GF/s':>8} {'%sgemm':>6}"
    if cmp_:
        head += f" {'torch fwd':>9} {'torch bwd':>9} {'fwd x':>6} {'bwd x':>6}"
    lines += [head, "-" * len(head)]
    tot = dict(f=0.0, b=0.0, tf=0.0, tb=0.0)
    for r in res["layers"]:
        shape = "x".join(str(v) for v in r["out_shape"][1:])
        line = (f"{r['name']:<8} {r['kind']:<17} {shape:<13} {r['fwd_ms']:8.2f} {r['bwd_ms']:8.2f} "
                f"{_f(r['fwd_gflops'], '.0f', 8)} {_f(r['bwd_gflops'], '.0f', 8)} {_f(r['fwd_pct_sgemm'], '.0f', 5)}"
                + ("%" if r["fwd_pct_sgemm"] is not None else " "))
        tot["f"] += r["fwd_ms"]
        tot["b"] += r["bwd_ms"]
        if cmp_:
            line += (f" {r['torch_fwd_ms']:9.2f} {r['torch_bwd_ms']:9.2f} {_f(r['fwd_speedup'], '.2f', 6)}"
                     f" {_f(r['bwd_speedup'], '.2f', 6)}")
            tot["tf"] += r["torch_fwd_ms"]
            tot["tb"] += r["torch_bwd_ms"]
        lines.append(line)
    lines.append("-" * len(head))
    line = f"{'sum':<8} {'':<17} {'':<13} {tot['f']:8.2f} {tot['b']:8.2f} {'':>8} {'':>8} {'':>6}"
    if cmp_:
        line += (f" {tot['tf']:9.2f} {tot['tb']:9.2f} {tot['tf'] / max(tot['f'], 1e-9):6.2f}"
                 f" {tot['tb'] / max(tot['b'], 1e-9):6.2f}")
    lines.append(line)
    n = res["network"]
    lines += ["", f"{'network':<10} {'forward img/s':>14} {'train img/s':>12} {'fwd ms':>8} {'step ms':>8} "
                  f"{'step peak RSS':>14} {'step adds':>10}"]
    rows = [("zfscratch", n)] + ([("torch", res["torch"])] if cmp_ else [])
    for name, v in rows:
        lines.append(f"{name:<10} {v['fwd_img_s']:14.1f} {v['step_img_s']:12.1f} {v['fwd_ms']:8.1f} {v['step_ms']:8.1f} "
                     f"{v['step_peak_rss_mb']:11.0f} MB {v['step_rss_added_mb']:7.0f} MB")
    if cmp_:
        s, a = res["speedup"], res["agreement"]
        mem = "-" if s["step_rss_added"] is None else f"{s['step_rss_added']:.2f}x"
        lines.append(f"{'ratio':<10} {s['fwd']:13.2f}x {s['step']:11.2f}x {'':>8} {'':>8} {'':>14} {mem:>10}")
        lines += ["", "ratio = torch time / zfscratch time (above 1: zfscratch faster); memory ratio = zfscratch / torch",
                  f"agreement (eval, dropout off): logits max |diff| {a['logits_max_abs_diff']:.2e} "
                  f"(relative {a['logits_max_rel_diff']:.2e}), loss diff {a['loss_diff']:.2e}, "
                  f"gradients max relative diff {a['grads_max_rel_diff']:.2e} ({a['grads_worst_param']})"]
    return "\n".join(lines)
