"""Discriminative power of each layer's features (paper Table 7, section 5.2).

The trained network is frozen. The images of a training split and of a held-out split go through it
once; each layer's output becomes a feature vector:

* convolutional layers (the rectified outputs ``relu1`` ... ``relu5``): pooled to a ``grid x grid``
  spatial grid (default 4x4, max-pooling; ``pool="avg"`` averages) with adaptive windows (cell
  ``(i, j)`` covers rows ``floor(i*H/g) .. ceil((i+1)*H/g)``), then flattened: ``C * g * g`` values;
* fully connected layers (``relu6``, ``relu7`` and the logits ``fc8``) as they are.

On each layer's features (standardized with the training split's per-feature mean and std) a linear
softmax classifier is trained by the engine itself -- a one-layer :class:`~zfscratch.net.Sequential`
with :class:`~zfscratch.layers.Linear`, :class:`~zfscratch.layers.SoftmaxCrossEntropy` and
:class:`~zfscratch.optim.SGD` (momentum 0.9, small weight decay, no filter renormalization), a few
epochs of mini-batches in a seeded order -- and scored on the held-out split. The network's own
accuracy on that split is reported beside (the ``fc8`` row should come close to it).
"""
from __future__ import annotations

import os

import numpy as np

from zfscratch.errors import UserError
from zfscratch.experiments import _shared as S
from zfscratch.util.files import safe_join, safe_name


def default_layers(net):
    """Rectified conv outputs, rectified fc outputs and the logits: relu1..relu5, relu6, relu7, fc8."""
    out = []
    for i, l in enumerate(net.layers):
        nxt = net.layers[i + 1] if i + 1 < len(net.layers) else None
        if l.kind in ("Conv2d", "Linear"):
            out.append(nxt.name if nxt is not None and nxt.kind == "ReLU" else l.name)
    return out


def grid_pool(a, grid=4, mode="max"):
    """Adaptive pooling of (N, C, H, W) to (N, C, g, g) with g = min(grid, H, W); fc outputs pass."""
    a = np.asarray(a)
    if a.ndim != 4:
        return a.reshape(a.shape[0], -1)
    n, c, h, w = a.shape
    gh, gw = min(grid, h), min(grid, w)
    out = np.empty((n, c, gh, gw), a.dtype)
    red = np.max if mode == "max" else np.mean
    for i in range(gh):
        y0, y1 = (i * h) // gh, -(-((i + 1) * h) // gh)
        for j in range(gw):
            x0, x1 = (j * w) // gw, -(-((j + 1) * w) // gw)
            out[:, :, i, j] = red(a[:, :, y0:y1, x0:x1], axis=(2, 3))
    return out.reshape(n, -1)


