"""Report section "Discriminative power of each layer": its stage, report renderer and stand-alone commands."""
from __future__ import annotations

from zfscratch.pipeline.runner import Stage
from zfscratch.pipeline.text import _backend_opt, _fmt, _q


def stage_layerwise(ctx, cfg):
    from zfscratch.experiments.layerwise import layerwise
    net, meta = ctx.model()
    split, test = ctx.test()
    train = ctx.dataset("train")
    r = layerwise(net, meta, train, test, ctx.dir("layerwise"), epochs=cfg["epochs"],
                  n_train=min(cfg["train_images"], len(train)), n_test=min(cfg["test_images"], len(test)),
                  batch=64, progress=ctx.progress)
    return {"figure": r["figure"], "json": r["json"], "rows": r["rows"], "net_accuracy": r["net_accuracy"],
            "split": split, "train_images": min(cfg["train_images"], len(train)),
            "test_images": min(cfg["test_images"], len(test))}


def render_layerwise(res, ctx):
    rows = [[r["layer"], r["dim"], _fmt(r["train_accuracy"], True), _fmt(r["test_accuracy"], True)]
            for r in res["rows"]]
    rows.append(["the network itself", "", "", _fmt(res["net_accuracy"], True)])
    return [("table", ["features of", "dimension", "train accuracy", f"{res['split']} accuracy"], rows),
            ("fig", res["figure"], f"Linear softmax classifiers trained on {res['train_images']} images, scored "
                                   f"on {res['test_images']} held-out images.")]


def cmds_layerwise(ctx, cfg):
    split = ctx.split(("test", "val"))
    return [f"zfscratch layerwise --weights {_q(ctx.cmd(ctx.weights))} --data {_q(ctx.spec)} --test-split {split} "
            f"--train-images {cfg['train_images']} --test-images {cfg['test_images']} --epochs {cfg['epochs']} "
            f"--out {_q(ctx.cmd(ctx.dir('layerwise')))}{_backend_opt(ctx)}"]


def section(p, budget):
    """This section's :class:`~zfscratch.pipeline.runner.Stage` for the profile settings ``p``
    (:data:`zfscratch.pipeline.profiles.PROFILES`) and the shared training ``budget``."""
    return Stage("layerwise", "Discriminative power of each layer", stage_layerwise, ("train",),
        dict(train_images=p["layerwise_train"], test_images=p["layerwise_test"], epochs=p["layerwise_epochs"]),
        "Table 7",
        "A linear softmax classifier trained on the frozen features of each layer. Accuracy should rise with "
        "depth: higher layers carry more class information.",
        cmds_layerwise, render_layerwise)
