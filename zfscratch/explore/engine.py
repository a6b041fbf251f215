"""The computing side of ``zfscratch explore``: one network, one dataset, every answer the page asks for.

Everything the page shows is computed here and returned as JSON-able dicts or PNG bytes; the web
layer (:mod:`zfscratch.explore.app`) only parses request parameters and calls these methods.

Thread safety. The web server answers requests on several threads and the top-9 search runs in a
background thread, but layers keep per-call caches (inputs, pooling switches), so every use of the
network holds ``Engine.lock`` (one engine call at a time; the search takes it batch by batch so the
page stays responsive while it runs).

Images are named by a *key*: ``d<index>`` for dataset image ``index`` or ``u<16 hex digits>`` for an
upload held in memory (never written to disk). Keys are parsed with a strict pattern; no request
value ever becomes a file path.

The last analysed image's forward pass is kept (every projectable layer's output, the pooling
switches, the logits), so picking a layer, a map or its projection needs no new forward pass: a
projection is only the DeconvNet's walk down (:func:`zfscratch.deconv.walk_down`).
"""
from __future__ import annotations

import collections
import hashlib
import io as _io
import json
import os
import re
import secrets
import threading
import time

import numpy as np

from zfscratch import deconv, viz
from zfscratch.errors import UserError
from zfscratch.experiments import _shared as S
from zfscratch.experiments import invariance as inv
from zfscratch.experiments import occlusion as occ
from zfscratch.experiments import topk as tk

#: largest accepted upload, bytes (the server refuses bigger request bodies before reading them)
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
#: largest accepted upload, pixels (checked from the header, before decoding)
MAX_UPLOAD_PIXELS = 40_000_000
#: image formats an upload may have
UPLOAD_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
#: uploads kept in memory (oldest dropped first)
MAX_UPLOADS = 32

_KEY = re.compile(r"^(?:d(\d{1,9})|u([0-9a-f]{16}))$")


class ApiError(UserError):
    """A bad request parameter: the page shows the message, the server keeps running."""


def png_bytes(img):
    """uint8 or [0, 1] float image (H, W, 3|4) or (H, W) -> PNG bytes."""
    from PIL import Image
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(np.asarray(a, np.float64) * 255.0), 0, 255).astype(np.uint8)
    buf = _io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _resize(a, h, w, nearest=True):
    """Resize a 2-D or (H, W, C) uint8 array with Pillow."""
    from PIL import Image
    im = Image.fromarray(a)
    return np.asarray(im.resize((w, h), Image.NEAREST if nearest else Image.BILINEAR))


def decode_upload(data):
    """Decode uploaded bytes as an image: (H, W, 3) uint8 RGB.

    Only Pillow's image decoders see the bytes; the format must be one of :data:`UPLOAD_FORMATS` and the
    pixel count at most :data:`MAX_UPLOAD_PIXELS` (read from the header, before decoding).
    """
    from PIL import Image, UnidentifiedImageError
    from zfscratch.data.folder import to_rgb
    if not data:
        raise ApiError("the upload is empty: choose an image file (PNG, JPEG, ...)")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ApiError(f"the upload is {len(data)} bytes; the limit is {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB")
    try:
        with Image.open(_io.BytesIO(data), formats=UPLOAD_FORMATS) as im:
            w, h = im.size
            if w * h > MAX_UPLOAD_PIXELS or w < 1 or h < 1:
                raise ApiError(f"the uploaded image is {w}x{h} pixels; the limit is "
                               f"{MAX_UPLOAD_PIXELS // 1_000_000} megapixels")
            im.load()
            arr = to_rgb(im)
    except Image.DecompressionBombError:
        raise ApiError(f"the uploaded image has too many pixels; the limit is "
                       f"{MAX_UPLOAD_PIXELS // 1_000_000} megapixels") from None
    except UnidentifiedImageError:
        raise ApiError("the upload is not an image (expected PNG, JPEG, GIF, BMP, WebP, TIFF or PPM)") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ApiError(f"the uploaded image is truncated or corrupt: {e}") from None
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ApiError(f"the uploaded image has an unsupported shape {arr.shape}")
    return arr


