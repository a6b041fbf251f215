"""Report section "Training": its stage, report renderer and stand-alone commands."""
from __future__ import annotations

import hashlib
import os

import numpy as np

from zfscratch.pipeline.runner import Stage
from zfscratch.pipeline.text import _backend_opt, _fmt, _q


def _model_config(cfg):
    """Architecture overrides of a training budget (only the ones the budget sets)."""
    mc = {"dropout": cfg["dropout"]}
    for k in ("init", "widths", "fc"):
        if cfg.get(k) is not None:
            mc[k] = list(cfg[k]) if k == "widths" else cfg[k]
    return mc


def stage_train(ctx, cfg):
    from zfscratch.train import train_model
    run = ctx.dir("train")
    ctx.forget_model()
    r = train_model(ctx.spec, run, model=cfg.get("model", "zfnet_small"), epochs=cfg["epochs"], batch=cfg["batch"],
                    lr=cfg["lr"], backend=ctx.backend.name, snapshots=tuple(cfg["snapshots"]), seed=cfg["seed"],
                    quiet=not ctx.progress, overwrite=True, input_size=cfg["size"], resize=cfg.get("resize"),
                    model_config=_model_config(cfg), warmup=cfg.get("warmup", 0.0),
                    lr_schedule=cfg.get("lr_schedule"), augment=cfg.get("augment"))
    return _model_result(ctx, r)


def _model_result(ctx, r):
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
                                               "epoch_time_s")} for h in hist],
            **({"source": r["source"], "trained": r.get("trained")} if r.get("source") else {})}


def stage_model(ctx, cfg):
    """``--weights``: copy the given weights into OUT/train/weights.npz (what every later stage reads)."""
    import shutil
    src = cfg["weights"]
    dst = ctx.weights
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = f"{dst}.tmp{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    ctx.forget_model()
    net, meta = ctx.model()
    train = meta.get("train") or {}
    r = {"weights": dst, "classes": meta.get("classes"), "config": net.config,
         "preprocessing": meta.get("preprocessing"), "val_acc": train.get("val_acc"), "epochs": train.get("epochs"),
         "source": src, "trained": train or (meta.get("source") or None)}
    return _model_result(ctx, r)


def render_model(res, ctx):
    t = res.get("trained") or {}
    kv = [("weights", res.get("source")), ("copied to", res.get("weights")),
          ("architecture", (res.get("config") or {}).get("arch")), ("parameters", f"{res.get('params', 0):,}"),
          ("classes", ", ".join(map(str, res.get("classes") or [])) or "n/a")]
    if isinstance(t, dict) and t:
        kv += [(f"trained: {k.replace('_', ' ')}", _fmt(v) if isinstance(v, float) else str(v))
               for k, v in t.items() if not isinstance(v, (dict, list))]
    return [("note", "Built on an existing model (--weights): no training stage, so no training curve."),
            ("kv", kv), ("pre", res.get("summary", ""))]


def cmds_model(ctx, cfg):
    return [f"zfscratch run --weights {_q(ctx.cmd(cfg['weights']))} --data {_q(ctx.spec)} "
            f"--out {_q(ctx.cmd(ctx.out))}{_backend_opt(ctx)}"]


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


#: recipe keys that become ``zfscratch train`` options when set: (key, option, value format)
_RECIPE_OPTIONS = (("resize", "--resize", str), ("widths", "--widths", lambda v: ",".join(map(str, v))),
                   ("fc", "--fc", str), ("init", "--init", str), ("warmup", "--warmup", lambda v: f"{v:g}"),
                   ("lr_schedule", "--lr-schedule", str), ("augment", "--augment", str))


def cmds_train(ctx, cfg):
    snaps = ",".join(str(s) for s in cfg["snapshots"])
    extra = "".join(f" {flag} {fmt(cfg[k])}" for k, flag, fmt in _RECIPE_OPTIONS if cfg.get(k))
    return [f"zfscratch train --data {_q(ctx.spec)} --out {_q(ctx.cmd(ctx.dir('train')))} "
            f"--model {cfg.get('model', 'zfnet_small')} --epochs {cfg['epochs']} --batch {cfg['batch']} "
            f"--lr {cfg['lr']} --input-size {cfg['size']}{extra} --seed {cfg['seed']} --dropout {cfg['dropout']} "
            f"--snapshots {snaps}{_backend_opt(ctx)} --overwrite"]


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def section(p, budget, weights=None):
    """This section's :class:`~zfscratch.pipeline.runner.Stage` for the profile settings ``p``
    (:data:`zfscratch.pipeline.profiles.PROFILES`) and the shared training ``budget``; with ``weights``
    the stage takes that model instead of training one."""
    if weights:
        return Stage("train", "Model (existing weights)", stage_model, ("data",),
                     dict(weights=weights, sha256=_sha256(weights)), "section 3 (training)",
                     "The model the report is built on, as given by --weights (trained by zfscratch train or "
                     "imported from ONNX); nothing is trained.", cmds_model, render_model)
    recipe = {k: p.get(k) for k in ("model", "resize", "init", "widths", "fc", "warmup", "lr_schedule", "augment")}
    recipe = {k: (list(v) if isinstance(v, tuple) else v) for k, v in recipe.items() if v is not None}
    return Stage("train", "Training", stage_train, ("data",), dict(budget, **recipe, snapshots=list(p["snapshots"])),
        "section 3 (training)",
        f"{p.get('model', 'zfnet_small')} (ZFNet's block structure: 7x7 stride-2 conv1, overlapping 3x3 stride-2 "
        "pools, local response normalization) trained with SGD, momentum 0.9, weight decay and filter "
        "renormalization. Look for a falling training loss and validation error; snapshots are kept for the "
        "evolution figure.",
        cmds_train, render_train)
