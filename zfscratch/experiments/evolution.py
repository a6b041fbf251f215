"""Evolution of features during training (paper Fig 4).

For a few maps per layer, the strongest activation over a fixed image set is found at every saved
epoch (``RUN_DIR/snapshots/epoch_XXXX.npz``) and projected to pixel space with the DeconvNet. The
figure has one row per (layer, map) and one column per epoch; each tile is the projection cropped
to the unit's receptive field.

The maps are chosen once, on the last snapshot: the ``maps_per_layer`` maps of each layer with the
strongest activation over the image set (so the rows show features the trained net actually uses),
or given explicitly. The image set is the first ``images`` images of the dataset (the run's
validation split by default).
"""
from __future__ import annotations

import glob
import os
import re
import time

import numpy as np

from zfscratch import deconv, viz
from zfscratch.data.spec import dataset_from_meta, open_split  # noqa: F401  (moved there; re-exported)
from zfscratch.errors import UserError
from zfscratch.experiments.topk import ImageSource, crop, topk_search

SNAPSHOT_RE = re.compile(r"epoch_(\d+)\.npz$")


def list_snapshots(run_dir):
    """``[(epoch, path), ...]`` of ``RUN_DIR/snapshots/epoch_XXXX.npz``, by epoch.

    Raises UserError when the folder is missing or holds no snapshot.
    """
    folder = os.path.join(os.fspath(run_dir), "snapshots")
    if not os.path.isdir(os.fspath(run_dir)):
        raise UserError(f"run directory {run_dir} does not exist")
    if not os.path.isdir(folder):
        raise UserError(f"run directory {run_dir} has no snapshots/ folder (train with --snapshots)")
    out = []
    for p in glob.glob(os.path.join(folder, "epoch_*.npz")):
        m = SNAPSHOT_RE.search(os.path.basename(p))
        if m:
            out.append((int(m.group(1)), p))
    if not out:
        raise UserError(f"{folder} holds no epoch_XXXX.npz snapshots")
    return sorted(out)


def pick_epochs(epochs, max_columns=8):
    """At most ``max_columns`` of ``epochs`` (sorted), evenly spread, always with the first and last."""
    epochs = sorted(epochs)
    if len(epochs) <= max_columns:
        return epochs
    pos = np.unique(np.round(np.linspace(0, len(epochs) - 1, max_columns)).astype(int))
    return [epochs[i] for i in pos]


def strongest_units(net, source, layer_names, maps, indices, batch=64):
    """For each layer and map, the strongest activation over ``indices``: dict name -> list of
    ``(image index, map, y, x, value)`` (one per map, in the order of ``maps[name]``)."""
    st = topk_search(net, source, layer_names, k=1, batch=batch, indices=indices, progress=False)
    out = {}
    for name in layer_names:
        out[name] = [(int(st.index[name][0, m]), int(m), int(st.y[name][0, m]), int(st.x[name][0, m]),
                      float(st.value[name][0, m])) for m in maps[name]]
    return out, st


def _image_set(meta, dataset, preprocess, images):
    """The fixed image set: ``(source, indices)`` -- an :class:`ImageSource` over ``dataset`` (default:
    the run's validation split, from ``meta``) and its first ``images`` indices (int array)."""
    if dataset is None:
        dataset = dataset_from_meta(meta, split="val")
    if preprocess is None and (hasattr(dataset, "get_batch") or np.asarray(dataset).dtype == np.uint8):
        from zfscratch.preprocess import Preprocess
        preprocess = Preprocess.from_meta(meta)
    source = ImageSource(dataset, preprocess)
    n = min(int(images), len(source))
    if n <= 0:
        raise UserError("no images for the evolution figure (empty dataset or --images 0)")
    return source, np.arange(n)


def _choose_maps(net, source, names, maps, maps_per_layer, indices, batch):
    """``(names, maps)``: the rows' layers and {layer: [map indices]} -- given, or the
    ``maps_per_layer`` maps with the strongest activation of ``net`` (the last snapshot) over
    ``indices``, so that the rows show features the trained net uses."""
    st_last = topk_search(net, source, names, k=1, batch=batch, indices=indices, progress=False)
    if maps is None:
        maps = {nm: st_last.strongest_maps(nm, int(maps_per_layer)) for nm in names}
    else:
        maps = {deconv.layer_name(net, k): [int(m) for m in v] for k, v in dict(maps).items()}
        names = [nm for nm in names if nm in maps]
    return names, maps


