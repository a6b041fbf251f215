"""Report section "Evaluation": its stage, report renderer and stand-alone commands."""
from __future__ import annotations

from zfscratch.pipeline.runner import Stage
from zfscratch.pipeline.text import _backend_opt, _fmt, _q


def stage_evaluate(ctx, cfg):
    import os

    from zfscratch.train import evaluate_weights
    split, _ = ctx.test()
    r = evaluate_weights(ctx.weights, ctx.spec, split=split, backend=ctx.backend, out_dir=ctx.dir("evaluate"),
                         quiet=not ctx.progress)
    res = {"split": split, "n": r["n"], "accuracy": r["accuracy"], "top1_error": r["top1_error"],
           "top5_error": r["top5_error"], "topk": r.get("topk", 5), "loss": r["loss"],
           "per_class": r["per_class"], "classes": r["classes"], "figure": r["png"], "json": r["json"],
           "note": None if split == "test" else f"no test split in {ctx.spec}: evaluated on {split}"}
    if cfg.get("ten_crop"):
        # the paper's test protocol (softmax averaged over 4 corners + centre, and their mirrors), in a
        # subfolder so that its JSON and confusion PNG do not replace the single-view ones
        out = os.path.join(ctx.dir("evaluate"), "ten_crop")
        os.makedirs(out, exist_ok=True)
        t = evaluate_weights(ctx.weights, ctx.spec, split=split, ten_crop=True, backend=ctx.backend, out_dir=out,
                             quiet=not ctx.progress)
        res["ten_crop"] = {"accuracy": t["accuracy"], "top1_error": t["top1_error"],
                           "top5_error": t["top5_error"], "loss": t["loss"], "json": t["json"]}
    return res


def render_evaluate(res, ctx):
    blocks = [("kv", [("split", f"{res['split']} ({res['n']} images)"),
                      ("top-1 accuracy", _fmt(res["accuracy"], True)),
                      ("top-1 error", _fmt(res["top1_error"], True)),
                      (f"top-{res.get('topk', 5)} error", _fmt(res["top5_error"], True)),
                      ("mean cross-entropy", _fmt(res["loss"]))]
                     + _ten_crop_rows(res.get("ten_crop"), res.get("topk", 5))),
              ("table", ["class", "accuracy"], [[c, _fmt(a, True)] for c, a in res["per_class"].items()]),
              ("fig", res["figure"], "Confusion matrix (rows: true class, columns: predicted).")]
    if res.get("note"):
        blocks.insert(0, ("note", res["note"]))
    return blocks


def _ten_crop_rows(tc, topk):
    """Key-value rows of the 10-crop evaluation (none when the profile does not ask for it)."""
    if not tc:
        return []
    return [("top-1 accuracy, 10 crops", _fmt(tc["accuracy"], True)),
            ("top-1 error, 10 crops", _fmt(tc["top1_error"], True)),
            (f"top-{topk} error, 10 crops", _fmt(tc["top5_error"], True))]


def cmds_evaluate(ctx, cfg):
    import os
    split = ctx.split(("test", "val"))
    out = ctx.dir("evaluate")
    base = f"zfscratch evaluate --weights {_q(ctx.cmd(ctx.weights))} --data {_q(ctx.spec)} --split {split}"
    cmds = [f"{base} --out {_q(ctx.cmd(out))}{_backend_opt(ctx)}"]
    if cfg.get("ten_crop"):
        cmds.append(f"{base} --ten-crop --out {_q(ctx.cmd(os.path.join(out, 'ten_crop')))}{_backend_opt(ctx)}")
    return cmds


def section(p, budget):
    """This section's :class:`~zfscratch.pipeline.runner.Stage` for the profile settings ``p``
    (:data:`zfscratch.pipeline.profiles.PROFILES`) and the shared training ``budget``."""
    ten = bool(p.get("ten_crop"))
    return Stage("evaluate", "Evaluation", stage_evaluate, ("train",), {"ten_crop": True} if ten else {},
        "Table 2 (error rates)",
        "Top-1 and top-5 error of the trained model on held-out images (the centre view"
        + ("; also averaged over the paper's 10 crops: corners, centre and their mirrors" if ten else "")
        + "), per class, and the confusion matrix. Classes that share shapes are the ones to confuse.",
        cmds_evaluate, render_evaluate)
