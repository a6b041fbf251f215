"""Invariance to vertical translation, scale and rotation (paper Fig 5).

For a few images and a sweep of each transformation we measure, per image and transformation value:

* the normalized Euclidean distance between the feature vectors of the original and the transformed
  image, ``||f(T x) - f(x)|| / ||f(x)||`` (divided by the norm of the original's feature vector, so
  that layers of different size and scale are comparable; 0 = unchanged, 1 = a change as large as
  the features themselves), at layer 1 (``relu1``: the rectified conv1 output) and at the
  penultimate layer (``relu7``: the rectified fc7 output);
* the probability of the true class, ``P(true)``.

How images are transformed
--------------------------
* Synthetic data (a dataset with a parametric renderer, ``render_batch``): the *object itself* is
  re-rendered at the chosen pose on the same background (``background_seed``), so nothing is
  cropped or interpolated: translation moves the object's centre vertically by ``t * size`` pixels,
  scale multiplies the object's size (base scale: the middle of the dataset's ``scale_range``),
  rotation sets its angle. Image ``i`` shows class ``i mod K`` on background ``seed + i``.
* Any other dataset: the preprocessed image (mean subtracted) is warped about its centre with
  bilinear interpolation -- vertical shift by ``t * size`` pixels, zoom by ``s`` (``s > 1`` crops,
  ``s < 1`` pads), rotation by the angle (clockwise); pixels from outside the image take the value
  0, i.e. the training mean. The identity transform returns the image unchanged.

Default sweeps (the paper's ranges scaled to the image size): vertical translation ``t`` from -0.3
to 0.3 of the side in 13 steps, scale 0.6 to 1.4 in steps of 0.1, rotation 0 to 360 degrees in 10
degree steps. Each sweep contains the identity, where the distance is 0 and ``P(true)`` is the
unmodified probability.

The effect of rotation on classification is summarized over more images (``eval_images``): mean
``P(true)`` and accuracy (arg-max = true class) at each angle, for every sweep; the figure's bottom
row shows the rotation summary with the training range of angles shaded (synthetic data).
"""
from __future__ import annotations

import math
import os

import numpy as np

from zfscratch.errors import UserError
from zfscratch.experiments import _shared as S
from zfscratch.util.files import safe_join, safe_name

KINDS = ("translation", "scale", "rotation")
_XLABEL = {"translation": "vertical translation (fraction of image side)", "scale": "scale factor",
           "rotation": "rotation (degrees, clockwise)"}
_IDENTITY = {"translation": 0.0, "scale": 1.0, "rotation": 0.0}


def default_sweeps():
    """``{"translation": ..., "scale": ..., "rotation": ...}`` default value arrays."""
    return {"translation": np.round(np.linspace(-0.3, 0.3, 13), 6),
            "scale": np.round(np.arange(0.6, 1.4001, 0.1), 6),
            "rotation": np.arange(0.0, 360.0 + 1e-9, 10.0)}


def parse_range(text, what):
    """``"lo:hi:step"`` or ``"v1,v2,..."`` -> float array (CLI helper); always includes the identity."""
    try:
        if ":" in text:
            lo, hi, step = (float(v) for v in text.split(":"))
            if step <= 0 or hi < lo:
                raise ValueError
            vals = np.arange(lo, hi + step * 1e-6, step)
        else:
            vals = np.array([float(v) for v in text.split(",") if v.strip()])
    except ValueError:
        raise UserError(f"--{what} {text!r}: expected LO:HI:STEP or a comma-separated list of numbers") from None
    if vals.size == 0:
        raise UserError(f"--{what} {text!r}: no values")
    return np.round(vals, 9)


def _with_identity(kind, vals):
    vals = np.asarray(vals, np.float64).ravel()
    ident = _IDENTITY[kind]
    if kind == "rotation":
        has = np.any(np.isclose(np.mod(vals, 360.0), 0.0))
    else:
        has = np.any(np.isclose(vals, ident))
    if not has:
        vals = np.sort(np.append(vals, ident))
    if kind == "scale" and np.any(vals <= 0):
        raise UserError("scale values must be positive")
    return vals


