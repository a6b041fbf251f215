#!/usr/bin/env python3
"""Speed of ``zfscratch explore`` on ZFNet 224 (random weights; speed does not depend on training).

Measures, with the numba backend (or ``--backend``):

* first page: seconds from launching ``zfscratch explore`` to its ``serving on`` line, then the
  seconds to fetch the page, its script and stylesheet and ``/api/info`` (top-9 cache cold, kernels
  still compiling in the background);
* one occluder-position update (``Engine.occlude``, one position, incremental and full forward
  interleaved), median over positions dragged across the image (target <= 50 ms);
* one map's projection of the current image (``Engine.project``), median per layer (target
  <= 150 ms);

Usage: ``python scripts/bench_explore.py [--reps 20] [--backend numba]``. Prints a table and the load
average (the machine may be shared: read the numbers with it).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--backend", default="numba")
    args = ap.parse_args()

    from zfscratch.data import open_dataset
    from zfscratch.explore.engine import Engine
    from zfscratch.io import load_weights, save_weights
    from zfscratch.models import build_model
    from zfscratch.preprocess import Preprocess

    spec = "synthetic:n=40,size=224"
    tmp = tempfile.mkdtemp(prefix="bench-explore-")
    wpath = os.path.join(tmp, "zfnet224.npz")
    ds = open_dataset(spec, "val")
    pre = Preprocess(224)
    pre.fit_mean([ds.get_batch(np.arange(len(ds)))[0]])
    save_weights(wpath, build_model({"arch": "zfnet", "num_classes": 10}),
                 meta={"classes": ds.classes, "preprocessing": pre.to_meta()}, extra={"mean": pre.mean})

    # -- first page, through the real command
    port_cmd = [sys.executable, "-m", "zfscratch", "explore", "--weights", wpath, "--data", spec, "--port", "0",
                "--no-browser", "--backend", args.backend, "--cache", os.path.join(tmp, "cache")]
    t0 = time.perf_counter()
    p = subprocess.Popen(port_cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline().strip()
    t_serve = time.perf_counter() - t0
    url = line.split()[-1]
    t1 = time.perf_counter()
    for path in ("", "static/explore.js", "static/style.css", "api/info"):
        with urllib.request.urlopen(url + path, timeout=30) as r:
            r.read()
    t_page = time.perf_counter() - t1
    p.terminate()
    p.wait(30)

    # -- engine calls
    net, meta = load_weights(wpath, backend=args.backend)
    eng = Engine(net, meta, ds, weights_path=wpath, data_desc=spec, cache_dir=os.path.join(tmp, "cache2"))
    key = "d0"
    eng.predict(key)  # compiles the kernels, keeps the forward pass
    size = 48
    pos = np.linspace(-24, 224 - 24, args.reps + 2).astype(int)
    occ_ms = {"incremental": [], "full": []}
    for way in occ_ms:
        eng.occlusion_mode = way
        eng.occlude(key, int(pos[0]), int(pos[0]), size, 5, -1)  # builds the incremental cache
    for v in pos[1:]:
        for way in occ_ms:  # interleaved: both see the same load
            eng.occlusion_mode = way
            t = time.perf_counter()
            eng.occlude(key, int(v), int(v), size, 5, -1)
            occ_ms[way].append(1e3 * (time.perf_counter() - t))
    proj_ms = {}
    for layer in range(1, 6):
        eng.project(key, layer, 0)
        ts = []
        for m in range(args.reps):
            t = time.perf_counter()
            eng.project(key, layer, m)
            ts.append(1e3 * (time.perf_counter() - t))
        proj_ms[layer] = ts
    load = os.getloadavg()
    print(f"ZFNet 224, backend {net.backend.name}, {os.cpu_count()} CPUs, load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (shared machine)")
    print(f"{'measure':<52} {'median':>9} {'min':>9} {'target':>8}")
    print(f"{'command start -> serving on line':<52} {1e3 * t_serve:>7.0f}ms {'':>9} {'':>8}")
    print(f"{'first page (/, js, css, /api/info) after that':<52} {1e3 * t_page:>7.0f}ms {'':>9} {'1000ms':>8}")
    for way, ts in occ_ms.items():
        print(f"{f'occluder update, 48 px, one position ({way})':<52} {np.median(ts):>7.1f}ms "
              f"{np.min(ts):>7.1f}ms {'50ms':>8}")
    for layer, ts in proj_ms.items():
        print(f"{f'map projection, layer {layer} ({eng.layer_names[layer - 1]})':<52} {np.median(ts):>7.1f}ms "
              f"{np.min(ts):>7.1f}ms {'150ms':>8}")


if __name__ == "__main__":
    main()
