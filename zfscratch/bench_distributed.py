"""Benchmark of the MPI paths (``zfscratch bench-distributed``): training, all-reduce, sharded top-9.

Every figure comes from subprocesses started here, so the runs being compared see the same machine:
the configurations alternate within each repeat (A, B, A, B, ...) and the medians are compared.

- **training**: ``zfscratch train`` on synthetic data, one process with T threads against K ranks
  (``mpirun -n K``) with T/K threads each, the same global batch; the figure is the training
  images/s of the run's second epoch (``metrics.json``; validation excluded; the first epoch pays
  for Numba's compilation) and, for the ranks, the
  all-reduce wait per step;
- **all-reduce**: :func:`zfscratch.distributed.allreduce_benchmark` over K ranks for a few buffer
  sizes (time and bus bandwidth ``2 (K-1)/K x bytes / s``);
- **sharded top-9**: ``zfscratch visualize`` over N images, one process with one thread against
  K ranks with one thread each; the figure is the search time (the top-k pass plus the merge).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from zfscratch.errors import UserError


def find_mpirun():
    """The ``mpirun`` of this environment (the mpich wheel installs it beside python), else PATH's."""
    cand = os.path.join(os.path.dirname(sys.executable), "mpirun")
    if os.access(cand, os.X_OK):
        return cand
    found = shutil.which("mpirun")
    if not found:
        raise UserError("bench-distributed: no mpirun found; pip install 'zfscratch[distributed]'")
    return found


def _env(threads):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "ZFSCRATCH_TEST_"))}
    t = str(int(threads))
    env.update(NUMBA_NUM_THREADS=t, OMP_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, MKL_NUM_THREADS=t)
    return env


def _run(cmd, threads, timeout):
    r = subprocess.run(cmd, env=_env(threads), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"bench-distributed: {' '.join(cmd[:4])} ... failed: {tail}")
    return r


def _zf(ranks, mpirun):
    py = [sys.executable, "-m", "zfscratch"]
    return py if ranks == 1 else [mpirun, "-n", str(ranks), *py]


