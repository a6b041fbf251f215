"""Figures: display normalization, image grids, filter grids, PNG output (matplotlib Agg).

Display normalization (the one place it is defined)
---------------------------------------------------
A DeconvNet projection ``r`` keeps its sign. It is shown as

    ``d = 0.5 + 0.5 * r / max|r|``

so that grey (0.5) is zero, brighter than grey is positive and darker is negative, and the strongest
value of the scope reaches 0 or 1. The *scope* of ``max|r|``:

* ``"image"`` (default): each projection on its own (the paper's figures; shapes are comparable,
  strengths are not);
* ``"grid"``: one maximum over every projection of the figure/array (strengths are comparable);
* ``"channel"``: each colour channel of each projection on its own (shows structure in weak
  channels; colours are no longer faithful).

An all-zero projection is shown flat grey. :func:`caption` returns the sentence figure captions use.
Layer-1 filters use the same rule per filter (:func:`filter_grid`).

All figures are rendered with matplotlib's Agg canvas (no display, no pyplot state) and written
atomically (:func:`save_png`).
"""
from __future__ import annotations

import numpy as np

from zfscratch.util.figures import new_figure, save_png  # noqa: F401  (one home; re-exported)

SCOPES = ("image", "grid", "channel")

_CAPTIONS = {
    "image": "display: 0.5 + 0.5*r/max|r| per projection (grey = 0, sign kept)",
    "grid": "display: 0.5 + 0.5*r/max|r| with one max over the whole grid (grey = 0, sign kept)",
    "channel": "display: 0.5 + 0.5*r/max|r| per colour channel of each projection (grey = 0, sign kept)",
}


def caption(scope="image"):
    """One-line description of the display normalization ``scope`` (for figure captions)."""
    _check_scope(scope)
    return _CAPTIONS[scope]


def _check_scope(scope):
    if scope not in SCOPES:
        raise ValueError(f"normalization scope must be one of {', '.join(SCOPES)}, got {scope!r}")


def to_display(r, scope="image", channels_first=True, max_abs=None):
    """Signed arrays -> displayable floats in [0, 1]: ``0.5 + 0.5 * r / max|r|``.

    Parameters
    ----------
    r : array (..., C, H, W) (``channels_first``) or (..., H, W, C); a single image or any batch
    scope : "image" | "grid" | "channel" (see the module docstring)
    max_abs : use this ``max|r|`` instead of the scope's (one scale shared with other arrays)

    Returns
    -------
    float64 array (..., H, W, C) (channels last, ready for ``imshow``); C = 1 is kept as is.
    """
    _check_scope(scope)
    a = np.asarray(r, dtype=np.float64)
    if channels_first:
        a = np.moveaxis(a, -3, -1)
    if max_abs is not None:
        m = np.asarray(float(max_abs))
    elif scope == "grid":
        m = np.max(np.abs(a)) if a.size else 0.0
    elif scope == "image":
        m = np.max(np.abs(a), axis=(-3, -2, -1), keepdims=True) if a.size else 0.0
    else:
        m = np.max(np.abs(a), axis=(-3, -2), keepdims=True) if a.size else 0.0
    m = np.where(m > 0, m, 1.0)
    return np.clip(0.5 + 0.5 * a / m, 0.0, 1.0)