def extract_features(net, pre, dataset, layers, grid=4, pool="max", batch=64, limit=None, progress=True,
                     desc="features", world=None):
    """Features of every layer in ``layers`` for the first ``limit`` images of ``dataset``.

    With an MPI ``world`` each rank extracts a run of whole batches and the arrays are summed over
    the ranks (zeros elsewhere: exact); every rank returns all of them.

    Returns (features {layer: (N, D) float32}, labels (N,), logits (N, K)).
    """
    from zfscratch.distributed import World, shard_range
    world = world or World()
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    if n < 1:
        raise UserError("layerwise: empty dataset")
    nb = -(-n // int(batch))
    b0, b1 = shard_range(nb, world.rank, world.size)
    lo, hi = b0 * int(batch), min(n, b1 * int(batch))
    if lo >= hi:  # nothing to do here: shapes from one image, contributions of zero
        lo = hi = 0
    feats = {l: [] for l in layers}
    labels, logits = [], []
    bar = S.progress_bar(hi - lo, desc, progress and world.is_root)
    try:
        for s, e in ((lo + s, lo + e) for s, e in S.batched(hi - lo, batch)):
            imgs, lab = dataset.get_batch(np.arange(s, e))
            out = S.forward_layers(net, np.asarray(pre(imgs), np.float32), layers)
            for l in layers:
                feats[l].append(grid_pool(out[l], grid, pool).astype(np.float32))
            labels.append(np.asarray(lab, np.int64))
            logits.append(out["logits"])
            bar.update(e - s)
    finally:
        bar.close()
    if not world.distributed:
        return {l: np.concatenate(v) for l, v in feats.items()}, np.concatenate(labels), np.concatenate(logits)
    if hi == lo:
        imgs, _ = dataset.get_batch(np.arange(1))
        out = S.forward_layers(net, np.asarray(pre(imgs), np.float32), layers)
        feats = {l: [grid_pool(out[l], grid, pool).astype(np.float32)[:0]] for l in layers}
        labels, logits = [np.zeros(0, np.int64)], [np.asarray(out["logits"])[:0]]

    def full(parts, what):
        local = np.concatenate(parts)
        a = np.zeros((n,) + local.shape[1:], local.dtype)
        a[lo:hi] = local
        return world.allreduce_sum(a, what=f"gathering {what}")
    return ({l: full(v, f"{l} features") for l, v in feats.items()}, full(labels, "labels"),
            full(logits, "logits"))


def train_linear(xtr, ytr, k, epochs=10, lr=0.05, batch=64, weight_decay=1e-4, seed=0, backend="numpy"):
    """Linear softmax classifier trained with the engine (Linear + SoftmaxCrossEntropy + SGD).

    Returns (net, mean, std) where mean/std standardize the inputs: predict with
    ``net.forward((x - mean) / std)``.
    """
    from zfscratch.layers import Linear, SoftmaxCrossEntropy
    from zfscratch.net import Sequential
    from zfscratch.optim import SGD
    xtr = np.asarray(xtr, np.float32)
    mean = xtr.mean(0)
    std = xtr.std(0)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
    z = (xtr - mean) / std
    d = z.shape[1]
    clf = Sequential([Linear(d, k, name="clf", init_std=0.0)], backend=backend,
                     config={"arch": "custom", "layers": [{"kind": "Linear", "name": "clf",
                                                           "config": {"in_f": d, "out_f": k}}]})
    loss = SoftmaxCrossEntropy(backend=clf.backend)
    opt = SGD(clf, lr=lr, momentum=0.9, weight_decay=weight_decay, renorm_rms=None)
    be = clf.backend
    n = z.shape[0]
    rng = np.random.default_rng(seed)
    for ep in range(int(epochs)):
        order = rng.permutation(n)
        opt.lr = lr * (0.5 * (1 + np.cos(np.pi * ep / max(1, epochs))))  # cosine decay per epoch
        for s in range(0, n, batch):
            idx = order[s:s + batch]
            clf.zero_grads()
            logits = clf.forward(be.to_device(z[idx]), train=True)
            loss.forward(logits, be.to_device(ytr[idx]))
            clf.backward(loss.backward())
            opt.step()
    return clf, mean, std


def predict_linear(clf, mean, std, x, batch=1024):
    be = clf.backend
    out = []
    for s, e in S.batched(len(x), batch):
        z = (np.asarray(x[s:e], np.float32) - mean) / std
        out.append(np.asarray(be.to_host(clf.forward(be.to_device(z)))))
    return np.concatenate(out).argmax(1)


def _check_labels(ytr, yte, k):
    """UserError when a split's labels fall outside the model's ``k`` classes."""
    for y, what in ((ytr, "training"), (yte, "test")):
        if y.size and (y.min() < 0 or y.max() >= k):
            raise UserError(f"layerwise: {what} labels span [{y.min()}, {y.max()}] but the model has {k} classes")


def _classifier_rows(layers, ftr, ytr, fte, yte, k, sgd, seed, progress, world):
    """One linear classifier per layer, trained on ``ftr[layer] (N, D)`` / ``ytr`` and scored on both
    splits.

    ``sgd`` = (epochs, lr, batch, weight_decay) of :func:`train_linear`. With an MPI ``world`` each
    rank trains every ``world.size``-th layer and the rows are gathered (every rank returns all).

    Returns
    -------
    list of {"layer", "dim", "train_accuracy", "test_accuracy"} in the order of ``layers``.
    """
    epochs, lr, clf_batch, weight_decay = sgd
    rows = []
    mine = layers[world.rank::world.size]
    bar = S.progress_bar(len(mine), "linear classifiers", progress and world.is_root, unit="layer")
    try:
        for l in mine:
            clf, mu, sd = train_linear(ftr[l], ytr, k, epochs, lr, clf_batch, weight_decay, seed)
            tr = float((predict_linear(clf, mu, sd, ftr[l]) == ytr).mean())
            te = float((predict_linear(clf, mu, sd, fte[l]) == yte).mean())
            rows.append({"layer": l, "dim": int(ftr[l].shape[1]), "train_accuracy": tr, "test_accuracy": te})
            bar.update(1)
    finally:
        bar.close()
    if world.distributed:
        got = {r["layer"]: r for part in world.allgather(rows, what="gathering classifier rows") for r in part}
        rows = [got[l] for l in layers]
    return rows


def _table_markdown(rows, net_acc):
    """The Table 7 rows as Markdown, with the network's own accuracy as the last row."""
    md = ["| layer | features | train acc. | test acc. |", "|---|---|---|---|"]
    md += [f"| {r['layer']} | {r['dim']} | {r['train_accuracy']:.2%} | {r['test_accuracy']:.2%} |" for r in rows]
    md.append(f"| network (softmax) | - | - | {net_acc:.2%} |")
    return "\n".join(md)


def layerwise(net, meta, train_set, test_set, out_dir, layers=None, grid=4, pool="max", epochs=10,
              lr=0.05, clf_batch=64, weight_decay=1e-4, n_train=None, n_test=None, batch=64, seed=0,
              progress=True, name="layerwise", world=None):
    """Per-layer linear-classifier accuracy (Python API of ``zfscratch layerwise``).

    Parameters
    ----------
    net, meta : from :func:`zfscratch.io.load_weights`
    train_set, test_set : datasets (``get_batch``); the classifiers train on ``train_set`` (first
        ``n_train`` images) and are scored on ``test_set`` (first ``n_test``)
    layers : layer names (default :func:`default_layers`)
    grid, pool : spatial pooling of conv features (see the module docstring)
    epochs, lr, clf_batch, weight_decay : the linear classifier's SGD
    world : MPI world (``mpirun -n K``): features extracted in shards, one layer's classifier per
        rank in turn, rows gathered; rank 0 writes (the numbers equal one process's)

    Returns
    -------
    dict (JSON-ready): ``rows`` [{"layer", "dim", "train_accuracy", "test_accuracy"}],
    ``net_accuracy`` (the network's own test accuracy), ``table_markdown``, ``figure``, ``json``.
    """
    pre = S.get_preprocess(meta)
    k = S.num_classes(net)
    layers = [S.resolve_layer(net, l) for l in (layers or default_layers(net))]
    from zfscratch.distributed import World
    world = world or World()
    ftr, ytr, _ = extract_features(net, pre, train_set, layers, grid, pool, batch, n_train, progress,
                                   "features (train)", world=world)
    fte, yte, logits = extract_features(net, pre, test_set, layers, grid, pool, batch, n_test, progress,
                                        "features (test)", world=world)
    _check_labels(ytr, yte, k)
    net_acc = float((logits.argmax(1) == yte).mean())
    rows = _classifier_rows(layers, ftr, ytr, fte, yte, k, (epochs, lr, clf_batch, weight_decay), seed,
                            progress, world)
    out = {"experiment": "layerwise", "rows": rows, "net_accuracy": net_acc, "n_train": int(len(ytr)),
           "n_test": int(len(yte)), "grid": grid, "pool": pool, "epochs": epochs, "lr": lr,
           "weight_decay": weight_decay, "table_markdown": _table_markdown(rows, net_acc),
           "features": f"conv layers {pool}-pooled to {grid}x{grid} cells; fc layers as they are; "
                       "standardized with training-split mean/std"}
    fig_path = safe_join(out_dir, safe_name(name, what="--name") + ".png")
    json_path = safe_join(out_dir, safe_name(name, what="--name") + ".json")
    out["figure"], out["json"] = fig_path, json_path
    if world.is_root:
        os.makedirs(out_dir, exist_ok=True)
        plot_layerwise(out, fig_path)
        S.write_json(json_path, {k: v for k, v in out.items() if k not in ("figure", "json")} | {
            "figure": fig_path, "json": json_path})
    return out


def plot_layerwise(out, path):
    rows = out["rows"]
    fig = S.figure(max(6, 1.1 * len(rows) + 2), 4.5)
    ax = fig.add_subplot(1, 1, 1)
    xs = np.arange(len(rows))
    ax.bar(xs - 0.2, [r["train_accuracy"] for r in rows], 0.4, label="train", color="tab:gray")
    bars = ax.bar(xs + 0.2, [r["test_accuracy"] for r in rows], 0.4, label="held-out", color="tab:blue")
    for b, r in zip(bars, rows):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01, f"{r['test_accuracy']:.0%}",
                ha="center", fontsize=9)
    ax.axhline(out["net_accuracy"], color="tab:red", ls="--", label=f"network {out['net_accuracy']:.1%}")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{r['layer']}\n({r['dim']})" for r in rows], fontsize=9)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy of a linear softmax classifier")
    ax.set_title(f"Per-layer features (Table 7): conv layers {out['pool']}-pooled to {out['grid']}x{out['grid']}",
                 fontsize=10)
    ax.legend(loc="lower right", fontsize=9, framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    return S.save_figure(fig, path)
