"""Evaluation: top-1/top-5 error, per-class accuracy, confusion matrix; from a net or a weights file."""
from __future__ import annotations

import json
import os

import numpy as np

from zfscratch import io as zio
from zfscratch.errors import UserError
from zfscratch.preprocess import Preprocess
from zfscratch.train.data import Cached, _describe, _labels_of, open_data
from zfscratch.train.plots import plot_confusion
from zfscratch.train.rundir import check_writable_dir
from zfscratch.util.jsonio import jsonable as _jsonable
from zfscratch.util.numerics import softmax as _softmax
from zfscratch.util.progress import tqdm_bar as _tqdm


def evaluate(net, data, prep, batch=64, ten_crop=False, classes=None, quiet=True, desc="evaluate", world=None):
    """Classify every image of ``data`` and score the predictions.

    Parameters
    ----------
    net : Sequential
    data : dataset (``get_batch``/``labels``) or :class:`Cached`
    prep : Preprocess
    ten_crop : average the softmax over the paper's 10 views (4 corners + centre, mirrored)
    world : a :class:`zfscratch.distributed.World`: each rank scores a contiguous shard and the
        counts are summed over the ranks (every rank returns the merged result)

    Returns
    -------
    dict: n, loss, accuracy, top1_error, top5_error (top-k with k = min(5, classes)), per_class
    ({class: accuracy}), confusion (list of rows: true class, columns: predicted), classes.
    """
    cached = data if isinstance(data, Cached) else Cached(data, prep, limit_bytes=0)
    k = int(net.config.get("num_classes") or net.layers[-1].out_f)
    classes = list(classes or getattr(cached.ds, "classes", None) or [str(i) for i in range(k)])
    labels = cached.labels
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise UserError(f"dataset {_describe(cached.ds)} has labels in [{labels.min()}, {labels.max()}] but "
                        f"the model has {k} classes")
    conf = np.zeros((k, k), np.int64)
    loss_sum, top5, n = 0.0, 0, 0
    topk = min(5, k)
    from zfscratch.distributed import World, shard_range
    world = world or World()
    lo, hi = shard_range(len(cached), world.rank, world.size)
    bar = _tqdm(total=hi - lo, desc=desc, unit="img", disable=quiet, leave=False)
    for imgs, y in cached.batches(batch, lo, hi):
        p = _probabilities(net, prep, imgs, ten_crop)
        loss_sum += float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-30)).sum())
        pred = p.argmax(axis=1)
        np.add.at(conf, (y, pred), 1)
        top = np.argsort(-p, axis=1, kind="stable")[:, :topk]
        top5 += int((top == y[:, None]).any(axis=1).sum())
        n += len(y)
        bar.update(len(y))
    bar.close()
    if world.distributed:
        world.allreduce_sum(conf, what="merging evaluation counts")
        tot = world.allreduce_sum(np.array([loss_sum, top5, n], np.float64), what="merging evaluation counts")
        loss_sum, top5, n = float(tot[0]), int(tot[1]), int(tot[2])
    return _scores(conf, loss_sum, top5, n, topk, classes, ten_crop)


def _probabilities(net, prep, imgs, ten_crop):
    """Softmax of the net on a batch of images (averaged over the 10 views with ``ten_crop``), on the host."""
    be = net.backend
    if ten_crop:
        views = prep.ten_crop(imgs)
        p = 0.0
        for v in views:
            p = p + _softmax(be.to_host(net.forward(be.to_device(v), train=False)))
        return p / len(views)
    return _softmax(be.to_host(net.forward(be.to_device(prep(imgs)), train=False)))


def _scores(conf, loss_sum, top5, n, topk, classes, ten_crop):
    """The result dict of :func:`evaluate` from the merged counts."""
    k = conf.shape[0]
    correct = int(np.trace(conf))
    per_class = {}
    for c in range(k):
        tot = int(conf[c].sum())
        per_class[classes[c] if c < len(classes) else str(c)] = (float(conf[c, c] / tot) if tot else None)
    acc = correct / n if n else float("nan")
    return {"n": n, "loss": loss_sum / n if n else float("nan"), "accuracy": acc,
            "top1_error": 1.0 - acc, "top5_accuracy": top5 / n if n else float("nan"),
            "top5_error": 1.0 - top5 / n if n else float("nan"), "topk": topk,
            "per_class": per_class, "confusion": conf.tolist(), "classes": classes,
            "ten_crop": bool(ten_crop)}


def evaluate_weights(weights, data, split="test", ten_crop=False, batch=64, backend=None, out_dir=None,
                     quiet=False, world=None):
    """Evaluate a weights file on a dataset; writes ``evaluation[_SPLIT].json`` and
    ``confusion[_SPLIT].png`` into ``out_dir`` (default: the weights' folder). Returns the result
    dict (plus ``json``/``png`` paths). With an MPI ``world`` each rank scores its shard, rank 0
    merges and writes."""
    from zfscratch.distributed import World
    world = world or World()
    err = None
    try:
        net, meta, prep, ds, k, classes, ds_classes, out_dir = _evaluation_setup(
            weights, data, split, backend, out_dir, world)
    except UserError as e:
        if not world.distributed:
            raise
        err = e
    world.agree(err)
    if world.distributed:
        from zfscratch.distributed import array_digest
        world.check_same("the model", array_digest(net.state_dict()))
        world.check_same("the data", [len(ds), array_digest({"y": _labels_of(ds)})])
    cached = Cached(ds, prep, limit_bytes=0)
    res = evaluate(net, cached, prep, batch=batch, ten_crop=ten_crop, classes=classes or ds_classes,
                   quiet=quiet or not world.is_root, desc=f"evaluate {split}", world=world)
    res.update(weights=os.path.abspath(weights), data=str(data) if isinstance(data, str) else _describe(ds),
               split=split, backend=net.backend.name, ranks=world.size)
    tag = "" if split in (None, "") else f"_{split}"
    jpath = os.path.join(out_dir, f"evaluation{tag}.json")
    ppath = os.path.join(out_dir, f"confusion{tag}.png")
    if world.is_root:
        zio.atomic_write_text(jpath, json.dumps(_jsonable(res), indent=1) + "\n")
        plot_confusion(res["confusion"], res["classes"], ppath,
                       title=f"{os.path.basename(weights)} on {split}: top-1 error {res['top1_error']:.2%}")
    res.update(json=jpath, png=ppath)
    return res


def _evaluation_setup(weights, data, split, backend, out_dir, world):
    net, meta = zio.load_weights(weights, backend=backend)
    prep = Preprocess.from_meta(meta)
    ds = open_data(data, split)
    k = int(net.config.get("num_classes"))
    classes = meta.get("classes")
    ds_classes = list(getattr(ds, "classes", None) or [])
    if ds_classes and len(ds_classes) != k:
        raise UserError(f"dataset {data} has {len(ds_classes)} classes but the model in {weights} was "
                        f"trained on {k}")
    if len(ds) == 0:
        raise UserError(f"dataset {data} (split {split}) holds no images")
    out_dir = out_dir or os.path.dirname(os.path.abspath(weights))
    if world.is_root:
        check_writable_dir(out_dir)
    return net, meta, prep, ds, k, classes, ds_classes, out_dir
