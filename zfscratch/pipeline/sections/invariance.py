"""Report section "Invariance to translation, scale and rotation": its stage, report renderer and stand-alone
commands."""
from __future__ import annotations

import json

from zfscratch.pipeline.runner import Stage
from zfscratch.pipeline.text import _backend_opt, _fmt, _q
from zfscratch.util.jsonio import jsonable as _jsonable


def stage_invariance(ctx, cfg):
    from zfscratch.experiments.invariance import invariance
    net, meta = ctx.model()
    split, ds = ctx.test()
    r = invariance(net, meta, ds, ctx.dir("invariance"), n_images=cfg["images"],
                   eval_images=cfg["eval_images"], batch=64, progress=ctx.progress)
    r = _jsonable(r)
    summ = {}
    for kind, s in r["summary"].items():
        vals = r["values"][kind]
        acc = s.get("accuracy") or []
        summ[kind] = {"values": vals, "accuracy": acc, "mean_prob_true": s.get("mean_prob_true"),
                      **{k: v for k, v in s.items() if k.startswith("mean_dist_")}}
    return {"figure": r["figure"], "json": r["json"], "split": split, "summary": summ,
            "rotation": r.get("rotation"), "layers": r.get("layers")}


def render_invariance(res, ctx):
    rows = []
    for kind, s in res["summary"].items():
        acc = [a for a in (s.get("accuracy") or []) if a is not None]
        dists = {k: v for k, v in s.items() if k.startswith("mean_dist_")}
        dcells = []
        for k, v in sorted(dists.items()):
            vv = [x for x in v if x is not None]
            dcells.append(f"{k[len('mean_dist_'):]}: max {max(vv):.2f}" if vv else "n/a")
        vals = s["values"]
        rows.append([kind, f"{vals[0]:g} .. {vals[-1]:g} ({len(vals)} values)",
                     f"{min(acc):.0%} .. {max(acc):.0%}" if acc else "n/a", "; ".join(dcells)])
    blocks = [("fig", res["figure"], "Top rows: normalized feature distance to the untransformed image at layer 1 "
                                     "and at the penultimate layer, and P(true class), per image; bottom: the "
                                     "rotation summary."),
              ("table", ["transformation", "range", "accuracy over the sweep", "feature distance"], rows)]
    rot = res.get("rotation")
    if isinstance(rot, dict):
        blocks.append(("kv", [(k.replace("_", " "), _fmt(v) if not isinstance(v, (list, dict)) else
                               json.dumps(_jsonable(v))[:120]) for k, v in rot.items()]))
    return blocks


def cmds_invariance(ctx, cfg):
    split = ctx.split(("test", "val"))
    return [f"zfscratch invariance --weights {_q(ctx.cmd(ctx.weights))} --data {_q(ctx.spec)} --split {split} "
            f"--images {cfg['images']} --eval-images {cfg['eval_images']} "
            f"--out {_q(ctx.cmd(ctx.dir('invariance')))}{_backend_opt(ctx)}"]


def section(p, budget):
    """This section's :class:`~zfscratch.pipeline.runner.Stage` for the profile settings ``p``
    (:data:`zfscratch.pipeline.profiles.PROFILES`) and the shared training ``budget``."""
    return Stage("invariance", "Invariance to translation, scale and rotation", stage_invariance, ("train",),
        dict(images=p["invariance_images"], eval_images=p["invariance_eval"]), "Fig 5",
        "Feature distance to the untransformed image at layer 1 and the penultimate layer, and P(true class), as "
        "the image is shifted, scaled and rotated. Layer 1 changes a lot, the penultimate layer much less; "
        "rotation beyond the training range hurts the classifier.",
        cmds_invariance, render_invariance)