def filter_grid(w, ncols=None, pad=1, pad_value=1.0, scope="filter"):
    """Mosaic of first-layer filters ``w (F, C, k, k)`` as RGB tiles.

    Each filter is normalized on its own (``scope="filter"``: ``0.5 + 0.5 * w / max|w|`` over the
    filter's three channels, grey = 0) or with one maximum for all (``"all"``). C = 3 gives colour
    tiles in RGB order; other channel counts show channel 0 in grey.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"filters must be (F, C, k, k), got shape {w.shape}")
    if w.shape[1] != 3:
        w = np.repeat(w[:, :1], 3, axis=1)
    if scope not in ("filter", "all"):
        raise ValueError(f"filter scope must be 'filter' or 'all', got {scope!r}")
    tiles = to_display(w, "image" if scope == "filter" else "grid")
    return image_grid(tiles, ncols=ncols, pad=pad, pad_value=pad_value)


def image_grid(images, ncols=None, pad=1, pad_value=1.0):
    """Tile ``images`` (N, H, W, C) floats into one (rows*(H+pad)-pad, cols*(W+pad)-pad, C) mosaic."""
    images = np.asarray(images, dtype=np.float64)
    n, h, w, c = images.shape
    ncols = int(ncols or int(np.ceil(np.sqrt(max(n, 1)))))
    nrows = max(1, int(np.ceil(n / ncols)))
    out = np.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad, c), pad_value, dtype=np.float64)
    for i in range(n):
        r, q = divmod(i, ncols)
        out[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = images[i]
    return out


def fit_tile(img, size, fill=1.0):
    """Place ``img`` (h, w, C) centred in a ``size`` (S or (S, S)) canvas, cropping if larger."""
    sh, sw = (size, size) if np.isscalar(size) else size
    img = np.asarray(img, dtype=np.float64)
    h, w, c = img.shape
    out = np.full((sh, sw, c), fill, dtype=np.float64)
    ch, cw = min(h, sh), min(w, sw)
    oy, ox = (sh - ch) // 2, (sw - cw) // 2
    iy, ix = (h - ch) // 2, (w - cw) // 2
    out[oy:oy + ch, ox:ox + cw] = img[iy:iy + ch, ix:ix + cw]
    return out


def upscale(img, factor):
    """Nearest-neighbour upscaling of (H, W, C) by an integer factor (crisp small patches)."""
    f = max(1, int(factor))
    return np.repeat(np.repeat(img, f, axis=0), f, axis=1) if f > 1 else img


def mosaic_figure(mosaic, path, title=None, caption_text=None, scale=1.0, dpi=100, labels=()):
    """Save an RGB mosaic (H, W, 3) in [0, 1] as a PNG at about one screen pixel per mosaic pixel
    times ``scale``, with an optional title, caption (below) and text labels ``(x, y, text)`` in
    mosaic pixel coordinates."""
    h, w = mosaic.shape[:2]
    fig = new_figure(max(w * scale / dpi, 2.0), max(h * scale / dpi, 1.0), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(np.clip(mosaic, 0, 1), interpolation="nearest")
    ax.set_axis_off()
    for x, y, text in labels:
        ax.text(x, y, text, fontsize=9, color="black", va="bottom", ha="left")
    if title:
        ax.set_title(title, fontsize=10)
    if caption_text:
        fig.text(0.0, -0.01, caption_text, fontsize=9, va="top", ha="left", wrap=True)
    return save_png(fig, path)


def plot_filters(w, path, title="Layer-1 filters", scope="filter", ncols=None, zoom=None):
    """Save the first-layer filter grid (see :func:`filter_grid`) as a PNG; returns the path.

    Tiles are upscaled (nearest) to about 48 pixels; ``ncols`` defaults to ``ceil(sqrt(2F))``."""
    w = np.asarray(w)
    ncols = ncols or int(np.ceil(np.sqrt(2 * w.shape[0])))
    zoom = zoom or max(2, int(np.ceil(48 / w.shape[-1])))
    grid = filter_grid(w, ncols=ncols, pad=1, scope=scope)
    grid = upscale(grid, zoom)
    norm = ("each filter normalized on its own" if scope == "filter" else "one scale for all filters")
    cap = (f"{w.shape[0]} filters {w.shape[2]}x{w.shape[3]}, RGB, {norm}: 0.5 + 0.5*w/max|w| "
           "(grey = 0)")
    return mosaic_figure(grid, path, title=title, caption_text=cap, scale=1.0)
