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
With ``compare="torch"`` our runs and PyTorch's alternate (ours, torch, ours, torch, ...), layer by
layer and for the whole network, so that on a machine whose load drifts both see the same conditions.
PyTorch runs in a child process (:mod:`zfscratch.bench_twin`): in one process Numba's OpenMP threads
would bind to PyTorch's own libgomp and spin under its defaults, slowing our kernels (measured 1.5x on
conv3's forward), which is not what either side's users get.
"""
from __future__ import annotations

import os
import platform
import sys
import threading
import time

import numpy as np

from zfscratch import kernels as _kernels
from zfscratch.bench_twin import TwinProcess
# process memory figures have one home (also used by the PyTorch process); the names stay importable here
from zfscratch.util.memstat import page_faults, page_faults_per_step, peak_rss_of, step_memory  # noqa: F401

# thread control has one home (threadpoolctl); the names stay importable from here
from zfscratch.util.threads import get_blas_threads, set_blas_threads, set_threads, thread_info  # noqa: F401

#: sizes of the square sgemm products whose best speed is the yardstick
SGEMM_SIZES = (1024, 2048)


# ============================================================================= which BLAS kernel
def blas_kernels():
    """The BLAS libraries NumPy runs and the CPU kernel each picked (OpenBLAS's ``architecture``, e.g.
    ``SkylakeX`` or ``Haswell``).

    Through threadpoolctl (its ``architecture`` field; :mod:`zfscratch.util.threads`).
    Returns a list of dicts with ``filepath``, ``internal_api``, ``architecture``, ``version``.
    """
    from zfscratch.util.threads import blas_controllers
    np.ones((2, 2)) @ np.ones((2, 2))  # make sure NumPy's BLAS is loaded
    return [dict(filepath=c.filepath, internal_api=c.internal_api, architecture=c.info().get("architecture"),
                 version=c.version) for c in blas_controllers()]


#: environment variables that make OpenBLAS pick its kernel or its blocking other than it would itself
BLAS_FORCING_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def blas_kernel_check(timeout=120):
    """Which BLAS kernel runs, and which would run without the forcing variables.

    When ``OPENBLAS_CORETYPE`` (or ``OPENBLAS_L2_SIZE``) is set, a child Python without them reports the
    kernel OpenBLAS picks by itself (what users' machines run). Returns a dict: ``kernels`` (as
    :func:`blas_kernels`), ``forced`` (the forcing variables that are set, name -> value),
    ``default_architecture`` (the child's pick, or None when nothing is forced or it could not be
    asked) and ``warning`` (a sentence when a variable forces another kernel than the default, else None).
    """
    import subprocess
    kernels = blas_kernels()
    forced = {k: os.environ[k] for k in BLAS_FORCING_VARS if k in os.environ}
    out = dict(kernels=kernels, forced=forced, default_architecture=None, warning=None)
    if not forced:
        return out
    env = {k: v for k, v in os.environ.items() if k not in BLAS_FORCING_VARS}
    code = ("import json; from zfscratch.bench import blas_kernels; "
            "print(json.dumps([k['architecture'] for k in blas_kernels()]))")
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
        import json
        default = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else []
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        default = []
    now = [k["architecture"] for k in kernels]
    out["default_architecture"] = default[0] if default else None
    if default and default != now:
        out["warning"] = (f"{' '.join(f'{k}={v}' for k, v in forced.items())} forces OpenBLAS's {', '.join(now)} "
                          f"kernel; without it this CPU runs {', '.join(default)} (what users get). Bench with "
                          f"`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE zfscratch bench ...` for their speed.")
    elif "OPENBLAS_L2_SIZE" in forced:
        out["warning"] = (f"OPENBLAS_L2_SIZE={forced['OPENBLAS_L2_SIZE']} is set: OpenBLAS blocks its GEMMs for "
                          f"that cache size, not this CPU's.")
    return out


# ============================================================================= memory
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
        k.maxpool_backward(xp.ones_like(yp), sw, y.shape, 3, 2)
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


def _cpu_ns_of_other_threads(pids):
    """CPU nanoseconds used so far by every thread of ``pids`` except the calling one (``schedstat``)."""
    me, mine, total = threading.get_native_id(), os.getpid(), 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            if pid == mine and int(tid) == me:
                continue
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that ended meanwhile
    return total


def wait_until_quiet(pids, window=0.002, busy=0.1, limit=0.25):
    """Wait until the other threads of processes ``pids`` use less than ``busy`` of one CPU over a
    ``window`` (seconds), at most ``limit`` seconds; returns the seconds waited.

    OpenMP runtimes spin for a while after a parallel region (PyTorch's by default, for a few
    milliseconds), OpenBLAS's threads too; on 2 cores a run that starts meanwhile shares its cores with
    them. Waiting for quiet before each timed run gives every run the machine as it would have it
    alone. Without ``/proc`` (not Linux) it returns at once.
    """
    if not os.path.isdir("/proc/self/task"):
        return 0.0
    t0 = time.perf_counter()
    prev = _cpu_ns_of_other_threads(pids)
    while time.perf_counter() - t0 < limit:
        time.sleep(window)
        cur = _cpu_ns_of_other_threads(pids)
        if cur - prev < busy * window * 1e9:
            break
        prev = cur
    return time.perf_counter() - t0


def time_interleaved(fns, repeats, syncs, warmup=1, quiet=None):
    """Time several functions in turns (f0, f1, ..., f0, f1, ...) after ``warmup`` untimed rounds.

    On a machine whose load drifts (other jobs), alternating keeps the conditions of the compared
    functions alike, so that their ratio is fair. A function with a true ``timed_elsewhere``
    attribute (:class:`zfscratch.bench_twin.RemoteCall`) times itself and returns its seconds.
    ``quiet``: process ids whose threads must be idle before each run (:func:`wait_until_quiet`;
    None: no wait). Returns one list of seconds per function.
    """
    def timed(fn, sync):
        if quiet:
            wait_until_quiet(quiet)
        if getattr(fn, "timed_elsewhere", False):
            return fn()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    for _ in range(warmup):
        for fn, sync in zip(fns, syncs):
            timed(fn, sync)
    out = [[] for _ in fns]
    for _ in range(max(1, int(repeats))):
        for i, (fn, sync) in enumerate(zip(fns, syncs)):
            out[i].append(timed(fn, sync))
    return out


def our_layer_runs(net, x):
    """Per layer of ``net`` on input ``x``: a dict with name, kind, shapes, FLOPs and ``fwd``/``bwd``
    callables (train mode, as in a training step; ``bwd`` after ``fwd`` uses that forward's cache)."""
    be = net.backend
    rng = np.random.default_rng(1)
    rows, a = [], x
    for layer in net.layers:
        y = layer.forward(a, train=True)
        in_shape, out_shape = tuple(a.shape), tuple(y.shape)
        dy = be.to_device(rng.standard_normal(out_shape).astype(np.dtype(y.dtype)) * 1e-3)
        f_fl, b_fl = layer_flops(layer, in_shape, out_shape)

        def fwd(layer=layer, a=a):
            layer.forward(a, train=True)

        def bwd(layer=layer, dy=dy):
            layer.backward(dy)

        rows.append(dict(name=layer.name, kind=layer.kind, in_shape=in_shape, out_shape=out_shape,
                         fwd_gflop=f_fl / 1e9, bwd_gflop=b_fl / 1e9, fwd=fwd, bwd=bwd))
        a = y
    return rows


def our_network_runs(net, x, labels):
    """``(forward, step)`` callables of the whole network: inference, and a training step (forward,
    loss, backward, SGD update)."""
    from zfscratch.layers import SoftmaxCrossEntropy
    from zfscratch.optim import SGD

    loss = SoftmaxCrossEntropy(net.backend)
    opt = SGD(net, lr=1e-4, momentum=0.9, weight_decay=5e-4)

    def fwd():
        net.forward(x, train=False)

    def step():
        net.zero_grads()
        logits = net.forward(x, train=True)
        loss.forward(logits, labels)
        net.backward(loss.backward())
        opt.step()

    return fwd, step


def _network_figures(n, fwd_ts, step_ts):
    out = dict(fwd_ms=_median_ms(fwd_ts), step_ms=_median_ms(step_ts), fwd_ms_all=[t * 1e3 for t in fwd_ts],
               step_ms_all=[t * 1e3 for t in step_ts])
    out.update(fwd_img_s=n / (out["fwd_ms"] / 1e3), step_img_s=n / (out["step_ms"] / 1e3))
    return out


# ============================================================================= PyTorch twin
def torch_installed():
    """Whether PyTorch can be found (without importing it here)."""
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def _our_pass(net, x_host, labels_host):
    """Logits (host) and ``{"layer.key": gradient (float64 host)}`` of one eval-mode forward/backward."""
    from zfscratch.layers import SoftmaxCrossEntropy
    be = net.backend
    net.zero_grads()
    x = be.to_device(x_host.astype(net.dtype, copy=False))
    logits = net.forward(x, train=False)
    lossf = SoftmaxCrossEntropy(be)
    loss = lossf.forward(logits, be.to_device(labels_host))
    net.backward(lossf.backward())
    grads = {f"{l.name}.{k}": be.to_host(g).astype(np.float64) for l in net.layers for k, g in l.grads.items()}
    net.zero_grads()
    return be.to_host(logits), float(loss), grads


def _worst(grads, ref):
    """(largest ``max|g - ref| / max|ref|`` over the parameters, its name)."""
    worst, name = 0.0, None
    for key, r in ref.items():
        if key in grads:
            rel = float(np.max(np.abs(grads[key] - r)) / max(np.max(np.abs(r)), 1e-30))
            if rel >= worst:
                worst, name = rel, key
    return worst, name


def check_agreement(net, twin, x_host, labels_host):
    """Outputs and gradients of our network and its PyTorch twin in eval mode (dropout off), and of
    both against a float64 copy of our network (same weights), which says whose float32 gradients
    drift when the two disagree.

    ``twin``: a :class:`zfscratch.bench_twin.TwinProcess` holding the same weights and batch.

    Returns dict: logits_max_abs_diff, logits_max_rel_diff, loss_diff, grads_max_rel_diff (worst
    parameter, relative to that parameter's largest gradient), grads_worst_param, and
    ``grads_vs_float64`` = {"ours": (rel, param), "torch": (rel, param)}.
    """
    from zfscratch.models import build_model
    ours, loss, g_ours = _our_pass(net, x_host, labels_host)
    theirs, tloss, g_torch = twin.agreement()
    ref = build_model(dict(net.config), backend=net.backend, init=False)
    ref.load_state_dict(net.state_dict())
    _, _, g64 = _our_pass(ref.to(net.backend, np.float64), x_host.astype(np.float64), labels_host)
    worst, worst_name = _worst(g_ours, g_torch)
    diff = float(np.max(np.abs(ours.astype(np.float64) - theirs)))
    return dict(logits_max_abs_diff=diff, logits_max_rel_diff=diff / max(float(np.max(np.abs(theirs))), 1e-30),
                loss_diff=abs(loss - tloss), grads_max_rel_diff=worst, grads_worst_param=worst_name,
                grads_vs_float64={"ours": _worst(g_ours, g64), "torch": _worst(g_torch, g64)})


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


def _model_config(model, size, num_classes, widths, fc):
    """The :func:`zfscratch.models.build_model` config of the benched net (None: the preset's value)."""
    cfg = {"arch": model, "input_size": int(size)}
    if num_classes is not None:
        cfg["num_classes"] = int(num_classes)
    if widths is not None:
        cfg["widths"] = [int(v) for v in widths]
    if fc is not None:
        cfg["fc"] = int(fc)
    return cfg


def _bench_inputs(net, batch, size, seed):
    """The seeded input batch: float32 normal noise (batch, C, size, size) and int labels (batch,)."""
    rng = np.random.default_rng(seed)
    x_host = rng.standard_normal((batch, net.config.get("in_channels", 3), size, size)).astype(np.float32)
    labels_host = rng.integers(0, net.config["num_classes"], batch)
    return x_host, labels_host


def _machine_figures(be, sgemm_sizes, progress):
    """The figures that describe the machine rather than the net: the JIT cost, the sgemm yardstick,
    the threads and which BLAS kernel runs (a warning when a variable forces another one)."""
    res = {}
    progress("JIT: compiling or loading the kernels")
    res["jit_s"] = warm_up_kernels(be)
    progress(f"sgemm: square float32 products {', '.join(map(str, sgemm_sizes))}")
    res["sgemm_gflops"] = sgemm_gflops(be.xp, sizes=sgemm_sizes, sync=be.synchronize)
    res["threads"] = thread_info()
    res["blas"] = blas_kernel_check()
    if res["blas"]["warning"]:
        progress("WARNING: " + res["blas"]["warning"])
    return res


class _BenchRun:
    """What every timed stage of :func:`run_bench` shares.

    Parameters
    ----------
    net, be : the network and its backend
    x_host : float32 (N, C, H, W), the input batch; ``x`` the same on the device
    labels_host : int (N,), its labels; ``labels`` the same on the device
    repeats : timed runs per measurement
    progress : callable(str)
    twin : :class:`zfscratch.bench_twin.TwinProcess` or None (no comparison)
    """

    def __init__(self, net, be, x_host, labels_host, repeats, progress, twin):
        self.net, self.be, self.repeats, self.progress, self.twin = net, be, repeats, progress, twin
        self.x_host, self.labels_host = x_host, labels_host
        self.x, self.labels = be.to_device(x_host), be.to_device(labels_host)
        self.batch = int(x_host.shape[0])

    @property
    def quiet(self):
        """The processes that must be idle before each timed run of a comparison (None without one)."""
        return [os.getpid(), self.twin.proc.pid] if self.twin is not None else None


def _layer_figures(r, ts, with_torch, peak):
    """Fill layer row ``r`` (from :func:`our_layer_runs`) with its timings and the rates derived from them.

    ``ts``: the lists of seconds of :func:`time_interleaved` (ours fwd, bwd, then torch fwd and, when the
    module has one, bwd); ``peak``: the sgemm GFLOP/s (0 or None: no ``% sgemm``).
    """
    r["fwd_ms"], r["bwd_ms"] = _median_ms(ts[0]), _median_ms(ts[1])
    if with_torch:
        r["torch_fwd_ms"] = _median_ms(ts[2])
        r["torch_bwd_ms"] = _median_ms(ts[3]) if len(ts) > 3 else 0.0
        r["fwd_speedup"] = r["torch_fwd_ms"] / r["fwd_ms"] if r["fwd_ms"] > 0 else None
        r["bwd_speedup"] = (r["torch_bwd_ms"] / r["bwd_ms"] if r["bwd_ms"] > 0 and r["torch_bwd_ms"] > 0
                            else None)
    r["in_shape"], r["out_shape"] = list(r["in_shape"]), list(r["out_shape"])
    r["fwd_gflops"] = r["fwd_gflop"] / (r["fwd_ms"] / 1e3) if r["fwd_gflop"] and r["fwd_ms"] > 0 else None
    r["bwd_gflops"] = r["bwd_gflop"] / (r["bwd_ms"] / 1e3) if r["bwd_gflop"] and r["bwd_ms"] > 0 else None
    r["fwd_pct_sgemm"] = 100.0 * r["fwd_gflops"] / peak if r["fwd_gflops"] and peak else None
    r["bwd_pct_sgemm"] = 100.0 * r["bwd_gflops"] / peak if r["bwd_gflops"] and peak else None


def _time_layers(run, peak):
    """Per layer: forward and backward timings, ours alternating with the twin's module when there is one.

    Returns the list of layer rows (:func:`our_layer_runs` plus :func:`_layer_figures`); the net's
    gradients are zeroed afterwards.
    """
    net, sync, twin = run.net, run.be.synchronize, run.twin
    layers = our_layer_runs(net, run.x)
    truns = twin.layer_runs(bool(getattr(net.layers[0], "need_dx", False))) if twin else None
    for i, r in enumerate(layers):
        fns, syncs = [r.pop("fwd"), r.pop("bwd")], [sync, sync]
        if truns:
            tf, tb = truns[i]
            fns += [tf] + ([tb] if tb else [])
            syncs += [twin.sync] * (2 if tb else 1)
        _layer_figures(r, time_interleaved(fns, run.repeats, syncs, quiet=run.quiet), bool(truns), peak)
        extra = f"   torch fwd {r['torch_fwd_ms']:8.2f} bwd {r['torch_bwd_ms']:8.2f}" if truns else ""
        run.progress(f"  {r['name']:<8} fwd {r['fwd_ms']:8.2f} ms  bwd {r['bwd_ms']:8.2f} ms{extra}")
    if twin:  # the twin's graphs and gradients go before the whole-network runs
        twin.drop_layer_runs()
    net.zero_grads()
    return layers


def _our_network_figures(run, f_ts, s_ts, ostep, layers, peak):
    """The ``network`` entry: images/s, the page faults and memory of a step, and the step's roofline
    (its conv/linear FLOPs, direct-convolution count, at the measured sgemm speed ``peak``)."""
    sync = run.be.synchronize
    out = _network_figures(run.batch, f_ts, s_ts)
    out["step_page_faults"] = page_faults_per_step(ostep, sync)
    step_gflop = sum(r["fwd_gflop"] + r["bwd_gflop"] for r in layers)
    out["step_gflop"] = step_gflop
    out["step_roofline_ms"] = 1e3 * step_gflop / peak if peak else None
    out["step_pct_roofline"] = 100.0 * out["step_roofline_ms"] / out["step_ms"] if peak and out["step_ms"] > 0 else None
    out.update(step_memory(ostep, sync, _kernels.optional(run.be.kernels, "clear_workspaces")))
    return out


def _time_network(run, layers, peak):
    """Whole-network forward and training-step timings (alternating with the twin's when there is one).

    Returns
    -------
    dict with ``network`` (ours) and, with a twin, ``torch`` (its figures and device) and ``speedup``
    (torch time / ours for the forward pass and the step; our memory added / torch's)
    """
    sync, twin, progress = run.be.synchronize, run.twin, run.progress
    progress("whole network: forward (inference)" + (", alternating with PyTorch" if twin else ""))
    ofwd, ostep = our_network_runs(run.net, run.x, run.labels)
    fns, syncs = [ofwd], [sync]
    if twin:
        tfwd, tstep = twin.network_runs()
        fns, syncs = [ofwd, tfwd], [sync, twin.sync]
    f_ts = time_interleaved(fns, run.repeats, syncs, quiet=run.quiet)
    progress("whole network: training step (forward + backward + SGD)")
    s_ts = time_interleaved([ostep, tstep] if twin else [ostep], run.repeats, syncs, quiet=run.quiet)
    progress("whole network: memory and page faults of a training step")
    res = {"network": _our_network_figures(run, f_ts[0], s_ts[0], ostep, layers, peak)}
    if twin:
        res["torch"] = dict(device=twin.device, **_network_figures(run.batch, f_ts[1], s_ts[1]))
        res["torch"]["step_page_faults"] = twin.page_faults_per_step()
        res["torch"].update(twin.step_memory())
        ours, tn = res["network"], res["torch"]
        res["speedup"] = dict(fwd=tn["fwd_ms"] / ours["fwd_ms"], step=tn["step_ms"] / ours["step_ms"],
                              step_rss_added=(ours["step_rss_added_mb"] / tn["step_rss_added_mb"]
                                              if tn["step_rss_added_mb"] > 0 else None))
    return res


def run_bench(model="zfnet", batch=16, size=224, backend="numba", repeats=5, threads=None, compare=None,
              num_classes=None, seed=0, sgemm_sizes=SGEMM_SIZES, progress=lambda s: None, widths=None, fc=None):
    """Run the whole benchmark and return every figure as a JSON-serializable dict.

    Parameters
    ----------
    model : str, architecture (``zfnet``, ``zfnet_small``, ``alexnet_like``)
    batch, size : int, images per batch and their side (pixels)
    backend : str, ``numba``, ``numpy``, ``cupy`` or ``auto``
    repeats : int, timed runs per measurement (after one untimed warm-up run); medians are reported
    threads : int or None, threads for Numba and the BLAS (and PyTorch); None leaves the defaults
    compare : None or ``"torch"``
    num_classes, widths, fc : None (the preset's) or the model's class count, its 5 conv widths (list of
        ints) and the width of fc6/fc7, as ``zfscratch train --num-classes/--widths/--fc``
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
    from zfscratch.backend import get_backend
    from zfscratch.models import build_model

    be = get_backend(backend)
    res = {"config": dict(model=model, batch=int(batch), size=int(size), backend=be.name, repeats=int(repeats),
                          dtype="float32", compare=compare, seed=int(seed), num_classes=num_classes,
                          widths=None if widths is None else [int(v) for v in widths],
                          fc=None if fc is None else int(fc))}
    if threads is not None:
        res["threads_set"] = set_threads(threads)
    net = build_model(_model_config(model, size, num_classes, widths, fc), backend=be, seed=seed)
    x_host, labels_host = _bench_inputs(net, batch, size, seed)
    run = _BenchRun(net, be, x_host, labels_host, repeats, progress, twin=None)
    res.update(_machine_figures(be, sgemm_sizes, progress))
    if compare == "torch":
        progress("PyTorch: starting its own process (its OpenMP and thread defaults, not ours)")
        run.twin = TwinProcess(net, x_host, labels_host, cuda=be.name == "cupy", threads=threads, env=twin_env())
    try:
        _measure(run, res, model, size, batch, progress)
    finally:
        if run.twin is not None:
            run.twin.close()
    res["versions"] = _versions()
    if run.twin is not None:
        res["versions"]["torch"] = run.twin.version
    res["env"] = env
    return res


def twin_env():
    """The environment of the PyTorch process: ours as the user set it (without the OpenMP wait policy
    our kernels set for themselves), and a path to this zfscratch."""
    env = dict(os.environ)
    if "OMP_WAIT_POLICY" not in _ENV_AT_IMPORT:
        env.pop("OMP_WAIT_POLICY", None)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _measure(run, res, model, size, batch, progress):
    """The timed part of :func:`run_bench` (agreement, layers, network), filling ``res``."""
    net = run.net
    if run.twin is not None:
        progress("PyTorch: agreement (eval mode, dropout off)")
        res["agreement"] = check_agreement(net, run.twin, run.x_host, run.labels_host)
    vs = " vs PyTorch (alternating runs, its own process)" if run.twin else ""
    progress(f"per layer: {model} {size}x{size}, batch {batch}, backend {run.be.name}{vs}")
    res["layers"] = _time_layers(run, res["sgemm_gflops"])
    res["gflop_per_image_fwd"] = sum(r["fwd_gflop"] for r in res["layers"]) / batch
    res.update(_time_network(run, res["layers"], res["sgemm_gflops"]))
    if run.twin:
        res["threads"] = dict(thread_info(), torch=run.twin.threads)


# ============================================================================= report
def _f(v, fmt, width):
    return f"{'-':>{width}}" if v is None else f"{v:{width}{fmt}}"


def _report_header(res):
    """The report's first lines: the configuration, threads, sgemm yardstick, JIT cost and BLAS kernel."""
    cfg, th = res["config"], res.get("threads", {})
    cmp_ = "torch" in res
    shape = "".join(f", {key} {cfg[key]}" for key in ("widths", "fc", "num_classes") if cfg.get(key) is not None)
    lines = [
        f"zfscratch bench: {cfg['model']} {cfg['size']}x{cfg['size']}{shape}, batch {cfg['batch']}, "
        f"backend {cfg['backend']}, float32, median of {cfg['repeats']} after 1 warm-up",
        f"threads: numba {th.get('numba')} ({th.get('numba_layer') or '?'}), BLAS {th.get('blas')}"
        + (f", torch {th.get('torch')}" if cmp_ else "") + f"; {th.get('cpus')} CPUs",
        f"sgemm {res['sgemm_gflops']:.0f} GFLOP/s (best square float32 product); JIT compile / cache load "
        f"{res['jit_s']:.2f} s (excluded)",
    ]
    if cmp_:
        lines.append(f"PyTorch {res.get('versions', {}).get('torch', '?')} ({res['torch'].get('device', 'cpu')}) in a "
                     "process of its own; runs alternate, each after both processes' other threads are idle")
    blas = res.get("blas")
    if blas is not None:
        names = ", ".join(f"{k.get('internal_api') or '?'} {k.get('version') or ''}".strip()
                          + f" kernel {k.get('architecture') or '?'}" for k in blas["kernels"]) or "none found"
        forced = " ".join(f"{k}={v}" for k, v in blas["forced"].items())
        lines.append(f"BLAS: {names}" + (f" (forced by {forced}; default here: {blas['default_architecture'] or '?'})"
                                         if forced else ""))
        if blas["warning"]:
            lines.append(f"WARNING: {blas['warning']}")
    return lines


def _layer_table(res):
    """The per-layer table (with PyTorch's columns when compared) and its sum row, as lines."""
    cmp_ = "torch" in res
    head = f"{'layer':<8} {'kind':<17} {'output':<13} {'fwd ms':>8} {'bwd ms':>8} {'fwd GF/s':>8} {'bwd GF/s':>8} {'%sgemm':>6}"
    if cmp_:
        head += f" {'torch fwd':>9} {'torch bwd':>9} {'fwd x':>6} {'bwd x':>6}"
    lines = [head, "-" * len(head)]
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
    return lines


def _network_table(res):
    """The whole-network rows (ours, PyTorch's and their ratio), the roofline line and the agreement."""
    cmp_ = "torch" in res
    n = res["network"]
    lines = [f"{'network':<10} {'forward img/s':>14} {'train img/s':>12} {'fwd ms':>8} {'step ms':>8} "
             f"{'step peak RSS':>14} {'step adds':>10} {'faults/step':>11}"]
    rows = [("zfscratch", n)] + ([("torch", res["torch"])] if cmp_ else [])
    for name, v in rows:
        lines.append(f"{name:<10} {v['fwd_img_s']:14.1f} {v['step_img_s']:12.1f} {v['fwd_ms']:8.1f} {v['step_ms']:8.1f} "
                     f"{v['step_peak_rss_mb']:11.0f} MB {v['step_rss_added_mb']:7.0f} MB "
                     f"{_f(v.get('step_page_faults'), '.0f', 11)}")
    if cmp_:
        s, a = res["speedup"], res["agreement"]
        mem = "-" if s["step_rss_added"] is None else f"{s['step_rss_added']:.2f}x"
        lines.append(f"{'ratio':<10} {s['fwd']:13.2f}x {s['step']:11.2f}x {'':>8} {'':>8} {'':>14} {mem:>10}")
    if n.get("step_pct_roofline") is not None:
        lines.append(f"step: {n['step_gflop']:.1f} GFLOP (conv + linear, direct count) = {n['step_roofline_ms']:.0f} ms "
                     f"at the sgemm speed; zfscratch at {n['step_pct_roofline']:.0f}% of that roofline")
    if cmp_:
        lines += ["", "ratio = torch time / zfscratch time (above 1: zfscratch faster); memory ratio = zfscratch / torch",
                  f"agreement (eval, dropout off): logits max |diff| {a['logits_max_abs_diff']:.2e} "
                  f"(relative {a['logits_max_rel_diff']:.2e}), loss diff {a['loss_diff']:.2e}, "
                  f"gradients max relative diff {a['grads_max_rel_diff']:.2e} ({a['grads_worst_param']})"]
        if a.get("grads_vs_float64"):
            (o, on), (t, tn) = a["grads_vs_float64"]["ours"], a["grads_vs_float64"]["torch"]
            lines.append(f"float32 gradients vs a float64 run of the same weights: zfscratch {o:.2e} ({on}), "
                         f"torch {t:.2e} ({tn})")
    return lines


def format_report(res):
    """Human-readable table of :func:`run_bench` results: header, per-layer table, whole network."""
    return "\n".join(_report_header(res) + [""] + _layer_table(res) + [""] + _network_table(res))
