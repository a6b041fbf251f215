"""Architectures: ZFNet (paper Fig 3), a small ZFNet for 64x64/32x32 images, and an AlexNet-like twin.

Every network is built from a JSON-serializable config, stored with saved weights, so that a
weights file alone rebuilds its model (:func:`build_model`). All three share one block structure and
the same layer names::

    conv1 relu1 pool1 norm1  conv2 relu2 pool2 norm2  conv3 relu3  conv4 relu4  conv5 relu5 pool5
    flatten  fc6 relu6 drop6  fc7 relu7 drop7  fc8

Shapes (``zfnet``, 224x224x3): conv1 96x7x7/2 pad 1 -> 110, pool 3/2 ceil -> 55, conv2 256x5x5/2 ->
26, pool -> 13, conv3-5 (384, 384, 256) 3x3 pad 1 -> 13, pool -> 6, fc6 9216->4096, fc7 4096->4096,
fc8 4096->C.

``zfnet_small`` (64x64x3 default): conv1 32x7x7/2 pad 3 -> 32, pool -> 16, conv2 64x5x5/1 pad 2 -> 16,
pool -> 8, conv3-5 (96, 96, 64) -> 8, pool -> 4, fc6 1024->256, fc7 256->256, fc8 256->C. At 32x32 the
same layers give 16, 8, 8, 4, 4, 2 (fc6 256->256).

``alexnet_like`` swaps conv1 to 11x11 stride 4 pad 2 (paper Fig 6) and uses conv2 5x5/1 pad 2; at 224
it is AlexNet's single-tower shape (55, 27, 27, 13, 13, 6); below 128 pixels it takes the small widths.
"""
from __future__ import annotations

import copy
import math

import numpy as np

from zfscratch.kernels.shapes import conv_output_size, pool_output_size
from zfscratch.net import build_from_specs

CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
FC_LAYERS = ("fc6", "fc7", "fc8")

_SMALL = dict(widths=[32, 64, 96, 96, 64], fc=256, conv1=[7, 2, 3], conv2=[5, 1, 2], init="he")
_LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
_LCN = dict(size=5, sigma=1.0, floor=1e-4)
#: the ``norm`` choices: cross-channel LRN (default), subtractive + divisive LCN, or no normalization
NORMS = ("lrn", "lcn", "none")

PRESETS = {
    "zfnet": dict(input_size=224, num_classes=1000, widths=[96, 256, 384, 384, 256], fc=4096,
                  conv1=[7, 2, 1], conv2=[5, 2, 0], init="paper"),
    "zfnet_small": dict(input_size=64, num_classes=10, **_SMALL),
    "alexnet_like": dict(input_size=64, num_classes=10, **{**_SMALL, "conv1": [11, 4, 2]}),
}
ARCHS = tuple(PRESETS)


def default_config(arch, **overrides):
    """Full config of ``arch`` with ``overrides`` applied (None values ignored).

    Keys: arch, input_size, in_channels, num_classes, widths (5 conv widths), fc (width of fc6/fc7),
    conv1/conv2 ([k, stride, pad]), pool ([k, stride]), norm ("lrn": cross-channel local response
    normalization with the ``lrn`` dict; "lcn": subtractive + divisive local contrast normalization with
    the ``lcn`` dict; "none": no norm1/norm2 layers), lrn (dict), lcn (dict), dropout, init ("paper":
    weights N(0, 0.01^2); "he": N(0, 2/fan_in), fc8 N(0, 0.01^2); "mixed": "he" with conv1 N(0, 0.01^2)), seed.
    """
    if arch not in PRESETS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}")
    cfg = dict(arch=arch, in_channels=3, pool=[3, 2], norm="lrn", lrn=dict(_LRN), lcn=dict(_LCN), dropout=0.5,
               seed=0)
    cfg.update(copy.deepcopy(PRESETS[arch]))
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if arch == "alexnet_like" and overrides.get("input_size", cfg["input_size"]) >= 128:
        cfg.update(widths=[96, 256, 384, 384, 256], fc=4096)
    cfg.update(overrides)
    if cfg["norm"] not in NORMS:
        raise ValueError(f"unknown normalization {cfg['norm']!r}; expected one of {', '.join(NORMS)}")
    return cfg


#: largest input side a config may ask for (ZFNet uses 224; activations grow with its square)
MAX_INPUT_SIZE = 2048
MAX_CLASSES = 100000


