"""Report section "Sanity checks of the projections" (Adebayo et al. 2018): its stage, renderer and commands."""
from __future__ import annotations

from zfscratch.pipeline.runner import Stage
from zfscratch.pipeline.text import _backend_opt, _q


def stage_sanity(ctx, cfg):
    from zfscratch.experiments.attribution import run_sanity
    net, meta = ctx.model()
    split, ds = ctx.test()
    r = run_sanity(net, meta, ds, ctx.dir("sanity"), n=min(cfg["images"], len(ds)), seed=cfg["seed"],
                   progress=ctx.progress)
    return {k: r[k] for k in ("images", "layers", "seconds", "figures", "table", "table_head", "table_rows",
                              "json")} | {"split": split}


def render_sanity(res, ctx):
    f = res["figures"]
    return [("fig", f["metrics"], f"Spearman rank correlation and SSIM of |map| with the trained model's map, "
                                  f"mean +- std over {res['images']} {res['split']} images, after cascading "
                                  "(left) and independent (right) randomization of the weights."),
            ("table", res["table_head"], res["table_rows"]),
            ("fig", f["cascade_maps"], "Cascading randomization: the maps of two images after each step."),
            ("fig", f["independent_maps"], "Independent randomization: one layer at a time."),
            ("kv", [("time", f"{res['seconds']:.1f} s"),
                    ("randomized layer", "weights and biases from N(0, s^2), s = the trained tensor's std")])]


def cmds_sanity(ctx, cfg):
    split = ctx.split(("test", "val"))
    return [f"zfscratch sanity --weights {_q(ctx.cmd(ctx.weights))} --data {_q(ctx.spec)} --split {split} "
            f"--n {cfg['images']} --seed {cfg['seed']} --out {_q(ctx.cmd(ctx.dir('sanity')))}{_backend_opt(ctx)}"]


def section(p, budget):
    """This section's :class:`~zfscratch.pipeline.runner.Stage` for the profile settings ``p``
    (:data:`zfscratch.pipeline.profiles.PROFILES`) and the shared training ``budget``."""
    return Stage("sanity", "Sanity checks of the projections", stage_sanity, ("train",),
        dict(images=p.get("sanity_images", 16), seed=0), "Adebayo et al. 2018, Fig 2/4",
        "The trained model's weights are randomized from the top layer down, and one layer at a time. A map "
        "that explains the model must change when the weights do: watch which rule's correlation with the "
        "trained map falls towards 0 and which stays high (guided backprop and the DeconvNet are known to "
        "stay close to an edge detector of the image).",
        cmds_sanity, render_sanity, requires=(("scipy", "skimage"), "sanity"))