def is_identity(kind, v):
    if kind == "rotation":
        return bool(np.isclose(math.remainder(float(v), 360.0), 0.0, atol=1e-9))
    return bool(np.isclose(float(v), _IDENTITY[kind], atol=1e-12))


# ----------------------------------------------------------------------------- image warping
def warp(x, kind, value, fill=0.0):
    """Transform a preprocessed image ``x (C, H, W)`` about its centre (bilinear; outside = ``fill``).

    kind "translation": shift down by ``value * H`` pixels; "scale": zoom by ``value``; "rotation":
    rotate clockwise by ``value`` degrees. The identity returns an exact copy.
    """
    x = np.asarray(x)
    if is_identity(kind, value):
        return x.copy()
    c, h, w = x.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    if kind == "translation":
        sy, sx = yy - value * h, xx
    elif kind == "scale":
        sy, sx = cy + (yy - cy) / value, cx + (xx - cx) / value
    elif kind == "rotation":
        a = math.radians(value)  # clockwise on screen (y down): inverse map rotates back
        ca, sa = math.cos(a), math.sin(a)
        dy, dx = yy - cy, xx - cx
        sx = cx + ca * dx + sa * dy
        sy = cy - sa * dx + ca * dy
    else:
        raise ValueError(f"unknown transformation {kind!r}")
    y0, x0 = np.floor(sy).astype(np.int64), np.floor(sx).astype(np.int64)
    fy, fx = sy - y0, sx - x0
    out = np.zeros((c, h, w), np.float64)
    for dy_, wy in ((0, 1 - fy), (1, fy)):
        for dx_, wx in ((0, 1 - fx), (1, fx)):
            yi, xi = y0 + dy_, x0 + dx_
            ok = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
            v = np.where(ok, x[:, np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)], fill)
            out += v * (wy * wx)
    return out.astype(x.dtype)


# ----------------------------------------------------------------------------- image sources
class _RenderSource:
    """Images re-rendered by the synthetic dataset's parametric renderer."""

    def __init__(self, dataset, pre, seed=0):
        self.ds, self.pre, self.seed = dataset, pre, int(seed)
        lo, hi = getattr(dataset, "scale_range", (0.55, 0.95))
        self.base_scale = 0.5 * (lo + hi)
        self.size = int(dataset.size)
        self.max_angle = getattr(dataset, "max_angle", None)

    def label(self, i):
        return i % self.ds.num_classes

    def batch(self, i, kind, values):
        n = len(values)
        size = self.size
        cy = np.full(n, size / 2.0)
        scale = np.full(n, self.base_scale)
        angle = np.zeros(n)
        if kind == "translation":
            cy = size / 2.0 + np.asarray(values) * size
        elif kind == "scale":
            scale = self.base_scale * np.asarray(values)
        else:
            angle = np.asarray(values, np.float64)
        imgs, _ = self.ds.render_batch(self.label(i), cx=size / 2.0, cy=cy, scale=scale, angle=angle,
                                       background_seed=self.seed + i)
        return np.asarray(self.pre(imgs), np.float32)

    def describe(self):
        return {"method": "re-rendered by the synthetic renderer", "base_scale": self.base_scale,
                "training_max_angle": self.max_angle}


class _WarpSource:
    """Dataset images (preprocessed) warped in network-input space."""

    def __init__(self, dataset, pre, seed=0):
        self.ds, self.pre = dataset, pre
        self._cache = {}
        self.max_angle = None

    def _x(self, i):
        if i not in self._cache:
            imgs, labs = self.ds.get_batch([i])
            self._cache = {i: (np.asarray(self.pre(imgs), np.float32)[0], int(labs[0]))}
        return self._cache[i]

    def label(self, i):
        return self._x(i)[1]

    def batch(self, i, kind, values):
        x = self._x(i)[0]
        return np.stack([warp(x, kind, v) for v in values])

    def describe(self):
        return {"method": "bilinear warp of the preprocessed image, outside = training mean (0)"}


