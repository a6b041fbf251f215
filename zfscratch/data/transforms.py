"""Image transforms: the paper's preprocessing on batches.

Two kinds of arrays flow through here:

- uint8 images, ``(H, W, 3)`` or batches ``(B, H, W, 3)`` (NHWC), 0..255 RGB -- what datasets give;
- float32 network input, ``(B, 3, H, W)`` (NCHW): ``(image - mean) * scale``.

Conventions (the same as :mod:`zfscratch.preprocess`): the mean is in 0..255 units, either a
per-pixel ``(H, W, 3)`` image or a per-channel ``(3,)`` vector, computed on the training split by
:func:`compute_mean` (streaming, bounded memory); ``scale`` defaults to 1/64. The mean is
subtracted at full image size *before* cropping (as Caffe does), so a per-pixel mean always lines
up with the pixels it was computed on.

Batch transforms are callables ``t(x, rng) -> x`` (``rng``: a ``numpy.random.Generator``; the
iterator passes one seeded per batch, so augmentation is reproducible); chain them with
:class:`Compose`. :func:`train_transform` and :func:`eval_transform` build the usual pipelines.
Crops and flips accept NHWC uint8 or NCHW float arrays (a 4-d uint8 array whose last axis is 3 is
taken as NHWC; anything else as NCHW).
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError

__all__ = [
    "resize_shorter", "center_crop", "resize_center_crop",
    "to_float_nchw", "compute_mean",
    "random_crop", "center_crop_batch", "random_flip", "random_erase", "ten_crop", "ten_crop_average",
    "Compose", "ToFloat", "RandomCrop", "CenterCrop", "RandomFlip", "TenCrop", "ResizeShorter",
    "train_transform", "eval_transform",
]

DEFAULT_SCALE = 1.0 / 64


# -- single images (uint8 HWC) ---------------------------------------------------------------

def resize_shorter(img, size, resample=None):
    """Resize an ``(H, W, C)`` uint8 image so that its shorter side is ``size`` (Pillow, bilinear
    with antialiasing when shrinking)."""
    from PIL import Image
    img = np.asarray(img)
    h, w = img.shape[:2]
    if min(h, w) == size:
        return img
    if h <= w:
        nh, nw = size, max(1, int(round(w * size / h)))
    else:
        nh, nw = max(1, int(round(h * size / w))), size
    resample = Image.BILINEAR if resample is None else resample
    if img.ndim == 3 and img.shape[2] == 1:
        return np.asarray(Image.fromarray(img[..., 0]).resize((nw, nh), resample))[..., None]
    return np.asarray(Image.fromarray(img).resize((nw, nh), resample))


def center_crop(img, size):
    """Central ``size x size`` window of an ``(H, W, C)`` image (must be at least that big)."""
    h, w = img.shape[:2]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} from an image of {h}x{w}")
    t, l = (h - size) // 2, (w - size) // 2
    return img[t:t + size, l:l + size]


def resize_center_crop(img, size):
    """The paper's first step: shorter side to ``size``, then the central ``size x size`` square."""
    return np.ascontiguousarray(center_crop(resize_shorter(img, size), size))


# -- batches ---------------------------------------------------------------------------------

def _is_nhwc(x):
    return x.ndim == 4 and x.dtype == np.uint8 and x.shape[-1] == 3


def _mean_array(mean, H, W):
    if mean is None:
        return None
    m = np.asarray(mean, np.float32)
    if m.shape == (3,):
        return m
    if m.shape == (H, W, 3):
        return m
    raise UserError(f"mean of shape {m.shape} does not match images of {H}x{W}x3 "
                    "(expected (H, W, 3) or (3,))")


