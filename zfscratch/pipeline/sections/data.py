"""Report section "Data": its stage, report renderer and stand-alone commands."""
from __future__ import annotations

import os
import time

import numpy as np

from zfscratch.pipeline.runner import Stage


def stage_data(ctx, cfg):
    """Open every split, count images and classes, draw a few training images per class."""
    from zfscratch.viz import new_figure, save_png
    t0 = time.perf_counter()
    splits = {s: len(ctx.dataset(s)) for s in ctx.splits()}
    train = ctx.dataset("train")
    classes = [str(c) for c in (getattr(train, "classes", None) or [])]
    labels = np.asarray(train.labels() if callable(getattr(train, "labels", None)) else train.labels, np.int64)
    counts = np.bincount(labels, minlength=len(classes)) if labels.size else np.zeros(len(classes), np.int64)
    per = 4
    rows = [np.nonzero(labels == c)[0][:per] for c in range(max(1, len(classes)))][:10]
    rows = [r for r in rows if r.size]
    coloured = ctx.synthetic and hasattr(train, "render_batch")
    ncols = 2 * per if coloured else per
    height = 1.25 * len(rows) + 0.5
    fig = new_figure(1.2 * ncols, height, dpi=100)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    fig.subplots_adjust(top=1 - 0.45 / height, bottom=0.01, left=0.01, right=0.99, hspace=0.35, wspace=0.05)
    for r, idx in enumerate(rows):
        imgs, labs = train.get_batch(idx)
        cols = [imgs]
        if coloured:
            from zfscratch.experiments.reconstruct import render_pairs
            cols.append(render_pairs(train, idx, ("colored",))["colored"][0])
        for j in range(ncols):
            ax = axes[r, j]
            ax.set_axis_off()
            src, k = cols[j // per], j % per
            if k < len(src):
                ax.imshow(src[k], interpolation="nearest")
        if classes:
            axes[r, 0].set_title(classes[int(labs[0])], fontsize=9, loc="left")
    if coloured:
        fig.suptitle("left: training images (plain background); right: the same objects on the coloured "
                     "background (used by the reconstruction section)", fontsize=9, y=1 - 0.1 / height)
    fig_path = save_png(fig, os.path.join(ctx.dir("data"), "samples.png"))
    first, _ = train.get_batch([0])
    return {"spec": ctx.spec, "kind": ctx.kind, "classes": classes, "splits": splits,
            "class_counts": counts.tolist(), "image_shape": list(first.shape[1:]), "figure": fig_path,
            "seconds": time.perf_counter() - t0}


def render_data(res, ctx):
    rows = [[s, n] for s, n in res["splits"].items()]
    blocks = [("fig", res["figure"], "A few training images per class."),
              ("table", ["split", "images"], rows),
              ("kv", [("data spec", res["spec"]), ("image shape", " x ".join(map(str, res["image_shape"]))),
                      ("classes", ", ".join(res["classes"]) or "n/a")])]
    if res.get("class_counts"):
        blocks.append(("table", ["class", "training images"],
                       [[c, n] for c, n in zip(res["classes"], res["class_counts"])]))
    return blocks


def cmds_data(ctx, cfg):
    return [f"python -c \"from zfscratch.data import open_dataset; ds = open_dataset({ctx.spec!r}, 'train'); "
            f"print(len(ds), ds.classes)\""]


def section(p, budget):
    """This section's :class:`~zfscratch.pipeline.runner.Stage` for the profile settings ``p``
    (:data:`zfscratch.pipeline.profiles.PROFILES`) and the shared training ``budget``."""
    return Stage("data", "Data", stage_data, (), {}, "section 3 (data)",
        "The images everything below is computed on. The embedded synthetic data renders ten object classes "
        "with parts at known positions, at random position, scale, rotation and colour.",
        cmds_data, render_data)
