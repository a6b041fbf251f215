"""Occlusion sensitivity (paper Fig 7).

A square occluder is slid over the (preprocessed) image. For every position we record, from one
forward pass of the occluded image:

(a) ``activation``: the total activation (sum over the map) of the strongest last-conv feature map
    of the *unoccluded* image -- the rectified conv5 output (``relu5`` in ZFNet); "strongest" = the
    map holding the largest single activation;
(c) ``prob_true``: the probability of the correct class;
(d) ``top_label`` / ``top_prob``: the most probable label and its probability.

(b) is the DeconvNet projection of that map for the unoccluded image (as in the paper), computed
once with :func:`zfscratch.deconv.project`.

Occluder value. By default the occluder is the training mean (``value="mean"``): after mean
subtraction that is exactly 0, so the occluded pixels are set to 0 in the network's input. A number
``v`` means a grey level in raw pixel units (0-255): the occluder then holds what the model's
preprocessing makes of a uniform image of grey ``v`` (so it stays correct for any preprocessing).

Positions. Top-left corners run from ``-margin`` to ``size + margin - patch`` in steps of
``stride`` along each axis, plus the last one so that the far edge is always covered; the part of
the occluder outside the image is dropped. Maps are indexed ``[row, col]`` of positions; the value at
``[i, j]`` belongs to the occluder centred at ``(ys[i] + patch/2, xs[j] + patch/2)`` in pixels.
A 224x224 image with patch 48, stride 8 has 23x23 = 529 positions (margin 0) or 25x25 = 625
(margin 8).

Positions are processed in batches (``batch`` positions per pass, so memory is bounded by the
batch, not by the number of positions). By default each batch goes through the incremental engine
(:mod:`zfscratch.experiments.incremental`): the unoccluded image is run once and, per position, only
the part of every conv / ReLU / pool / LRN output that the occluder can change is recomputed
(``incremental=False``: full forward passes). Batched, incremental and position-by-position results
agree to rounding (see ``tests/test_experiments.py`` and ``tests/test_incremental.py``).
"""
from __future__ import annotations

import os
import time

import numpy as np

from zfscratch.errors import UserError
from zfscratch.experiments import _shared as S
from zfscratch.util.files import safe_join, safe_name


#: positions per incremental pass = this times ``batch`` (see :func:`occlusion_maps`)
INCREMENTAL_BATCH_FACTOR = 4


def occluder_positions(size, patch, stride, margin=0):
    """Top-left coordinates of the occluder along one axis (see the module docstring)."""
    size, patch, stride, margin = int(size), int(patch), int(stride), int(margin)
    if patch < 1 or patch > size + 2 * margin:
        raise UserError(f"--patch {patch}: expected 1 <= patch <= image size {size} (+ 2*margin)")
    if stride < 1:
        raise UserError(f"--stride {stride}: expected a positive number of pixels")
    if margin < 0 or margin >= patch:
        raise UserError(f"--margin {margin}: expected 0 <= margin < patch")
    lo, hi = -margin, size + margin - patch
    pos = list(range(lo, hi + 1, stride))
    if pos[-1] != hi:
        pos.append(hi)
    return np.array(pos, np.int64)


def occluder_fill(pre, size, value="mean", channels=3):
    """The occluder's content in network-input space, as a (C, size, size) float32 array.

    ``"mean"`` -> zeros (the training mean after mean subtraction); a number -> ``pre`` applied to a
    uniform uint8 image of that grey level (raw 0-255 units).
    """
    if value is None or (isinstance(value, str) and value.lower() == "mean"):
        return np.zeros((channels, size, size), np.float32)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"--value {value!r}: expected 'mean' or a grey level 0-255") from None
    if not 0 <= v <= 255:
        raise UserError(f"--value {value}: expected a grey level in 0..255")
    if pre is None:
        raise UserError("--value NUMBER needs the model's preprocessing (weights metadata)")
    img = np.full((1, size, size, 3), int(round(v)), np.uint8)
    return np.asarray(pre(img), np.float32)[0]


