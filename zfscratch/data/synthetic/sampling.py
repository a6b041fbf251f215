"""Per-index draws of the synthetic dataset: the balanced label shuffle, pose, palette and background.

Everything is a pure function of ``(key, index)``, so sample ``i`` never depends on which other samples
were drawn. Labels come from one place, :func:`_block_label`, used both when the images are drawn
(:func:`_gen_params`) and when only the labels are (:func:`_gen_labels`): the two must agree.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .rng import _mix, _uniform
from .style import _gen_background, _gen_palette, _lum


@njit(cache=True)
def _label_key(key):
    """The stream key of the label shuffle, derived from the split's key."""
    return _mix(key ^ np.uint64(0x5DEECE66D))


@njit(cache=True)
def _block_label(keyl, idx, n_cls, perm):
    """Label of index ``idx``: every block of ``n_cls`` consecutive indices holds each class once, in
    an order shuffled (Fisher-Yates) per block. ``perm`` is an ``(n_cls,) int64`` scratch array."""
    block = idx // n_cls
    for j in range(n_cls):
        perm[j] = j
    for j in range(n_cls - 1, 0, -1):
        r = int(_uniform(keyl, block, j) * (j + 1))
        if r > j:
            r = j
        perm[j], perm[r] = perm[r], perm[j]
    return perm[idx % n_cls]


@njit(cache=True)
def _gen_params(key, indices, n_cls, cls_map, cls_radius, size, smin, smax, max_angle, colored,
                labels, poses, palettes, bgs):
    """Draw label, pose, palette and background of each index (deterministic per key, index)."""
    keyl = _label_key(key)
    perm = np.empty(n_cls, np.int64)
    for i in range(indices.shape[0]):
        idx = indices[i]
        lab = _block_label(keyl, idx, n_cls, perm)
        labels[i] = lab
        c = cls_map[lab]
        scale = smin + (smax - smin) * _uniform(key, idx, 0)
        R = 0.5 * scale * size
        reach = R * cls_radius[c]
        lo = reach
        hi = size - reach
        if hi < lo:
            lo = hi = 0.5 * size
        poses[i, 0] = lo + (hi - lo) * _uniform(key, idx, 1)
        poses[i, 1] = lo + (hi - lo) * _uniform(key, idx, 2)
        poses[i, 2] = R
        poses[i, 3] = (2.0 * _uniform(key, idx, 3) - 1.0) * max_angle
        k = _gen_palette(key, idx, 10, -1.0, palettes[i])
        _gen_background(key, idx, k + 1, colored, _lum(palettes[i, 0]), size, bgs[i])


@njit(cache=True)
def _gen_labels(key, indices, n_cls, labels):
    """Only the labels of :func:`_gen_params` (no rendering parameters)."""
    keyl = _label_key(key)
    perm = np.empty(n_cls, np.int64)
    for i in range(indices.shape[0]):
        labels[i] = _block_label(keyl, indices[i], n_cls, perm)


@njit(cache=True)
def _gen_style(key, idx, hue, colored, palette, bg, size):
    """Palette and background of one (key, index), with the body hue given (``hue >= 0``)."""
    k = _gen_palette(key, idx, 10, hue, palette)
    _gen_background(key, idx, k + 1, colored, _lum(palette[0]), size, bg)