def _source(dataset, pre, seed):
    if hasattr(dataset, "render_batch") and hasattr(dataset, "num_classes"):
        return _RenderSource(dataset, pre, seed)
    return _WarpSource(dataset, pre, seed)


# ----------------------------------------------------------------------------- measurement
def measure(net, xs, x0, label, layers, batch=32):
    """Distances and P(true) for the transformed images ``xs (V, C, H, W)`` of one original ``x0``.

    Returns dict ``dist`` {layer: (V,)}, ``prob_true`` (V,), ``pred`` (V,), ``base_prob_true``.
    The original is passed through the network on its own (batch of one).
    """
    base = S.forward_layers(net, x0[None], layers)
    ref = {l: base[l].reshape(-1).astype(np.float64) for l in layers}
    norms = {l: max(np.linalg.norm(ref[l]), 1e-30) for l in layers}
    v = len(xs)
    dist = {l: np.empty(v) for l in layers}
    pt = np.empty(v)
    pred = np.empty(v, np.int64)
    for s, e in S.batched(v, batch):
        out = S.forward_layers(net, xs[s:e], layers)
        for l in layers:
            f = out[l].reshape(e - s, -1).astype(np.float64)
            dist[l][s:e] = np.linalg.norm(f - ref[l], axis=1) / norms[l]
        p = S.softmax(out["logits"])
        pt[s:e] = p[:, label]
        pred[s:e] = p.argmax(1)
    return {"dist": dist, "prob_true": pt, "pred": pred,
            "base_prob_true": float(S.softmax(base["logits"])[0, label])}


def _feature_layers(net, layers):
    """The two layers compared: ``layers`` resolved, default (layer 1 = the first rectified conv
    output, the penultimate output)."""
    if layers is None:
        first = next(net.layers[i + 1].name for i, l in enumerate(net.layers[:-1])
                     if l.kind == "Conv2d" and net.layers[i + 1].kind == "ReLU")
        layers = (first, S.penultimate_output(net))
    return tuple(S.resolve_layer(net, l) for l in layers)


def _sweep_values(sweeps):
    """{kind: float64 values} for every kind of :data:`KINDS`: the defaults overridden by ``sweeps``,
    each with its identity value added (the reference every distance is measured from)."""
    sw = default_sweeps()
    sw.update({k: np.asarray(v, np.float64) for k, v in (sweeps or {}).items()})
    return {k: _with_identity(k, sw[k]) for k in KINDS}


def _image_counts(src, dataset, n_images, eval_images):
    """``(n_images, eval_images)`` clamped: at least one curve, the curves among the evaluated
    images, and no more images than a warped (not re-rendered) dataset holds."""
    n_images = max(1, int(n_images))
    eval_images = max(n_images, int(eval_images))
    if isinstance(src, _WarpSource):
        eval_images = min(eval_images, len(dataset))
        n_images = min(n_images, eval_images)
        if n_images < 1:
            raise UserError("invariance: the dataset is empty")
    return n_images, eval_images


def _measure_all(net, src, sw, layers, eval_images, batch, progress):
    """:func:`measure` for every image and kind of transformation.

    Returns
    -------
    (res, labels, base_p): ``res[kind]`` holds ``dist`` {layer: (eval_images, V)}, ``prob_true``
    (eval_images, V) and ``pred`` (eval_images, V) int64, with V = ``len(sw[kind])``; ``labels``
    (eval_images,) int64 true classes; ``base_p`` (eval_images,) P(true) of the untransformed images.
    """
    total = eval_images * sum(len(v) for v in sw.values())
    bar = S.progress_bar(total, "invariance", progress)
    res = {k: {"dist": {l: np.zeros((eval_images, len(sw[k]))) for l in layers},
               "prob_true": np.zeros((eval_images, len(sw[k]))),
               "pred": np.zeros((eval_images, len(sw[k])), np.int64)} for k in KINDS}
    labels = np.zeros(eval_images, np.int64)
    base_p = np.zeros(eval_images)
    try:
        for i in range(eval_images):
            labels[i] = src.label(i)
            for k in KINDS:
                vals = sw[k]
                ident = next(j for j, v in enumerate(vals) if is_identity(k, v))
                xs = src.batch(i, k, vals)
                # the original is the sweep's own identity image (same rendering path as the others)
                m = measure(net, xs, xs[ident], int(labels[i]), layers, batch)
                for l in layers:
                    res[k]["dist"][l][i] = m["dist"][l]
                res[k]["prob_true"][i] = m["prob_true"]
                res[k]["pred"][i] = m["pred"]
                base_p[i] = m["base_prob_true"]
                bar.update(len(vals))
    finally:
        bar.close()
    return res, labels, base_p