def _load_avg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _bench_training(tmp, mpirun, ranks, threads, model, train_images, batch, repeats, backend, timeout, say):
    """Training throughput: 1 process x ``threads`` threads against ``ranks`` ranks sharing them.

    Runs alternate within each repeat (one, ranks, one, ranks, ...) so both see the same load; each
    figure is the median over the repeats of the second epoch's images/s.

    Returns
    -------
    dict: images/s of both configurations and their ratio, the all-reduce wait per step, every run's
    figure, and the size of the all-reduced gradient (parameters, MB per step)
    """
    data = f"synthetic:n={train_images},n_val=64"
    # two epochs, the second one timed: the first pays for Numba's compilation
    common = ["train", "--data", data, "--model", model, "--epochs", "2", "--batch", str(batch),
              "--backend", backend, "--quiet", "--snapshots", "none", "--overwrite"]
    one, many = [], []
    for rep in range(repeats):
        for k, t, acc in ((1, threads, one), (ranks, max(1, threads // ranks), many)):
            say(f"training, repeat {rep + 1}/{repeats}: {k} process(es) x {t} thread(s)")
            d = os.path.join(tmp, f"train_{k}")
            _run([*_zf(k, mpirun), *common, "--out", d], t, timeout)
            h = json.load(open(os.path.join(d, "metrics.json")))["history"][-1]
            acc.append(h)
    ips1 = float(np.median([h["images_per_s"] for h in one]))
    ipsk = float(np.median([h["images_per_s"] for h in many]))
    steps = -(-train_images // batch)
    res = {
        "images": train_images, "timed_epoch": 2, "global_batch": batch, "steps_per_run": steps,
        "one_process_images_per_s": ips1, "ranks_images_per_s": ipsk, "ratio": ipsk / ips1,
        "allreduce_ms_per_step": float(np.median([h["allreduce_ms_per_step"] for h in many])),
        "step_ms_ranks": 1e3 * batch / ipsk, "runs_one": [h["images_per_s"] for h in one],
        "runs_ranks": [h["images_per_s"] for h in many]}
    from zfscratch.models import build_model
    net = build_model({"arch": model, "num_classes": 10})
    nparams = int(sum(p.size for _, p in net.params()))
    res["parameters"] = nparams
    res["allreduce_mb_per_step"] = nparams * 4 / 1e6
    return res


def _bench_allreduce(mpirun, ranks, sizes_mb, timeout):
    """All-reduce time and bus bandwidth over ``ranks`` ranks; returns ``{str(MiB): {seconds, bus_gb_per_s}}``."""
    code = ("import json,sys\nfrom zfscratch.distributed import get_world, allreduce_benchmark\n"
            "w = get_world(True)\nres = {}\n"
            f"for mb in {list(sizes_mb)!r}:\n"
            "    t, bw = allreduce_benchmark(w, int(mb * 2**20), repeats=5)\n"
            "    res[str(mb)] = {'seconds': t, 'bus_gb_per_s': bw / 1e9}\n"
            "if w.is_root:\n    print(json.dumps(res))\n")
    r = _run([mpirun, "-n", str(ranks), sys.executable, "-c", code], 1, timeout)
    return json.loads(r.stdout.strip().splitlines()[-1])


def _bench_top9(tmp, mpirun, ranks, threads, model, top9_images, repeats, backend, timeout, say):
    """Sharded top-9 search time: 1 rank against ``ranks`` ranks, one thread each, alternating.

    Trains a one-epoch net first (its weights are what ``visualize`` searches with).

    Returns
    -------
    dict: median search seconds of both configurations, the speedup, every run's figure
    """
    say("weights for the top-9 benchmark")
    wdir = os.path.join(tmp, "w")
    _run([sys.executable, "-m", "zfscratch", "train", "--data", "synthetic:n=256,n_val=32", "--model", model,
          "--epochs", "1", "--backend", backend, "--quiet", "--snapshots", "none", "--out", wdir], threads,
         timeout)
    vis = ["visualize", "--weights", os.path.join(wdir, "weights.npz"), "--data",
           f"synthetic:n={top9_images},n_val=32", "--split", "train", "--images", str(top9_images),
           "--maps", "4", "--quiet", "--backend", backend]
    one, many = [], []
    for rep in range(repeats):
        for k, acc in ((1, one), (ranks, many)):
            say(f"sharded top-9 over {top9_images} images, repeat {rep + 1}/{repeats}: {k} rank(s) x 1 thread")
            d = os.path.join(tmp, f"vis_{k}")
            _run([*_zf(k, mpirun), *vis, "--out", d], 1, timeout)
            acc.append(json.load(open(os.path.join(d, "topk.json")))["search_s"])
    s1, sk = float(np.median(one)), float(np.median(many))
    return {"images": top9_images, "one_rank_search_s": s1, "ranks_search_s": sk, "speedup": s1 / sk,
            "runs_one": one, "runs_ranks": many}


def run(ranks=2, threads=2, model="zfnet_small", train_images=640, batch=32, top9_images=10000, repeats=3,
        backend="numba", sizes_mb=(1, 16, 64, 256), timeout=1800, progress=None, workdir=None):
    """Run the three benchmarks; returns a JSON-able dict (see the module docstring)."""
    mpirun = find_mpirun()
    say = progress or (lambda m: None)
    tmp = tempfile.mkdtemp(prefix="zf-bench-dist-", dir=workdir)
    out = {"ranks": ranks, "threads": threads, "model": model, "backend": backend, "repeats": repeats,
           "cpu_count": os.cpu_count(), "load_avg_start": _load_avg()}
    try:
        out["training"] = _bench_training(tmp, mpirun, ranks, threads, model, train_images, batch, repeats,
                                          backend, timeout, say)
        say("all-reduce bandwidth")
        out["allreduce"] = _bench_allreduce(mpirun, ranks, sizes_mb, timeout)
        out["top9"] = _bench_top9(tmp, mpirun, ranks, threads, model, top9_images, repeats, backend, timeout, say)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["load_avg_end"] = _load_avg()
    return out


def format_report(res):
    """The text report of a :func:`run` result: one line per figure."""
    t, a, s = res["training"], res["allreduce"], res["top9"]
    k = res["ranks"]
    lines = [
        f"machine: {res['cpu_count']} CPUs, load average {res['load_avg_start']} at start, "
        f"{res['load_avg_end']} at the end (shared machine: ratios from interleaved runs)",
        f"training {res['model']} ({t['parameters']:,} parameters, {t['allreduce_mb_per_step']:.1f} MB all-reduced "
        f"per step), global batch {t['global_batch']}, {t['images']} images, backend {res['backend']}:",
        f"  1 process x {res['threads']} threads: {t['one_process_images_per_s']:.1f} img/s; "
        f"{k} ranks x {max(1, res['threads'] // k)} thread: {t['ranks_images_per_s']:.1f} img/s "
        f"= {t['ratio']:.2f}x; all-reduce wait {t['allreduce_ms_per_step']:.1f} ms of a "
        f"{t['step_ms_ranks']:.0f} ms step",
        f"all-reduce over {k} ranks (median of 5):"]
    for mb, v in a.items():
        lines.append(f"  {float(mb):>6g} MiB: {1e3 * v['seconds']:8.2f} ms, bus bandwidth {v['bus_gb_per_s']:.2f} GB/s")
    lines.append(f"sharded top-9 search over {s['images']} images: 1 rank x 1 thread {s['one_rank_search_s']:.1f} s, "
                 f"{k} ranks x 1 thread {s['ranks_search_s']:.1f} s = {s['speedup']:.2f}x")
    return "\n".join(lines)
