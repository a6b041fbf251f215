"""Report section "DeconvNet, guided backprop and gradient": its stage, report renderer and stand-alone commands."""
from __future__ import annotations

import os

import numpy as np

from zfscratch.pipeline.runner import Stage
from zfscratch.pipeline.text import _backend_opt, _q


def _indices(ds, n):
    """The first image of each of the first ``n`` classes."""
    labels = np.asarray(ds.labels() if callable(getattr(ds, "labels", None)) else ds.labels)
    out = [int(np.nonzero(labels == c)[0][0]) for c in np.unique(labels)[:n]]
    return sorted(out) or [0]


def stage_attribution(ctx, cfg):
    from zfscratch.experiments import _shared as S
    from zfscratch.experiments.attribution import attribute, plot_attribution
    net, meta = ctx.model()
    split, ds = ctx.test()
    pre = S.get_preprocess(meta)
    names = S.class_names(meta, S.num_classes(net))
    idx = _indices(ds, cfg["images"])
    imgs, labels = ds.get_batch(idx)
    x = np.asarray(pre(imgs), np.float32)
    figs = []
    for layer, what in ((None, "class"), (S.last_conv_output(net), "map")):
        maps, info = attribute(net, x, layer=layer)
        rows = [f"#{i} true {names[int(l)]}\n" + (f"class {names[int(u)]}" if info["is_class"] else f"map {int(u)}")
                for i, l, u in zip(idx, labels, info["units"])]
        path = plot_attribution([S.display_image(v, pre) for v in x], maps, rows,
                                os.path.join(ctx.dir("attribution"), f"attribution_{what}.png"),
                                title=("predicted class logit" if info["is_class"] else
                                       f"strongest map of {info['layer']}") + ": the three rules")
        figs.append({"figure": path, "layer": info["layer"], "is_class": bool(info["is_class"]),
                     "units": [int(u) for u in info["units"]]})
    return {"split": split, "indices": idx, "figures": figs}


def render_attribution(res, ctx):
    blocks = []
    for f in res["figures"]:
        what = ("the predicted class logit (fc8)" if f["is_class"] else
                f"the strongest activation of the strongest map of {f['layer']}")
        blocks.append(("fig", f["figure"], f"Images {', '.join(map(str, res['indices']))} of the {res['split']} "
                                           f"split, projected from {what} with each rule: signed maps "
                                           "(0.5 + 0.5*r/max|r|, grey = 0) and magnitudes (|r| summed over "
                                           "channels / its 99th percentile, black = 0)."))
    return blocks


def cmds_attribution(ctx, cfg):
    split = ctx.split(("test", "val"))
    try:
        _, ds = ctx.test()
        idx = _indices(ds, cfg["images"])
    except Exception:  # noqa: BLE001 - commands are informative
        idx = [0]
    out = _q(ctx.cmd(ctx.dir("attribution")))
    return [f"zfscratch attribute --weights {_q(ctx.cmd(ctx.weights))} --data {_q(ctx.spec)} --split {split} "
            f"--index {i} --name attribute_{i} --out {out}{_backend_opt(ctx)}" for i in idx]


def section(p, budget):
    """This section's :class:`~zfscratch.pipeline.runner.Stage` for the profile settings ``p``
    (:data:`zfscratch.pipeline.profiles.PROFILES`) and the shared training ``budget``."""
    return Stage("attribution", "DeconvNet, guided backprop and gradient", stage_attribution, ("train",),
        dict(images=p.get("attribution_images", 2)), "section 2.1 vs Simonyan 2014 / Springenberg 2015",
        "The same unit projected to pixels by three rules: the DeconvNet (ReLU on the backward signal), the "
        "gradient (ReLU gated by the forward mask) and guided backprop (both). Guided backprop and the DeconvNet "
        "give crisp, image-like maps; the gradient is noisier but is the only one that is the model's derivative.",
        cmds_attribution, render_attribution)
