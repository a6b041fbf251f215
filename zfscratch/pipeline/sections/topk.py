"""Report section "Top-9 activations per map, projected (layers 1-5)": its stage, report renderer and stand-alone
commands."""
from __future__ import annotations

from zfscratch.pipeline.runner import Stage
from zfscratch.pipeline.text import _backend_opt, _fmt, _q


def stage_topk(ctx, cfg):
    from zfscratch.experiments.topk import run_topk
    net, meta = ctx.model()
    split, ds = ctx.heldout()
    r = run_topk(net, meta, ds, ctx.dir("topk"), layers="1-5", maps=cfg["maps"], k=9,
                 images=min(cfg["images"], len(ds)), batch=64, progress=ctx.progress)
    layers = {name: {"figure": v["figure"], "maps": v["maps"], "rf": v["rf"], "dead_fraction": v["dead_fraction"],
                     "num_maps": v["num_maps"],
                     "top_value": [float(t[0]) if t else None for t in v["top_values"]]}
              for name, v in r["layers"].items()}
    return {"split": split, "images": r["images"], "search_s": r["search_s"], "project_s": r["project_s"],
            "images_per_s": r["images_per_s"], "layers": layers, "json": r["json"], "state": r["state"]}


def render_topk(res, ctx):
    blocks = [("table", ["layer", "maps", "receptive field (px)", "maps never active", "strongest activation"],
               [[n, v["num_maps"], v["rf"][0], _fmt(v["dead_fraction"], True),
                 _fmt(max([t for t in v["top_value"] if t is not None], default=None))]
                for n, v in res["layers"].items()]),
              ("kv", [("images scanned", f"{res['images']} ({res['split']} split)"),
                      ("search pass", f"{res['search_s']:.1f} s ({res['images_per_s']:.0f} images/s)"),
                      ("projection pass", f"{res['project_s']:.1f} s")])]
    for name, v in res["layers"].items():
        blocks.append(("fig", v["figure"], f"{name}: for each of the {len(v['maps'])} strongest maps, the top-9 "
                                          "projections (left) and the matching image patches (right)."))
    return blocks


def cmds_topk(ctx, cfg):
    split = ctx.split(("val", "test"))
    return [f"zfscratch visualize --weights {_q(ctx.cmd(ctx.weights))} --data {_q(ctx.spec)} --split {split} "
            f"--layers 1-5 --maps {cfg['maps']} --images {cfg['images']} --out {_q(ctx.cmd(ctx.dir('topk')))}"
            f"{_backend_opt(ctx)}"]


def section(p, budget):
    """This section's :class:`~zfscratch.pipeline.runner.Stage` for the profile settings ``p``
    (:data:`zfscratch.pipeline.profiles.PROFILES`) and the shared training ``budget``."""
    return Stage("topk", "Top-9 activations per map, projected (layers 1-5)", stage_topk, ("train",),
        dict(images=p["topk_images"], maps=p["topk_maps"]), "Fig 2",
        "For the strongest maps of each layer, the nine held-out images that excite the map most, their "
        "DeconvNet projections and image patches. Look for growing invariance and complexity from layer 1 "
        "(edges, colours) to layer 5 (object parts, whole objects).",
        cmds_topk, render_topk)
