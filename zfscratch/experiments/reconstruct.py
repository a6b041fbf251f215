"""Layer reconstructions with and without a coloured background (the seed's "simulation" figures).

For a few sample objects, each rendered twice -- on a plain grey background and on a coloured,
cluttered one (the synthetic dataset's two background modes, same object, pose and colours) -- the
figure shows, side by side, the input with the net's predicted label and the DeconvNet
reconstructions of layers 1-3. A layer's reconstruction projects *all* of its activations at once
(:func:`zfscratch.deconv.reconstruct`): what the layer keeps of the image.

Datasets other than the synthetic one (no background modes) give one column group: the images as
they are.

Numbers: for each background, the accuracy and mean probability of the true class over
``eval_images`` objects rendered in both modes (the effect of clutter on the classifier).
"""
from __future__ import annotations

import os
import time

import numpy as np

from zfscratch import deconv, viz
from zfscratch.errors import UserError
from zfscratch.util.numerics import softmax as _softmax

BACKGROUNDS = ("plain", "colored")


def render_pairs(dataset, indices, backgrounds=BACKGROUNDS):
    """The objects of ``indices`` re-rendered on each background: dict background -> (uint8 images,
    labels). Needs a synthetic dataset (``get_meta`` and ``render_batch``); None otherwise."""
    if not (hasattr(dataset, "render_batch") and hasattr(dataset, "get_meta")):
        return None
    metas = dataset.get_meta(np.asarray(indices, np.int64))
    labels = np.array([m["label"] for m in metas], np.int64)
    pose = lambda k: [m["pose"][k] for m in metas]
    out = {}
    for bg in backgrounds:
        imgs, _ = dataset.render_batch(list(labels), cx=pose("cx"), cy=pose("cy"), scale=pose("scale"),
                                       angle=pose("angle"), background_seed=list(np.asarray(indices) + 1),
                                       background=bg)
        out[bg] = (imgs, labels)
    return out


def predict(net, x, batch=64):
    """Softmax probabilities (N, K) of network inputs ``x`` (host float)."""
    be = net.backend
    outs = []
    for s in range(0, x.shape[0], batch):
        outs.append(_softmax(be.to_host(net.forward(be.to_device(x[s:s + batch], net.dtype)))))
    return np.concatenate(outs) if outs else np.zeros((0, 0))


def _shown_images(dataset, start, images, backgrounds):
    """The sample objects shown: ``(idx, pairs)`` with ``idx`` their dataset indices and ``pairs``
    {group: (uint8 (B, H, W, 3), labels (B,))} -- one group per background (:func:`render_pairs`),
    or the images as they are (``"as given"``) for datasets without background modes."""
    n = len(dataset)
    if n == 0:
        raise UserError("the dataset is empty")
    idx = np.arange(start, min(n, start + int(images)))
    if idx.size == 0:
        raise UserError(f"--start {start} is past the end of the dataset ({n} images)")
    pairs = render_pairs(dataset, idx, backgrounds)
    if pairs is None:
        imgs, labels = dataset.get_batch(idx)
        pairs = {"as given": (imgs, np.asarray(labels))}
    return idx, pairs


def _columns(net, pairs, preprocess, names, batch):
    """Per group of ``pairs``: ``(disp, recs, prob, labels)`` -- display images (B, H, W, 3) in
    [0, 1], one reconstruction (B, C, H, W) per layer of ``names``, probabilities (B, K) and the
    labels (what :func:`reconstruct_figure` draws)."""
    cols = {}
    for bg, (imgs, labels) in pairs.items():
        x = np.ascontiguousarray(preprocess(imgs), np.float32)
        prob = predict(net, x, batch)
        recs = [deconv.reconstruct(net, x, nm, batch=batch) for nm in names]
        disp = np.asarray(preprocess.deprocess(x)).astype(np.float64) / 255.0 if hasattr(
            preprocess, "deprocess") else np.clip(np.moveaxis(x, 1, -1), 0, 1)
        cols[bg] = (disp, recs, prob, labels)
    return cols


def _sample_rows(idx, cols, groups):
    """Per shown sample: its index, label and, per group, the prediction and P(true)."""
    rows = []
    for i, di in enumerate(idx):
        row = {"index": int(di), "label": int(cols[groups[0]][3][i])}
        for bg in groups:
            prob, labels = cols[bg][2], cols[bg][3]
            row[bg] = {"pred": int(prob[i].argmax()), "p_true": float(prob[i, labels[i]])}
        rows.append(row)
    return rows


