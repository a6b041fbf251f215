"""Image folders: ``root/<class>/*.png|jpg|jpeg`` (Pillow).

- Classes are the sorted names of ``root``'s subfolders (hidden ones skipped); label ``i`` is
  ``classes[i]``. Images are found in each class folder and its subfolders, sorted by path; files
  with other extensions are ignored.
- Splits: when ``root`` has a ``train/`` subfolder and a ``test/`` or ``val/`` one, those are the
  splits (``val`` falls back to ``test/`` when there is no ``val/``, and ``test`` to ``val/``);
  the class list always comes from ``train/`` so labels agree. A root without split subfolders is
  one split, "train"; asking it for "val" or "test" raises UserError (use
  :func:`zfscratch.data.holdout_split` to hold out part of it).
- Class display names: a mapping file beside the splits (in ``root``), the first found of
  ``classes.txt``, ``synsets.txt``, ``LOC_synset_mapping.txt``, with one line per class folder in
  one of the forms ``index folder name`` (Imagenette's classes.txt), ``folder name`` (synsets.txt)
  or ``folder name, synonym, ...`` (ImageNet's LOC_synset_mapping.txt: the first synonym is shown);
  blank lines and ``#`` comments are skipped. ``classes`` then holds the display names (what every
  figure and table shows) and ``folders`` the folder names (e.g. WordNet ids); labels stay in
  sorted-folder order. A mapping that names a class the folder lacks, or misses one, raises
  UserError.
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

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import UserError
from .base import DatasetBase
from .transforms import resize_center_crop

__all__ = ["FolderDataset", "load_rgb", "to_rgb", "folder_splits", "class_names", "IMAGE_EXTENSIONS",
           "CLASS_FILES"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")  # compared lower-cased: .JPEG, .PNG work too
DEFAULT_CACHE_LIMIT = 2 << 30
CLASS_FILES = ("classes.txt", "synsets.txt", "LOC_synset_mapping.txt")
_CLASS_FILE_LIMIT = 4 << 20  # ImageNet-1k's mapping is ~30 kB; a bigger file is not a class list


def class_names(root, folders):
    """Display names of the class ``folders`` from the mapping file in ``root`` (see the module
    docstring), or None when ``root`` has none.

    Parameters
    ----------
    root : folder holding the splits (or the class folders).
    folders : list of str, the class folder names in label order.

    Returns
    -------
    (names, path): list of str parallel to ``folders``, and the mapping file used; or None.
    """
    path = next((os.path.join(root, f) for f in CLASS_FILES if os.path.isfile(os.path.join(root, f))), None)
    if path is None:
        return None
    mapping = _parse_class_file(path, _read_class_file(path))
    missing = [f for f in folders if f not in mapping]
    extra = sorted(set(mapping) - set(folders))
    if missing or extra:
        what = []
        if extra:
            what.append(f"names classes the folder lacks ({', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''})")
        if missing:
            what.append(f"misses class folders ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
        raise UserError(f"class names file {path} {' and '.join(what)}: expected one line per class folder "
                        f"of {root}")
    names = [mapping[f] for f in folders]
    counts = {}
    for nm in names:
        counts[nm] = counts.get(nm, 0) + 1
    # two folders with one display name (ImageNet has a few): keep them apart by the folder name
    names = [f"{nm} ({f})" if counts[nm] > 1 else nm for nm, f in zip(names, folders)]
    return names, path


def _read_class_file(path):
    """The text of a class names file (at most :data:`_CLASS_FILE_LIMIT` bytes of UTF-8)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_CLASS_FILE_LIMIT + 1)
    except OSError as e:
        raise UserError(f"class names file {path} cannot be read: {e}") from None
    if len(raw) > _CLASS_FILE_LIMIT:
        raise UserError(f"class names file {path} is larger than {_CLASS_FILE_LIMIT >> 20} MiB: expected one "
                        "'index folder name' or 'folder name' line per class")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"class names file {path} is not UTF-8 text") from None


def _parse_class_file(path, text):
    """``{folder: display name}`` from the lines ``folder [name]`` or ``index folder [name]``."""
    loc = os.path.basename(path) == "LOC_synset_mapping.txt"
    mapping = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].isdigit():  # "index folder name"
            parts = parts[1].split(None, 1)
        folder = parts[0]
        name = parts[1].strip() if len(parts) > 1 else folder
        if loc:
            name = name.split(",")[0].strip() or folder
        if folder in mapping:
            raise UserError(f"class names file {path} line {n}: class {folder!r} is listed twice")
        mapping[folder] = name
    return mapping


def to_rgb(img):
    """A decoded PIL image as (H, W, 3) uint8 RGB: 16-bit and integer greys scaled to 0..255, float greys
    (0..1 or 0..255) rounded, palettes expanded, transparency composited over white."""
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


#: largest image (pixels) decoded; checked from the header before decoding (decompression bombs)
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
#: largest image file read
MAX_IMAGE_BYTES = 256 << 20


@contextlib.contextmanager
def open_image(path):
    """Context manager: ``PIL.Image`` of a regular image file whose header-declared size is at most
    :data:`MAX_IMAGE_PIXELS` pixels.

    Nothing is decoded yet (``Image.open`` reads the header only); a FIFO or device named ``x.png`` is
    refused without blocking (:func:`zfscratch.util.files.open_regular`). UserError naming the file.
    """
    from PIL import Image

    from zfscratch.util.files import open_regular

    with open_regular(path, "image file", max_bytes=MAX_IMAGE_BYTES) as f:
        try:
            img = Image.open(f)
        except Image.DecompressionBombError as e:  # Pillow's own check, from the header too
            raise UserError(f"image file {path} is too large: {e} (refused before decoding)") from None
        with img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise UserError(f"image file {path} is {w}x{h} pixels, more than the {MAX_IMAGE_PIXELS} "
                                f"allowed (refused before decoding)")
            yield img


def load_rgb(path, size=None):
    """Decode an image file to ``(H, W, 3) uint8`` RGB (resized + centre-cropped to ``size`` if its
    shape is not ``size x size``). Raises UserError naming the file when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError
    try:
        with open_image(path) as img:
            img.load()
            arr = to_rgb(img)
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
    from PIL import UnidentifiedImageError
    try:
        with open_image(path) as img:
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


class FolderDataset(DatasetBase):
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
        self.folders = _visible_dirs(splits["train"])
        self.classes = list(self.folders)
        if not self.classes:
            raise UserError(f"image folder {splits['train']} has no class subfolders "
                            "(expected root/<class>/*.png|jpg|jpeg)")
        if split != "train":
            extra = sorted(set(_visible_dirs(self.folder)) - set(self.folders))
            if extra:
                raise UserError(f"image folder {self.folder} has classes not in "
                                f"{splits['train']}: {', '.join(extra[:5])}")
        named = class_names(self.root, self.folders)
        self.class_file = named[1] if named else None
        if named:
            self.classes = named[0]
        files, labels = [], []
        for c, name in enumerate(self.folders):
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
                "classes": self.classes, "image_shape": list(self.image_shape),
                **({"folders": self.folders, "class_file": self.class_file} if self.class_file else {})}