def _curves_and_summary(res, labels, layers, n_images):
    """``(curves, summary)`` per kind: the first ``n_images`` images' curves (distances per layer,
    P(true)), and the per-value means over all evaluated images (P(true), accuracy, distances)."""
    curves, summary = {}, {}
    for k in KINDS:
        c = {f"dist_{l}": res[k]["dist"][l][:n_images] for l in layers}
        c["prob_true"] = res[k]["prob_true"][:n_images]
        curves[k] = c
        correct = res[k]["pred"] == labels[:, None]
        s = {"mean_prob_true": res[k]["prob_true"].mean(0), "accuracy": correct.mean(0)}
        for l in layers:
            s[f"mean_dist_{l}"] = res[k]["dist"][l].mean(0)
        summary[k] = s
    return curves, summary


def invariance(net, meta, dataset, out_dir, n_images=5, eval_images=40, sweeps=None, layers=None,
               batch=32, seed=0, progress=True, name="invariance"):
    """Invariance experiment (Python API of ``zfscratch invariance``).

    Parameters
    ----------
    net, meta : from :func:`zfscratch.io.load_weights`
    dataset : synthetic dataset (objects re-rendered at each pose) or any dataset (images warped)
    out_dir : folder for ``<name>.png`` and ``<name>.json``
    n_images : images drawn as curves (one line per image)
    eval_images : images (including the first ``n_images``) for the per-value summary: mean P(true)
        and accuracy at each transformation value
    sweeps : dict kind -> values (default :func:`default_sweeps`); missing kinds use the default
    layers : (layer-1 name, penultimate name); default ``(relu1, relu7)``
    batch : images per forward pass

    Returns
    -------
    dict (JSON-ready): ``values`` {kind: list}, ``curves`` {kind: {"dist_<layer>": [n_images x V],
    "prob_true": [n_images x V]}}, ``summary`` {kind: {"mean_prob_true": [V], "accuracy": [V],
    "mean_dist_<layer>": [V]}}, ``rotation`` (angle with the lowest accuracy, accuracy inside and
    outside the training range of angles, ...), ``figure``, ``json``.
    """
    pre = S.get_preprocess(meta)
    names = S.class_names(meta, S.num_classes(net))
    layers = _feature_layers(net, layers)
    sw = _sweep_values(sweeps)
    src = _source(dataset, pre, seed)
    n_images, eval_images = _image_counts(src, dataset, n_images, eval_images)
    res, labels, base_p = _measure_all(net, src, sw, layers, eval_images, batch, progress)
    curves, summary = _curves_and_summary(res, labels, layers, n_images)
    out = {"experiment": "invariance", "layers": list(layers), "n_images": n_images,
           "eval_images": eval_images, "source": src.describe(),
           "distance": "||f(Tx) - f(x)|| / ||f(x)|| (Euclidean, normalized by the original's norm)",
           "images": [{"index": i, "label": int(labels[i]), "label_name": names[labels[i]],
                       "base_prob_true": base_p[i]} for i in range(n_images)],
           "values": {k: sw[k] for k in KINDS}, "curves": curves, "summary": summary}
    out["rotation"] = _rotation_summary(sw["rotation"], out["summary"]["rotation"], src.max_angle)
    os.makedirs(out_dir, exist_ok=True)
    fig_path = safe_join(out_dir, safe_name(name, what="--name") + ".png")
    json_path = safe_join(out_dir, safe_name(name, what="--name") + ".json")
    plot_invariance(out, names, fig_path, src.max_angle)
    out["figure"], out["json"] = fig_path, json_path
    S.write_json(json_path, out)
    return out


