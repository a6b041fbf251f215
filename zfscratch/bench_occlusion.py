"""Occlusion benchmark (``zfscratch bench --occlusion``): positions/s of full recompute vs the
incremental engine (:mod:`zfscratch.experiments.incremental`), and Captum's ``Occlusion`` on the
PyTorch twin of the same network when ``[bench]`` (torch + captum) is installed; PyTorch and Captum
run in a process of their own (:mod:`zfscratch.bench_twin`: in one process Numba's OpenMP would spin
under PyTorch's libgomp and slow our sweeps).

One image (seeded normal noise) and one network (seeded random weights); the occluder is the mean
(zeros), ``patch`` x ``patch`` pixels moved by ``stride`` (the positions of ``zfscratch occlude``
with margin 0: for 224 / 48 / 8, 23 x 23 = 529, the same grid as Captum's sliding window).
The runs are interleaved (full, incremental, Captum, full, ...) so that all see the same machine
load; the load average before and after is reported. Per layer: the multiply-add saving that the
window arithmetic predicts (:meth:`IncrementalOccluder.plan`) and the measured time saving (wall
seconds of that layer in the full sweep / in the incremental one, patch assembly included).
The first round also gives the peak resident memory of a full and an incremental sweep
(``peak_rss_of``), the per-layer seconds, and the agreement of the two (largest relative difference
of the logits and of P(top class of the unoccluded image)). Captum gets one warm-up batch.
"""
from __future__ import annotations

import os
import time

import numpy as np


def _load():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return None


def _check_captum():
    """One-line ImportError unless PyTorch and Captum can be found (they run in a child process)."""
    import importlib.util

    from zfscratch.bench import torch_installed
    if not torch_installed() or importlib.util.find_spec("captum") is None:
        raise ImportError("--compare captum needs PyTorch and Captum (pip install torch captum, or "
                          "pip install 'zfscratch[bench]')")


def _positions(size, patch, stride):
    """The occluder grid of ``zfscratch occlude`` with margin 0.

    Returns
    -------
    gy, gx : int arrays (P,), top-left corner of each position, row-major over the grid
    boxes : list of P ``(y0, x0, y1, x1)`` tuples, the same positions as the incremental engine takes them
    """
    from zfscratch.experiments import occlusion as O

    ys = O.occluder_positions(size, patch, stride)
    gy, gx = (a.ravel() for a in np.meshgrid(ys, ys, indexing="ij"))
    boxes = [(int(a), int(b), int(a) + patch, int(b) + patch) for a, b in zip(gy, gx)]
    return gy, gx, boxes


class _Sweeps:
    """One image's occlusion sweep on one net, two ways: full recompute and the incremental engine.

    Parameters
    ----------
    net, be : the network and its backend
    xd, fd : device arrays (3, H, W): the image and the occluder's fill (zeros: the mean)
    gy, gx, boxes : the positions (:func:`_positions`)
    patch : occluder side in pixels
    batch, inc_batch : positions per full forward pass / per incremental pass
    """

    def __init__(self, net, be, xd, fd, gy, gx, boxes, patch, batch, inc_batch):
        self.net, self.be, self.xd, self.fd = net, be, xd, fd
        self.gy, self.gx, self.boxes, self.patch = gy, gx, boxes, patch
        self.batch, self.inc_batch = batch, inc_batch
        self.n = int(gy.size)

    def full(self, timing=None):
        """Forward every occluded image through the whole net; returns host logits (P, classes).

        ``timing`` (dict or None): adds each layer's wall seconds under its name; the backend is
        synchronized after every layer then, so the figures are per layer, not per queue.
        """
        from zfscratch.experiments import occlusion as O

        be, outs = self.be, []
        for s in range(0, self.n, self.batch):
            e = min(self.n, s + self.batch)
            a = O.occlude_batch(self.xd, self.fd, self.gy[s:e], self.gx[s:e], self.patch, be.xp)
            t = time.perf_counter()
            for l in self.net.layers:
                a = l.forward(a)
                if timing is not None:
                    be.synchronize()
                    t2 = time.perf_counter()
                    timing[l.name] = timing.get(l.name, 0.0) + t2 - t
                    t = t2
            outs.append(be.to_host(a))
        return np.concatenate(outs)

    def incremental(self, timing=None):
        """The same sweep through :class:`IncrementalOccluder`; returns host logits (P, classes).

        ``timing`` (dict or None): the engine's per-layer seconds (patch assembly included).
        """
        from zfscratch.experiments.incremental import IncrementalOccluder

        eng = IncrementalOccluder(self.net, self.xd, self.fd)
        eng.seconds = timing
        outs = [self.be.to_host(eng.positions(self.boxes[s:s + self.inc_batch])["logits"])
                for s in range(0, self.n, self.inc_batch)]
        return np.concatenate(outs)


