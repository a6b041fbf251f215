"""Report section "First-layer filters": its stage, report renderer and stand-alone commands."""
from __future__ import annotations

import os

import numpy as np

from zfscratch.pipeline.runner import Stage
from zfscratch.pipeline.text import _fmt, _q


def stage_filters(ctx, cfg):
    from zfscratch.experiments.architecture import filter_stats
    from zfscratch.experiments.evolution import list_snapshots
    from zfscratch.io import load_weights
    from zfscratch.viz import plot_filters
    out = ctx.dir("filters")
    net, _ = ctx.model()
    w = np.asarray(net.backend.to_host(net.layer("conv1").params["w"]))
    st = filter_stats(w)
    path = plot_filters(w, os.path.join(out, "conv1_final.png"), title="conv1 filters after training")
    rms = np.sqrt((w.reshape(w.shape[0], -1) ** 2).mean(1))
    res = {"figure": path, "shape": list(w.shape), "rms_max": float(rms.max()), "rms_mean": float(rms.mean()),
           "dead_fraction": st["dead_fraction"], "hf_energy": st["hf_energy"], "snapshots": []}
    # a report on --weights has no snapshots: then only the trained filters are shown
    snaps = list_snapshots(ctx.dir("train")) if os.path.isdir(os.path.join(ctx.dir("train"), "snapshots")) else []
    if snaps:
        e0, p0 = snaps[0]
        n0, _ = load_weights(p0)
        w0 = np.asarray(n0.layer("conv1").params["w"])
        res["initial_figure"] = plot_filters(w0, os.path.join(out, f"conv1_epoch{e0}.png"),
                                             title=f"conv1 filters at epoch {e0}")
        res["initial_epoch"] = int(e0)
    return res


def render_filters(res, ctx):
    blocks = [("fig", res["figure"], f"The {res['shape'][0]} first-layer filters "
                                     f"({res['shape'][2]}x{res['shape'][3]}, RGB) of the trained model.")]
    if res.get("initial_figure"):
        blocks.append(("fig", res["initial_figure"], f"The same filters at epoch {res['initial_epoch']} "
                                                     "(0 = initialization): training turns noise into edge and "
                                                     "colour detectors."))
    blocks.append(("kv", [("largest filter RMS", f"{res['rms_max']:.4f} (renormalization radius 0.1)"),
                          ("mean filter RMS", f"{res['rms_mean']:.4f}"),
                          ("dead filters", _fmt(res["dead_fraction"], True)),
                          ("high-frequency energy", _fmt(res["hf_energy"]))]))
    return blocks


def cmds_filters(ctx, cfg):
    return [f"zfscratch filters --weights {_q(ctx.cmd(ctx.weights))} --out "
            f"{_q(ctx.cmd(os.path.join(ctx.dir('filters'), 'conv1_final.png')))}"]


def section(p, budget):
    """This section's :class:`~zfscratch.pipeline.runner.Stage` for the profile settings ``p``
    (:data:`zfscratch.pipeline.profiles.PROFILES`) and the shared training ``budget``."""
    return Stage("filters", "First-layer filters", stage_filters, ("train",), {}, "Fig 5/6 (layer-1 filters)",
        "The conv1 filters, each normalized on its own (grey = 0). A trained first layer shows oriented edges "
        "and colour blobs; dead (flat) or noisy filters point at a too high learning rate.",
        cmds_filters, render_filters)