def to_float_nchw(images, mean=None, scale=DEFAULT_SCALE):
    """uint8 ``(B, H, W, 3)`` -> float32 ``(B, 3, H, W)`` = ``(images - mean) * scale``."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    B, H, W, _ = x.shape
    out = x.astype(np.float32)
    m = _mean_array(mean, H, W)
    if m is not None:
        out -= m
    if scale != 1.0:
        out *= np.float32(scale)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _spatial(x):
    return (x.shape[1], x.shape[2]) if _is_nhwc(x) else (x.shape[2], x.shape[3])


def _crop(x, tops, lefts, size):
    if _is_nhwc(x):
        return np.stack([x[i, t:t + size, l:l + size] for i, (t, l) in enumerate(zip(tops, lefts))])
    return np.stack([x[i, :, t:t + size, l:l + size] for i, (t, l) in enumerate(zip(tops, lefts))])


def random_crop(x, size, rng, pad=0):
    """A random ``size x size`` window per image (of the image zero-padded by ``pad``: zero is the
    mean once it has been subtracted)."""
    if pad:
        p = int(pad)
        widths = ((0, 0), (p, p), (p, p), (0, 0)) if _is_nhwc(x) else ((0, 0), (0, 0), (p, p), (p, p))
        x = np.pad(x, widths)
    H, W = _spatial(x)
    if H < size or W < size:
        raise UserError(f"crop size {size} is larger than the images ({H}x{W})")
    n = x.shape[0]
    tops = rng.integers(0, H - size + 1, size=n)
    lefts = rng.integers(0, W - size + 1, size=n)
    return _crop(x, tops, lefts, size)


def center_crop_batch(x, size):
    H, W = _spatial(x)
    if H < size or W < size:
        raise UserError(f"crop size {size} is larger than the images ({H}x{W})")
    t, l = (H - size) // 2, (W - size) // 2
    if _is_nhwc(x):
        return np.ascontiguousarray(x[:, t:t + size, l:l + size])
    return np.ascontiguousarray(x[:, :, t:t + size, l:l + size])


def _hflip(x):
    return x[:, :, ::-1] if _is_nhwc(x) else x[..., ::-1]


def random_flip(x, rng, p=0.5):
    """Mirror each image left-right with probability ``p``."""
    x = np.array(x, copy=True)
    flip = rng.random(x.shape[0]) < p
    if flip.any():
        x[flip] = _hflip(x[flip])
    return x


def random_erase(x, rng, p=0.5, min_side=0.1, max_side=0.4):
    """Cutout / random erasing: with probability ``p`` per image, set one square to zero.

    Parameters
    ----------
    x : float array (B, C, H, W), network input (mean already subtracted, so zero is the training mean).
    rng : ``numpy.random.Generator`` or :class:`~zfscratch.samplerng.SampleRNG` (one row of draws per image).
    p : probability that an image gets a square.
    min_side, max_side : the square's side, uniform in ``[min_side, max_side] * min(H, W)`` (at least 1 px).

    Returns
    -------
    A copy of ``x`` (B, C, H, W). The square's centre is uniform over the image and the part outside is
    dropped, as the occlusion experiment's occluder: a net that has seen mean-grey squares during training
    reads one over the background as "nothing there" instead of as an object edge, so occluding the object
    is what lowers its prediction.
    """
    if _is_nhwc(x) or x.ndim != 4:
        raise ValueError(f"random_erase expects float (B, C, H, W) input, got {x.dtype} {x.shape}")
    x = np.array(x, copy=True)
    B, _, H, W = x.shape
    u = rng.random((B, 4))  # [apply, side, centre row, centre column]: a fixed number of draws per image
    lo, hi = min_side * min(H, W), max_side * min(H, W)
    sides = np.maximum(1, np.rint(lo + u[:, 1] * (hi - lo))).astype(np.int64)
    cy, cx = (u[:, 2] * H).astype(np.int64), (u[:, 3] * W).astype(np.int64)
    for i in np.nonzero(u[:, 0] < p)[0]:
        y0, x0 = cy[i] - sides[i] // 2, cx[i] - sides[i] // 2
        x[i, :, max(0, y0):max(0, y0 + sides[i]), max(0, x0):max(0, x0 + sides[i])] = 0
    return x


def ten_crop(x, size):
    """The paper's 10 test views of NCHW (or NHWC) ``x``: 4 corner crops + centre, each followed by
    its mirror image. Returns ``(10, B, ...)``, views in the order top-left, its flip, top-right, its
    flip, bottom-left, ..., centre, centre flipped (the layout of ``Preprocess.ten_crop``)."""
    H, W = _spatial(x)
    if H < size or W < size:
        raise UserError(f"crop size {size} is larger than the images ({H}x{W})")
    eh, ew = H - size, W - size
    views = []
    for t, l in ((0, 0), (0, ew), (eh, 0), (eh, ew), (eh // 2, ew // 2)):
        if _is_nhwc(x):
            v = x[:, t:t + size, l:l + size]
        else:
            v = x[:, :, t:t + size, l:l + size]
        views += [np.ascontiguousarray(v), np.ascontiguousarray(_hflip(v))]
    return np.stack(views)


def ten_crop_average(outputs, views=10):
    """Average network outputs computed on ``ten_crop(...).reshape(10 * B, ...)``: ``(10*B, K)`` ->
    ``(B, K)``."""
    outputs = np.asarray(outputs)
    return outputs.reshape(views, -1, *outputs.shape[1:]).mean(axis=0)


def compute_mean(dataset, per_channel=False, batch_size=500, max_images=None, seed=0, progress=False):
    """Streaming mean of a dataset's images in 0..255 units, float32 ``(H, W, 3)`` (or ``(3,)``).

    Reads ``batch_size`` images at a time (bounded memory); ``max_images`` averages a fixed random
    subset (seeded) instead of everything -- enough for a mean image of a big folder.
    """
    n = len(dataset)
    if n == 0:
        raise UserError("cannot compute the mean of an empty dataset")
    if max_images is not None and max_images < n:
        idx = np.sort(np.random.default_rng([int(seed), 0x3EA7]).choice(n, int(max_images), replace=False))
    else:
        idx = np.arange(n)
    H, W, C = dataset.image_shape
    total = np.zeros((H, W, C), np.float64)
    it = range(0, idx.size, batch_size)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="mean", unit="batch")
    for s in it:
        x, _ = dataset.get_batch(idx[s:s + batch_size])
        total += x.sum(axis=0, dtype=np.float64)
    mean = total / idx.size
    if per_channel:
        mean = mean.reshape(-1, C).mean(axis=0)
    return mean.astype(np.float32)


# -- composable transforms ((x, rng) -> x) ----------------------------------------------------

class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x, rng=None):
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self):
        return "Compose(" + ", ".join(map(repr, self.transforms)) + ")"


class ResizeShorter:
    """uint8 NHWC: each image's shorter side to ``size`` then centre crop ``size x size``."""

    def __init__(self, size):
        self.size = int(size)

    def __call__(self, x, rng=None):
        if x.shape[1] == x.shape[2] == self.size:
            return x
        return np.stack([resize_center_crop(im, self.size) for im in x])

    def __repr__(self):
        return f"ResizeShorter({self.size})"


