"""Report section "Normalization: LRN vs LCN vs none" (optional: ``zfscratch run --stages normalization``):
its stage, report renderer and stand-alone commands."""
from __future__ import annotations

import os

from zfscratch.pipeline.runner import Stage
from zfscratch.pipeline.text import _backend_opt, _fmt, _q



def _lcn_size(net, default=5):
    """The LCN window for this net: ``default``, or the largest odd side that fits the norm2 input maps."""
    size = net.config["input_size"]
    shape = (1, net.config.get("in_channels", 3), size, size)
    side = None
    for l in net.layers:
        if l.name == "norm2":
            side = min(shape[2:])
            break
        shape = l.output_shape(shape)
    if side is None or side >= default:
        return default
    return max(1, side if side % 2 else side - 1)


def stage_normalization(ctx, cfg):
    from zfscratch.experiments.normalization import compare_norms
    from zfscratch.io import load_weights
    from zfscratch.models import _LCN, NORMS
    from zfscratch.train import train_model
    out = ctx.dir("normalization")
    tr = ctx.results["train"]
    net, meta = ctx.model()
    split, val = ctx.heldout()
    lcn = dict(_LCN, size=_lcn_size(net))
    main = net.config.get("norm", "lrn")   # the main model is one of the three; the others get its budget
    models, elapsed = {main: (net, meta, tr.get("val_acc"))}, {}
    for norm in (n for n in NORMS if n != main):
        r = train_model(ctx.spec, os.path.join(out, norm), model=net.config.get("arch", "zfnet_small"),
                        epochs=cfg["epochs"], batch=cfg["batch"], lr=cfg["lr"], backend=ctx.backend.name,
                        snapshots=(), seed=cfg["seed"], quiet=not ctx.progress, overwrite=True,
                        input_size=cfg["size"], model_config={"dropout": cfg["dropout"], "norm": norm, "lcn": lcn})
        models[norm] = (*load_weights(r["weights"], backend=ctx.backend), r.get("val_acc"))
        elapsed[norm] = r.get("elapsed_s")
    models = {n: models[n] for n in NORMS}
    c = compare_norms(models, val, out, topk_images=cfg["topk_images"], topk_maps=cfg["topk_maps"],
                      probe_images=cfg["probe"], batch=64, progress=ctx.progress)
    keep = ("dead_fraction", "never_active_fraction", "hf_energy", "val_accuracy", "filter_figure", "topk_figure")
    return {"figure": c["figure"], "json": c["json"], "lcn": lcn, "elapsed_s": elapsed, "split": split,
            "models": {norm: {k: st.get(k) for k in keep} for norm, st in c["models"].items()}}


def render_normalization(res, ctx):
    rows = [[k, _fmt(v["val_accuracy"], True), _fmt(v["hf_energy"]), _fmt(v["dead_fraction"], True),
             _fmt(v["never_active_fraction"], True)] for k, v in res["models"].items()]
    lcn = res.get("lcn", {})
    blocks = [("table", ["norm", "val. accuracy", "conv1 HF energy", "dead conv1 filters", "never-active conv1 maps"],
               rows),
              ("fig", res["figure"], "Per model: conv1 filters, layer-2 projections (strongest activation of 16 "
                                     "maps) and the statistics.")]
    for k, v in res["models"].items():
        blocks.append(("fig", v["topk_figure"], f"{k}: layer-2 (relu2) top-9 per map, DeconvNet projections "
                                                f"beside the image patches."))
    blocks.append(("kv", [("lrn", "the main model: cross-channel local response normalization (size 5, alpha "
                                  "1e-4, beta 0.75, k 2)"),
                          ("lcn", f"subtractive + divisive local contrast normalization, Gaussian window "
                                  f"{lcn.get('size')}x{lcn.get('size')}, sigma {lcn.get('sigma')} px, "
                                  f"floor {lcn.get('floor')}"),
                          ("none", "no norm1/norm2 layers"),
                          ("training", ", ".join(f"{k} {_fmt(v)} s" for k, v in res.get("elapsed_s", {}).items())
                                       + "; same data, epochs, batch, learning rate and seed as the main model"),
                          ("held-out split", res.get("split", ""))]))
    return blocks


def cmds_normalization(ctx, cfg):
    out = ctx.cmd(ctx.dir("normalization"))
    return [f"zfscratch normalization --data {_q(ctx.spec)} --out {_q(out)} --epochs {cfg['epochs']} "
            f"--batch {cfg['batch']} --lr {cfg['lr']} --input-size {cfg['size']} --seed {cfg['seed']} "
            f"--topk-images {cfg['topk_images']}{_backend_opt(ctx)} --overwrite"]


def section(p, budget):
    """This section's :class:`~zfscratch.pipeline.runner.Stage` (optional: only with ``--stages normalization``)."""
    return Stage("normalization", "Normalization: LRN vs LCN vs none", stage_normalization, ("train",),
                 dict(budget, probe=p["arch_probe"], topk_images=p["topk_images"], topk_maps=4), "§3 (norm)",
                 "The main model (cross-channel LRN) beside twins trained with the same budget using the "
                 "subtractive + divisive local contrast normalization of the paper's lineage, or no normalization: "
                 "accuracy, first-layer filters and layer-2 top-9.",
                 cmds_normalization, render_normalization, optional=True)