def _epoch_tiles(net, source, names, maps, indices, batch):
    """One snapshot's column: per shown map, the DeconvNet projection of its strongest activation
    over ``indices``, cropped to the unit's receptive field.

    Returns
    -------
    list of ``((layer, map), tile (C, p, p), value, image index)`` in row order.
    """
    best, _ = strongest_units(net, source, names, maps, indices, batch=batch)
    column = []
    for nm in names:
        units = best[nm]
        # each image loaded and projected once, however many of the layer's maps it wins
        uniq, local = np.unique([u[0] for u in units], return_inverse=True)
        x, _ = source.load(uniq)
        lu = np.array([(local[j], u[1], u[2], u[3]) for j, u in enumerate(units)], np.int64)
        proj, _ = deconv.project_activation(net, x, nm, lu, batch=batch)
        for j, u in enumerate(units):
            box = deconv.patch_box(net, nm, u[2], u[3], image_size=x.shape[2:])
            column.append(((nm, u[1]), crop(proj[j], box), u[4], u[0]))
    return column


def run_evolution(run_dir, dataset=None, out=None, layers="1-5", maps_per_layer=2, maps=None, images=256,
                  max_epochs=8, backend=None, batch=64, scope="image", preprocess=None, progress=True):
    """Fig 4 from a run directory.

    Parameters
    ----------
    run_dir : training output with ``snapshots/epoch_XXXX.npz``
    dataset : dataset / images (default: the run's data, validation split)
    out : PNG path (default ``RUN_DIR/evolution.png``)
    layers : "1-5" or a list; maps_per_layer : maps chosen per layer on the last snapshot, or
        ``maps`` = {layer: [map indices]} to fix them
    images : size of the fixed image set (its first images)
    max_epochs : columns (snapshots evenly spread, first and last always shown)

    Returns
    -------
    dict: ``figure``, ``epochs`` (shown), ``images``, ``seconds``, ``rows``: [{``layer``, ``map``,
    ``value`` (per epoch, the strongest activation), ``image`` (per epoch, its image index)}].
    """
    from zfscratch.io import load_weights
    t0 = time.perf_counter()
    snaps = list_snapshots(run_dir)
    shown = pick_epochs([e for e, _ in snaps], max_epochs)
    paths = dict(snaps)
    last_net, last_meta = load_weights(paths[shown[-1]], backend=backend)
    source, indices = _image_set(last_meta, dataset, preprocess, images)
    n = indices.size
    names = deconv.parse_layers(last_net, layers)
    names, maps = _choose_maps(last_net, source, names, maps, maps_per_layer, indices, batch)
    rows = [(nm, m) for nm in names for m in maps[nm]]
    tiles = {r: [] for r in rows}
    values = {r: [] for r in rows}
    imgs = {r: [] for r in rows}
    from zfscratch.util.progress import progress_bar
    bar = progress_bar(len(shown), "evolution", progress, unit="epoch")
    for ep in shown:
        net = last_net if ep == shown[-1] else load_weights(paths[ep], backend=backend)[0]
        for r, tile, value, image in _epoch_tiles(net, source, names, maps, indices, batch):
            tiles[r].append(tile)
            values[r].append(value)
            imgs[r].append(image)
        bar.update(1)
    bar.close()
    out = out or os.path.join(os.fspath(run_dir), "evolution.png")
    evolution_figure(rows, tiles, values, shown, out, scope=scope, n_images=n)
    return {"figure": os.fspath(out), "epochs": shown, "images": n, "seconds": time.perf_counter() - t0,
            "scope": scope,
            "rows": [{"layer": nm, "map": m, "value": values[(nm, m)], "image": imgs[(nm, m)]}
                     for nm, m in rows]}


def evolution_figure(rows, tiles, values, epochs, path, scope="image", n_images=None):
    """Rows (layer, map), columns epochs; each tile a cropped projection. Returns the path."""
    nr, nc = len(rows), len(epochs)
    cell = 1.0
    height = 0.9 + nr * cell + 0.1
    fig = viz.new_figure(1.2 + nc * cell, height)
    gs = fig.add_gridspec(nr, nc, left=0.12, right=0.99, top=1 - 0.75 / height,
                          bottom=0.05 / height, wspace=0.05, hspace=0.08)
    for i, r in enumerate(rows):
        disp = viz.to_display(np.stack(tiles[r]), scope)
        for j, ep in enumerate(epochs):
            ax = fig.add_subplot(gs[i, j])
            ax.imshow(disp[j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"epoch {ep}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{r[0]}\nmap {r[1]}", fontsize=9)
            ax.text(0.02, 0.02, f"{values[r][j]:.2g}", transform=ax.transAxes, fontsize=9, color="yellow",
                    va="bottom", ha="left")
    seen = f" over the first {n_images} images" if n_images else ""
    fig.suptitle("Feature evolution during training:\nstrongest projection per map", fontsize=10,
                 y=1 - 0.05 / height, va="top")
    # below the tiles (va="top" under y=0): the tight bounding box grows to the wrapped caption's height
    fig.text(0.01, 0.0, f"Each tile: DeconvNet projection of the map's strongest activation{seen} at that "
             f"epoch, cropped to its receptive field; number = activation. "
             f"{viz.caption(scope).replace('the whole grid', 'each row')}.",
             fontsize=9, va="top", ha="left", wrap=True)
    return viz.save_png(fig, path)
