"""Incremental occlusion inference: recompute only what an occluder can change (Krypton-style).

The unoccluded image is run once and every layer's output is kept. An occluder changes a box of
the input; through a convolution or max-pool that box grows to the output cells whose window reads
it (receptive-field arithmetic with the kernel, stride, padding and ceil mode), ReLU and dropout
(evaluation) keep it, cross-channel LRN keeps it too (it mixes channels, and the box already spans
all channels). For every occluder position only that *changed window* of each layer is computed:
the layer's input patch under the window is the cached unoccluded input with the position's changed
input window pasted in, padded (zeros for convolutions, ``-inf`` for pools) only where it touches the
real border, and the layer's own kernel is run on it with no padding. The windows of many positions
that have the same size are stacked into one batch, so each layer is one call of the backend's
kernel (one large GEMM) per window size. Once every window covers at least ``full_fraction`` of its
map, the remaining layers run in full on the reassembled maps; fully connected layers always run in
full. Every backend works, since only the kernel contract and ``backend.xp`` are used.

The result is exact: the same sums of the same products as full recompute, up to float rounding
(the GEMM blocking differs); ``tests/test_incremental.py`` checks it against the position-by-position
oracle :func:`zfscratch.experiments.occlusion.occlusion_reference`.

API
---
``IncrementalOccluder(net, x, fill=None, keep=None)`` caches the unoccluded pass of one
preprocessed image ``x (C, H, W)``; ``.positions(boxes)`` returns the logits (and the full maps of
the layers named in ``keep``) for each occluder box ``(y0, x0, y1, x1)`` (pixels, end exclusive,
clipped to the image). ``.plan(boxes)`` gives the per-layer FLOPs of full vs incremental.
"""
from __future__ import annotations

import time

import numpy as np

from zfscratch.errors import UserError

#: a layer whose every window covers at least this share of its map switches the rest of the
#: network to full recompute (windows that large save little and cost pasting)
FULL_FRACTION = 0.85
#: layers whose output cell depends on a sliding window of the input (kernel, stride, padding)
WINDOWED = ("Conv2d", "MaxPool2d")
#: layers that keep the changed window: elementwise, or mixing channels only (cross-channel LRN)
POINTWISE = ("ReLU", "LocalResponseNorm", "Dropout")


