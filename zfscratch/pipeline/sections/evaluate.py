"""Report section "Evaluation": its stage, report renderer and stand-alone commands."""
from __future__ import annotations

from zfscratch.pipeline.runner import Stage
from zfscratch.pipeline.text import _backend_opt, _fmt, _q


def stage_evaluate(ctx, cfg):
    from zfscratch.train import evaluate_weights
    split, _ = ctx.test()
    r = evaluate_weights(ctx.weights, ctx.spec, split=split, backend=ctx.backend, out_dir=ctx.dir("evaluate"),
                         quiet=not ctx.progress)
    return {"split": split, "n": r["n"], "accuracy": r["accuracy"], "top1_error": r["top1_error"],
            "top5_error": r["top5_error"], "topk": r.get("topk", 5), "loss": r["loss"],
            "per_class": r["per_class"], "classes": r["classes"], "figure": r["png"], "json": r["json"],
            "note": None if split == "test" else f"no test split in {ctx.spec}: evaluated on {split}"}


def render_evaluate(res, ctx):
    blocks = [("kv", [("split", f"{res['split']} ({res['n']} images)"),
                      ("top-1 accuracy", _fmt(res["accuracy"], True)),
                      ("top-1 error", _fmt(res["top1_error"], True)),
                      (f"top-{res.get('topk', 5)} error", _fmt(res["top5_error"], True)),
                      ("mean cross-entropy", _fmt(res["loss"]))]),
              ("table", ["class", "accuracy"], [[c, _fmt(a, True)] for c, a in res["per_class"].items()]),
              ("fig", res["figure"], "Confusion matrix (rows: true class, columns: predicted).")]
    if res.get("note"):
        blocks.insert(0, ("note", res["note"]))
    return blocks


def cmds_evaluate(ctx, cfg):
    split = ctx.split(("test", "val"))
    return [f"zfscratch evaluate --weights {_q(ctx.cmd(ctx.weights))} --data {_q(ctx.spec)} --split {split} "
            f"--out {_q(ctx.cmd(ctx.dir('evaluate')))}{_backend_opt(ctx)}"]


def section(p, budget):
    """This section's :class:`~zfscratch.pipeline.runner.Stage` for the profile settings ``p``
    (:data:`zfscratch.pipeline.profiles.PROFILES`) and the shared training ``budget``."""
    return Stage("evaluate", "Evaluation", stage_evaluate, ("train",), {}, "Table 2 (error rates)",
        "Top-1 and top-5 error of the trained model on held-out images, per class, and the confusion matrix. "
        "Classes that share shapes are the ones to confuse.",
        cmds_evaluate, render_evaluate)
