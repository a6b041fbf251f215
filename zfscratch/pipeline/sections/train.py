"""Report section "Training": its stage, report renderer and stand-alone commands."""
from __future__ import annotations

import numpy as np

from zfscratch.pipeline.runner import Stage
from zfscratch.pipeline.text import _backend_opt, _fmt, _q


def stage_train(ctx, cfg):
    from zfscratch.train import train_model
    run = ctx.dir("train")
    ctx.forget_model()
    r = train_model(ctx.spec, run, model="zfnet_small", epochs=cfg["epochs"], batch=cfg["batch"], lr=cfg["lr"],
                    backend=ctx.backend.name, snapshots=tuple(cfg["snapshots"]), seed=cfg["seed"],
                    quiet=not ctx.progress, overwrite=True, input_size=cfg["size"],
                    model_config={"dropout": cfg["dropout"]})
    hist = r.get("history") or []
    ips = [float(h.get("images_per_s") or 0) for h in hist if h.get("images_per_s")]
    net, _ = ctx.model()
    n_params = int(sum(int(np.prod(p.shape)) for _, p in net.params()))
    from zfscratch.models import input_shape
    summary = net.summary((1,) + tuple(input_shape(net)))
    return {"weights": r["weights"], "curve": r.get("curve"), "metrics_csv": r.get("metrics_csv"),
            "metrics_json": r.get("metrics_json"), "epochs": r.get("epochs"), "steps": r.get("steps"),
            "val_acc": r.get("val_acc"), "best_val_acc": r.get("best_val_acc"), "train_acc": r.get("train_acc"),
            "val_loss": r.get("val_loss"), "elapsed_s": r.get("elapsed_s"),
            "images_per_s": float(np.median(ips)) if ips else None, "classes": r.get("classes"),
            "config": r.get("config") or net.config, "preprocessing": r.get("preprocessing"),
            "params": n_params, "summary": summary, "backend": r.get("backend") or ctx.backend.name,
            "history": [{k: h.get(k) for k in ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
                                               "epoch_time_s")} for h in hist]}


def render_train(res, ctx):
    rows = [[h["epoch"], _fmt(h["lr"]), _fmt(h["train_loss"]), _fmt(h["train_acc"], True), _fmt(h["val_loss"]),
             _fmt(h["val_acc"], True), _fmt(h["epoch_time_s"])] for h in res.get("history", [])]
    blocks = []
    if res.get("curve"):
        blocks.append(("fig", res["curve"], "Training loss and error per epoch (train and validation)."))
    blocks += [("kv", [("final validation accuracy", _fmt(res.get("val_acc"), True)),
                       ("best validation accuracy", _fmt(res.get("best_val_acc"), True)),
                       ("epochs / steps", f"{res.get('epochs')} / {res.get('steps')}"),
                       ("training time", f"{_fmt(res.get('elapsed_s'))} s"),
                       ("throughput", f"{_fmt(res.get('images_per_s'))} images/s (median epoch)"),
                       ("parameters", f"{res.get('params', 0):,}"),
                       ("weights", res.get("weights"))]),
               ("table", ["epoch", "lr", "train loss", "train acc.", "val. loss", "val. acc.", "epoch s"], rows),
               ("pre", res.get("summary", ""))]
    return blocks


def cmds_train(ctx, cfg):
    snaps = ",".join(str(s) for s in cfg["snapshots"])
    return [f"zfscratch train --data {_q(ctx.spec)} --out {_q(ctx.cmd(ctx.dir('train')))} --model zfnet_small "
            f"--epochs {cfg['epochs']} --batch {cfg['batch']} --lr {cfg['lr']} --input-size {cfg['size']} "
            f"--seed {cfg['seed']} --dropout {cfg['dropout']} --snapshots {snaps}{_backend_opt(ctx)} --overwrite"]


def section(p, budget):
    """This section's :class:`~zfscratch.pipeline.runner.Stage` for the profile settings ``p``
    (:data:`zfscratch.pipeline.profiles.PROFILES`) and the shared training ``budget``."""
    return Stage("train", "Training", stage_train, ("data",), dict(budget, snapshots=list(p["snapshots"])),
        "section 3 (training)",
        "zfnet_small (ZFNet's block structure: 7x7 stride-2 conv1, overlapping 3x3 stride-2 pools, LCN) trained "
        "with SGD, momentum 0.9, weight decay and filter renormalization. Look for a falling training "
        "loss and validation error; snapshots are kept for the evolution figure.",
        cmds_train, render_train)