def _background_scores(net, dataset, preprocess, backgrounds, ne, batch):
    """``(accuracy, p_true)``: {group: float} over the first ``ne`` objects rendered on each
    background (the images as they are for other datasets); empty dicts when ``ne`` is 0."""
    acc, ptrue = {}, {}
    if ne > 0:
        eidx = np.arange(ne)
        ep = render_pairs(dataset, eidx, backgrounds) or {"as given": dataset.get_batch(eidx)}
        for bg, (imgs, labels) in ep.items():
            prob = predict(net, np.ascontiguousarray(preprocess(imgs), np.float32), batch)
            labels = np.asarray(labels)
            acc[bg] = float((prob.argmax(1) == labels).mean())
            ptrue[bg] = float(prob[np.arange(labels.size), labels].mean())
    return acc, ptrue


def run_reconstruct(net, meta, dataset, out, layers="1-3", images=4, start=0, eval_images=200,
                    backgrounds=BACKGROUNDS, scope="image", preprocess=None, batch=64):
    """The with/without-background reconstruction figure and its numbers.

    Parameters
    ----------
    net, meta : from :func:`zfscratch.io.load_weights`
    dataset : synthetic dataset (two backgrounds) or any dataset (images as they are)
    out : PNG path
    layers : layers to reconstruct ("1-3")
    images : sample objects shown (rows); start : index of the first
    eval_images : objects used for the accuracy numbers (0: skip)

    Returns
    -------
    dict: ``figure``, ``layers``, ``samples`` [{``index``, ``label``, per background ``pred``,
    ``p_true``}], ``accuracy`` {background: float}, ``p_true`` {background: mean}, ``eval_images``.
    """
    t0 = time.perf_counter()
    if preprocess is None:
        from zfscratch.preprocess import Preprocess
        preprocess = Preprocess.from_meta(meta or {"config": net.config})
    names = deconv.parse_layers(net, layers)
    classes = list((meta or {}).get("classes") or [])
    idx, pairs = _shown_images(dataset, start, images, backgrounds)
    groups = list(pairs)
    cols = _columns(net, pairs, preprocess, names, batch)
    rows = _sample_rows(idx, cols, groups)
    out = os.fspath(out)
    reconstruct_figure(cols, groups, names, classes, out, scope)
    ne = min(int(eval_images), len(dataset))
    acc, ptrue = _background_scores(net, dataset, preprocess, backgrounds, ne, batch)
    return {"figure": out, "layers": names, "samples": rows, "accuracy": acc, "p_true": ptrue,
            "eval_images": ne, "scope": scope, "seconds": time.perf_counter() - t0}


def _name(classes, k):
    return classes[k] if 0 <= k < len(classes) else str(k)


def reconstruct_figure(cols, groups, names, classes, path, scope="image"):
    """Rows: samples; per background group: input (with prediction) then one tile per layer."""
    first = cols[groups[0]]
    nr = first[0].shape[0]
    per = 1 + len(names)
    nc = per * len(groups)
    fig = viz.new_figure(0.4 + nc * 1.3, 0.9 + nr * 1.4)
    gs = fig.add_gridspec(nr, nc + len(groups) - 1,
                          width_ratios=sum(([1] * per + [0.15] for _ in groups), [])[:-1],
                          left=0.02, right=0.99, top=1 - 0.5 / (0.9 + nr * 1.4),
                          bottom=0.05 / (0.9 + nr * 1.4), wspace=0.05, hspace=0.35)
    layer_max = None
    if scope == "grid":  # one max per layer over every sample and background: strengths comparable
        layer_max = [max(float(np.abs(cols[bg][1][L]).max()) for bg in groups) for L in range(len(names))]
    for g, bg in enumerate(groups):
        disp, recs, prob, labels = cols[bg]
        for i in range(nr):
            c0 = g * (per + 1)
            ax = fig.add_subplot(gs[i, c0])
            ax.imshow(np.clip(disp[i], 0, 1), interpolation="nearest")
            pred = int(prob[i].argmax())
            ok = pred == int(labels[i])
            ax.set_title(f"{bg}: {_name(classes, pred)} {prob[i, pred]:.2f}", fontsize=9,
                         color="black" if ok else "red")
            ax.set_xticks([])
            ax.set_yticks([])
            if g == 0:
                ax.set_ylabel(f"#{i}: {_name(classes, int(labels[i]))}", fontsize=9)
            for L, nm in enumerate(names):
                ax = fig.add_subplot(gs[i, c0 + 1 + L])
                tile = viz.to_display(recs[L][i], scope, max_abs=None if layer_max is None else layer_max[L])
                ax.imshow(tile, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(nm, fontsize=9)
    fig.suptitle("DeconvNet reconstructions of layers " + ", ".join(names) + " with and without "
                 "coloured background", fontsize=10)
    fig.text(0.01, 0.0, "Input titles: background, predicted class and its probability (red: wrong); "
             "row labels: true class. Each reconstruction projects all activations of the layer. "
             f"{viz.caption(scope).replace('the whole grid', 'each layer (all samples, both backgrounds)')}.",
             fontsize=9, va="top", ha="left", wrap=True)  # below the tiles; the tight box grows to it
    return viz.save_png(fig, path)