def _check_input_size(v, required=True):
    if v is None and not required:
        return
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= MAX_INPUT_SIZE:
        raise ValueError(f"input_size = {v!r}: expected an integer in [1, {MAX_INPUT_SIZE}]")


def check_config(cfg):
    """Check a ZFNet-family config's numbers (ValueError naming the key and the bound) before building."""
    from zfscratch.net import MAX_CHANNELS, MAX_FEATURES, MAX_KERNEL, _bounded_int, _finite

    _check_input_size(cfg.get("input_size"))
    _bounded_int(cfg.get("in_channels"), 1, 64, "in_channels")
    _bounded_int(cfg.get("num_classes"), 1, MAX_CLASSES, "num_classes")
    widths = cfg.get("widths")
    if not isinstance(widths, (list, tuple)) or len(widths) != 5:
        raise ValueError(f"widths = {widths!r}: expected five integers")
    for i, w in enumerate(widths):
        _bounded_int(w, 1, MAX_CHANNELS, f"widths[{i}] (conv{i + 1})")
    _bounded_int(cfg.get("fc"), 1, MAX_FEATURES, "fc")
    for key in ("conv1", "conv2"):
        v = cfg.get(key)
        if not isinstance(v, (list, tuple)) or len(v) != 3:
            raise ValueError(f"{key} = {v!r}: expected [k, stride, pad]")
        _bounded_int(v[0], 1, MAX_KERNEL, f"{key} k")
        _bounded_int(v[1], 1, MAX_KERNEL, f"{key} stride")
        _bounded_int(v[2], 0, MAX_KERNEL, f"{key} pad")
    v = cfg.get("pool")
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ValueError(f"pool = {v!r}: expected [k, stride]")
    _bounded_int(v[0], 1, MAX_KERNEL, "pool k")
    _bounded_int(v[1], 1, MAX_KERNEL, "pool stride")
    _finite(cfg.get("dropout", 0.5), "dropout", 0.0, 0.999)
    for key in ("lrn", "lcn"):
        if not isinstance(cfg.get(key), dict):
            raise ValueError(f"{key} = {cfg.get(key)!r}: expected an object")


#: initialization schemes (``init`` key of a config; ``--init``)
INIT_SCHEMES = ("paper", "he", "mixed")


def _init(kind, fan_in, scheme, last=False, first=False):
    """Init of one layer: "paper" N(0, 0.01^2); "he" N(0, 2/fan_in) with the last fc N(0, 0.01^2);
    "mixed" = "he" except the first conv layer at the paper's N(0, 0.01^2). Why "mixed": He's std for
    conv1 (fan-in 147: 0.117) is already above the 0.1 filter-RMS renormalization cap, so the random
    init fills the whole RMS budget and the trained filters stay init noise; started small, conv1 is
    what SGD puts there (measured on the default synthetic run: high-frequency energy 0.71 -> 0.30)."""
    if scheme == "paper" or last or (scheme == "mixed" and first):
        return {"init_std": 0.01}
    if scheme in ("he", "mixed"):
        return {"init_std": math.sqrt(2.0 / fan_in)}
    raise ValueError(f"unknown init scheme {scheme!r}; expected one of {', '.join(INIT_SCHEMES)}")


def _flat_size(specs, size):
    """Length of the flattened feature vector after the conv/pool specs for a size x size input.

    Raises ValueError naming the layer when a contrast-normalization window does not fit its maps.
    """
    c, h = None, size
    for s in specs:
        kw = s["config"]
        if s["kind"] == "Conv2d":
            c, h = kw["out_ch"], conv_output_size(h, kw["k"], kw["stride"], kw["pad"])
        elif s["kind"] == "MaxPool2d":
            h = pool_output_size(h, kw["k"], kw["stride"], kw["ceil_mode"])
        elif s["kind"] == "LocalContrastNorm" and kw["size"] > h:
            raise ValueError(f"layer {s['name']} (LocalContrastNorm): window {kw['size']}x{kw['size']} does not "
                             f"fit its {h}x{h} input maps (choose lcn size <= {h})")
    return c * h * h