def default_cache_root():
    """``$XDG_CACHE_HOME/zfscratch/explore`` (default ``~/.cache/zfscratch/explore``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "zfscratch", "explore")


class Engine:
    """One network and one dataset, answering the explore page's questions.

    Parameters
    ----------
    net, meta : from :func:`zfscratch.io.load_weights`
    dataset : a dataset (``get_batch``, ``labels``, ``classes``) the weights fit
    weights_path : the weights file (hashed, with ``data_desc``, to name the top-9 cache)
    data_desc : a string naming the dataset (its spec), part of the cache key
    cache_root : folder holding one ``<hash>`` subfolder per weights + data (default
        :func:`default_cache_root`); ``cache_dir`` overrides the subfolder itself
    images : scan only ``images`` dataset images for the top-9, spread evenly (default all)
    k : activations kept per map (9: the paper's top-9)

    Raises
    ------
    UserError
        the weights do not fit the data (class count, image channels, preprocessing).
    """

    def __init__(self, net, meta, dataset, weights_path=None, data_desc="", cache_root=None, cache_dir=None,
                 images=None, k=9):
        from zfscratch.models import input_shape
        from zfscratch.preprocess import Preprocess
        self.net, self.meta, self.ds = net, meta, dataset
        self.lock = threading.RLock()        # every use of the network
        self.data_lock = threading.Lock()    # every read of the dataset
        self.pre = Preprocess.from_meta(meta)
        self.in_shape = tuple(input_shape(net))
        self.size = int(self.in_shape[1])
        self.num_classes = int(net.output_shapes((1,) + self.in_shape)[-1][1][1])
        classes = list(meta.get("classes") or getattr(dataset, "classes", None) or [])
        if len(classes) != self.num_classes:
            classes = [str(i) for i in range(self.num_classes)]
        self.classes = [str(c) for c in classes]
        self.weights_path, self.data_desc = weights_path, str(data_desc)
        self._check_fit()
        self.labels = np.asarray(dataset.labels, np.int64)
        self.by_class = [np.nonzero(self.labels == c)[0] for c in range(self.num_classes)]
        convs = [l for l in net.layers[:len(deconv.projectable_layers(net))] if l.kind == "Conv2d"]
        self.layer_names = [deconv.layer_name(net, i + 1) for i in range(len(convs))]
        if not self.layer_names:
            raise UserError("the network has no convolution layer to explore")
        shapes = dict(net.output_shapes((1,) + self.in_shape))
        self.layer_shapes = {n: tuple(int(v) for v in shapes[n][1:]) for n in self.layer_names}
        self._proj_stop = max(net.index(n) for n in self.layer_names)
        self.first = self.layer_names[0]
        try:
            self.penultimate = S.penultimate_output(net)
        except UserError:
            self.penultimate = None
        self._uploads = collections.OrderedDict()
        self._cur_key, self._cur = None, None
        self._inc_key, self._inc = None, None   # the incremental occluder of the last image + layer
        #: "auto" (measure both, then use the faster), "incremental" or "full"
        self.occlusion_mode = "auto"
        self._occ_times = {"incremental": [], "full": []}
        self.k = int(k)
        self.scan_n = len(dataset) if images is None else max(0, min(int(images), len(dataset)))
        self.cache_root = cache_root or default_cache_root()
        self.cache_dir = cache_dir
        self.topk = None
        self.topk_status = {"state": "waiting", "done": 0, "total": self.scan_n, "message": "",
                            "seconds": 0.0}
        self._thread = None

    # ------------------------------------------------------------------ checks
    def _check_fit(self):
        ds_classes = getattr(self.ds, "num_classes", None)
        if ds_classes is not None and int(ds_classes) != self.num_classes:
            raise UserError(f"weights {self.weights_path} predict {self.num_classes} classes but the data "
                            f"{self.data_desc or ''} has {ds_classes}; pass --data with the data they were trained on")
        if len(self.ds) == 0:
            raise UserError(f"data {self.data_desc}: no images")
        if self.in_shape[0] != 3:
            raise UserError(f"weights {self.weights_path} take {self.in_shape[0]}-channel input; explore "
                            f"feeds RGB images (3 channels)")
        try:
            images, _ = self.ds.get_batch(np.array([0]))
            x = self.pre(images)
        except UserError as e:
            raise UserError(f"data {self.data_desc} does not fit the weights' preprocessing: {e}") from None
        if tuple(x.shape[1:]) != self.in_shape:
            raise UserError(f"data {self.data_desc}: preprocessed images are {tuple(x.shape[1:])}, the weights "
                            f"expect {self.in_shape}")

    # ------------------------------------------------------------------ description
    def info(self):
        """What the page needs to draw itself (no network use: answers at once)."""
        return {"classes": self.classes, "size": self.size, "num_images": len(self.ds),
                "class_counts": [int(v.size) for v in self.by_class],
                "layers": [{"number": i + 1, "name": n, "shape": list(self.layer_shapes[n]),
                            "rf": list(deconv.receptive_field(self.net, n))}
                           for i, n in enumerate(self.layer_names)],
                "data": self.data_desc, "weights": os.path.basename(self.weights_path or ""),
                "arch": self.net.config.get("arch"), "backend": self.net.backend.name,
                "penultimate": self.penultimate, "first": self.first,
                "max_upload_bytes": MAX_UPLOAD_BYTES, "max_upload_pixels": MAX_UPLOAD_PIXELS,
                "occluder": max(2, int(round(self.size * 48 / 224))), "k": self.k,
                "topk": dict(self.topk_status)}

    def dataset_page(self, cls, offset=0, limit=48):
        """Indices of dataset images of class ``cls`` (``-1``: all classes), ``limit`` from ``offset``."""
        if cls == -1:
            idx = np.arange(len(self.ds))
        else:
            self._check_class(cls)
            idx = self.by_class[cls]
        if offset < 0 or limit < 1 or limit > 500:
            raise ApiError(f"offset {offset} / limit {limit}: expected offset >= 0 and 1 <= limit <= 500")
        sel = idx[offset:offset + limit]
        return {"class": cls, "total": int(idx.size), "offset": offset,
                "items": [{"index": int(i), "label": int(self.labels[i])} for i in sel]}

    def thumbnail(self, index, side=64):
        """PNG of dataset image ``index`` (prepared square, ``side`` pixels)."""
        self._check_index(index)
        with self.data_lock:
            images, _ = self.ds.get_batch(np.array([index]))
        im = self.pre.prepare(images)[0]
        return png_bytes(_resize(im, side, side, nearest=im.shape[0] < side))

    # ------------------------------------------------------------------ images
    def _check_index(self, index):
        if not 0 <= int(index) < len(self.ds):
            raise ApiError(f"image index {index} out of range: the data has images 0..{len(self.ds) - 1}")

    def _check_class(self, c):
        if not 0 <= int(c) < self.num_classes:
            raise ApiError(f"class {c} out of range 0..{self.num_classes - 1}")

    def add_upload(self, data):
        """Decode an upload, keep it in memory; returns its key ``u<hex>``."""
        arr = decode_upload(data)
        x = np.ascontiguousarray(self.pre([arr])[0], np.float32)
        key = "u" + secrets.token_hex(8)
        with self.lock:
            self._uploads[key] = x
            while len(self._uploads) > MAX_UPLOADS:
                self._uploads.popitem(last=False)
        return key

    def image(self, key):
        """``(x (C, S, S) float32 network input, label or None)`` of an image key."""
        m = _KEY.match(str(key or ""))
        if not m:
            raise ApiError(f"image {str(key)[:40]!r}: expected d<index> (dataset) or the key of an upload")
        if m.group(1) is not None:
            i = int(m.group(1))
            self._check_index(i)
            with self.data_lock:
                images, labels = self.ds.get_batch(np.array([i]))
            return np.ascontiguousarray(self.pre(images)[0], np.float32), int(labels[0])
        x = self._uploads.get(key)
        if x is None:
            raise ApiError("this upload is no longer held by the server (it keeps the last "
                           f"{MAX_UPLOADS}); upload it again")
        return x, None

    def image_png(self, key):
        """PNG of the image as the network sees it (S x S, preprocessed then deprocessed)."""
        x, _ = self.image(key)
        return png_bytes(self.pre.deprocess(x[None])[0])

    # ------------------------------------------------------------------ the kept forward pass
    def _analyse(self, key):
        """Forward ``key`` once, keeping every explored layer's output and the pooling switches.

        Call with ``self.lock`` held. Returns a dict: ``x``, ``label``, ``acts`` {layer: (C, h, w)},
        ``rec`` (the DeconvNet record), ``probs`` (K,), ``feats`` {first/penultimate: vector}."""
        if key == self._cur_key and self._cur is not None:
            return self._cur
        x, label = self.image(key)
        net, be = self.net, self.net.backend
        xp = be.xp
        keep = set(self.layer_names) | {self.first} | ({self.penultimate} if self.penultimate else set())
        a = be.to_device(x[None], net.dtype)
        rec, acts = [], {}
        for i, l in enumerate(net.layers):
            shape = tuple(a.shape)
            a = l.forward(a, train=False)
            if i <= self._proj_stop:
                # copies: layers may reuse their buffers on the next call
                sw = xp.array(l.switches, copy=True) if l.kind == "MaxPool2d" else None
                rec.append((l, shape, sw))
            if l.name in keep:
                acts[l.name] = np.array(be.to_host(a))[0]
        probs = S.softmax(np.array(be.to_host(a)))[0]
        pred = int(np.argmax(probs))
        cur = {"x": x, "label": label, "acts": acts, "rec": rec, "probs": probs, "pred": pred}
        self._cur_key, self._cur = key, cur
        return cur

    def _true(self, cur, label):
        """The class whose probability is tracked: ``label`` if given, else the image's, else predicted."""
        if label is not None and label >= 0:
            self._check_class(label)
            return int(label)
        return cur["label"] if cur["label"] is not None else cur["pred"]

    def _layer(self, layer):
        """Paper layer number (1-based) -> layer name (ApiError when out of range)."""
        try:
            n = int(layer)
        except (TypeError, ValueError):
            raise ApiError(f"layer {layer!r}: expected a number 1..{len(self.layer_names)}") from None
        if not 1 <= n <= len(self.layer_names):
            raise ApiError(f"layer {n} out of range: the network has layers 1..{len(self.layer_names)}")
        return self.layer_names[n - 1]

    def _map(self, name, m):
        c = self.layer_shapes[name][0]
        if not 0 <= int(m) < c:
            raise ApiError(f"map {m} out of range: layer {name} has maps 0..{c - 1}")
        return int(m)

    def predict(self, key, label=None):
        """Top-5 classes with probabilities, the true (or given) class and its probability."""
        with self.lock:
            cur = self._analyse(key)
        p = cur["probs"]
        t = self._true(cur, label)
        top = np.argsort(-p, kind="stable")[:5]
        return {"top": [{"class": int(c), "name": self.classes[c], "p": float(p[c])} for c in top],
                "label": cur["label"], "true": t, "p_true": float(p[t])}

    def maps(self, key, layer, tile=None, ncols=16):
        """The maps of one layer for this image, strongest first, and a sprite of their thumbnails.

        Returns (info dict, PNG bytes): ``order`` (map indices, strongest first), ``max`` (each listed
        map's largest activation), ``pos`` ([y, x] of it), ``tile``, ``ncols``, ``rf``."""
        name = self._layer(layer)
        with self.lock:
            a = self._analyse(key)["acts"][name]
        c, h, w = a.shape
        flat = a.reshape(c, -1)
        mx = flat.max(axis=1)
        arg = flat.argmax(axis=1)
        order = np.lexsort((np.arange(c), -mx))
        tile = int(tile or (48 if h <= 48 else 64))
        gap = 2
        nrows = -(-c // ncols)
        sprite = np.full((nrows * (tile + gap), ncols * (tile + gap)), 255, np.uint8)
        top = max(float(mx.max()), 1e-12)
        for j, m in enumerate(order):
            v = a[m]
            hi = float(v.max())
            g = np.zeros((h, w), np.uint8) if hi <= 0 else np.clip(np.rint(v / hi * 255), 0, 255).astype(np.uint8)
            r, q = divmod(j, ncols)
            sprite[r * (tile + gap):r * (tile + gap) + tile, q * (tile + gap):q * (tile + gap) + tile] = \
                _resize(g, tile, tile, nearest=h < tile)
        info = {"layer": int(layer), "name": name, "shape": [c, h, w], "order": [int(m) for m in order],
                "max": [float(mx[m]) for m in order], "rel": [float(max(mx[m], 0) / top) for m in order],
                "pos": [[int(arg[m] // w), int(arg[m] % w)] for m in order], "tile": tile, "gap": gap,
                "ncols": ncols, "rf": list(deconv.receptive_field(self.net, name))}
        return info, png_bytes(sprite)

    def project(self, key, layer, m, mode="max", crop=False):
        """PNG of the DeconvNet projection of map ``m`` of ``layer`` for this image (``mode``: ``max``
        keeps the map's strongest activation, ``map`` the whole map), and its info.

        ``crop``: instead, the projection cropped to the strongest unit's receptive field (the box
        of :func:`zfscratch.deconv.patch_box`) beside the same patch of the image, enlarged to about
        128 pixels (the paper's Fig 2 for this one image)."""
        name = self._layer(layer)
        m = self._map(name, m)
        if mode not in ("max", "map"):
            raise ApiError(f"mode {mode!r}: expected max or map")
        net, be = self.net, self.net.backend
        xp = be.xp
        with self.lock:
            cur = self._analyse(key)
            idx = net.index(name)
            rec = cur["rec"][:idx + 1]
            a = cur["acts"][name]
            c, h, w = a.shape
            top = np.zeros((1, c, h, w), np.float32)
            pos = int(np.argmax(a[m]))
            val = float(a[m].reshape(-1)[pos])
            if mode == "max":
                top[0, m].reshape(-1)[pos] = val
            else:
                top[0, m] = a[m]
            r = deconv.walk_down(net, be.to_device(top, net.dtype), rec, xp.zeros(1, np.int64))
            r = np.asarray(be.to_host(r))[0]
        img = viz.to_display(r)
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
        y, x = divmod(pos, w)
        if crop:
            y0, y1, x0, x1 = deconv.patch_box(net, name, y, x, image_size=self.size)
            pr = viz.to_display(r[:, y0:y1, x0:x1])
            if pr.shape[-1] == 1:
                pr = np.repeat(pr, 3, axis=-1)
            patch = self.pre.deprocess(cur["x"][None])[0][y0:y1, x0:x1].astype(np.float64) / 255.0
            z = max(1, int(np.ceil(128 / max(y1 - y0, 1))))
            a, b = viz.upscale(pr, z), viz.upscale(patch, z)
            img = np.ones((a.shape[0], 2 * a.shape[1] + 6, 3))
            img[:, :a.shape[1]], img[:, a.shape[1] + 6:] = a, b
        return {"value": val, "y": y, "x": x,
                "box": list(deconv.unit_box(net, name, y, x, image_size=self.size))}, png_bytes(img)

    # ------------------------------------------------------------------ occlusion
    def _fill(self):
        return np.zeros(self.in_shape, np.float32)  # the training mean, after mean subtraction

    def occlude(self, key, y, x, size, layer=None, m=None, label=None):
        """One occluder position: P(true), the top label and the chosen map's total activity.

        Computed incrementally (:class:`zfscratch.experiments.incremental.IncrementalOccluder`: only
        what the occluder can change is recomputed; exact to float rounding) or by a full forward
        pass, whichever measured faster here (:meth:`_occlusion_way`; the answer is ``way``).

        ``y, x``: top-left corner in input pixels (may overhang), ``size``: side. Map default: the
        strongest of the last layer for the unoccluded image."""
        size = int(size)
        if not 1 <= size <= self.size:
            raise ApiError(f"occluder size {size}: expected 1..{self.size}")
        y, x = int(y), int(x)
        if not (-size < y < self.size and -size < x < self.size):
            raise ApiError(f"occluder position ({y}, {x}) lies outside the {self.size}x{self.size} image")
        name = self._layer(layer if layer is not None else len(self.layer_names))
        with self.lock:
            cur = self._analyse(key)
            t = self._true(cur, label)
            base_map = cur["acts"][name]
            if m is None or int(m) < 0:
                m = int(np.argmax(base_map.reshape(base_map.shape[0], -1).max(axis=1)))
            m = self._map(name, m)
            be = self.net.backend
            way = self._occlusion_way()
            t0 = time.perf_counter()
            if way == "incremental":
                inc = self._incremental(key, name)
                out = inc.positions([(max(y, 0), max(x, 0), min(y + size, self.size), min(x + size, self.size))])
                logits = np.asarray(be.to_host(out["logits"]), np.float64)
                activity = float(be.to_host(out[name][0, m].sum()))
            else:
                xo = occ.occlude_batch(cur["x"], self._fill(), [y], [x], size)
                out = S.forward_layers(self.net, xo, [name])
                logits, activity = out["logits"], float(out[name][0, m].sum())
            if len(self._occ_times[way]) < 3:
                self._occ_times[way].append(time.perf_counter() - t0)
        p = S.softmax(logits)[0]
        pred = int(np.argmax(p))
        return {"p_true": float(p[t]), "true": t, "top": pred, "top_name": self.classes[pred],
                "top_p": float(p[pred]), "activity": activity,
                "base_activity": float(base_map[m].sum()), "base_p_true": float(cur["probs"][t]),
                "layer": name, "map": m, "way": way}

    def _occlusion_way(self):
        """``"incremental"`` or ``"full"``: the first calls try both (after each one's warm-up call),
        then the faster one is used. At one position per call the incremental engine's bookkeeping can
        cost more than it saves (large windows from conv4 on, small GEMMs), depending on the net."""
        t = self._occ_times
        if self.occlusion_mode != "auto":
            return self.occlusion_mode
        if len(t["incremental"]) < 3 or len(t["full"]) < 3:
            return "incremental" if len(t["incremental"]) <= len(t["full"]) else "full"
        # the first call of each way warms caches/compilation: compare the later ones
        return "incremental" if min(t["incremental"][1:]) <= min(t["full"][1:]) else "full"

    def _incremental(self, key, name):
        """The incremental occluder of this image (its unoccluded pass cached), keeping ``name``'s maps.

        Call with ``self.lock`` held; rebuilt when the image or the layer changes."""
        from zfscratch.experiments.incremental import IncrementalOccluder
        if self._inc_key != (key, name):
            self._inc = IncrementalOccluder(self.net, self._analyse(key)["x"], fill=self._fill(), keep=[name])
            self._inc_key = (key, name)
        return self._inc

    def sweep(self, key, size, stride, layer=None, m=None, label=None):
        """The whole occlusion sweep: (summary dict, PNG overlay of P(true) over the image, RGBA)."""
        size, stride = int(size), int(stride)
        if not 1 <= size <= self.size:
            raise ApiError(f"occluder size {size}: expected 1..{self.size}")
        if not 1 <= stride <= self.size:
            raise ApiError(f"stride {stride}: expected 1..{self.size}")
        npos = (-(-(self.size - size) // stride) + 1) ** 2
        if npos > 4096:
            raise ApiError(f"{npos} occluder positions: use a larger stride (at most 4096 positions)")
        name = self._layer(layer if layer is not None else len(self.layer_names))
        with self.lock:
            cur = self._analyse(key)
            t = self._true(cur, label)
            if m is not None and int(m) >= 0:
                m = self._map(name, m)
            else:
                m = None
            batch = int(np.clip(16 * (224 / self.size) ** 2, 8, 64))
            res = occ.occlusion_maps(self.net, cur["x"], t, patch=size, stride=stride, layer=name,
                                     map_index=m, batch=batch)
        pt = res["prob_true"]
        # every pixel takes the value of the occluder position whose centre is nearest
        cy, cx = occ.centre_grid(res)
        pix = np.arange(self.size) + 0.5
        iy = np.abs(pix[:, None] - cy[None]).argmin(axis=1)
        ix = np.abs(pix[:, None] - cx[None]).argmin(axis=1)
        import matplotlib
        cmap = matplotlib.colormaps["jet"]
        v = pt[np.ix_(iy, ix)]
        heat = cmap(v)  # P(true) in 0..1: blue = the class is lost
        # opaque where the probability dropped most, see-through where it did not move
        drop = np.clip((pt.max() - v) / max(float(pt.max() - pt.min()), 0.05), 0, 1)  # flat: see-through
        heat[..., 3] = 0.2 + 0.6 * drop
        i, j = np.unravel_index(np.argmin(pt), pt.shape)
        summary = {"positions": int(res["positions"]), "seconds": float(res["seconds"]),
                   "min_p_true": float(pt.min()), "max_p_true": float(pt.max()),
                   "base_p_true": float(res["base_prob_true"]), "true": t,
                   "min_at": [int(res["ys"][i]), int(res["xs"][j])], "size": size, "stride": stride}
        return summary, png_bytes(heat)

    # ------------------------------------------------------------------ invariance
    def _warp(self, x, shift, scale, rotation):
        if not -0.5 <= shift <= 0.5:
            raise ApiError(f"shift {shift}: expected -0.5..0.5 of the image side")
        if not 0.3 <= scale <= 3.0:
            raise ApiError(f"scale {scale}: expected 0.3..3")
        if not -360 <= rotation <= 360:
            raise ApiError(f"rotation {rotation}: expected -360..360 degrees")
        for kind, v in (("translation", shift), ("scale", scale), ("rotation", rotation)):
            x = inv.warp(x, kind, v)
        return x

    def invariance(self, key, shift=0.0, scale=1.0, rotation=0.0, label=None):
        """P(true) and the normalized feature distances (layer 1, penultimate) of the transformed image.

        The transformations are those of :func:`zfscratch.experiments.invariance.warp` (vertical shift
        as a fraction of the side, zoom, clockwise rotation in degrees), applied in that order."""
        with self.lock:
            cur = self._analyse(key)
            t = self._true(cur, label)
            xw = self._warp(cur["x"], float(shift), float(scale), float(rotation))
            names = [self.first] + ([self.penultimate] if self.penultimate else [])
            out = S.forward_layers(self.net, xw[None], names)
        p = S.softmax(out["logits"])[0]
        pred = int(np.argmax(p))

        def dist(n):
            f0 = cur["acts"][n].ravel().astype(np.float64)
            f1 = out[n][0].ravel().astype(np.float64)
            return float(np.linalg.norm(f1 - f0) / max(np.linalg.norm(f0), 1e-12))

        return {"p_true": float(p[t]), "true": t, "top": pred, "top_name": self.classes[pred],
                "top_p": float(p[pred]), "dist_first": dist(self.first), "first": self.first,
                "dist_penultimate": dist(self.penultimate) if self.penultimate else None,
                "penultimate": self.penultimate}

    def warp_png(self, key, shift=0.0, scale=1.0, rotation=0.0):
        x, _ = self.image(key)
        xw = self._warp(x, float(shift), float(scale), float(rotation))
        return png_bytes(self.pre.deprocess(xw[None])[0])

    # ------------------------------------------------------------------ filters
    def filters_png(self, zoom=None):
        """PNG mosaic of the first convolution's filters (each normalized on its own, grey = 0)."""
        conv = next(l for l in self.net.layers if l.kind == "Conv2d")
        w = np.asarray(self.net.backend.to_host(conv.params["w"]))
        grid = viz.filter_grid(w, pad=1)
        z = int(zoom or max(1, 6 if w.shape[-1] <= 7 else 4 if w.shape[-1] <= 11 else 2))
        return png_bytes(viz.upscale(grid, z))

    # ------------------------------------------------------------------ top-9 (background)
    def cache_key(self):
        """Hash of the weights file's bytes, the data description, the scan size and k."""
        h = hashlib.sha256()
        if self.weights_path and os.path.isfile(self.weights_path):
            with open(self.weights_path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        h.update(json.dumps({"data": self.data_desc, "n": self.scan_n, "len": len(self.ds), "k": self.k,
                             "layers": self.layer_names, "v": 2}, sort_keys=True).encode())
        return h.hexdigest()[:24]

    def start(self):
        """Start the background thread: compile/warm the kernels on one image, then the top-9 search."""
        self._thread = threading.Thread(target=self._background, name="explore-topk", daemon=True)
        self._thread.start()
        return self._thread

    def _background(self):
        st = self.topk_status
        try:
            with self.lock:
                self._analyse("d0")  # first Numba compilation happens here, not on the first click
            if self.cache_dir is None:
                self.cache_dir = os.path.join(self.cache_root, self.cache_key())
            path = os.path.join(self.cache_dir, "topk.npz")
            if os.path.isfile(path):
                try:
                    state = tk.TopK.load(path)
                    if state.layers == self.layer_names and state.count == self.scan_n and state.k == self.k:
                        self.topk = state
                        st.update(state="ready", done=self.scan_n, message="loaded from the cache")
                        return
                except UserError:
                    pass  # a damaged cache file: search again and replace it
            self._search(path)
        except Exception as e:  # shown on the page; the server keeps running
            st.update(state="error", message=f"{type(e).__name__}: {e}")

    def _search(self, path):
        st = self.topk_status
        st.update(state="running", done=0, total=self.scan_n)
        t0 = time.perf_counter()
        source = tk.ImageSource(self.ds, self.pre)
        channels = {n: self.layer_shapes[n][0] for n in self.layer_names}
        state = tk.TopK.empty(self.k, channels)
        # small batches: the search lets go of the lock between batches (the page stays live)
        batch = int(np.clip(8 * (224 / self.size) ** 2, 4, 128))
        # a subset is spread evenly over the data (folders list their images class by class)
        order = np.unique(np.linspace(0, len(self.ds) - 1, self.scan_n).round().astype(np.int64))
        for s in range(0, order.size, batch):
            idx = order[s:s + batch]
            with self.data_lock:
                x, _ = source.load(idx)
            with self.lock:
                tk.search_batch(self.net, x, self.layer_names, state, idx)
            st.update(done=min(s + batch, order.size), seconds=time.perf_counter() - t0)
        state.save(path)
        self.topk = state
        st.update(state="ready", seconds=time.perf_counter() - t0, message=f"cached in {self.cache_dir}")

    def topk_info(self, layer, m):
        """Progress of the search, and when ready the map's top-k entries (image, value, label)."""
        name = self._layer(layer)
        m = self._map(name, m)
        st = dict(self.topk_status)
        if self.topk is None:
            return {"status": st}
        ent = self.topk.entries(name, m)
        return {"status": st, "entries": [{"index": i, "y": yy, "x": xx, "value": v, "label": int(self.labels[i])}
                                          for (i, yy, xx, v) in ent]}

    def topk_png(self, layer, m):
        """PNG: the map's top-k DeconvNet projections (left 3x3) beside their image patches (right),
        cropped to the receptive field (paper Fig 2); computed once, then read from the cache."""
        name = self._layer(layer)
        m = self._map(name, m)
        if self.topk is None:
            raise ApiError(f"the top-{self.k} search is still running ({self.topk_status['done']}/"
                           f"{self.topk_status['total']} images)")
        path = os.path.join(self.cache_dir, "proj", f"{name}_{m}.png")  # name from our list, m an int
        if os.path.isfile(path):
            with open(path, "rb") as f:
                return f.read()
        source = tk.ImageSource(self.ds, self.pre)
        with self.lock, self.data_lock:
            rec = tk.topk_project(self.net, source, self.topk, layers=[name], maps=[m], progress=False)[name]
        data = png_bytes(_topk_mosaic(rec["proj"][0], rec["patches"][0], self.k))
        from zfscratch.io import atomic_write_bytes
        atomic_write_bytes(path, data)
        return data


def _topk_mosaic(projs, patches, k):
    """3x3 projections | 3x3 patches, each tile upscaled to at least ~64 px, white gaps."""
    side = int(np.ceil(np.sqrt(k)))
    if not projs:
        return np.ones((side * 10, 2 * side * 10 + 8, 3))
    p = projs[0].shape[-1]
    z = max(1, int(np.ceil(64 / p)))
    t, g = p * z, 2
    grid = side * (t + g) - g
    out = np.ones((grid, 2 * grid + 10, 3))
    disp = tk.to_tiles(projs, "image")
    for j in range(len(projs)):
        r, q = divmod(j, side)
        oy, ox = r * (t + g), q * (t + g)
        a = viz.upscale(disp[j], z)
        b = viz.upscale(np.asarray(patches[j], np.float64), z)
        out[oy:oy + a.shape[0], ox:ox + a.shape[1]] = a[..., :3] if a.shape[-1] >= 3 else a
        ox2 = grid + 10 + ox
        out[oy:oy + b.shape[0], ox2:ox2 + b.shape[1]] = b
    return out