class ToFloat:
    """uint8 NHWC -> float32 NCHW ``(x - mean) * scale``."""

    def __init__(self, mean=None, scale=DEFAULT_SCALE):
        self.mean = None if mean is None else np.asarray(mean, np.float32)
        self.scale = float(scale)

    def __call__(self, x, rng=None):
        return to_float_nchw(x, self.mean, self.scale)

    def __repr__(self):
        m = None if self.mean is None else self.mean.shape
        return f"ToFloat(mean={m}, scale={self.scale})"


class RandomCrop:
    def __init__(self, size, pad=0):
        self.size, self.pad = int(size), int(pad)

    def __call__(self, x, rng):
        return random_crop(x, self.size, rng, self.pad)

    def __repr__(self):
        return f"RandomCrop({self.size}, pad={self.pad})"


class CenterCrop:
    def __init__(self, size):
        self.size = int(size)

    def __call__(self, x, rng=None):
        return center_crop_batch(x, self.size)

    def __repr__(self):
        return f"CenterCrop({self.size})"


class RandomFlip:
    def __init__(self, p=0.5):
        self.p = float(p)

    def __call__(self, x, rng):
        return random_flip(x, rng, self.p)

    def __repr__(self):
        return f"RandomFlip({self.p})"


class TenCrop:
    """``(B, C, H, W)`` -> ``(10 * B, C, size, size)``, view-major (all images' first view, then all
    second views, ...); average the outputs with :func:`ten_crop_average`."""

    def __init__(self, size):
        self.size = int(size)

    def __call__(self, x, rng=None):
        v = ten_crop(x, self.size)
        return v.reshape(-1, *v.shape[2:])

    def __repr__(self):
        return f"TenCrop({self.size})"


def train_transform(mean=None, crop=None, flip=True, scale=DEFAULT_SCALE, pad=0, resize=None):
    """Training pipeline: [resize] -> (x - mean) * scale -> NCHW -> [random crop] -> [random flip]."""
    ts = []
    if resize:
        ts.append(ResizeShorter(resize))
    ts.append(ToFloat(mean, scale))
    if crop or pad:
        if not crop:
            raise UserError("pad needs a crop size")
        ts.append(RandomCrop(crop, pad))
    if flip:
        ts.append(RandomFlip(0.5))
    return Compose(ts)


def eval_transform(mean=None, crop=None, scale=DEFAULT_SCALE, resize=None, ten_crop=False):
    """Evaluation pipeline: [resize] -> (x - mean) * scale -> NCHW -> centre crop, or the 10 views
    (then batches are ``10 * B`` long, see :class:`TenCrop`)."""
    ts = []
    if resize:
        ts.append(ResizeShorter(resize))
    ts.append(ToFloat(mean, scale))
    if ten_crop:
        if not crop:
            raise UserError("ten_crop needs a crop size")
        ts.append(TenCrop(crop))
    elif crop:
        ts.append(CenterCrop(crop))
    return Compose(ts)
