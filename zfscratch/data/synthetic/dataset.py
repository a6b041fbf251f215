"""The synthetic dataset: :class:`SyntheticDataset` (the common dataset interface, ground truth and
parametric rendering), :class:`Sample` and :func:`benchmark`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ...errors import UserError
from ..base import DatasetBase
from .raster import _part_coverage, _render_batch
from .rng import _key
from .sampling import _gen_labels, _gen_params, _gen_style
from .shapes import CLASS_NAMES, _T, _class_index, class_parts
from .style import _NBG, _gen_background

_SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass
class Sample:
    """One rendered image with its ground truth (see the module docstring for conventions)."""
    image: np.ndarray
    label: int
    bbox: tuple
    landmarks: dict
    part_radii: dict = field(default_factory=dict)
    pose: dict = field(default_factory=dict)
    class_name: str = ""

    def __iter__(self):  # allows ``image, label, bbox, landmarks = sample``
        return iter((self.image, self.label, self.bbox, self.landmarks))


class SyntheticDataset(DatasetBase):
    """Seeded synthetic objects with parts; sample ``i`` depends only on (seed, split, i).

    Parameters
    ----------
    n : number of samples.
    size : image side in pixels (square images; any size >= 8).
    seed : dataset seed; the three splits use different random streams, so they never overlap.
    background : "plain" (uniform grey, contrasting with the object) or "colored" (gradient, soft
        coloured blobs and, half the time, stripes).
    split : "train", "val" or "test".
    classes : optional subset of :data:`CLASS_NAMES` (names or labels); labels are then
        0..len(classes)-1 in the given order.
    scale_range : range of the object's bounding-circle diameter as a fraction of the side.
    max_angle : rotations are uniform in [-max_angle, max_angle] degrees.
    """

    def __init__(self, n=10000, size=64, seed=0, background="plain", split="train", classes=None,
                 scale_range=(0.55, 0.95), max_angle=45.0):
        n, size = int(n), int(size)
        if n < 0:
            raise UserError(f"synthetic: n={n}: expected a number of samples >= 0")
        if size < 8:
            raise UserError(f"synthetic: size={size}: expected an image side >= 8 pixels")
        if background not in ("plain", "colored", "coloured"):
            raise UserError(f"synthetic: background={background!r}: expected 'plain' or 'colored'")
        if split not in _SPLITS:
            raise UserError(f"synthetic: split={split!r}: expected one of train, val, test")
        smin, smax = (float(s) for s in scale_range)
        if not 0.05 <= smin <= smax <= 2.0:
            raise UserError(f"synthetic: scale_range={scale_range}: expected 0.05 <= min <= max <= 2")
        if classes is None:
            ids = list(range(len(CLASS_NAMES)))
        else:
            if isinstance(classes, str):
                classes = [c for c in classes.replace("+", ",").split(",") if c]
            ids = [_class_index(int(c) if str(c).isdigit() else c) for c in classes]
            if not ids or len(set(ids)) != len(ids):
                raise UserError(f"synthetic: classes={classes!r}: expected distinct class names")
        self.n = n
        self.size = size
        self.seed = int(seed)
        self.background = "colored" if background.startswith("colo") else "plain"
        self.split = split
        self.scale_range = (smin, smax)
        self.max_angle = float(max_angle)
        self._cls_map = np.array(ids, np.int64)
        self.classes = [CLASS_NAMES[i] for i in ids]
        self._key = _key(self.seed, _SPLITS[split], "zfscratch-synthetic-v1")
        self._style_key = _key(self.seed, "zfscratch-synthetic-render")
        self._labels = None

    # -- common dataset interface ------------------------------------------------------------
    name = "synthetic"

    def __len__(self):
        return self.n

    @property
    def labels(self):
        """All labels as an int64 array (cheap: no rendering)."""
        if self._labels is None:
            lab = np.empty(self.n, np.int64)
            _gen_labels(self._key, np.arange(self.n, dtype=np.int64), len(self._cls_map), lab)
            self._labels = lab
        return self._labels

    def indices_of(self, cls):
        """Indices of the samples of one class (name or label), ascending."""
        return np.nonzero(self.labels == self._local_label(cls))[0]

    def describe(self):
        """A dict that reopens this dataset with :func:`zfscratch.data.open_dataset` options."""
        return {"kind": "synthetic", "n": self.n, "size": self.size, "seed": self.seed,
                "background": self.background, "split": self.split, "classes": list(self.classes),
                "scale_range": list(self.scale_range), "max_angle": self.max_angle}

    def _indices(self, indices):
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.n or idx.max() >= self.n):
            raise IndexError(f"index out of range for SyntheticDataset of {self.n} samples")
        return np.where(idx < 0, idx + self.n, idx)

    def _params(self, idx):
        B = idx.shape[0]
        labels = np.empty(B, np.int64)
        poses = np.empty((B, 4), np.float64)
        palettes = np.empty((B, 3, 3), np.float64)
        bgs = np.zeros((B, _NBG), np.float64)
        _gen_params(self._key, idx, len(self._cls_map), self._cls_map, _T["cls_radius"],
                    float(self.size), self.scale_range[0], self.scale_range[1],
                    math.radians(self.max_angle), self.background == "colored",
                    labels, poses, palettes, bgs)
        return labels, poses, palettes, bgs

    def _render(self, labels, poses, palettes, bgs, want_mask=False):
        B = labels.shape[0]
        out = np.empty((B, self.size, self.size, 3), np.uint8)
        masks = np.empty((B if want_mask else 0, self.size, self.size), np.float64)
        bboxes = np.empty((B, 4), np.int64)
        _render_batch(out, masks, bboxes, self._cls_map[labels], poses, palettes, bgs,
                      _T["prims"], _T["verts"], _T["bounds"], _T["gstart"], _T["gslot"], _T["gpart"], _T["cls_g0"])
        return out, bboxes, masks

    def get_batch(self, indices):
        """Images ``(B, H, W, 3) uint8`` and labels ``(B,) int64`` of the given indices."""
        idx = self._indices(indices)
        labels, poses, palettes, bgs = self._params(idx)
        images, _, _ = self._render(labels, poses, palettes, bgs)
        return images, labels

    def get_meta(self, indices):
        """Ground truth without the images: list of dicts (label, class_name, bbox, landmarks,
        part_radii, pose). Renders masks internally for the bboxes (as fast as get_batch)."""
        return [self._make_sample(s).__dict__ | {"image": None} for s in self._samples(indices)]

    def samples(self, indices):
        """List of :class:`Sample` (images and ground truth) for the given indices."""
        return [self._make_sample(s) for s in self._samples(indices)]

    def _samples(self, indices):
        idx = self._indices(indices)
        labels, poses, palettes, bgs = self._params(idx)
        images, bboxes, _ = self._render(labels, poses, palettes, bgs)
        for i in range(idx.shape[0]):
            yield images[i], int(labels[i]), bboxes[i], poses[i]

    def _make_sample(self, s):
        image, label, bbox, pose = s
        c = int(self._cls_map[label])
        cx, cy, R, ang = (float(v) for v in pose)
        lm, radii = _landmarks(c, cx, cy, R, ang)
        return Sample(image=image, label=label, bbox=tuple(int(v) for v in bbox), landmarks=lm,
                      part_radii=radii,
                      pose={"cx": cx, "cy": cy, "scale": 2.0 * R / self.size,
                            "angle": math.degrees(ang), "radius_px": R},
                      class_name=CLASS_NAMES[c])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.samples(range(*i.indices(self.n)))
        return self.samples([i])[0]

    def __iter__(self):
        for start in range(0, self.n, 256):
            yield from self.samples(range(start, min(self.n, start + 256)))

    # -- parts -------------------------------------------------------------------------------
    def parts(self, cls):
        """Part names of a class (name, or label of this dataset)."""
        return class_parts(self._global_class(cls))

    def _global_class(self, cls):
        if isinstance(cls, (int, np.integer)):
            if not 0 <= int(cls) < len(self._cls_map):
                raise UserError(f"class label {cls} out of range 0..{len(self._cls_map) - 1}")
            return int(self._cls_map[int(cls)])
        c = _class_index(cls)
        if c not in self._cls_map:
            raise UserError(f"class {cls!r} is not among this dataset's classes ({', '.join(self.classes)})")
        return c

    def part_mask(self, sample, part, margin=0.0, mode="disc"):
        """Boolean ``(H, W)`` mask of a part of ``sample`` (a :class:`Sample` or an index).

        mode "disc": pixels whose centre lies within ``part_radii[part] + margin`` pixels of the
        landmark (every part has one). mode "shape": pixels the part's own primitives cover (by
        at least half), dilated by ``margin`` pixels; parts without primitives of their own (e.g.
        the ring's ``hole``) fall back to the disc.
        """
        if not isinstance(sample, Sample):
            sample = self[int(sample)]
        if part not in sample.landmarks:
            raise UserError(f"class {sample.class_name!r} has no part {part!r}; "
                            f"parts: {', '.join(sample.landmarks)}")
        H = W = self.size
        c = CLASS_NAMES.index(sample.class_name)
        pid = _T["part_names"][c].index(part)
        g0, g1 = _T["cls_g0"][c], _T["cls_g0"][c + 1]
        has_shape = bool(np.any(_T["gpart"][g0:g1] == pid))
        yy, xx = np.mgrid[0:H, 0:W]
        if mode == "shape" and has_shape:
            cov = np.zeros((H, W), np.float64)
            p = sample.pose
            _part_coverage(cov, _T["prims"], _T["verts"], _T["bounds"], _T["gstart"], _T["gslot"], _T["gpart"],
                           g0, g1, p["cx"], p["cy"], p["radius_px"], math.radians(p["angle"]), pid)
            m = cov >= 0.5
            r = int(math.ceil(margin))
            if r > 0:
                ys, xs = np.nonzero(m)
                out = np.zeros_like(m)
                for y, x in zip(ys, xs):
                    out |= (yy - y) ** 2 + (xx - x) ** 2 <= margin * margin
                m = out | m
            return m
        if mode not in ("disc", "shape"):
            raise UserError(f"part_mask: mode={mode!r}: expected 'disc' or 'shape'")
        x, y = sample.landmarks[part]
        r = sample.part_radii[part] + margin
        return (xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2 <= r * r

    # -- parametric rendering ------------------------------------------------------------------
    def render(self, label, cx=None, cy=None, scale=0.75, angle=0.0, color=None, background_seed=0,
               background=None):
        """Render one object of class ``label`` (name or label) at a chosen pose.

        cx, cy : centre in pixels (default: image centre); scale : bounding-circle diameter as a
        fraction of the side; angle : degrees, clockwise; color : None (drawn from
        ``background_seed``), a hue in [0, 1), or an RGB triple (0-255 ints or 0-1 floats) for the
        body -- the detail and accent colours follow from ``background_seed``;
        background_seed : seeds the background (and default colours), so sweeping the pose with a
        fixed seed changes only the object's pose; background : "plain"/"colored" (default: the
        dataset's). Returns a :class:`Sample` (label in this dataset's numbering).
        """
        images, metas = self.render_batch(label, cx, cy, scale, angle, color, background_seed,
                                          background)
        s = metas[0]
        s.image = images[0]
        return s

    def render_batch(self, label, cx=None, cy=None, scale=0.75, angle=0.0, color=None,
                     background_seed=0, background=None):
        """Vectorised :meth:`render`: every argument may be a scalar or a sequence (broadcast).

        Returns ``(images (B, H, W, 3) uint8, list of Sample without image)``.
        """
        size = self.size
        bgmode = self.background if background is None else background
        if bgmode not in ("plain", "colored", "coloured"):
            raise UserError(f"render: background={background!r}: expected 'plain' or 'colored'")
        colored = bgmode.startswith("colo")
        labels_in = label if isinstance(label, (list, tuple, np.ndarray)) else [label]
        labels = np.array([self._local_label(lb) for lb in labels_in], np.int64)
        cxs = np.atleast_1d(np.asarray(size / 2 if cx is None else cx, np.float64))
        cys = np.atleast_1d(np.asarray(size / 2 if cy is None else cy, np.float64))
        scs = np.atleast_1d(np.asarray(scale, np.float64))
        angs = np.atleast_1d(np.asarray(angle, np.float64))
        seeds = np.atleast_1d(np.asarray(background_seed, np.int64))
        if color is None or isinstance(color, (int, float, np.floating)):
            cols = [color]
        elif len(color) == 3 and all(isinstance(c, (int, float, np.integer, np.floating)) for c in color):
            cols = [tuple(color)]
        else:
            cols = list(color)
        B = max(len(labels), cxs.size, cys.size, scs.size, angs.size, seeds.size, len(cols))

        def bc(a, what):
            if len(a) not in (1, B):
                raise UserError(f"render: {what} has {len(a)} values, expected 1 or {B}")
            return [a[0]] * B if len(a) == 1 else list(a)

        labels = np.array(bc(labels, "label"), np.int64)
        cxs, cys = np.array(bc(cxs, "cx")), np.array(bc(cys, "cy"))
        scs, angs = np.array(bc(scs, "scale")), np.array(bc(angs, "angle"))
        seeds, cols = bc(seeds, "background_seed"), bc(cols, "color")
        poses = np.stack([cxs, cys, 0.5 * scs * size, np.radians(angs)], 1)
        palettes = np.empty((B, 3, 3), np.float64)
        bgs = np.zeros((B, _NBG), np.float64)
        for i in range(B):
            col = cols[i]
            hue = -1.0 if col is None or not np.isscalar(col) else float(col) % 1.0
            _gen_style(self._style_key, np.int64(seeds[i]), hue, colored, palettes[i], bgs[i],
                       float(size))
            if col is not None and not np.isscalar(col):
                rgb = np.asarray(col, np.float64)
                if rgb.max() > 1.0:
                    rgb = rgb / 255.0
                palettes[i, 0] = np.clip(rgb, 0, 1)
                if not colored:  # re-draw the grey so it contrasts with the given body colour
                    bg = np.zeros(_NBG)
                    _gen_background(self._style_key, np.int64(seeds[i]), 100, False,
                                    0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2], float(size), bg)
                    bgs[i] = bg
        images, bboxes, _ = self._render(labels, poses, palettes, bgs)
        metas = [self._make_sample((None, int(labels[i]), bboxes[i], poses[i])) for i in range(B)]
        return images, metas

    def _local_label(self, label):
        c = self._global_class(label)
        return int(np.nonzero(self._cls_map == c)[0][0])


def _landmarks(c, cx, cy, R, ang):
    ca, sa = math.cos(ang), math.sin(ang)
    lm, radii = {}, {}
    for name, (u, v, r) in zip(_T["part_names"][c], _T["landmarks"][c]):
        lm[name] = (float(cx + R * (ca * u - sa * v)), float(cy + R * (sa * u + ca * v)))
        radii[name] = float(R * r)
    return lm, radii


def benchmark(n=2000, size=64, background="plain", batch=256, repeats=3):
    """Images per second of :meth:`SyntheticDataset.get_batch` on this core (after warm-up)."""
    import time
    ds = SyntheticDataset(n=n, size=size, background=background)
    ds.get_batch(range(min(n, 8)))
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        for s in range(0, n, batch):
            ds.get_batch(range(s, min(n, s + batch)))
        best = max(best, n / (time.perf_counter() - t))
    return best