def _timed_rounds(sweeps, captum_sweep, repeats, progress):
    """Run ``repeats`` interleaved rounds (full, incremental, Captum, full, ...) under one machine load.

    The first round also measures peak memory and per-layer seconds and keeps both sweeps' logits.

    Returns
    -------
    runs : dict method -> list of wall seconds per round (``captum`` empty without it)
    got : dict ``full`` / ``inc`` -> logits (P, classes) of the first round
    memory : dict: ``peak_mib_full``, ``peak_mib_incremental`` and the resident MiB before each
        (``rss_full``, ``rss_incremental``)
    full_secs, inc_secs : dict layer name -> seconds in the first round's full / incremental sweep
    """
    from zfscratch.bench import peak_rss_of

    runs = {"full": [], "incremental": [], "captum": []}
    got, memory, full_secs, inc_secs = {}, {}, {}, {}

    def timed(key, fn):
        if getattr(fn, "timed_elsewhere", False):  # Captum in the PyTorch process times itself
            runs[key].append(fn())
            return None
        t = time.perf_counter()
        out = fn()
        runs[key].append(time.perf_counter() - t)
        return out

    for r in range(int(repeats)):
        if r == 0:  # the first round also measures peak memory, per-layer seconds and agreement
            progress(f"round 1/{repeats}: full (with peak memory and per-layer times)")
            memory["peak_mib_full"], memory["rss_full"] = peak_rss_of(
                lambda: got.__setitem__("full", timed("full", lambda: sweeps.full(full_secs))))
            progress(f"round 1/{repeats}: incremental (with peak memory and per-layer times)")
            memory["peak_mib_incremental"], memory["rss_incremental"] = peak_rss_of(
                lambda: got.__setitem__("inc", timed("incremental", lambda: sweeps.incremental(inc_secs))))
        else:
            progress(f"round {r + 1}/{repeats}: full")
            timed("full", sweeps.full)
            progress(f"round {r + 1}/{repeats}: incremental")
            timed("incremental", sweeps.incremental)
        if captum_sweep is not None:
            progress(f"round {r + 1}/{repeats}: Captum")
            timed("captum", captum_sweep)
    return runs, got, memory, full_secs, inc_secs


def _rounds(sweeps, captum_cfg, repeats, progress, res):
    """:func:`_timed_rounds`, with Captum's sweep in the PyTorch process when ``captum_cfg`` (dict: the
    image ``x``, ``label``, ``patch``, ``stride``, ``batch``, ``threads``) is given; ``res`` gets
    ``captum_device``."""
    from zfscratch.bench import twin_env
    from zfscratch.bench_twin import TwinProcess

    if captum_cfg is None:
        return _timed_rounds(sweeps, None, repeats, progress)
    c = captum_cfg
    progress("Captum: starting the PyTorch process")  # its own OpenMP defaults (see zfscratch.bench_twin)
    with TwinProcess(sweeps.net, c["x"][None], np.array([c["label"]]), cuda=sweeps.be.name == "cupy",
                     threads=c["threads"], env=twin_env()) as twin:
        res["captum_device"] = twin.device
        sweep = twin.captum_sweep(c["x"], c["patch"], c["stride"], c["label"], c["batch"])
        return _timed_rounds(sweeps, sweep, repeats, progress)