def specs_from_config(cfg):
    """Layer specs (see ``Sequential.layer_specs``) for a ZFNet-family config."""
    w1, w2, w3, w4, w5 = cfg["widths"]
    pk, ps = cfg["pool"]
    specs = []

    def conv(name, cin, cout, k, s, p):
        specs.append(dict(kind="Conv2d", name=name, config=dict(in_ch=cin, out_ch=cout, k=k, stride=s, pad=p),
                          init=_init("conv", cin * k * k, cfg["init"], first=name == "conv1")))

    def add(kind, name, **kw):
        specs.append(dict(kind=kind, name=name, config=kw))

    def norm(name):
        if cfg["norm"] == "lrn":
            add("LocalResponseNorm", name, **cfg["lrn"])
        elif cfg["norm"] == "lcn":
            add("LocalContrastNorm", name, **cfg["lcn"])

    conv("conv1", cfg["in_channels"], w1, *cfg["conv1"])
    add("ReLU", "relu1"), add("MaxPool2d", "pool1", k=pk, stride=ps, ceil_mode=True)
    norm("norm1")
    conv("conv2", w1, w2, *cfg["conv2"])
    add("ReLU", "relu2"), add("MaxPool2d", "pool2", k=pk, stride=ps, ceil_mode=True)
    norm("norm2")
    conv("conv3", w2, w3, 3, 1, 1), add("ReLU", "relu3")
    conv("conv4", w3, w4, 3, 1, 1), add("ReLU", "relu4")
    conv("conv5", w4, w5, 3, 1, 1), add("ReLU", "relu5")
    add("MaxPool2d", "pool5", k=pk, stride=ps, ceil_mode=True)
    add("Flatten", "flatten")
    flat, fc = _flat_size(specs, cfg["input_size"]), cfg["fc"]
    for name, cin, cout, i in (("fc6", flat, fc, 6), ("fc7", fc, fc, 7)):
        specs.append(dict(kind="Linear", name=name, config=dict(in_f=cin, out_f=cout),
                          init=_init("fc", cin, cfg["init"])))
        add("ReLU", f"relu{i}"), add("Dropout", f"drop{i}", p=cfg["dropout"])
    specs.append(dict(kind="Linear", name="fc8", config=dict(in_f=fc, out_f=cfg["num_classes"]),
                      init=_init("fc", fc, cfg["init"], last=True)))
    return specs


def build_model(config, backend=None, seed=None, dtype=np.float32, init=True):
    """Build a network from a config dict.

    Parameters
    ----------
    config : dict
        ``{"arch": "zfnet"|"zfnet_small"|"alexnet_like", ...overrides}`` (missing keys take the preset's
        values), or ``{"arch": "custom", "layers": [layer specs]}`` (e.g. an imported ONNX model).
    backend : str or Backend
    seed : int, weight-init seed (default: config["seed"] or 0)
    init : bool, False leaves weights at zero (fast, for loading saved weights)

    Returns
    -------
    Sequential, whose ``.config`` is the full config.
    """
    if not isinstance(config, dict):
        raise ValueError(f"model config: expected an object, got {type(config).__name__}")
    arch = config.get("arch")
    if arch == "custom":
        cfg = copy.deepcopy(config)
        specs = cfg.get("layers")
        _check_input_size(cfg.get("input_size"), required=False)
    else:
        cfg = default_config(arch, **{k: v for k, v in config.items() if k != "arch"})
        check_config(cfg)
        specs = specs_from_config(cfg)
    if seed is None:
        seed = cfg.get("seed", 0)
    cfg["seed"] = int(seed)
    try:
        return build_from_specs(specs, backend=backend, config=cfg, seed=seed, dtype=dtype, init=init)
    except ValueError as e:
        raise ValueError(f"cannot build {arch} for input size {cfg.get('input_size')}: {e}") from None


def zfnet(num_classes=1000, backend=None, seed=0, **kw):
    """ZFNet as in the paper (Fig 3): 224x224x3 input, ~2.3 GFLOP per image forward."""
    return build_model(dict(arch="zfnet", num_classes=num_classes, **kw), backend, seed)


def zfnet_small(num_classes=10, input_size=64, backend=None, seed=0, **kw):
    """ZFNet's block structure scaled for 64x64 (or 32x32) inputs and ~10 classes."""
    return build_model(dict(arch="zfnet_small", num_classes=num_classes, input_size=input_size, **kw), backend, seed)


def alexnet_like(num_classes=10, input_size=64, backend=None, seed=0, **kw):
    """As zfnet_small (or zfnet at >= 128 px) but with AlexNet's 11x11 stride-4 first layer (Fig 6)."""
    return build_model(dict(arch="alexnet_like", num_classes=num_classes, input_size=input_size, **kw), backend, seed)


def input_shape(net):
    """(C, H, W) the network expects, from its config."""
    cfg = net.config
    return (cfg.get("in_channels", 3), cfg["input_size"], cfg["input_size"])
