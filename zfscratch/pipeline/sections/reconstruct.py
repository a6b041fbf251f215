"""Report section "Reconstructions with and without a coloured background": its stage, report renderer and stand-
alone commands."""
from __future__ import annotations

import os

from zfscratch.pipeline.runner import Stage
from zfscratch.pipeline.text import _backend_opt, _fmt, _q


def stage_reconstruct(ctx, cfg):
    from zfscratch.experiments.reconstruct import run_reconstruct
    net, meta = ctx.model()
    split, ds = ctx.heldout()
    r = run_reconstruct(net, meta, ds, os.path.join(ctx.dir("reconstruct"), "reconstruct.png"), layers="1-3",
                        images=min(cfg["images"], len(ds)), eval_images=min(cfg["eval_images"], len(ds)))
    return {"figure": r["figure"], "layers": r["layers"], "samples": r["samples"], "accuracy": r["accuracy"],
            "p_true": r["p_true"], "eval_images": r["eval_images"], "split": split}


def render_reconstruct(res, ctx):
    rows = [[bg, _fmt(res["accuracy"].get(bg), True), _fmt(res["p_true"].get(bg))] for bg in res["accuracy"]]
    blocks = [("fig", res["figure"], "Each row: one object; per background, the input (with the predicted label) "
                                     f"and the DeconvNet reconstructions of {', '.join(res['layers'])}.")]
    if rows:
        blocks.append(("table", ["background", f"accuracy ({res['eval_images']} objects)", "mean P(true class)"],
                       rows))
    return blocks


def cmds_reconstruct(ctx, cfg):
    split = ctx.split(("val", "test"))
    return [f"zfscratch reconstruct --weights {_q(ctx.cmd(ctx.weights))} --data {_q(ctx.spec)} --split {split} "
            f"--layers 1-3 --images {cfg['images']} --eval-images {cfg['eval_images']} "
            f"--out {_q(ctx.cmd(os.path.join(ctx.dir('reconstruct'), 'reconstruct.png')))}{_backend_opt(ctx)}"]


def section(p, budget):
    """This section's :class:`~zfscratch.pipeline.runner.Stage` for the profile settings ``p``
    (:data:`zfscratch.pipeline.profiles.PROFILES`) and the shared training ``budget``."""
    return Stage("reconstruct", "Reconstructions with and without a coloured background", stage_reconstruct, ("train",),
        dict(images=p["reconstruct_images"], eval_images=p["reconstruct_eval"]), "section 2.1 / seed",
        "The same objects rendered on a plain and on a coloured, cluttered background, and what layers 1-3 keep "
        "of them (all activations projected). Look at how much of the background survives each layer and at "
        "the accuracy drop on clutter.",
        cmds_reconstruct, render_reconstruct)