def occlude_batch(x, fill, ys, xs, patch, xp=np):
    """Copies of ``x`` (C, H, W) with the occluder at each ``(ys[k], xs[k])`` (top-left): (K, C, H, W)."""
    k = len(ys)
    out = xp.repeat(x[None], k, axis=0)
    h, w = x.shape[1:]
    for i in range(k):
        y0, x0 = max(0, int(ys[i])), max(0, int(xs[i]))
        y1, x1 = min(h, int(ys[i]) + patch), min(w, int(xs[i]) + patch)
        if y1 > y0 and x1 > x0:
            out[i, :, y0:y1, x0:x1] = fill[:, y0:y1, x0:x1]
    return out


def _unoccluded(net, x, layer, map_index, label):
    """The reference pass of the unoccluded image ``x (C, H, W)``.

    Returns
    -------
    (fmap, map_index, p0, label): ``layer``'s output (F, h, w) for the image, the feature map to
    track (default: the one holding the largest single activation), the class probabilities (K,),
    and the true class (default: the predicted one), validated.
    """
    base = S.forward_layers(net, x[None], [layer])
    fmap = base[layer][0]
    if map_index is None:
        map_index = int(np.argmax(fmap.reshape(fmap.shape[0], -1).max(axis=1)))
    p0 = S.softmax(base["logits"])[0]
    if label is None:
        label = int(np.argmax(p0))
    label = int(label)
    if not 0 <= label < p0.shape[0]:
        raise UserError(f"label {label} out of range 0..{p0.shape[0] - 1}")
    return fmap, map_index, p0, label


