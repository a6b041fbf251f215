"""Image folders: ``root/<class>/*.png|jpg|jpeg`` (Pillow).

- Classes are the sorted names of ``root``'s subfolders (hidden ones skipped); label ``i`` is
  ``classes[i]``. Images are found in each class folder and its subfolders, sorted by path; files
  with other extensions are ignored.
- Splits: when ``root`` has a ``train/`` subfolder and a ``test/`` or ``val/`` one, those are the
  splits (``val`` falls back to ``test/`` when there is no ``val/``, and ``test`` to ``val/``);
  the class list always comes from ``train/`` so labels agree. A root without split subfolders is
  one split, "train"; asking it for "val" or "test" raises UserError (use
  :func:`zfscratch.data.holdout_split` to hold out part of it).
- Every image is converted to RGB uint8: grey, grey+alpha, palette, RGBA (alpha composited on
  white), CMYK, 16-bit (scaled to 8 bits) and float images.
- Size: ``size=None`` takes the size of the first image; any image of another size is resized
  (shorter side to the target) and centre-cropped, which is also what ``size=S`` does to all of
  them (the paper's "resize the shorter side, crop the centre"). Non-square targets are not used.
- Memory: with ``cache="auto"`` (default) the decoded images are kept in one uint8 array when it
  fits in ``cache_limit`` bytes (2 GiB; CIFAR-10's 50,000 32x32 images take 150 MB), decoded
  once at construction by a thread pool; otherwise images are decoded per batch (bounded memory).
- Bad files (policy): a file that Pillow cannot read -- not an image (e.g. a text file named
  ``.png``), truncated or corrupt -- raises :class:`~zfscratch.errors.UserError` naming the file
  (the CLI exits 2). With the cache this happens while the dataset is opened; without it, when the
  batch holding the file is read. Nothing is skipped silently.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import UserError
from .transforms import resize_center_crop

__all__ = ["FolderDataset", "load_rgb", "folder_splits", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_CACHE_LIMIT = 2 << 30


def _to_rgb(img):
    from PIL import Image
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float64)
        if mode != "I" or a.max(initial=0) > 255:
            a = a / 257.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "F":
        a = np.nan_to_num(np.asarray(img).astype(np.float64))
        if a.max(initial=0) <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("LA", "La", "RGBA", "RGBa", "PA"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def load_rgb(path, size=None):
    """Decode an image file to ``(H, W, 3) uint8`` RGB (resized + centre-cropped to ``size`` if its
    shape is not ``size x size``). Raises UserError naming the file when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            img.load()
            arr = _to_rgb(img)
    except FileNotFoundError:
        raise UserError(f"image file {path} does not exist") from None
    except UnidentifiedImageError:
        raise UserError(f"image file {path} is not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise UserError(f"image file {path} is truncated or corrupt: {e}") from None
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UserError(f"image file {path} has an unsupported shape {arr.shape}")
    if size is not None and arr.shape[:2] != (size, size):
        arr = resize_center_crop(arr, size)
    return arr


def _image_size(path):
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            return img.size  # (w, h)
    except UnidentifiedImageError:
        raise UserError(f"image file {path} is not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"image file {path} is truncated or corrupt: {e}") from None


def _visible_dirs(path):
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        raise UserError(f"image folder {path} cannot be listed: {e}") from None
    return [n for n in names if not n.startswith(".") and os.path.isdir(os.path.join(path, n))]


def folder_splits(root):
    """Map split name -> folder: {"train": root} for a plain folder, or the train/test/val
    subfolders."""
    root = os.fspath(root)
    if not os.path.exists(root):
        raise UserError(f"image folder {root} does not exist")
    if not os.path.isdir(root):
        raise UserError(f"image folder {root} is not a folder")
    subs = set(_visible_dirs(root))
    if "train" in subs and ({"test", "val"} & subs):
        out = {"train": os.path.join(root, "train")}
        for s in ("test", "val"):
            if s in subs:
                out[s] = os.path.join(root, s)
        out.setdefault("val", out.get("test"))
        out.setdefault("test", out.get("val"))
        return out
    return {"train": root}


def _list_images(folder):
    files = []
    for d, dirs, names in os.walk(folder):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for n in sorted(names):
            if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS:
                files.append(os.path.join(d, n))
    return files


class FolderDataset:
    """Images of ``root/<class>/...`` (see the module docstring).

    Parameters
    ----------
    root : the folder (with class subfolders, or with train/ and test/ holding them).
    split : "train", "val" or "test".
    size : target side (None: the first image's size).
    cache : "auto", True or False (see module docstring).
    workers : decoding threads (default: CPU count, at most 8).
    """

    name = "folder"

    def __init__(self, root, split="train", size=None, cache="auto", workers=None,
                 cache_limit=DEFAULT_CACHE_LIMIT, progress=False):
        splits = folder_splits(root)
        if split not in ("train", "val", "test"):
            raise UserError(f"image folder split {split!r}: expected train, val or test")
        if split not in splits:
            raise UserError(f"image folder {root} has no train/ and test/ (or val/) subfolders, so it "
                            f"has no {split!r} split; point at a folder with them, or hold out part "
                            "of the training images")
        self.root = os.fspath(root)
        self.split = split
        self.folder = splits[split]
        self.classes = _visible_dirs(splits["train"])
        if not self.classes:
            raise UserError(f"image folder {splits['train']} has no class subfolders "
                            "(expected root/<class>/*.png|jpg|jpeg)")
        if split != "train":
            extra = sorted(set(_visible_dirs(self.folder)) - set(self.classes))
            if extra:
                raise UserError(f"image folder {self.folder} has classes not in "
                                f"{splits['train']}: {', '.join(extra[:5])}")
        files, labels = [], []
        for c, name in enumerate(self.classes):
            d = os.path.join(self.folder, name)
            if not os.path.isdir(d):
                continue  # a test split may lack a class
            f = _list_images(d)
            if not f and split == "train":
                raise UserError(f"class folder {d} holds no .png/.jpg/.jpeg images")
            files += f
            labels += [c] * len(f)
        if not files:
            raise UserError(f"image folder {self.folder} holds no .png/.jpg/.jpeg images")
        self.files = files
        self._labels = np.asarray(labels, np.int64)
        if size is None:
            w, h = _image_size(files[0])
            if w != h:
                size = min(w, h)
        else:
            size = int(size)
            if size < 1:
                raise UserError(f"image size {size}: expected a positive number of pixels")
        if size is None:
            size = w
        self.size = size
        self.workers = int(workers or min(8, os.cpu_count() or 1))
        nbytes = len(files) * size * size * 3
        if cache == "auto":
            cache = nbytes <= cache_limit
        self._cache = None
        if cache:
            self._cache = self._decode(range(len(files)), progress=progress)

    # -- decoding ----------------------------------------------------------------------------
    def _decode(self, indices, progress=False):
        indices = list(indices)
        out = np.empty((len(indices), self.size, self.size, 3), np.uint8)
        chunk = 256

        def work(start):
            for j in range(start, min(start + chunk, len(indices))):
                out[j] = load_rgb(self.files[indices[j]], self.size)
            return min(chunk, len(indices) - start)

        starts = range(0, len(indices), chunk)
        if self.workers <= 1 or len(indices) <= chunk:
            for s in starts:
                work(s)
            return out
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(indices), desc=f"decoding {self.folder}", unit="img")
        with ThreadPoolExecutor(self.workers) as ex:
            for n in ex.map(work, starts):
                if bar is not None:
                    bar.update(n)
        if bar is not None:
            bar.close()
        return out

    # -- common interface ----------------------------------------------------------------------
    def __len__(self):
        return len(self.files)

    @property
    def labels(self):
        return self._labels

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def image_shape(self):
        return (self.size, self.size, 3)

    @property
    def cached(self):
        return self._cache is not None

    def get_batch(self, indices):
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if self._cache is not None:
            return self._cache[idx], self._labels[idx]
        return self._decode(idx), self._labels[idx]

    def __getitem__(self, i):
        x, y = self.get_batch([i])
        return x[0], int(y[0])

    def describe(self):
        return {"kind": "folder", "source": self.root, "split": self.split, "n": len(self),
                "classes": self.classes, "image_shape": list(self.image_shape)}
