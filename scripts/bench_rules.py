"""Time one projection of one map: today's DeconvNet (the code before the rules, from a file) against
project(rule=...) for each rule and project_rules (all three from one forward pass), interleaved.

    python scripts/bench_rules.py OLD_DECONV.py [--layer relu5] [--repeats 15] [--backend numba]

OLD_DECONV.py: ``git show 44be6a4:zfscratch/deconv.py > /tmp/old_deconv.py``. Prints median seconds and
ratios to the old DeconvNet; machine load matters, so run the variants interleaved (done here).
"""
import argparse
import importlib.util
import os
import time

import numpy as np

from zfscratch import deconv
from zfscratch.models import build_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("--layer", default="relu5")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--size", type=int, default=64)
    a = ap.parse_args()
    spec = importlib.util.spec_from_file_location("old_deconv", a.old)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    net = build_model({"arch": "zfnet_small", "input_size": a.size, "init": "he"}, backend=a.backend)
    x = np.random.default_rng(0).normal(size=(1, 3, a.size, a.size)).astype(np.float32)
    runs = {}
    if a.layer in old.projectable_layers(net):  # the old code starts from the conv part only
        runs["old deconvnet"] = lambda: old.project(net, x, a.layer, maps=[0], mode="max")
    for r in deconv.RULES:
        runs[f"rule={r}"] = (lambda r=r: deconv.project(net, x, a.layer, maps=[0], mode="max", rule=r))
    runs["all three (project_rules)"] = lambda: deconv.project_rules(net, x, a.layer, maps=[0], mode="max")
    if a.layer in old.projectable_layers(net):
        ref = old.project(net, x, a.layer, maps=[0], mode="max")
        assert np.array_equal(ref, deconv.project(net, x, a.layer, maps=[0], mode="max"))
    for f in runs.values():  # warm-up (Numba compilation)
        f()
    t = {k: [] for k in runs}
    for _ in range(a.repeats):
        for k, f in runs.items():
            t0 = time.perf_counter()
            f()
            t[k].append(time.perf_counter() - t0)
    key = "old deconvnet" if "old deconvnet" in t else "rule=deconvnet"
    base, base_min = np.median(t[key]), np.min(t[key])
    print(f"zfnet_small {a.size}px, 1 image, 1 map of {a.layer}, backend {a.backend}, {a.repeats} interleaved "
          f"repeats, load average {os.getloadavg()[0]:.1f}")
    for k, v in t.items():
        print(f"  {k:<28} median {1e3 * np.median(v):7.2f} ms ({np.median(v) / base:.2f}x)   best {1e3 * np.min(v):7.2f} ms "
              f"({np.min(v) / base_min:.2f}x {key})")


if __name__ == "__main__":
    main()
