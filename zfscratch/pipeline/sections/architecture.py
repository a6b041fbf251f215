"""Report section "Architecture: 7x7 stride 2 vs 11x11 stride 4 first layer": its stage, report renderer and
stand-alone commands."""
from __future__ import annotations

import os

from zfscratch.pipeline.runner import Stage
from zfscratch.pipeline.text import _backend_opt, _fmt, _q


def stage_architecture(ctx, cfg):
    from zfscratch.experiments.architecture import compare
    from zfscratch.io import load_weights
    from zfscratch.train import train_model
    out = ctx.dir("architecture")
    tr = ctx.results["train"]
    r = train_model(ctx.spec, os.path.join(out, "alexnet_like"), model="alexnet_like", epochs=cfg["epochs"],
                    batch=cfg["batch"], lr=cfg["lr"], backend=ctx.backend.name, snapshots=(), seed=cfg["seed"],
                    quiet=not ctx.progress, overwrite=True, input_size=cfg["size"],
                    model_config={"dropout": cfg["dropout"]})
    net, meta = ctx.model()
    alex, ameta = load_weights(r["weights"], backend=ctx.backend)
    split, val = ctx.heldout()
    models = {"zfnet_small": (net, meta, tr.get("val_acc")), "alexnet_like": (alex, ameta, r.get("val_acc"))}
    c = compare(models, val, out, probe_images=min(cfg["probe"], len(val)), batch=64, progress=ctx.progress)
    return {"figure": c["figure"], "json": c["json"], "table_markdown": c["table_markdown"],
            "models": {k: {kk: v.get(kk) for kk in ("arch", "conv1", "dead_fraction", "never_active_fraction",
                                                     "hf_energy", "val_accuracy", "filter_figure")}
                       for k, v in c["models"].items()},
            "alexnet_weights": r["weights"], "alexnet_elapsed_s": r.get("elapsed_s"),
            "dead_definition": c.get("dead_definition"), "hf_definition": c.get("hf_definition")}


def render_architecture(res, ctx):
    rows = [[k, v["conv1"], _fmt(v["dead_fraction"], True), _fmt(v["never_active_fraction"], True),
             _fmt(v["hf_energy"]), _fmt(v["val_accuracy"], True)] for k, v in res["models"].items()]
    blocks = [("table", ["model", "conv1", "dead filters", "never-active maps", "HF energy", "val. accuracy"], rows),
              ("fig", res["figure"], "Per model: conv1 filters, layer-2 projections and the statistics.")]
    for k, v in res["models"].items():
        if v.get("filter_figure"):
            blocks.append(("fig", v["filter_figure"], f"{k}: conv1 filters ({v['conv1']})."))
    blocks.append(("kv", [("dead filter", res.get("dead_definition") or ""),
                          ("HF energy", res.get("hf_definition") or ""),
                          ("alexnet_like training", f"{_fmt(res.get('alexnet_elapsed_s'))} s, same data, epochs, "
                                                    "batch, learning rate and seed as the main model")]))
    return blocks


def cmds_architecture(ctx, cfg):
    out = ctx.cmd(ctx.dir("architecture"))
    split = ctx.split(("val", "test"))
    return [f"zfscratch train --data {_q(ctx.spec)} --out {out}/alexnet_like --model alexnet_like "
            f"--epochs {cfg['epochs']} --batch {cfg['batch']} --lr {cfg['lr']} --input-size {cfg['size']} "
            f"--seed {cfg['seed']} --dropout {cfg['dropout']} --snapshots ''{_backend_opt(ctx)} --overwrite",
            f"zfscratch architecture --weights {_q(ctx.cmd(ctx.weights))} {out}/alexnet_like/weights.npz "
            f"--data {_q(ctx.spec)} --out {out}{_backend_opt(ctx)}  # held-out split: {split}"]


def section(p, budget):
    """This section's :class:`~zfscratch.pipeline.runner.Stage` for the profile settings ``p``
    (:data:`zfscratch.pipeline.profiles.PROFILES`) and the shared training ``budget``."""
    return Stage("architecture", "Architecture: 7x7 stride 2 vs 11x11 stride 4 first layer", stage_architecture,
        ("train",), dict(budget, probe=p["arch_probe"]), "Fig 6",
        "An AlexNet-like twin (11x11 stride-4 conv1) trained with the same budget. The paper's fix (smaller "
        "filters, smaller stride) gives fewer dead filters, less aliasing (high-frequency energy) and better "
        "accuracy.",
        cmds_architecture, render_architecture)
