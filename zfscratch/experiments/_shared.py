"""Helpers shared by the paper-experiment modules (occlusion, invariance, correspondence, layerwise,
architecture): batched forward passes that keep several layers' outputs, softmax, preprocessing of
raw images for a saved model, and atomic JSON/PNG output.

Everything here uses the network's public API only (``forward_range``, ``index``, ``layers``,
``backend``), so it works on every backend; results come back as host (NumPy) arrays.
"""
from __future__ import annotations

import numpy as np

from zfscratch.errors import UserError
# one home for these; re-exported here for the experiment modules
from zfscratch.util.figures import new_figure, save_png
from zfscratch.util.jsonio import jsonable as _jsonable, write_json  # noqa: F401
from zfscratch.util.numerics import softmax  # noqa: F401
from zfscratch.util.progress import NoBar as _NoBar, progress_bar  # noqa: F401


# ----------------------------------------------------------------------------- network helpers
def input_size(net):
    """Side of the square input the network expects (from its config)."""
    from zfscratch.models import input_shape
    return int(input_shape(net)[1])


def last_conv_output(net):
    """Name of the last convolution's output after its rectifier (``relu5`` in ZFNet).

    The paper's "layer 5 feature map" is the rectified conv5 output; when the last Conv2d is not
    followed by a ReLU, the conv layer itself is returned.
    """
    idx = [i for i, l in enumerate(net.layers) if l.kind == "Conv2d"]
    if not idx:
        raise UserError("the network has no convolution layer")
    i = idx[-1]
    if i + 1 < len(net.layers) and net.layers[i + 1].kind == "ReLU":
        return net.layers[i + 1].name
    return net.layers[i].name


def penultimate_output(net):
    """Name of the penultimate layer's feature vector: the rectified output of the second-to-last
    Linear layer (``relu7`` in ZFNet; ``fc7`` itself when no ReLU follows it)."""
    idx = [i for i, l in enumerate(net.layers) if l.kind == "Linear"]
    if len(idx) < 2:
        raise UserError("the network needs at least two fully connected layers for a penultimate layer")
    i = idx[-2]
    if i + 1 < len(net.layers) and net.layers[i + 1].kind == "ReLU":
        return net.layers[i + 1].name
    return net.layers[i].name


def resolve_layer(net, name):
    """Accept a layer name, or ``"last_conv"``/``"penultimate"``; UserError naming the known layers."""
    if name in ("last_conv", "layer5"):
        return last_conv_output(net)
    if name in ("penultimate", "layer7"):
        return penultimate_output(net)
    if name not in net.names():
        raise UserError(f"no layer {name!r} in the network; layers: {', '.join(net.names())}")
    return name




def forward_layers(net, x, layers, logits=True):
    """One forward pass of a batch ``x`` (host or device ``(N, C, H, W)``) that keeps the outputs of
    several layers.

    Returns
    -------
    dict layer name -> host array (N, ...), plus ``"logits"`` (N, K) when ``logits`` is True. The net
    runs in evaluation mode (dropout off) and stops after the last layer it needs.
    """
    be = net.backend
    order = sorted({net.index(n) for n in layers})
    stop = len(net.layers) if logits else (order[-1] + 1 if order else 0)
    a = be.to_device(x, net.dtype)
    out, start = {}, 0
    for i in order:
        a = net.forward_range(a, start, i + 1)
        start = i + 1
        out[net.layers[i].name] = np.array(be.to_host(a))  # a copy: kernels may reuse buffers
    if start < stop:
        a = net.forward_range(a, start, stop)
    if logits:
        out["logits"] = np.array(be.to_host(a))
    return out


def batched(n, batch):
    """``[(start, stop), ...]`` covering ``range(n)`` in the fewest chunks of at most ``batch``, of
    near-equal sizes (625 positions at batch 16: 40 chunks of 15-16, not 39 x 16 + a lone 1)."""
    batch = max(1, int(batch))
    k = -(-int(n) // batch)
    if k == 0:
        return []
    edges = [(i * n) // k for i in range(k + 1)]
    return [(edges[i], edges[i + 1]) for i in range(k)]




# ----------------------------------------------------------------------------- preprocessing
def get_preprocess(meta):
    """The model's preprocessing (``Preprocess.from_meta``): uint8 (B, H, W, 3) -> float32 (B, 3, S, S)."""
    from zfscratch.preprocess import Preprocess
    return Preprocess.from_meta(meta)


def class_names(meta, num_classes):
    """Class names from weights metadata (``meta["classes"]``), else ``"0"``, ``"1"``, ..."""
    names = list((meta or {}).get("classes") or [])
    if len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    return [str(n) for n in names]


def num_classes(net):
    """Number of outputs of the last Linear layer."""
    lin = [l for l in net.layers if l.kind == "Linear"]
    return int(lin[-1].out_f) if lin else int(net.config.get("num_classes", 0))


def preprocess_batched(pre, images, batch=256):
    """Apply ``pre`` to uint8 images in chunks (bounded memory for the intermediate float copies)."""
    images = np.asarray(images)
    parts = [np.asarray(pre(images[s:e])) for s, e in batched(len(images), batch)]
    return np.concatenate(parts, 0) if parts else np.zeros((0,), np.float32)


# ----------------------------------------------------------------------------- output


def figure(width, height, dpi=100):
    """A matplotlib Figure on the Agg canvas (:func:`zfscratch.util.figures.new_figure`: no pyplot state)."""
    return new_figure(width, height, dpi=dpi)


def save_figure(fig, path, dpi=None):
    """Write ``fig`` as a PNG atomically (:func:`zfscratch.util.figures.save_png`); returns the path."""
    return save_png(fig, path, dpi=dpi)


def colormap(name):
    """A matplotlib colormap by name."""
    import matplotlib
    return matplotlib.colormaps[name]


def display_image(x, pre=None):
    """A preprocessed (C, H, W) float image -> (H, W, 3) float in [0, 1] for display.

    Uses ``pre.invert`` when the preprocessing object offers it (adds the mean back); otherwise
    rescales the image's own range.
    """
    x = np.asarray(x)
    inv = getattr(pre, "invert", None) or getattr(pre, "inverse", None) or getattr(pre, "deprocess", None)
    if inv is not None:
        try:
            img = np.asarray(inv(x[None]))[0]
            if img.dtype == np.uint8:
                return img.astype(np.float64) / 255.0
            if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
                img = img.transpose(1, 2, 0)
            img = img.astype(np.float64)
            if img.max() > 1.5:
                img = img / 255.0
            return np.clip(img, 0, 1)
        except Exception:
            pass
    img = x.transpose(1, 2, 0).astype(np.float64)
    lo, hi = img.min(), img.max()
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
