"""Top-9 activations per feature map and their DeconvNet projections (paper Fig 2).

Two passes over the data:

1. **Search** (:func:`topk_search`): one streaming pass that keeps, for every map of the chosen
   layers, the ``k`` strongest activations seen so far -- value, image index and position -- and
   nothing else (memory ``O(maps x k)``). Each image contributes at most one entry per map: its
   spatial maximum (first in row-major order on ties), so the top-9 of a map are nine different
   images, as in the paper. Per batch the work is one ``argmax`` over each map's positions and a
   sort of the ``(batch + k) x maps`` candidate maxima (never of all activations). The state is a
   small mergeable record (:class:`TopK`, :func:`merge`; docs/design.md section 9): shards searched separately
   and merged give exactly the result of one pass. Order within a map: value descending, then
   image index ascending -- so ties are resolved the same way however the data was split.
2. **Projection** (:func:`topk_project`): the kept activations are projected one by one with the
   DeconvNet (batched: :func:`zfscratch.deconv.project_activation`) and both the projection and the
   image are cropped to the unit's receptive field (:func:`zfscratch.deconv.patch_box`).

:func:`run_topk` does both and draws one figure per layer: for each shown map, the 3x3 grid of
projections beside the 3x3 grid of image patches. "Layer k" means the rectified output of the k-th
convolution (``relu<k>``); any projectable layer name works too.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from zfscratch import deconv, viz
from zfscratch.errors import UserError
from zfscratch.util.progress import progress_bar as _progress
from zfscratch.util.figures import REPORT_MAX_PX
from zfscratch.util.files import safe_join, safe_name

DEFAULT_LAYERS = "1-5"


# ----------------------------------------------------------------------------- image sources
class ImageSource:
    """Uniform access to what the experiments read: a dataset or an array.

    Parameters
    ----------
    data : a dataset (``get_batch(indices) -> (uint8 (B, H, W, 3), labels)`` and ``len``), a uint8
        array (N, H, W, 3), or a float array (N, C, S, S) that is already the network input
    preprocess : callable uint8 (B, H, W, 3) -> float32 (B, C, S, S) (e.g. ``Preprocess.from_meta``);
        needed for datasets and uint8 arrays. Its ``deprocess`` (if any) gives display images.
    """

    def __init__(self, data, preprocess=None):
        self.data, self.pre = data, preprocess
        self.is_dataset = hasattr(data, "get_batch")
        if not self.is_dataset:
            arr = np.asarray(data)
            if arr.ndim != 4:
                raise UserError(f"images must be (N, H, W, 3) uint8 or (N, C, S, S) float, got {arr.shape}")
            self.data = arr
            self.raw_float = arr.dtype.kind == "f"
            if not self.raw_float and preprocess is None:
                raise UserError("uint8 images need a preprocessing (Preprocess.from_meta(meta))")
        elif preprocess is None:
            raise UserError("a dataset needs a preprocessing (Preprocess.from_meta(meta))")

    def __len__(self):
        return len(self.data)

    def load(self, indices):
        """Network input float32 (B, C, S, S) and labels (B,) (or None) for dataset indices."""
        idx = np.asarray(indices, dtype=np.int64)
        if self.is_dataset:
            images, labels = self.data.get_batch(idx)
            return np.ascontiguousarray(self.pre(images), dtype=np.float32), np.asarray(labels)
        arr = self.data[idx]
        if self.raw_float:
            return np.ascontiguousarray(arr, dtype=np.float32), None
        return np.ascontiguousarray(self.pre(arr), dtype=np.float32), None

    def display(self, x):
        """Network input (B, C, S, S) -> display images (B, S, S, 3) float in [0, 1]."""
        x = np.asarray(x)
        inv = getattr(self.pre, "deprocess", None)
        if inv is not None:
            img = np.asarray(inv(x))
            if img.dtype == np.uint8:
                return img.astype(np.float64) / 255.0
            return np.clip(img.astype(np.float64), 0.0, 1.0)
        img = np.moveaxis(x.astype(np.float64), 1, -1)
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
        lo = img.min(axis=(1, 2, 3), keepdims=True)
        hi = img.max(axis=(1, 2, 3), keepdims=True)
        return (img - lo) / np.where(hi > lo, hi - lo, 1.0)


def shard_indices(n, rank=0, world_size=1):
    """Contiguous block of ``range(n)`` for worker ``rank`` of ``world_size`` (deterministic)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    return np.arange(rank * n // world_size, (rank + 1) * n // world_size, dtype=np.int64)



# ----------------------------------------------------------------------------- mergeable state
@dataclass
class TopK:
    """The ``k`` strongest activations of every map of some layers.

    For layer ``name``: ``value[name]`` (k, C) float64, ``index[name]`` (k, C) int64 dataset image
    index, ``y[name]``, ``x[name]`` (k, C) int32 position in the layer's output map. Rows are ordered
    value-descending (ties: lower image index first); unused rows hold ``-inf`` / index ``-1``.
    ``count`` is the number of images seen.
    """

    k: int
    layers: list
    value: dict = field(default_factory=dict)
    index: dict = field(default_factory=dict)
    y: dict = field(default_factory=dict)
    x: dict = field(default_factory=dict)
    count: int = 0

    @classmethod
    def empty(cls, k, channels):
        """An empty record for ``channels`` = {layer name: number of maps}."""
        t = cls(int(k), list(channels))
        for name, c in channels.items():
            t.value[name] = np.full((k, c), -np.inf)
            t.index[name] = np.full((k, c), -1, np.int64)
            t.y[name] = np.zeros((k, c), np.int32)
            t.x[name] = np.zeros((k, c), np.int32)
        return t

    def update(self, name, values, indices, ys, xs):
        """Fold one batch in: ``values``/``ys``/``xs`` (B, C) per-image map maxima and their positions,
        ``indices`` (B,) the images' dataset indices."""
        values = np.nan_to_num(np.asarray(values, np.float64), nan=-np.inf)
        b = values.shape[0]
        idx = np.broadcast_to(np.asarray(indices, np.int64)[:, None], values.shape)
        self.value[name], self.index[name], self.y[name], self.x[name] = _select(
            self.k, (self.value[name], values), (self.index[name], idx),
            (self.y[name], np.asarray(ys, np.int32)), (self.x[name], np.asarray(xs, np.int32)))
        return b

    def entries(self, name, map_index):
        """``[(image index, y, x, value), ...]`` of one map, strongest first (unused rows dropped)."""
        keep = self.index[name][:, map_index] >= 0
        return [(int(i), int(yy), int(xx), float(v)) for i, yy, xx, v, kk in
                zip(self.index[name][:, map_index], self.y[name][:, map_index], self.x[name][:, map_index],
                    self.value[name][:, map_index], keep) if kk]

    def strongest_maps(self, name, n, by="max"):
        """The ``n`` maps of ``name`` with the largest top activation (``by="max"``) or top-k mean
        (``by="mean"``), strongest first (ties: lower map index)."""
        v = self.value[name]
        score = v[0] if by == "max" else np.where(np.isfinite(v), v, 0).mean(axis=0)
        order = np.lexsort((np.arange(score.size), -score))
        return [int(m) for m in order[:n]]

    # -- persistence ------------------------------------------------------------------------
    def to_arrays(self):
        """(arrays, meta) for :func:`zfscratch.io.atomic_savez`."""
        arrays = {}
        for name in self.layers:
            for key in ("value", "index", "y", "x"):
                arrays[f"{name}/{key}"] = getattr(self, key)[name]
        return arrays, {"format": "zfscratch-topk", "k": self.k, "layers": list(self.layers),
                        "count": int(self.count)}

    @classmethod
    def from_arrays(cls, arrays, meta):
        if meta.get("format") != "zfscratch-topk":
            raise UserError("not a zfscratch top-k file (format zfscratch-topk expected)")
        t = cls(int(meta["k"]), list(meta["layers"]), count=int(meta.get("count", 0)))
        for name in t.layers:
            for key in ("value", "index", "y", "x"):
                if f"{name}/{key}" not in arrays:
                    raise UserError(f"top-k file lacks {name}/{key}")
                getattr(t, key)[name] = arrays[f"{name}/{key}"]
        return t

    def save(self, path):
        from zfscratch.io import atomic_savez
        arrays, meta = self.to_arrays()
        atomic_savez(path, arrays, meta)
        return os.fspath(path)

    @classmethod
    def load(cls, path):
        from zfscratch.io import load_npz
        arrays, meta = load_npz(path, "top-k file")
        return cls.from_arrays(arrays, meta)


def _select(k, vals, idxs, ys, xs):
    """Top ``k`` rows per column of the stacked candidates: value desc, then index asc."""
    v = np.concatenate(vals, axis=0)
    i = np.concatenate(idxs, axis=0)
    # padding rows (index -1) sort after every real entry of equal value
    ikey = np.where(i < 0, np.iinfo(np.int64).max, i)
    order = np.lexsort((ikey, -v), axis=0)[:k]
    take = lambda a: np.take_along_axis(a, order, axis=0)
    return take(v), take(i), take(np.concatenate(ys, axis=0)), take(np.concatenate(xs, axis=0))


def merge(a, b):
    """Merge two top-k records (e.g. two shards): the result equals one pass over both inputs."""
    if a.k != b.k or list(a.layers) != list(b.layers):
        raise ValueError(f"cannot merge top-k records with different k or layers "
                         f"({a.k}, {a.layers}) vs ({b.k}, {b.layers})")
    out = TopK(a.k, list(a.layers), count=a.count + b.count)
    for name in a.layers:
        if a.value[name].shape != b.value[name].shape:
            raise ValueError(f"layer {name}: map counts differ ({a.value[name].shape[1]} vs "
                             f"{b.value[name].shape[1]})")
        out.value[name], out.index[name], out.y[name], out.x[name] = _select(
            a.k, (a.value[name], b.value[name]), (a.index[name], b.index[name]),
            (a.y[name], b.y[name]), (a.x[name], b.x[name]))
    return out


# ----------------------------------------------------------------------------- pass 1: search
def _layer_channels(net, names, in_shape):
    shapes = dict(net.output_shapes((1,) + tuple(in_shape)))
    return {n: int(shapes[n][1]) for n in names}


def search_batch(net, x, names, state, indices):
    """Forward one batch ``x`` (host or device, network input) through the deepest of ``names`` and
    fold each layer's per-image map maxima into ``state``. Returns nothing; ``state`` is updated."""
    be, xp = net.backend, net.backend.xp
    order = sorted((net.index(n), n) for n in names)
    a = be.to_device(x, net.dtype)
    start = 0
    for i, name in order:
        a = net.forward_range(a, start, i + 1)
        start = i + 1
        b, c, h, w = a.shape
        flat = a.reshape(b, c, h * w)
        arg = xp.argmax(flat, axis=2)
        val = xp.take_along_axis(flat, arg[..., None], axis=2)[..., 0]
        arg_h = np.asarray(be.to_host(arg))
        state.update(name, be.to_host(val), indices, arg_h // w, arg_h % w)
    state.count += int(x.shape[0])


def topk_search(net, source, layers=DEFAULT_LAYERS, k=9, batch=128, indices=None, rank=0,
                world_size=1, progress=True):
    """Pass 1: stream over the images and keep the top-``k`` activations of every map of ``layers``.

    Parameters
    ----------
    net : Sequential
    source : :class:`ImageSource` (or anything it accepts: a float array of network inputs)
    layers : "1-5", a list of numbers/names (see :func:`zfscratch.deconv.parse_layers`)
    k : entries kept per map
    batch : images per forward pass
    indices : dataset indices to scan (default: all, or this worker's shard of them)
    rank, world_size : scan only shard ``rank`` (contiguous block) -- merge the shards' records
        with :func:`merge`

    Returns
    -------
    :class:`TopK`
    """
    if not isinstance(source, ImageSource):
        source = ImageSource(source)
    names = deconv.parse_layers(net, layers)
    if indices is None:
        indices = shard_indices(len(source), rank, world_size)
    else:
        indices = np.asarray(indices, np.int64)
        indices = indices[shard_indices(indices.size, rank, world_size)]
    x0, _ = source.load(indices[:1]) if indices.size else source.load([0])
    state = TopK.empty(k, _layer_channels(net, names, x0.shape[1:]))
    bar = _progress(indices.size, "top-k search", progress)
    for s in range(0, indices.size, int(batch)):
        idx = indices[s:s + int(batch)]
        x, _ = source.load(idx)
        search_batch(net, x, names, state, idx)
        if bar is not None:
            bar.update(idx.size)
    if bar is not None:
        bar.close()
    return state


def brute_force_topk(net, images, layers, k=9):
    """All activations at once, then a full sort: the oracle for :func:`topk_search` (tests).

    images : float (N, C, S, S) network inputs, indexed 0..N-1. Returns a :class:`TopK`.
    """
    names = deconv.parse_layers(net, layers)
    acts = deconv.activations(net, images, names)
    out = TopK(k, names, count=int(images.shape[0]))
    for name in names:
        a = acts[name]
        n, c, h, w = a.shape
        flat = a.reshape(n, c, h * w)
        arg = flat.argmax(axis=2)
        val = np.take_along_axis(flat, arg[..., None], axis=2)[..., 0].astype(np.float64)
        img = np.broadcast_to(np.arange(n)[:, None], (n, c))
        order = np.lexsort((img, -val), axis=0)
        kk = min(k, n)
        v = np.full((k, c), -np.inf)
        i = np.full((k, c), -1, np.int64)
        yy = np.zeros((k, c), np.int32)
        xx = np.zeros((k, c), np.int32)
        o = order[:kk]
        v[:kk] = np.take_along_axis(val, o, 0)
        i[:kk] = np.take_along_axis(img, o, 0)
        yy[:kk] = np.take_along_axis(arg // w, o, 0)
        xx[:kk] = np.take_along_axis(arg % w, o, 0)
        out.value[name], out.index[name], out.y[name], out.x[name] = v, i, yy, xx
    return out


# ----------------------------------------------------------------------------- pass 2: project
def crop(a, box):
    """``a[..., y0:y1, x0:x1]`` for a (C, H, W) or (H, W, C) array (channels-first when ndim 3 and the
    first axis is 1 or 3 and the last is not)."""
    y0, y1, x0, x1 = box
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        return a[:, y0:y1, x0:x1]
    return a[y0:y1, x0:x1]


def _chosen_maps(state, names, maps, by):
    """{layer: [map indices]} to project for each of ``names``: from a dict, a list used for every
    layer, or the ``maps`` strongest of each (:meth:`TopK.strongest_maps`); ValueError for a layer
    not searched or a map out of range."""
    chosen = {}
    for name in names:
        if name not in state.layers:
            raise ValueError(f"layer {name} was not searched (searched: {', '.join(state.layers)})")
        if isinstance(maps, dict):
            chosen[name] = [int(m) for m in maps.get(name, maps.get(str(name), []))]
        elif isinstance(maps, (list, tuple, np.ndarray)):
            chosen[name] = [int(m) for m in maps]
        else:
            chosen[name] = state.strongest_maps(name, int(maps), by=by)
        nmaps = state.value[name].shape[1]
        bad = [m for m in chosen[name] if not 0 <= m < nmaps]
        if bad:
            raise ValueError(f"layer {name} has maps 0..{nmaps - 1}; got {bad}")
    return chosen


def _project_layer(net, source, state, name, maps, batch):
    """The record of one layer (see :func:`topk_project`) for its shown ``maps``.

    Every kept entry of those maps is projected in one batched DeconvNet call; each image is loaded
    once, however many entries it holds. Returns ``(rec, n)`` with ``n`` the number of projections.
    """
    units, owner = [], []
    for mi, m in enumerate(maps):
        for (img, yy, xx, v) in state.entries(name, m):
            units.append((img, m, yy, xx))
            owner.append(mi)
    rec = {"maps": maps, "entries": [state.entries(name, m) for m in maps],
           "rf": deconv.receptive_field(net, name), "proj": [[] for _ in maps],
           "patches": [[] for _ in maps], "boxes": [[] for _ in maps]}
    if not units:
        return rec, 0
    units = np.asarray(units, np.int64)
    uniq, local = np.unique(units[:, 0], return_inverse=True)
    x, _ = source.load(uniq)
    disp = source.display(x)
    lu = units.copy()
    lu[:, 0] = local  # dataset index -> row of x
    proj, _ = deconv.project_activation(net, x, name, lu, batch=batch)
    hw = x.shape[2:]
    for j, (mi, u) in enumerate(zip(owner, lu)):
        box = deconv.patch_box(net, name, u[2], u[3], image_size=hw)
        rec["proj"][mi].append(crop(proj[j], box))
        rec["patches"][mi].append(crop(disp[u[0]], box))
        rec["boxes"][mi].append(box)
    return rec, len(units)


def topk_project(net, source, state, layers=None, maps=16, by="max", batch=64, progress=True):
    """Pass 2: project the kept activations of the shown maps and crop projections and image patches.

    Parameters
    ----------
    state : :class:`TopK` from :func:`topk_search`
    layers : subset of ``state.layers`` (default all)
    maps : number of maps per layer (the strongest, see :meth:`TopK.strongest_maps`), or a dict
        ``{layer: [map indices]}`` / a list of map indices used for every layer

    Returns
    -------
    dict layer name -> dict with ``maps`` (list), ``entries`` (per map: [(image, y, x, value)]),
    ``proj`` (list per map of (C, p, p) cropped projections), ``patches`` (list per map of (p, p, 3)
    display crops in [0, 1]), ``boxes`` (per map: [(y0, y1, x0, x1)]), ``rf`` (size, jump, start).
    """
    if not isinstance(source, ImageSource):
        source = ImageSource(source)
    names = list(state.layers) if layers is None else [deconv.layer_name(net, l) for l in layers]
    chosen = _chosen_maps(state, names, maps, by)
    total = sum(len(chosen[n]) * state.k for n in names)
    bar = _progress(total, "top-k projections", progress, unit="proj")
    out = {}
    for name in names:
        out[name], done = _project_layer(net, source, state, name, chosen[name], batch)
        if done and bar is not None:
            bar.update(done)
    if bar is not None:
        bar.close()
    return out


# ----------------------------------------------------------------------------- figure
def _tile_zoom(p, target=40):
    return max(1, int(np.ceil(target / max(p, 1))))


def topk_figure(name, rec, path, k=9, scope="image", ncols=4, title=None, n_images=None, maps_note=None):
    """One layer's figure: per map, a sqrt(k) x sqrt(k) grid of projections beside the grid of patches.

    Returns the path of the PNG.
    """
    maps = rec["maps"]
    size, jump, start = rec["rf"]
    side = int(np.ceil(np.sqrt(k)))
    # patch side (all crops of a layer share it)
    p = None
    for lst in rec["patches"]:
        if lst:
            p = lst[0].shape[0]
            break
    p = p or 1
    z = _tile_zoom(p)
    t = p * z
    grid_px = side * (t + 1) - 1
    cell_w, cell_h, gap, band = 2 * grid_px + 4, grid_px, 4, 14
    # no wider than the report shows at natural size: patches stay visible and the 9-pt labels 12 px
    fit = max(1, REPORT_MAX_PX // (cell_w + 3 * gap))
    ncols = max(1, min(ncols, fit, len(maps) or 1))
    nrows = max(1, int(np.ceil(len(maps) / ncols)))
    H = nrows * (cell_h + band + 2 * gap)
    W = ncols * (cell_w + 3 * gap)
    mosaic = np.ones((H, W, 3))
    labels = []
    for mi, m in enumerate(maps):
        r, q = divmod(mi, ncols)
        oy = r * (cell_h + band + 2 * gap) + band
        ox = q * (cell_w + 3 * gap) + gap
        projs = rec["proj"][mi]
        disp = to_tiles(projs, scope)
        # side x side cells whatever k is (k = 2, 5, 6 leave the last cells blank)
        pgrid = np.full((side * side, t, t, 3), 0.5)
        igrid = np.ones((side * side, t, t, 3))
        for j in range(len(projs)):
            pgrid[j] = viz.fit_tile(viz.upscale(disp[j], z), t, fill=0.5)
            igrid[j] = viz.fit_tile(viz.upscale(rec["patches"][mi][j], z), t, fill=1.0)
        mosaic[oy:oy + cell_h, ox:ox + grid_px] = viz.image_grid(pgrid, ncols=side, pad=1, pad_value=1.0)
        mosaic[oy:oy + cell_h, ox + grid_px + 4:ox + 2 * grid_px + 4] = viz.image_grid(
            igrid, ncols=side, pad=1, pad_value=1.0)
        top = rec["entries"][mi][0][3] if rec["entries"][mi] else float("nan")
        labels.append((ox, oy - 2, f"map {m}  (max {top:.3g})"))
    ttl = title or f"{name}: top-{k} activations per map"
    seen = f" over {n_images} images" if n_images else ""
    cap = (f"{name}: for each map, its {k} strongest activations{seen} (one per image), left: "
           f"DeconvNet projections, right: image patches; both cropped to the receptive field "
           f"({size}x{size} px, stride {jump}; clipped to the image, shifted inwards at borders)"
           f"{f', upscaled x{z}' if z > 1 else ''}. {maps_note or f'Maps: the {len(maps)} with the strongest activation.'} "
           f"{viz.caption(scope).replace('the whole grid', 'the grid of each map')}.")
    return viz.mosaic_figure(mosaic, path, title=ttl, caption_text=cap, labels=labels)


def to_tiles(projs, scope):
    """Cropped projections (list of (C, p, p)) -> display tiles (list of (p, p, 3)).

    ``scope="grid"`` uses one maximum over the map's k projections (comparable strengths)."""
    if not projs:
        return []
    arr = np.stack([np.asarray(a, np.float64) for a in projs])
    return list(viz.to_display(arr, scope))


# ----------------------------------------------------------------------------- experiment
def batch_aligned_shard(n, batch, rank, world_size):
    """Indices of worker ``rank``'s share of ``range(n)``: a contiguous run of whole batches of
    ``batch`` images, so every image goes through the network in the same batch as in a one-process
    pass (bit-identical activations: an exact merge even where activations tie to rounding)."""
    from zfscratch.distributed import shard_range
    nb = -(-int(n) // int(batch))
    b0, b1 = shard_range(nb, rank, world_size)
    return np.arange(b0 * int(batch), min(int(n), b1 * int(batch)), dtype=np.int64)


def gather_topk(state, world):
    """Merge every rank's :class:`TopK` (exact, order-independent: value desc, then image index
    asc); every rank returns the merged record."""
    if not world.distributed:
        return state
    arrays, meta = state.to_arrays()
    mine = {"meta": meta, "arrays": {key: [a.dtype.str, list(a.shape), a.ravel().tolist()]
                                     for key, a in arrays.items()}}
    out = None
    for rec in world.allgather(mine, what="gathering top-k records"):
        arrs = {key: np.asarray(v, np.dtype(dt)).reshape(shape) for key, (dt, shape, v) in rec["arrays"].items()}
        t = TopK.from_arrays(arrs, rec["meta"])
        out = t if out is None else merge(out, t)
    return out


def _layer_summary(rec, state, name, path):
    """The JSON entry of one layer in :func:`run_topk`'s result (``rec`` from :func:`topk_project`,
    ``path`` its figure)."""
    top0 = state.value[name][0]
    return {
        "figure": path, "maps": rec["maps"], "rf": list(rec["rf"]),
        "top_values": [[e[3] for e in ent] for ent in rec["entries"]],
        "top_images": [[e[0] for e in ent] for ent in rec["entries"]],
        # a map whose strongest activation is not positive never fired on these images
        "dead_fraction": float(np.mean(~(top0 > 0))), "num_maps": int(top0.size),
    }


def _write_figures(recs, state, out_dir, maps, k, scope, ncols, n):
    """One ``topk_<layer>.png`` per layer of ``recs``; returns {layer: :func:`_layer_summary`}."""
    layers = {}
    for name, rec in recs.items():
        path = safe_join(out_dir, "topk_" + safe_name(name) + ".png")
        note = None if isinstance(maps, (int, np.integer)) else "Maps: as listed."
        topk_figure(name, rec, path, k=k, scope=scope, ncols=ncols, n_images=n, maps_note=note)
        layers[name] = _layer_summary(rec, state, name, path)
    return layers


def run_topk(net, meta, dataset, out_dir, layers=DEFAULT_LAYERS, maps=16, k=9, images=None,
             batch=128, scope="image", preprocess=None, by="max", progress=True, ncols=4, world=None):
    """Fig 2 end to end: search, project, one PNG per layer, the state as ``topk.npz``.

    Parameters
    ----------
    net, meta : from :func:`zfscratch.io.load_weights` (meta gives the preprocessing)
    dataset : a dataset (``get_batch``), uint8 images or float network inputs
    out_dir : folder for ``topk_<layer>.png``, ``topk.npz`` and ``topk.json``
    layers : "1-5" or a list; maps : maps shown per layer (or a dict/list, see :func:`topk_project`)
    images : scan only the first ``images`` images (default all)
    scope : display normalization (see :mod:`zfscratch.viz`)
    world : a :class:`zfscratch.distributed.World` (``mpirun -n K``): each rank searches a
        batch-aligned shard, the records are merged exactly (:func:`gather_topk`), rank 0 projects and
        writes (the other ranks return the merged search result with no files)

    Returns
    -------
    dict: ``images`` (number scanned), ``search_s``, ``project_s`` (seconds), ``images_per_s``,
    ``state`` (npz path), ``json`` (path), ``layers``: {name: {``figure``, ``maps``, ``top_values``
    (per map, its k values), ``rf`` (size, jump, start), ``dead_fraction`` (maps whose top activation
    is <= 0)}}.
    """
    if preprocess is None and (hasattr(dataset, "get_batch") or np.asarray(dataset).dtype == np.uint8):
        from zfscratch.preprocess import Preprocess
        preprocess = Preprocess.from_meta(meta or {"config": net.config})
    source = ImageSource(dataset, preprocess)
    n = len(source) if images is None else min(int(images), len(source))
    if n <= 0:
        raise UserError("no images to scan (the dataset is empty or --images is 0)")
    from zfscratch.distributed import World
    world = world or World()
    if world.is_root:
        os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    state = topk_search(net, source, layers, k=k, batch=batch,
                        indices=batch_aligned_shard(n, batch, world.rank, world.size),
                        progress=progress and world.is_root)
    t_local = time.perf_counter() - t0
    state = gather_topk(state, world)
    t1 = time.perf_counter()
    if not world.is_root:
        return {"images": n, "k": k, "search_s": t1 - t0, "rank": world.rank, "state": None}
    recs = topk_project(net, source, state, maps=maps, by=by, batch=min(batch, 64), progress=progress)
    t2 = time.perf_counter()
    result = {"images": n, "k": k, "search_s": t1 - t0, "project_s": t2 - t1,
              "images_per_s": n / max(t1 - t0, 1e-9), "scope": scope, "layers": {}, "ranks": world.size,
              "rank0_search_s": t_local}
    result["layers"] = _write_figures(recs, state, out_dir, maps, k, scope, ncols, n)
    result["state"] = state.save(os.path.join(out_dir, "topk.npz"))
    from zfscratch.io import atomic_write_text
    from zfscratch.util.jsonio import dumps
    result["json"] = os.path.join(out_dir, "topk.json")
    atomic_write_text(result["json"], dumps(result, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------- timing
def time_search_vs_forward(net, dataset, meta=None, n=10000, batch=128, layers=DEFAULT_LAYERS, k=9,
                           preprocess=None, progress=True):
    """Measure, in one run on the same images, a plain forward pass (logits) and the top-k search pass.

    Batches are loaded once; for each batch both passes run back to back (alternating which goes
    first) so that machine noise hits both alike. Loading/preprocessing is timed separately.

    Returns dict: ``images``, ``batch``, ``load_s``, ``forward_s``, ``search_s``, ``ratio``
    (search/forward, compute only), ``ratio_with_load`` ((search+load)/(forward+load)).
    """
    if preprocess is None and hasattr(dataset, "get_batch"):
        from zfscratch.preprocess import Preprocess
        preprocess = Preprocess.from_meta(meta or {"config": net.config})
    source = ImageSource(dataset, preprocess)
    n = min(int(n), len(source))
    names = deconv.parse_layers(net, layers)
    be = net.backend
    x0, _ = source.load([0])
    state = TopK.empty(k, _layer_channels(net, names, x0.shape[1:]))
    # warm-up (compilation, caches)
    net.forward(be.to_device(x0, net.dtype))
    search_batch(net, x0, names, TopK.empty(k, _layer_channels(net, names, x0.shape[1:])), np.array([0]))
    load_s = fwd_s = srch_s = 0.0
    bar = _progress(n, "forward vs search", progress)
    for j, s in enumerate(range(0, n, int(batch))):
        idx = np.arange(s, min(n, s + int(batch)))
        t = time.perf_counter()
        x, _ = source.load(idx)
        load_s += time.perf_counter() - t

        def fwd():
            y = net.forward(be.to_device(x, net.dtype))
            be.to_host(y)
            be.synchronize()

        def srch():
            search_batch(net, x, names, state, idx)
            be.synchronize()

        for f in ((fwd, srch) if j % 2 == 0 else (srch, fwd)):
            t = time.perf_counter()
            f()
            dt = time.perf_counter() - t
            if f is fwd:
                fwd_s += dt
            else:
                srch_s += dt
        if bar is not None:
            bar.update(idx.size)
    if bar is not None:
        bar.close()
    return {"images": n, "batch": int(batch), "backend": be.name, "load_s": load_s, "forward_s": fwd_s,
            "search_s": srch_s, "ratio": srch_s / max(fwd_s, 1e-12),
            "ratio_with_load": (srch_s + load_s) / max(fwd_s + load_s, 1e-12)}