def _rank_positions(n, step, world):
    """``[lo, hi)``: the run of the ``n`` positions this rank sweeps, whole passes of ``step``
    positions, so that every position is computed in the same pass as in one process."""
    from zfscratch.distributed import shard_range
    nb = -(-n // step)
    b0, b1 = shard_range(nb, world.rank, world.size)
    return b0 * step, min(n, b1 * step)


def _sweep(net, xd, fd, gy, gx, patch, layer, map_index, label, span, step, engine, bar):
    """Occlude positions ``span = (lo, hi)`` of the flattened grid, ``step`` per pass.

    Parameters
    ----------
    xd, fd : (C, H, W) image and occluder content on the device
    gy, gx : (n,) top-left corners of every position (row-major over the grid)
    engine : an :class:`~zfscratch.experiments.incremental.IncrementalOccluder`, or None for full
        forward passes of the occluded images

    Returns
    -------
    (act, pt, tl, tp): (n,) arrays -- the map's total activation, P(label), the top label and its
    probability -- zero outside ``span``, so that summing the ranks' arrays is exact.
    """
    be = net.backend
    n = gy.size
    li = net.index(layer)
    act = np.zeros(n, np.float64)
    pt = np.zeros(n, np.float64)
    tl = np.zeros(n, np.int64)
    tp = np.zeros(n, np.float64)
    lo, hi = span
    for s, e in ((lo + s, lo + e) for s, e in S.batched(hi - lo, step)):
        if engine is not None:
            r = engine.positions([(gy[k], gx[k], gy[k] + patch, gx[k] + patch) for k in range(s, e)])
            a, logits = r[layer], r["logits"]
        else:
            xb = occlude_batch(xd, fd, gy[s:e], gx[s:e], patch, be.xp)
            a = net.forward_range(xb, 0, li + 1)
            logits = net.forward_range(a, li + 1, len(net.layers))
        act[s:e] = be.to_host(a[:, map_index].reshape(e - s, -1).sum(axis=1))
        p = S.softmax(be.to_host(logits))
        pt[s:e] = p[:, label]
        tl[s:e] = p.argmax(axis=1)
        tp[s:e] = p.max(axis=1)
        bar.update(e - s)
    return act, pt, tl, tp


def _sweep_grid(net, x, fill, ys, xs, patch, layer, map_index, label, batch, incremental, progress,
                bar, world):
    """Every occluder position of the grid ``ys x xs`` (this rank's share, summed over the ranks).

    Parameters
    ----------
    x, fill : (C, H, W) float32 image and occluder content (host)
    ys, xs : top-left corners along each axis (:func:`occluder_positions`)
    batch, incremental, progress, bar, world : as in :func:`occlusion_maps`

    Returns
    -------
    ((act, pt, tl, tp), seconds): the (len(ys) * len(xs),) arrays of :func:`_sweep`, row-major over
    the grid, and the wall time of the sweep (engine set-up and merging included).
    """
    be = net.backend
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    gy, gx = gy.ravel(), gx.ravel()
    from zfscratch.distributed import World
    world = world or World()
    step = int(batch) * (INCREMENTAL_BATCH_FACTOR if incremental else 1)  # positions per pass
    lo, hi = _rank_positions(gy.size, step, world)
    xd, fd = be.to_device(x), be.to_device(fill)
    own_bar = bar is None
    if own_bar:
        bar = S.progress_bar(hi - lo, "occlusion", progress and world.is_root, unit="pos")
    t0 = time.perf_counter()
    engine = None
    if incremental:  # (step above: a position costs a few percent of a full pass in memory)
        from zfscratch.experiments.incremental import IncrementalOccluder
        engine = IncrementalOccluder(net, xd, fd, keep=[layer])
    try:
        maps = _sweep(net, xd, fd, gy, gx, patch, layer, map_index, label, (lo, hi), step, engine, bar)
    finally:
        if own_bar:
            bar.close()
    if world.distributed:
        for a in maps:
            world.allreduce_sum(a, what="merging occlusion maps")
    return maps, time.perf_counter() - t0


def occlusion_maps(net, x, label=None, patch=48, stride=8, margin=0, fill=None, layer=None,
                   map_index=None, batch=32, progress=False, incremental=True, bar=None, world=None):
    """Occlusion sweep of one preprocessed image.

    Parameters
    ----------
    net : Sequential
    x : (C, H, W) float array (the model's input, mean subtracted)
    label : true class (int); None -> the class the model predicts for the unoccluded image
    patch, stride, margin : occluder side, step and overhang in pixels (:func:`occluder_positions`)
    fill : (C, H, W) occluder content (default zeros = the training mean)
    layer : feature layer for (a) (default: the rectified last conv layer, ``relu5``)
    map_index : feature map for (a) (default: the strongest map of the unoccluded image)
    batch : occluded images per full forward pass; the incremental engine takes
        ``INCREMENTAL_BATCH_FACTOR * batch`` positions per pass (its memory per position is a few
        percent of a full pass: ZFNet 224, patch 48: 25 MiB for 32 positions vs 593 MiB), so that the
        fully connected layers read their weights once for more positions
    incremental : bool, default True: recompute only the part of each layer that the occluder can
        change (:class:`zfscratch.experiments.incremental.IncrementalOccluder`; exact up to float
        rounding); False: one full forward pass per occluded image (to compare)
    bar : an open progress bar to advance instead of making one (multi-image runs)
    world : a :class:`zfscratch.distributed.World` (``mpirun -n K``): each rank sweeps a run of whole
        position batches and the maps are summed over the ranks (every rank returns them; equal to
        one process's to float32 rounding: the incremental engine is not bit-reproducible across
        different sequences of calls)

    Returns
    -------
    dict with host arrays: ``ys``, ``xs`` (top-left positions), ``activation``, ``prob_true``,
    ``top_label``, ``top_prob`` (each (len(ys), len(xs))), and scalars ``label``, ``layer``,
    ``map_index``, ``base_activation``, ``base_prob_true``, ``base_label``, ``base_prob``,
    ``positions``, ``seconds``, ``positions_per_s``.
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 3:
        raise UserError(f"occlusion: expected one image (C, H, W), got shape {x.shape}")
    _, H, W = x.shape
    layer = S.last_conv_output(net) if layer is None else S.resolve_layer(net, layer)
    fill = np.zeros_like(x) if fill is None else np.asarray(fill, np.float32)
    fmap, map_index, p0, label = _unoccluded(net, x, layer, map_index, label)
    ys = occluder_positions(H, patch, stride, margin)
    xs = occluder_positions(W, patch, stride, margin)
    (act, pt, tl, tp), dt = _sweep_grid(net, x, fill, ys, xs, patch, layer, map_index, label, batch,
                                        incremental, progress, bar, world)
    n = len(ys) * len(xs)
    shape = (len(ys), len(xs))
    return dict(ys=ys, xs=xs, activation=act.reshape(shape), prob_true=pt.reshape(shape),
                top_label=tl.reshape(shape), top_prob=tp.reshape(shape), label=label, layer=layer,
                map_index=int(map_index), base_activation=float(fmap[map_index].sum()),
                base_prob_true=float(p0[label]), base_label=int(np.argmax(p0)), base_prob=float(p0.max()),
                patch=int(patch), stride=int(stride), margin=int(margin), positions=int(n),
                incremental=bool(incremental), seconds=dt, positions_per_s=n / dt if dt > 0 else float("inf"))


def occlusion_reference(net, x, label, patch, stride, margin=0, fill=None, layer=None, map_index=0):
    """Position-by-position occlusion with one plain forward pass per position (the test oracle)."""
    x = np.asarray(x, np.float32)
    layer = S.last_conv_output(net) if layer is None else layer
    fill = np.zeros_like(x) if fill is None else fill
    ys = occluder_positions(x.shape[1], patch, stride, margin)
    xs = occluder_positions(x.shape[2], patch, stride, margin)
    act = np.zeros((len(ys), len(xs)))
    pt = np.zeros_like(act)
    tl = np.zeros(act.shape, np.int64)
    for i, y in enumerate(ys):
        for j, xx in enumerate(xs):
            img = x.copy()
            y0, y1 = max(0, y), min(x.shape[1], y + patch)
            x0, x1 = max(0, xx), min(x.shape[2], xx + patch)
            img[:, y0:y1, x0:x1] = fill[:, y0:y1, x0:x1]
            out = S.forward_layers(net, img[None], [layer])
            act[i, j] = out[layer][0, map_index].sum()
            p = S.softmax(out["logits"])[0]
            pt[i, j] = p[label]
            tl[i, j] = p.argmax()
    return dict(activation=act, prob_true=pt, top_label=tl)


def centre_grid(res):
    """Pixel coordinates of the occluder centres: (cy (rows,), cx (cols,))."""
    half = res["patch"] / 2.0
    return res["ys"] + half, res["xs"] + half


def min_position(res):
    """Centre (x, y) in pixels of the occluder position with the lowest P(true class)."""
    cy, cx = centre_grid(res)
    i, j = np.unravel_index(np.argmin(res["prob_true"]), res["prob_true"].shape)
    return float(cx[j]), float(cy[i])


def inside_bbox(point, bbox):
    """Whether ``point = (x, y)`` lies in ``bbox = (x0, y0, x1, y1)`` (x1/y1 exclusive)."""
    x, y = point
    x0, y0, x1, y1 = bbox
    return bool(x0 <= x < x1 and y0 <= y < y1)


def project_map(net, x, layer, map_index, mode="max"):
    """DeconvNet projection (image-shaped, sign kept) of feature map ``map_index`` of ``layer`` for
    the unoccluded image ``x`` (C, H, W); None when the DeconvNet module is unavailable."""
    try:
        from zfscratch.deconv import project
    except ImportError:  # pragma: no cover - deconv is part of the package
        return None
    r = project(net, np.asarray(x, np.float32)[None], layer, [int(map_index)], mode=mode)
    r = np.asarray(net.backend.to_host(r))
    while r.ndim > 3:
        r = r[0]
    return r


def _heat_extent(res):
    cy, cx = centre_grid(res)
    sy = (cy[1] - cy[0]) if len(cy) > 1 else res["patch"]
    sx = (cx[1] - cx[0]) if len(cx) > 1 else res["patch"]
    return (cx[0] - sx / 2, cx[-1] + sx / 2, cy[-1] + sy / 2, cy[0] - sy / 2)


def plot_occlusion(res, image, projection, names, path, bbox=None, title=None):
    """Figure like the paper's Fig 7, panels in its order: (a) the input with the grey occluder drawn where
    P(true) is lowest, (b) total activation of the strongest layer-5 map, (c) that map's DeconvNet
    projection for the unoccluded image, (d) P(true class) and (e) the most probable label, per occluder
    centre. ``image``: (H, W, 3) in [0, 1]. 11.2 in wide at 100 dpi, so the report shows it at natural
    size and the default 10-pt text stays >= 12 px (:mod:`zfscratch.util.figures`)."""
    from matplotlib.patches import Patch, Rectangle

    from zfscratch.viz import to_display
    H, W = image.shape[:2]
    fig = S.figure(11.2, 3.4)
    axes = fig.subplots(1, 5)
    fig.subplots_adjust(left=0.01, right=0.93, wspace=0.32)
    ext = _heat_extent(res)
    mx, my = min_position(res)
    ax = axes[0]
    ax.imshow(image, interpolation="nearest")
    half = res["patch"] / 2.0
    ax.add_patch(Rectangle((mx - half - 0.5, my - half - 0.5), res["patch"], res["patch"], fc="0.5", ec="k", lw=1))
    ax.set_title(f"(a) {names[res['label']]}\nP(true) {res['base_prob_true']:.2f}")
    ax = axes[1]
    im = ax.imshow(res["activation"], extent=ext, cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(f"(b) {res['layer']} map {res['map_index']}\nactivation")
    ax = axes[2]
    if projection is not None:
        ax.imshow(to_display(projection), interpolation="nearest")
    ax.set_title("(c) its projection\n(unoccluded)")
    ax = axes[3]
    im = ax.imshow(res["prob_true"], extent=ext, cmap="jet", vmin=0, vmax=max(1e-6, res["prob_true"].max()),
                   interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.plot([mx], [my], "w+", ms=12, mew=2)
    ax.set_title(f"(d) P({names[res['label']]})")
    ax = axes[4]
    labs = np.unique(res["top_label"])
    cmap = S.colormap("tab20" if len(labs) > 10 else "tab10")
    lut = {int(l): i for i, l in enumerate(labs)}
    idx = np.vectorize(lambda v: lut[int(v)])(res["top_label"])
    colors = np.array([cmap(i % cmap.N) for i in range(len(labs))])
    ax.imshow(colors[idx], extent=ext, interpolation="nearest")
    ax.legend(handles=[Patch(color=colors[lut[int(l)]], label=names[int(l)]) for l in labs],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, frameon=False)
    ax.set_title("(e) most probable\nlabel")
    for ax in axes:
        ax.set_xlim(-0.5, W - 0.5)
        ax.set_ylim(H - 0.5, -0.5)
        ax.set_xticks([]), ax.set_yticks([])
        if bbox is not None:
            x0, y0, x1, y1 = bbox
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="w", lw=1, ls="--"))
    if title:
        fig.suptitle(title)
    return S.save_figure(fig, path)


def dataset_sample(dataset, index, label, size):
    """Image ``index`` of ``dataset``: ``(image (H, W, 3) uint8, label, bbox)``.

    ``label`` defaults to the dataset's; ``bbox`` ``(x0, y0, x1, y1)`` is the object's box for
    synthetic data whose images are already at the model's input ``size`` (else None: a resized
    image's box would not match the maps).
    """
    if dataset is None:
        raise UserError("occlusion: give an image file or a dataset and an index")
    if not 0 <= int(index) < len(dataset):
        raise UserError(f"--index {index}: out of range 0..{len(dataset) - 1}")
    imgs, labs = dataset.get_batch([int(index)])
    image = imgs[0]
    if label is None:
        label = int(labs[0])
    bbox = None
    if hasattr(dataset, "samples"):
        b = getattr(dataset.samples([int(index)])[0], "bbox", None)
        if b is not None and tuple(image.shape[:2]) == (size, size):
            bbox = tuple(int(v) for v in b)
    return image, label, bbox


def _label_index(label, names):
    """``--label`` as a class index: a class name or a digit string is converted; others pass."""
    if isinstance(label, str):
        if label in names:
            return names.index(label)
        if label.isdigit():
            return int(label)
        raise UserError(f"--label {label!r}: not a class of this model ({', '.join(names)})")
    return label


def _summary(res, names, bbox, settings, fig_path, json_path):
    """The JSON-ready result of :func:`run_occlusion`: ``res`` from :func:`occlusion_maps` with class
    names, the bounding-box check and the run's ``settings`` (patch, stride, margin, value, batch)."""
    mpos = min_position(res)
    return {
        "experiment": "occlusion", "label": res["label"], "label_name": names[res["label"]],
        "layer": res["layer"], "map_index": res["map_index"], "patch": settings["patch"],
        "stride": settings["stride"], "margin": settings["margin"], "value": settings["value"],
        "positions": res["positions"], "incremental": bool(res["incremental"]),
        "positions_per_s": res["positions_per_s"], "seconds": res["seconds"], "batch": settings["batch"],
        "base_prob_true": res["base_prob_true"], "base_label": res["base_label"],
        "base_label_name": names[res["base_label"]], "base_activation": res["base_activation"],
        "min_prob_true": float(res["prob_true"].min()), "min_prob_position_xy": list(mpos),
        "bbox": list(bbox) if bbox else None,
        "min_inside_bbox": inside_bbox(mpos, bbox) if bbox else None,
        "centres_y": centre_grid(res)[0], "centres_x": centre_grid(res)[1],
        "activation": res["activation"], "prob_true": res["prob_true"], "top_label": res["top_label"],
        "top_label_names": sorted({names[int(v)] for v in np.unique(res["top_label"])}),
        "figure": fig_path, "json": json_path,
    }


def run_occlusion(net, meta, out_dir, image=None, dataset=None, index=0, label=None, patch=None,
                  stride=None, margin=0, value="mean", batch=32, project_mode="max", progress=True,
                  name="occlusion", incremental=True, bar=None, world=None):
    """Occlusion experiment on one image: maps, figure and JSON (Python API of ``zfscratch occlude``).

    Parameters
    ----------
    net, meta : from :func:`zfscratch.io.load_weights`
    out_dir : folder for ``<name>.png`` and ``<name>.json``
    image : (H, W, 3) uint8 (e.g. :func:`zfscratch.preprocess.load_image`); or
    dataset, index : a dataset sample (its label and, for synthetic data, its bounding box are used)
    label : true class (int or class name); default: the dataset's label, else the model's top class
    patch, stride : occluder side and step in pixels of the model input (default: ~1/5 and ~1/28 of
        the input side: 44 and 8 at 224, 12 and 2 at 64)
    value : "mean" (default: the training mean, 0 after mean subtraction) or a grey level 0-255
    batch : occluder positions per pass
    project_mode : DeconvNet mode for panel (b): "max" (strongest activation) or "map" (whole map)
    incremental : recompute only what the occluder changes (default True; see :func:`occlusion_maps`)
    bar : an open progress bar to advance (multi-image runs); default: one of its own
    world : MPI world: the positions are shared out (:func:`occlusion_maps`); rank 0 writes

    Returns
    -------
    dict of numbers (JSON-ready) with ``figure`` and ``json`` paths.
    """
    pre = S.get_preprocess(meta)
    size = S.input_size(net)
    names = S.class_names(meta, S.num_classes(net))
    bbox = None
    if image is None:
        image, label, bbox = dataset_sample(dataset, index, label, size)
    label = _label_index(label, names)
    patch = int(patch) if patch else max(1, round(size / 5))
    stride = int(stride) if stride else max(1, round(size / 28))
    x = np.asarray(pre(np.asarray(image)[None]), np.float32)[0]
    fill = occluder_fill(pre, size, value, x.shape[0])
    res = occlusion_maps(net, x, label=label, patch=patch, stride=stride, margin=margin, fill=fill,
                         batch=batch, progress=progress, incremental=incremental, bar=bar, world=world)
    root = world is None or world.is_root
    proj = project_map(net, x, res["layer"], res["map_index"], project_mode) if root else None
    if root:
        os.makedirs(out_dir, exist_ok=True)
    fig_path = safe_join(out_dir, safe_name(name, what="--name") + ".png")
    json_path = safe_join(out_dir, safe_name(name, what="--name") + ".json")
    if root:
        plot_occlusion(res, S.display_image(x, pre), proj, names, fig_path, bbox=bbox)
    settings = dict(patch=patch, stride=stride, margin=margin, value=value, batch=batch)
    out = _summary(res, names, bbox, settings, fig_path, json_path)
    if root:
        S.write_json(json_path, out)
    return out
