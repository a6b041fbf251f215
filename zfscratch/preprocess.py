"""Preprocessing: from uint8 RGB images to the float32 NCHW input a trained network expects.

The rule follows the paper (section 3: "resized the smallest dimension to 256, cropped the center
256x256 region, subtracted the per-pixel mean (across all images) and then used 10 different
sub-crops of size 224x224 (corners + center with(out) horizontal flips)"), scaled to our sizes:

1. ``prepare``: resize every image so that its shorter side is ``resize`` (R) pixels and crop the
   central R x R square (a no-op when the image already is R x R);
2. subtract the mean (``mean``: an (R, R, C) per-pixel mean image, a (C,) per-channel mean, or none),
   all in 0..255 units, and multiply by ``scale``;
3. crop the ``input_size`` (S <= R) window: the centre for evaluation, a random window (optionally
   from the R x R image padded by ``pad`` pixels of value 0, i.e. the mean) for training; flip
   horizontally at random in training; ``ten_crop`` gives the paper's 10 views;
4. transpose to (B, C, S, S).

Only ``input_size``, ``resize``, ``pad``, ``scale``, ``mean_mode`` go into the weights' metadata
(``meta["preprocessing"]``, see :meth:`Preprocess.to_meta`); the mean array itself is saved beside the
weights with ``io.save_weights(..., extra={"mean": prep.mean})``. :meth:`Preprocess.from_meta` reads
both back, so a weights file alone says how to feed the network.

``load_image(path)`` reads a user's image file (PNG, JPEG, ...) as (H, W, 3) uint8 RGB: grey,
palette, grey+alpha, RGBA (composited on white), CMYK, 16-bit and float images are converted;
missing, truncated or non-image files raise :class:`~zfscratch.errors.UserError` naming the file.
"""
from __future__ import annotations

import os

import numpy as np

from zfscratch.errors import UserError

MEAN_MODES = ("pixel", "channel", "none")


# -- geometry: the data package's transforms (uint8 in, uint8 out) -------------------------------

#: bounds on what a command line or a weights file may ask for (the paper uses 224 / 256)
MAX_INPUT_SIZE = 2048
MAX_RESIZE = 4096
MAX_PAD = 256


def _bounded(v, lo, hi, what):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise UserError(f"{what} {v!r}: expected an integer in [{lo}, {hi}]")
    if not lo <= v <= hi:
        raise UserError(f"{what} {v}: expected an integer in [{lo}, {hi}]")
    return int(v)


def prepare_images(images, size):
    """Bring uint8 images to (B, size, size, C): shorter side resized to ``size``, centre crop.

    ``images``: an (B, H, W, C) uint8 array or a list of (H, W, C) uint8 arrays of any sizes.
    """
    from zfscratch.data.transforms import resize_center_crop
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1:3] == (size, size):
        return images
    out = [np.asarray(im) if np.asarray(im).shape[:2] == (size, size) else resize_center_crop(np.asarray(im), size)
           for im in images]
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


