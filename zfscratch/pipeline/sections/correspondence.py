"""Report section "Correspondence of object parts": its stage, report renderer and stand-alone commands."""
from __future__ import annotations

from zfscratch.pipeline.runner import Stage
from zfscratch.pipeline.text import _backend_opt, _q


def stage_correspondence(ctx, cfg):
    from zfscratch.experiments.correspondence import correspondence
    net, meta = ctx.model()
    split, ds = ctx.test()
    r = correspondence(net, meta, ds, ctx.dir("correspondence"), class_name=cfg["class"],
                       n_images=cfg["images"], groups=cfg["groups"], batch=64, progress=ctx.progress)
    rows = []
    for row in r["rows"]:
        rows.append({"part": row["part"], "random": row["random"],
                     **{k: {"mean": v["mean"], "std": v["std"]} for k, v in row.items()
                        if isinstance(v, dict) and "mean" in v}})
    return {"figure": r["figure"], "json": r["json"], "rows": rows, "summary": r.get("summary"),
            "table_markdown": r.get("table_markdown"), "split": split, "class": cfg["class"]}


def render_correspondence(res, ctx):
    layers = []
    for row in res["rows"]:
        for k in row:
            if k not in ("part", "random") and k not in layers:
                layers.append(k)
    rows = [[(f"random (as large as {r['part']})" if r["random"] and r["part"] != "random" else
              "random" if r["random"] else r["part"])] +
            [f"{r[l]['mean']:.4f} ± {r[l]['std']:.4f}" if l in r else "n/a" for l in layers] for r in res["rows"]]
    return [("table", ["occluded part"] + [f"Δ {l} (normalized)" for l in layers], rows),
            ("fig", res["figure"], f"The occluders on the {res['class']} images: each part, and random discs of "
                                   "the same size.")]


def cmds_correspondence(ctx, cfg):
    split = ctx.split(("test", "val"))
    return [f"zfscratch correspondence --weights {_q(ctx.cmd(ctx.weights))} --data {_q(ctx.spec)} --split {split} "
            f"--class {cfg['class']} --images {cfg['images']} --groups {cfg['groups']} "
            f"--out {_q(ctx.cmd(ctx.dir('correspondence')))}{_backend_opt(ctx)}"]


def section(p, budget):
    """This section's :class:`~zfscratch.pipeline.runner.Stage` for the profile settings ``p``
    (:data:`zfscratch.pipeline.profiles.PROFILES`) and the shared training ``budget``."""
    return Stage("correspondence", "Correspondence of object parts", stage_correspondence, ("train",),
        dict(images=p["correspondence_images"], groups=p["correspondence_groups"], **{"class": "face"}),
        "Table 1",
        "Occluding the same part (e.g. the left eye) in several images of a class changes the layer-5 and "
        "layer-7 features in a more consistent way (lower Δ) than occluding random regions, if the net "
        "implicitly matches parts across images.",
        cmds_correspondence, render_correspondence, synthetic_only=True)
