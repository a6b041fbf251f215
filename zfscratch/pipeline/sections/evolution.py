"""Report section "Feature evolution during training": its stage, report renderer and stand-alone commands."""
from __future__ import annotations

import os

from zfscratch.pipeline.runner import Stage
from zfscratch.pipeline.text import _backend_opt, _fmt, _q


def stage_evolution(ctx, cfg):
    from zfscratch.experiments.evolution import run_evolution
    split, ds = ctx.heldout()
    r = run_evolution(ctx.dir("train"), dataset=ds, out=os.path.join(ctx.dir("evolution"), "evolution.png"),
                      layers="1-5", maps_per_layer=cfg["maps_per_layer"], images=min(cfg["images"], len(ds)),
                      max_epochs=8, backend=ctx.backend, batch=64, progress=ctx.progress)
    return {"figure": r["figure"], "epochs": r["epochs"], "images": r["images"], "split": split,
            "rows": [{"layer": row["layer"], "map": row["map"], "value": row["value"]} for row in r["rows"]]}


def render_evolution(res, ctx):
    head = ["layer", "map"] + [f"epoch {e}" for e in res["epochs"]]
    rows = [[r["layer"], r["map"]] + [_fmt(v) for v in r["value"]] for r in res["rows"]]
    return [("fig", res["figure"], "Rows: a map of layers 1-5; columns: saved epochs; each tile: the strongest "
                                   f"activation over {res['images']} fixed images, projected."),
            ("table", head, rows)]


def cmds_evolution(ctx, cfg):
    split = ctx.split(("val", "test"))
    return [f"zfscratch evolution --run {_q(ctx.cmd(ctx.dir('train')))} --data {_q(ctx.spec)} --split {split} "
            f"--maps-per-layer {cfg['maps_per_layer']} --images {cfg['images']} "
            f"--out {_q(ctx.cmd(os.path.join(ctx.dir('evolution'), 'evolution.png')))}{_backend_opt(ctx)}"]


def section(p, budget):
    """This section's :class:`~zfscratch.pipeline.runner.Stage` for the profile settings ``p``
    (:data:`zfscratch.pipeline.profiles.PROFILES`) and the shared training ``budget``."""
    return Stage("evolution", "Feature evolution during training", stage_evolution, ("train",),
        dict(images=p["evolution_images"], maps_per_layer=p["evolution_maps"]), "Fig 4",
        "The strongest projection of a few maps at each saved epoch. Lower layers settle within a few epochs; "
        "upper layers keep changing until late in training.",
        cmds_evolution, render_evolution, needs_history=True)