def _rotation_summary(angles, summ, max_angle):
    acc, mp = np.asarray(summ["accuracy"]), np.asarray(summ["mean_prob_true"])
    folded = np.abs(np.array([math.remainder(a, 360.0) for a in angles]))  # distance from upright
    r = {"angles": angles, "accuracy": acc, "mean_prob_true": mp,
         "accuracy_upright": float(acc[np.argmin(folded)]),
         "worst_angle": float(angles[int(np.argmin(acc))]), "worst_accuracy": float(acc.min()),
         "mean_accuracy_all_angles": float(acc.mean())}
    if max_angle is not None:
        inside = folded <= float(max_angle) + 1e-9
        r["training_max_angle"] = float(max_angle)
        r["accuracy_inside_training_range"] = float(acc[inside].mean()) if inside.any() else None
        r["accuracy_outside_training_range"] = float(acc[~inside].mean()) if (~inside).any() else None
    return r


def plot_invariance(out, names, path, max_angle=None):
    """3x3 grid (rows: translation, scale, rotation; columns: layer-1 distance, penultimate distance,
    P(true)) plus a wide bottom row: accuracy and mean P(true) vs rotation angle."""
    layers = out["layers"]
    fig = S.figure(11.2, 14)  # the report's width at 100 dpi: shown at natural size, 9-pt text = 12.5 px
    gs = fig.add_gridspec(4, 3, height_ratios=[1, 1, 1, 1.25], hspace=0.6, wspace=0.28,
                          top=0.945, bottom=0.04)
    cmap = S.colormap("tab10")
    lab = [f"{d['index']}: {d['label_name']}" for d in out["images"]]
    cols = [(f"dist_{layers[0]}", f"layer 1 ({layers[0]}): normalized distance"),
            (f"dist_{layers[1]}", f"penultimate ({layers[1]}): normalized distance"),
            ("prob_true", "P(true class)")]
    for r, k in enumerate(KINDS):
        v = np.asarray(out["values"][k])
        for c, (key, title) in enumerate(cols):
            ax = fig.add_subplot(gs[r, c])
            curves = np.asarray(out["curves"][k][key])
            for i in range(curves.shape[0]):
                ax.plot(v, curves[i], "-o", ms=2.5, lw=1.2, color=cmap(i % 10), label=lab[i])
            if key == "prob_true":
                ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel(_XLABEL[k], fontsize=9)
            ax.set_title(f"{k}:\n{title}", fontsize=9)  # two lines: one fits a third of 11.2 in
            ax.grid(alpha=0.3)
            if k == "rotation":
                ax.set_xticks(np.arange(0, 361, 60))
            if r == 0 and c == 2:
                ax.legend(fontsize=9, loc="best")
    ax = fig.add_subplot(gs[3, :])
    rot = out["summary"]["rotation"]
    a = np.asarray(out["values"]["rotation"])
    ax.plot(a, rot["accuracy"], "-o", color="tab:red", lw=2.2, label=f"accuracy ({out['eval_images']} images)")
    ax.plot(a, rot["mean_prob_true"], "-s", color="tab:blue", lw=2.2, label="mean P(true class)")
    if max_angle is not None:
        m = float(max_angle)
        for lo, hi in ((0, m), (360 - m, 360)):
            ax.axvspan(lo, hi, color="tab:green", alpha=0.12)
        ax.plot([], [], color="tab:green", alpha=0.3, lw=8, label=f"training rotations (±{m:g}°)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(a.min(), a.max())
    ax.set_xticks(np.arange(0, 361, 30))
    ax.set_xlabel("rotation (degrees, clockwise)")
    ax.set_title("Effect of rotation on classification", fontsize=13, fontweight="bold")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower center", fontsize=9)
    fig.suptitle(f"Invariance (Fig 5): distances normalized by ||f(original)||; "
                 f"{out['source']['method']}", fontsize=10, y=0.995)
    return S.save_figure(fig, path)