def _window_out(lo, hi, k, s, p, n_out):
    """Output cells ``[a, b)`` of a sliding window (size ``k``, stride ``s``, padding ``p``) whose
    input span ``[o*s - p, o*s - p + k)`` meets the changed input rows ``[lo, hi)``."""
    a = max(0, (lo + p - k) // s + 1)
    b = min(n_out, (hi - 1 + p) // s + 1)
    return a, b


class _Spatial:
    """Geometry of one spatial layer for the window arithmetic: ``kind`` is ``"window"`` (conv or
    pool: k, s, p) or ``"point"`` (ReLU, LRN, dropout: the window is unchanged)."""

    def __init__(self, layer, in_shape, out_shape):
        self.layer = layer
        self.in_hw = tuple(in_shape[-2:])
        self.out_hw = tuple(out_shape[-2:])
        self.out_c = int(out_shape[1])
        kind = layer.kind
        if kind in WINDOWED:
            self.kind = "window"
            self.k, self.s, self.p = int(layer.k), int(layer.stride), int(layer.pad)
        elif kind in POINTWISE:
            self.kind = "point"
        else:  # pragma: no cover - guarded by IncrementalOccluder
            raise ValueError(kind)

    def out_window(self, r0, r1, c0, c1):
        if self.kind == "point":
            return r0, r1, c0, c1
        if r1 <= r0 or c1 <= c0:
            return 0, 0, 0, 0
        a, b = _window_out(r0, r1, self.k, self.s, self.p, self.out_hw[0])
        c, d = _window_out(c0, c1, self.k, self.s, self.p, self.out_hw[1])
        if b <= a or d <= c:  # e.g. floor-mode pool rows that no window reads
            return 0, 0, 0, 0
        return a, b, c, d


class IncrementalOccluder:
    """Cached unoccluded pass of one image, and incremental passes for occluder boxes.

    Parameters
    ----------
    net : Sequential (evaluation mode is used: dropout is the identity)
    x : (C, H, W) float array, the preprocessed image (host or device)
    fill : (C, H, W) occluder content in network-input space (default zeros = the training mean)
    keep : layer names whose full per-position outputs :meth:`positions` returns (e.g. ``["relu5"]``)
    full_fraction : float, see :data:`FULL_FRACTION`
    uniform : bool, default True: grow the smaller windows (clipped at the image border) of a batch to
        the largest one, shifted to stay inside the map, so that each layer is one kernel call (one
        GEMM, one weight transform) for the whole batch; False keeps the minimal windows, one call per
        distinct window size

    Notes
    -----
    Holds one unoccluded output per layer (a single image: a few MB for ZFNet 224). Spatial layers
    are the leading run of Conv2d / MaxPool2d / ReLU / LocalResponseNorm / Dropout layers; from the
    first other layer on (Flatten; also a LocalContrastNorm, whose divisor is a whole-map mean so
    that an occluder changes every output), layers run in full.
    """

    def __init__(self, net, x, fill=None, keep=None, full_fraction=FULL_FRACTION, uniform=True):
        self.net = net
        be = net.backend
        self.be, self.xp = be, be.xp
        xh = np.asarray(be.to_host(x))
        if xh.ndim != 3:
            raise UserError(f"incremental occlusion: expected one image (C, H, W), got shape {xh.shape}")
        dt = net.dtype
        self.x = be.to_device(xh, dt)
        self.fill = self.xp.zeros_like(self.x) if fill is None else be.to_device(be.to_host(fill), dt)
        if tuple(self.fill.shape) != tuple(self.x.shape):
            raise UserError(f"incremental occlusion: fill shape {tuple(self.fill.shape)} does not match the "
                            f"image {tuple(self.x.shape)}")
        self.keep = [] if keep is None else list(keep)
        for name in self.keep:
            net.index(name)
        self.full_fraction = float(full_fraction)
        self.uniform = bool(uniform)
        #: set to a dict to accumulate wall seconds per layer name in :meth:`positions` (benchmarks)
        self.seconds = None
        shapes = net.output_shapes((1,) + tuple(self.x.shape))
        self.spatial = []
        prev = (1,) + tuple(self.x.shape)
        for l, (_, shp) in zip(net.layers, shapes):
            if l.kind not in POINTWISE + WINDOWED or len(shp) != 4:
                break
            self.spatial.append(_Spatial(l, prev, shp))
            prev = shp
        self.n_spatial = len(self.spatial)
        # the unoccluded pass, keeping every layer's output (the inputs of the incremental layers)
        a = self.x[None]
        self.base_in = []  # input of spatial layer i, (C, H, W)
        for i in range(self.n_spatial):
            self.base_in.append(a[0])
            a = self.spatial[i].layer.forward(a)
        self.base_out = a[0] if self.n_spatial else self.x
        self.base_spatial = self.base_in[1:] + [self.base_out]
        self.base_logits = net.forward_range(a, self.n_spatial, len(net.layers))
        self._padded = {}

    # -------------------------------------------------------------------------------- helpers
    def _padded_input(self, i):
        """Input of spatial layer ``i`` padded for its window: zeros (conv, ``pad`` each side) or
        ``-inf`` (pool: ``pad`` before, and up to the last window's end after, as in ceil mode)."""
        if i in self._padded:
            return self._padded[i]
        g, xp = self.spatial[i], self.xp
        base = self.base_in[i]
        c, h, w = base.shape
        p = g.p
        lh = max(h + p, (g.out_hw[0] - 1) * g.s + g.k)
        lw = max(w + p, (g.out_hw[1] - 1) * g.s + g.k)
        if g.layer.kind == "Conv2d":
            lh, lw = max(lh, h + 2 * p), max(lw, w + 2 * p)
            buf = xp.zeros((c, lh, lw), base.dtype)
        else:
            buf = xp.full((c, lh, lw), -xp.inf, base.dtype)
        buf[:, p:p + h, p:p + w] = base
        self._padded[i] = buf
        return buf

    def _run_window_layer(self, i, patches):
        """Layer ``i`` on padded patches (G, C, ph, pw) with no padding: (G, F, oh, ow)."""
        l = self.spatial[i].layer
        kern = self.be.kernels
        if l.kind == "MaxPool2d":
            return kern.maxpool_forward(patches, l.k, l.stride, False)[0]
        w, b = l.params["w"], l.params["b"]
        if l.groups == 1:
            return kern.conv2d_forward(patches, w, b, l.stride, 0)
        xp = self.xp
        outs = [kern.conv2d_forward(xp.ascontiguousarray(patches[:, si]), w[so], b[so], l.stride, 0)
                for si, so in l._group_slices()]
        return xp.concatenate(outs, axis=1)

    def _tick(self, name, t0):
        self.be.synchronize()
        t = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + t - t0
        return t

    @staticmethod
    def _group(wins):
        """Positions grouped by window size: {(h, w): [position indices]}."""
        groups = {}
        for k, (r0, r1, c0, c1) in enumerate(wins):
            groups.setdefault((r1 - r0, c1 - c0), []).append(k)
        return groups

    def _full_maps(self, base, wins, data):
        """(K, C, H, W): the unoccluded map with each position's changed window pasted in."""
        xp = self.xp
        out = xp.repeat(base[None], len(wins), axis=0)
        for k, (r0, r1, c0, c1) in enumerate(wins):
            out[k, :, r0:r1, c0:c1] = data[k]
        return out

    def _clip_boxes(self, boxes):
        _, h, w = self.x.shape
        out = []
        for b in boxes:
            y0, x0, y1, x1 = (int(v) for v in b)
            y0, x0, y1, x1 = max(0, y0), max(0, x0), min(h, y1), min(w, x1)
            if y1 <= y0 or x1 <= x0:
                y0, x0, y1, x1 = 0, 0, 0, 0  # empty box: nothing changes
            out.append((y0, y1, x0, x1))
        return out

    def _out_windows(self, g, wins):
        """Changed output windows of spatial layer ``g`` for input windows ``wins``."""
        owins = [g.out_window(*wn) for wn in wins]
        if not self.uniform or g.kind != "window":
            return owins
        live = [wn for wn in owins if wn[1] > wn[0]]
        if not live:
            return owins
        h = max(b - a for a, b, _, _ in live)
        w = max(d - c for _, _, c, d in live)
        ho, wo = g.out_hw
        out = []
        for a, b, c, d in owins:
            if b <= a:
                out.append((0, 0, 0, 0))
                continue
            a, c = min(a, ho - h), min(c, wo - w)
            out.append((a, a + h, c, c + w))
        return out

    def windows(self, boxes):
        """Per spatial layer, the changed output window of each box: list of lists of (r0, r1, c0, c1).
        Entry ``i`` is the output of spatial layer ``i``; ``-1`` is the input. Layers from the first
        full one on have full windows."""
        wins = self._clip_boxes(boxes)
        per_layer, full = [], False
        for g in self.spatial:
            ho, wo = g.out_hw
            if full:
                wins = [(0, ho, 0, wo)] * len(wins)
            else:
                wins = self._out_windows(g, wins)
                if g.kind == "window" and all((wn[1] - wn[0]) * (wn[3] - wn[2]) >= self.full_fraction * ho * wo for wn in wins):
                    full = True
                    wins = [(0, ho, 0, wo)] * len(wins)
            per_layer.append(wins)
        return per_layer

    # -------------------------------------------------------------------------------- the pass
    def _by_window_size(self, i, wins, n, run):
        """Changed windows of spatial layer ``i``'s output, one stacked call per window size.

        Parameters
        ----------
        wins : per position, its window (r0, r1, c0, c1) of the layer's output
        n : number of positions
        run : ``run(idx, h, w)`` -> (len(idx), C, h, w) backend array: the layer's output windows of
            positions ``idx`` (all of size ``h x w``)

        Returns
        -------
        (data, made): per position its (C, h, w) window (an empty slice where nothing changes), and
        {tuple(idx): stacked output}, so that the next layer can reuse a stack without restacking.
        """
        new, made = [None] * n, {}
        for (h, w), idx in self._group(wins).items():
            if h == 0 or w == 0:
                for k in idx:
                    new[k] = self.base_spatial[i][:, 0:0, 0:0]
                continue
            y = run(idx, h, w)
            made[tuple(idx)] = y
            for j, k in enumerate(idx):
                new[k] = y[j]
        return new, made

    def _point_step(self, i, wins, data, last):
        """Pointwise spatial layer ``i`` (ReLU, LRN, dropout) on the changed windows ``data`` (per
        position (C, h, w)); the windows ``wins`` stay as they are. Returns ``(data, made)`` as
        :meth:`_by_window_size`; ``last`` is the previous layer's ``made`` (stacks reused as is)."""
        xp, l = self.xp, self.spatial[i].layer

        def run(idx, h, w):
            stack = last.get(tuple(idx))
            if stack is None:
                stack = xp.ascontiguousarray(xp.stack([data[k] for k in idx]))
            return l.forward(stack)
        return self._by_window_size(i, wins, len(data), run)

    def _window_patches(self, i, pad, idx, h, w, wins, owins, data):
        """Input patches (len(idx), C, ph, pw) of windowed layer ``i`` for the output windows
        ``owins[k]`` (all ``h x w``) of positions ``idx``: the padded unoccluded input ``pad`` with
        each position's changed input window ``data[k]`` (at ``wins[k]``) pasted in."""
        xp, g = self.xp, self.spatial[i]
        s, k_, p = g.s, g.k, g.p
        ph, pw = (h - 1) * s + k_, (w - 1) * s + k_
        patches = xp.empty((len(idx), pad.shape[0], ph, pw), pad.dtype)
        for j, k in enumerate(idx):
            a, _, c, _ = owins[k]
            py, px = a * s, c * s  # patch origin in padded coordinates
            patches[j] = pad[:, py:py + ph, px:px + pw]
            r0, r1, c0, c1 = wins[k]
            # the changed input window, in padded coordinates, clipped to the patch
            y0, y1 = max(r0 + p, py), min(r1 + p, py + ph)
            x0, x1 = max(c0 + p, px), min(c1 + p, px + pw)
            if y1 > y0 and x1 > x0:
                patches[j, :, y0 - py:y1 - py, x0 - px:x1 - px] = \
                    data[k][:, y0 - p - r0:y1 - p - r0, x0 - p - c0:x1 - p - c0]
        return patches

    def _window_step(self, i, wins, data, last):
        """Windowed spatial layer ``i`` (conv, pool) on the changed input windows.

        Returns ``(full, data, wins, last)``: ``full`` is the layer's whole output (K, F, H, W) when
        every changed output window covers at least ``full_fraction`` of the map (the rest of the
        network then runs in full; ``data``, ``wins``, ``last`` come back unchanged), else None with
        the new output windows, their data and stacks (:meth:`_by_window_size`).
        """
        g = self.spatial[i]
        ho, wo = g.out_hw
        owins = self._out_windows(g, wins)
        if all((b - a) * (d - c) >= self.full_fraction * ho * wo for a, b, c, d in owins):
            return g.layer.forward(self._full_maps(self.base_in[i], wins, data)), data, wins, last
        pad = self._padded_input(i)

        def run(idx, h, w):
            return self._run_window_layer(i, self._window_patches(i, pad, idx, h, w, wins, owins, data))
        new, made = self._by_window_size(i, owins, len(data), run)
        return None, new, owins, made

    def positions(self, boxes):
        """Outputs for occluder boxes.

        Parameters
        ----------
        boxes : sequence of (y0, x0, y1, x1) in input pixels (end exclusive; clipped to the image; the
            occluder holds ``fill`` inside its box)

        Returns
        -------
        dict: ``logits`` (K, classes) backend array, and for each name in ``keep`` its full output
        (K, ...) backend array.
        """
        xp = self.xp
        boxes = list(boxes)
        n = len(boxes)
        out = {}
        if n == 0:
            return {"logits": xp.zeros((0,) + tuple(self.base_logits.shape[1:]), self.base_logits.dtype),
                    **{k: None for k in self.keep}}
        wins = self._clip_boxes(boxes)
        data = [self.fill[:, r0:r1, c0:c1] for (r0, r1, c0, c1) in wins]
        keep_idx = {self.net.index(k): k for k in self.keep}
        full = None  # once set: (K, C, H, W) full maps, the rest runs in full
        last = {}  # position indices -> the stacked array their windows came from (no restacking)
        timing = self.seconds is not None
        tick = time.perf_counter() if timing else 0.0
        for i, g in enumerate(self.spatial):
            if full is not None:
                full = g.layer.forward(full)
            elif g.kind == "point":
                data, last = self._point_step(i, wins, data, last)
            else:
                full, data, wins, last = self._window_step(i, wins, data, last)
            if i in keep_idx:
                out[keep_idx[i]] = full if full is not None else self._full_maps(self.base_spatial[i], wins, data)
            if timing:
                tick = self._tick(g.layer.name, tick)
        a = full if full is not None else self._full_maps(self.base_out, wins, data)
        start = self.n_spatial
        for j, l in enumerate(self.net.layers[start:], start):
            a = l.forward(a)
            if j in keep_idx:
                out[keep_idx[j]] = a
            if timing:
                tick = self._tick(l.name, tick)
        out["logits"] = a
        return out

    # -------------------------------------------------------------------------------- cost model
    def plan(self, boxes):
        """Multiply-add counts per layer: full recompute vs this engine for ``boxes``.

        Returns
        -------
        list of dicts ``{"layer", "kind", "full_macs", "incremental_macs", "window"}`` (MACs summed
        over the boxes; ``window``: mean changed share of the layer's output map). Pointwise layers
        count one operation per output element; fully connected layers cost the same both ways.
        """
        per_layer = self.windows(boxes)
        shapes = self.net.output_shapes((1,) + tuple(self.x.shape))
        rows = []
        n = len(list(boxes))
        for i, (l, (_, shp)) in enumerate(zip(self.net.layers, shapes)):
            per_out = int(np.prod(shp[1:]))
            if l.kind == "Conv2d":
                cost = (l.in_ch // l.groups) * l.k * l.k
            elif l.kind == "MaxPool2d":
                cost = l.k * l.k
            elif l.kind == "Linear":
                cost = l.in_f
            else:
                cost = 1
            full = per_out * cost * n
            if i < self.n_spatial:
                ho, wo = shp[-2:]
                area = np.array([(b - a) * (d - c) for a, b, c, d in per_layer[i]], np.float64)
                inc = float((area * shp[1] * cost).sum())
                share = float(area.mean() / (ho * wo))
            else:
                inc, share = float(full), 1.0
            rows.append(dict(layer=l.name, kind=l.kind, full_macs=float(full), incremental_macs=inc,
                             window=share))
        return rows