class Preprocess:
    """How images are fed to a network (see the module docstring).

    Parameters
    ----------
    input_size : int, S, the network's input side.
    resize : int, R >= S, side of the prepared square (default S).
    mean : None, (R, R, C) or (C,) float32 array in 0..255 units.
    scale : float, applied after mean subtraction (default 1/64: roughly unit variance for photos).
    pad : int, training-only zero padding (after mean subtraction) before random crops.
    mean_mode : "pixel", "channel" or "none": which mean :meth:`fit_mean` computes.
    """

    def __init__(self, input_size, resize=None, mean=None, scale=1.0 / 64, pad=0, mean_mode="pixel", source=None):
        # ``source`` names where the values come from (a weights file) in error messages; default the options
        opt = (lambda key, flag: f"{source}: preprocessing.{key}") if source else (lambda key, flag: flag)
        self.input_size = _bounded(input_size, 1, MAX_INPUT_SIZE, opt("input_size", "--input-size"))
        self.resize = _bounded(resize or input_size, 1, MAX_RESIZE, opt("resize", "--resize"))
        if self.resize < self.input_size:
            raise UserError(f"{opt('resize', '--resize')} {self.resize} is smaller than the input size "
                            f"{self.input_size}")
        if mean_mode not in MEAN_MODES:
            raise UserError(f"{opt('mean_mode', '--mean')} {mean_mode!r}: expected one of {', '.join(MEAN_MODES)}")
        self.pad = _bounded(pad, 0, MAX_PAD, opt("pad", "--pad"))
        try:
            self.scale = float(scale)
        except (TypeError, ValueError):
            self.scale = float("nan")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise UserError(f"{opt('scale', '--scale')} {scale!r}: expected a finite number > 0")
        self.mean_mode = mean_mode
        self.mean = None if mean is None else np.asarray(mean, np.float32)
        if self.mean is not None:
            if self.mean.ndim not in (1, 3) or self.mean.shape[-1] not in (1, 3) or \
                    (self.mean.ndim == 3 and self.mean.shape[:2] != (self.resize, self.resize)):
                raise UserError(f"{source or 'mean'}: mean image has shape {self.mean.shape}, expected "
                                f"({self.resize}, {self.resize}, C) or (C,)")
            if not np.all(np.isfinite(self.mean)):
                raise UserError(f"{source or 'mean'}: mean image holds NaN or infinite values")

    # -- metadata ---------------------------------------------------------------------------
    def to_meta(self):
        """JSON-able description (the mean array goes separately into the weights' extra arrays)."""
        return {"input_size": self.input_size, "resize": self.resize, "pad": self.pad,
                "scale": self.scale, "mean_mode": self.mean_mode,
                "mean_shape": None if self.mean is None else list(self.mean.shape),
                "layout": "NCHW float32 = (centre_crop(resize(img)) - mean) * scale; img uint8 RGB 0..255"}

    @classmethod
    def from_meta(cls, meta, source="weights metadata"):
        """Rebuild from a weights file's metadata (``io.load_weights`` second return value).

        Falls back to the model's input size, no mean and scale 1/64 when the file has no
        ``preprocessing`` record (e.g. weights imported from elsewhere).
        """
        p = meta.get("preprocessing") or {}
        if not isinstance(p, dict):
            raise UserError(f"{source}: preprocessing is a {type(p).__name__}, expected an object")
        mean = (meta.get("extra") or {}).get("mean")
        size = p.get("input_size") or (meta.get("config") or {}).get("input_size")
        if not size:
            raise UserError(f"{source} has neither preprocessing.input_size nor config.input_size")
        return cls(size, resize=p.get("resize"), mean=mean, scale=p.get("scale", 1.0 / 64),
                   pad=p.get("pad", 0), mean_mode=p.get("mean_mode", "pixel" if mean is not None else "none"),
                   source=source)

    # -- mean -------------------------------------------------------------------------------
    def fit_mean(self, batches):
        """Compute the mean from an iterable of prepared uint8 (B, R, R, C) batches; returns it."""
        total, count = None, 0
        for b in batches:
            s = b.astype(np.float64).sum(axis=0)
            total = s if total is None else total + s
            count += b.shape[0]
        if self.mean_mode == "none" or count == 0:
            self.mean = None
        elif self.mean_mode == "pixel":
            self.mean = (total / count).astype(np.float32)
        else:
            self.mean = (total.reshape(-1, total.shape[-1]).mean(axis=0) / count).astype(np.float32)
        return self.mean

    # -- transforms -------------------------------------------------------------------------
    def prepare(self, images):
        """uint8 images (any size) -> uint8 (B, R, R, C)."""
        return prepare_images(images, self.resize)

    def normalize(self, prepared):
        """uint8 (B, R, R, C) -> float32 (B, C, R, R): ``(x - mean) * scale``."""
        from zfscratch.data.transforms import to_float_nchw
        if self.mean is not None and self.mean.ndim == 3 and self.mean.shape[:2] != prepared.shape[1:3]:
            raise UserError(f"mean image of shape {self.mean.shape} does not match prepared images "
                            f"of shape {prepared.shape[1:]}")
        return to_float_nchw(prepared, self.mean, self.scale)

    def __call__(self, images):
        """uint8 images (B, H, W, C) (or a list of any sizes) -> float32 (B, C, S, S), centre crop."""
        from zfscratch.data.transforms import center_crop_batch
        return center_crop_batch(self.normalize(self.prepare(images)), self.input_size)

    def augment(self, prepared, rng, flip=True, crop=True, erase=False):
        """Training views of prepared uint8 (B, R, R, C): random S x S crops (of the image padded by
        ``pad`` pixels of mean) and random horizontal flips, drawn from ``rng`` -> float32 (B, C, S, S).
        With ``crop=False`` the centre view; with ``erase`` a mean-grey square on half of the views
        (:func:`zfscratch.data.transforms.random_erase`)."""
        from zfscratch.data import transforms as T
        x = self.normalize(self.prepare(prepared))
        if crop and (self.pad or x.shape[2] > self.input_size):
            x = T.random_crop(x, self.input_size, rng, self.pad)
        else:
            x = T.center_crop_batch(x, self.input_size)
        if flip:
            x = T.random_flip(x, rng)
        if erase:
            x = T.random_erase(x, rng)
        return np.ascontiguousarray(x)

    def ten_crop(self, images):
        """The paper's 10 test views: 4 corners + centre, each followed by its mirror image.

        Returns float32 (10, B, C, S, S).
        """
        from zfscratch.data.transforms import ten_crop
        return ten_crop(self.normalize(self.prepare(images)), self.input_size)

    def deprocess(self, x):
        """Inverse of ``__call__`` for display: float32 (B, C, S, S) -> uint8 (B, S, S, C)."""
        x = np.asarray(x, np.float32).transpose(0, 2, 3, 1) / np.float32(self.scale)
        if self.mean is not None:
            m = self.mean
            if m.ndim == 3:
                o = (self.resize - self.input_size) // 2
                m = m[o:o + self.input_size, o:o + self.input_size]
            x = x + m
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# -- image files -----------------------------------------------------------------------------------

def load_image(path):
    """Read an image file as (H, W, 3) uint8 RGB.

    Raises
    ------
    UserError
        the file is missing, is a folder, is not an image, or is truncated/corrupt.
    """
    from zfscratch.data.folder import load_rgb
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"image file {path} does not exist")
    if os.path.isdir(path):
        raise UserError(f"image file {path} is a folder, expected an image file")
    arr = load_rgb(path)
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UserError(f"image file {path} has an empty or unsupported shape {arr.shape}")
    return arr