def _agreement(full, inc, label):
    """How far the incremental logits are from the full ones (both (P, classes)); ``label``: the top class
    of the unoccluded image. Returns the three ``*_diff`` / ``top_label_agree`` entries of the result."""
    from zfscratch.util.numerics import softmax

    pf, pi = softmax(full)[:, label], softmax(inc)[:, label]
    return {"logits_max_rel_diff": float(np.abs(full - inc).max() / np.abs(full).max()),
            "prob_true_max_rel_diff": float((np.abs(pf - pi) / np.maximum(np.abs(pf), 1e-30)).max()),
            "top_label_agree": float((full.argmax(1) == inc.argmax(1)).mean())}


def _memory_entries(memory):
    """The result's memory entries from :func:`_timed_rounds`' ``memory``: both peaks (MiB), the larger
    resident size before them, and the ratio of the two sweeps' peaks above their own starting points."""
    rss0, rss1 = memory["rss_full"], memory["rss_incremental"]
    return {"peak_mib_full": memory["peak_mib_full"], "peak_mib_incremental": memory["peak_mib_incremental"],
            "rss_before_mib": max(rss0, rss1),
            "peak_ratio": (memory["peak_mib_incremental"] - rss1) / max(1e-9, memory["peak_mib_full"] - rss0)}


def _throughput(runs, n):
    """The result's timing entries: every round's seconds, the best round's positions/s (``n`` positions)
    and the incremental engine's speedup over full recompute (and over Captum when it ran)."""
    res = {"seconds": {k: v for k, v in runs.items() if v},
           "positions_per_s": {k: n / min(v) for k, v in runs.items() if v}}
    pps = res["positions_per_s"]
    res["speedup_vs_full"] = pps["incremental"] / pps["full"]
    if "captum" in pps:
        res["speedup_vs_captum"] = pps["incremental"] / pps["captum"]
    return res


def _layer_rows(plan, full_secs, inc_secs):
    """Per layer: the predicted multiply-add saving of ``plan`` beside the measured time saving.

    Returns
    -------
    rows : list of dicts, the plan's entries plus ``predicted_saving``, ``full_s``, ``incremental_s``,
        ``measured_saving`` (None when the incremental sweep spent no time there)
    total : float, the whole net's predicted saving
    """
    rows = []
    for p in plan:
        tf, ti = full_secs.get(p["layer"], 0.0), inc_secs.get(p["layer"], 0.0)
        rows.append(dict(p, predicted_saving=p["full_macs"] / max(p["incremental_macs"], 1e-30),
                         full_s=tf, incremental_s=ti, measured_saving=tf / ti if ti > 0 else None))
    tot_f = sum(p["full_macs"] for p in plan)
    tot_i = sum(p["incremental_macs"] for p in plan)
    return rows, tot_f / tot_i


def run_occlusion_bench(model="zfnet", size=224, patch=48, stride=8, backend="numba", batch=32,
                        inc_batch=None, repeats=1, threads=None, captum=False, seed=0, progress=print):
    """Time one occlusion sweep three ways. Returns a JSON-ready dict (see :func:`format_occlusion`).

    Parameters
    ----------
    model, size : network (random weights, ``seed``) and input side
    patch, stride : occluder side and step in pixels
    backend : compute backend
    batch : occluded images per full forward pass (and Captum's ``perturbations_per_eval``)
    inc_batch : positions per incremental pass (default: ``batch``)
    repeats : timed sweeps of each method (interleaved rounds); the best is reported
    threads : threads for Numba, the BLAS and PyTorch (None: the libraries' defaults)
    captum : also run Captum's Occlusion on the PyTorch twin
    """
    from zfscratch.backend import get_backend
    from zfscratch.bench import warm_up_kernels
    from zfscratch.experiments.incremental import IncrementalOccluder
    from zfscratch.models import build_model
    from zfscratch.util.threads import set_threads, thread_info

    if captum:
        _check_captum()
    inc_batch = int(inc_batch or batch)
    be = get_backend(backend)
    if threads is not None:
        set_threads(threads)
    net = build_model({"arch": model, "input_size": int(size)}, backend=be, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, size, size)).astype(np.float32)
    fill = np.zeros_like(x)
    gy, gx, boxes = _positions(size, patch, stride)
    n = int(gy.size)
    progress(f"occlusion bench: {model} {size}, patch {patch}, stride {stride}: {n} positions, backend {be.name}")
    jit = warm_up_kernels(be)
    base = be.to_host(net.forward(be.to_device(x[None])))
    label = int(np.argmax(base[0]))
    xd, fd = be.to_device(x), be.to_device(fill)
    sweeps = _Sweeps(net, be, xd, fd, gy, gx, boxes, patch, batch, inc_batch)
    plan = IncrementalOccluder(net, xd, fd).plan(boxes)
    res = dict(config=dict(model=model, size=int(size), patch=int(patch), stride=int(stride), positions=n,
                           backend=be.name, batch=int(batch), inc_batch=inc_batch, repeats=int(repeats),
                           seed=int(seed), captum=bool(captum)),
               jit_s=jit, threads=thread_info(), load_before=_load())
    res["blas_env"] = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    captum_cfg = dict(x=x, label=label, patch=patch, stride=stride, batch=batch, threads=threads) if captum else None
    runs, got, memory, full_secs, inc_secs = _rounds(sweeps, captum_cfg, repeats, progress, res)
    res.update(_memory_entries(memory))
    res.update(_agreement(got["full"], got["inc"], label))
    res["load_after"] = _load()
    res.update(_throughput(runs, n))
    res["layers"], res["predicted_saving_total"] = _layer_rows(plan, full_secs, inc_secs)
    return res


def format_occlusion(res):
    """Human-readable report of :func:`run_occlusion_bench`."""
    c = res["config"]
    th = res.get("threads", {})
    pps = res["positions_per_s"]
    forced = " ".join(f"{k}={v}" for k, v in res["blas_env"].items()) or "none"
    lines = [f"occlusion bench: {c['model']} {c['size']}x{c['size']}, patch {c['patch']}, stride {c['stride']}, "
             f"{c['positions']} positions, backend {c['backend']}, batch {c['batch']} (incremental "
             f"{c['inc_batch']}), best of {c['repeats']} interleaved",
             f"threads: numba {th.get('numba')}, BLAS {th.get('blas')}; BLAS variables forced: {forced}; "
             f"load average before {res['load_before']}, after {res['load_after']}"
             + (f"; Captum in a process of its own ({res['captum_device']})" if "captum_device" in res else ""),
             f"agreement: logits max rel diff {res['logits_max_rel_diff']:.1e}, P(true) max rel diff "
             f"{res['prob_true_max_rel_diff']:.1e}, top label agrees {100 * res['top_label_agree']:.1f}%",
             f"peak memory of a sweep above the process: full {res['peak_mib_full'] - res['rss_before_mib']:.0f} MiB, "
             f"incremental {res['peak_mib_incremental'] - res['rss_before_mib']:.0f} MiB "
             f"(ratio {res['peak_ratio']:.2f})", ""]
    lines.append(f"{'method':<12} {'positions/s':>12} {'seconds':>8} {'incremental x':>14}")
    for k in ("full", "incremental", "captum"):
        if k in pps:
            lines.append(f"{k:<12} {pps[k]:12.1f} {min(res['seconds'][k]):8.2f} "
                         f"{pps['incremental'] / pps[k]:14.2f}")
    lines += ["", f"{'layer':<8} {'kind':<18} {'window':>7} {'MACs saved x':>12} {'full s':>8} {'incr s':>8} "
                  f"{'time saved x':>12}"]
    for r in res["layers"]:
        ms = "-" if r["measured_saving"] is None else f"{r['measured_saving']:.2f}"
        lines.append(f"{r['layer']:<8} {r['kind']:<18} {100 * r['window']:6.0f}% {r['predicted_saving']:12.2f} "
                     f"{r['full_s']:8.3f} {r['incremental_s']:8.3f} {ms:>12}")
    tf = sum(r["full_s"] for r in res["layers"])
    ti = sum(r["incremental_s"] for r in res["layers"])
    lines.append(f"{'total':<8} {'':<18} {'':>7} {res['predicted_saving_total']:12.2f} {tf:8.3f} {ti:8.3f} "
                 f"{tf / ti if ti else float('nan'):12.2f}")
    return "\n".join(lines)
