"""Sequential network: named layers, forward/backward, parameters and gradients in a fixed order."""
from __future__ import annotations

import copy

import math

import numpy as np

from zfscratch.backend import get_backend
from zfscratch.layers import Conv2d, layer_class


class Sequential:
    """A chain of layers with unique names.

    Parameters
    ----------
    layers : list of Layer
    backend : str or Backend, default numpy
    config : dict, how the network was built (``models.build_model`` rebuilds it from this)

    Gradients are exposed as one list in a fixed order (``params()``/``grads()``), and the optimizer
    step is separate from gradient computation, so a data-parallel all-reduce can sit in between
    (docs/design.md section 9).
    """

    def __init__(self, layers, backend=None, config=None):
        names = [l.name for l in layers]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate layer names: {sorted(dup)}")
        self.layers = list(layers)
        self.config = copy.deepcopy(config) if config is not None else {"arch": "custom", "layers": self.layer_specs()}
        self._index = {l.name: i for i, l in enumerate(self.layers)}
        self.backend = get_backend("numpy")
        self.to(backend or "numpy")
        self._mark_first_conv()

    # -- structure ------------------------------------------------------------------------
    def _mark_first_conv(self):
        """The first layer with parameters needs no input gradient: skip that work in backward."""
        for l in self.layers:
            if isinstance(l, Conv2d):
                l.need_dx = False
                break
            if l.params:
                break

    def names(self):
        """Layer names in order."""
        return [l.name for l in self.layers]

    def layer(self, name):
        """The layer called ``name`` (KeyError naming the known layers otherwise)."""
        try:
            return self.layers[self._index[name]]
        except KeyError:
            raise KeyError(f"no layer {name!r}; layers: {', '.join(self.names())}") from None

    def index(self, name):
        """Position of layer ``name``."""
        self.layer(name)
        return self._index[name]

    def layer_specs(self):
        """``[{"kind", "name", "config"}, ...]``: enough to rebuild the architecture."""
        return [{"kind": l.kind, "name": l.name, "config": l.config()} for l in self.layers]

    def output_shapes(self, in_shape):
        """``[(name, shape), ...]`` of every layer's output for an input of shape ``in_shape``."""
        out, shape = [], tuple(in_shape)
        for l in self.layers:
            shape = l.output_shape(shape)
            out.append((l.name, shape))
        return out

    @property
    def dtype(self):
        for _, p in self.params():
            return np.dtype(p.dtype)
        return np.dtype(np.float32)

    def summary(self, in_shape):
        """Text table of layers, output shapes and parameter counts."""
        rows = [f"{'layer':<10} {'kind':<18} {'output':<22} {'params':>10}"]
        for (name, shape), l in zip(self.output_shapes(in_shape), self.layers):
            n = sum(int(np.prod(p.shape)) for p in l.params.values())
            rows.append(f"{name:<10} {l.kind:<18} {str(tuple(shape[1:])):<22} {n:>10,}")
        total = sum(int(np.prod(p.shape)) for _, p in self.params())
        rows.append(f"{'total':<10} {'':<18} {'':<22} {total:>10,}")
        return "\n".join(rows)

    # -- compute --------------------------------------------------------------------------
    def forward(self, x, train=False):
        """Run every layer. x : (N, C, H, W) -> logits (N, K)."""
        return self.forward_range(x, 0, len(self.layers), train)

    def forward_to(self, x, layer_name, train=False):
        """Run the layers up to and including ``layer_name``; returns that layer's output."""
        return self.forward_range(x, 0, self.index(layer_name) + 1, train)

    def forward_range(self, x, start, stop, train=False):
        """Run layers with index in ``[start, stop)`` on ``x``."""
        for l in self.layers[start:stop]:
            x = l.forward(x, train)
        return x

    def backward(self, dy):
        """Backpropagate ``dy`` (gradient of the loss w.r.t. the logits) through every layer.

        Accumulates parameter gradients; returns the input gradient (None when the first conv layer
        skips it).
        """
        for l in reversed(self.layers):
            dy = l.backward(dy)
            if dy is None:
                break
        return dy

    # -- parameters -----------------------------------------------------------------------
    def params(self):
        """``[(qualified_name, array), ...]`` in a fixed order (layer order, then w before b)."""
        return [(f"{l.name}.{k}", v) for l in self.layers for k, v in l.params.items()]

    def grads(self):
        """Gradient arrays in the same order as :meth:`params`."""
        return [l.grads[k] for l in self.layers for k in l.params]

    def zero_grads(self):
        for l in self.layers:
            l.zero_grads()

    def state_dict(self):
        """``{"conv1.w": numpy array, ...}`` (host copies)."""
        return {k: np.array(self.backend.to_host(v)) for k, v in self.params()}

    def load_state_dict(self, state):
        """Copy arrays into the parameters, checking names and shapes.

        Raises
        ------
        ValueError
            naming the first missing, unexpected or mis-shaped key.
        """
        own = dict(self.params())
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        if missing or extra:
            raise ValueError(f"parameters do not match the network: missing {missing or 'none'}, "
                             f"unexpected {extra or 'none'}")
        for k, v in own.items():
            arr = np.asarray(self.backend.to_host(state[k]))
            if tuple(arr.shape) != tuple(v.shape):
                raise ValueError(f"parameter {k}: expected shape {tuple(v.shape)}, got {tuple(arr.shape)}")
        for l in self.layers:
            for k in l.params:
                l.params[k][...] = self.backend.to_device(self.backend.to_host(state[f"{l.name}.{k}"]),
                                                          l.params[k].dtype)

    def to(self, backend, dtype=None):
        """Move every layer to ``backend`` (name or Backend), optionally casting to ``dtype``."""
        self.backend = get_backend(backend)
        for l in self.layers:
            l.set_backend(self.backend, dtype)
        return self

    def astype(self, dtype):
        """Cast parameters to ``dtype`` (e.g. float64 for gradient checks); returns self."""
        return self.to(self.backend, np.dtype(dtype))

    def dropout_layers(self):
        return [l for l in self.layers if l.kind == "Dropout"]

    def rng_state(self):
        """States of the dropout generators (part of checkpoints)."""
        return {l.name: l.rng.bit_generator.state for l in self.dropout_layers()}

    def set_sample_rng(self, sample_rng):
        """Draw dropout masks per sample from ``sample_rng`` (a :class:`zfscratch.samplerng.SampleRNG`
        for the next training batch; None: back to the layers' own generators)."""
        for l in self.dropout_layers():
            l.sample_rng = sample_rng

    def set_rng_state(self, state):
        """Restore what :meth:`rng_state` returned; ValueError when ``state`` is not such a record."""
        if not isinstance(state, dict):
            raise ValueError(f"dropout RNG state is a {type(state).__name__}, expected an object")
        for l in self.dropout_layers():
            if l.name in state:
                l.rng.bit_generator.state = state[l.name]


#: bounds a layer spec may ask for (a weights or ONNX file is outside input: it must not be able to ask
#: for a network that exhausts memory before any check). ZFNet itself needs 62M parameters.
MAX_LAYERS = 256
MAX_CHANNELS = 65536
MAX_KERNEL = 256
MAX_FEATURES = 1 << 24
MAX_PARAMS = 1 << 28  # 268M parameters = 1 GiB float32


def _bounded_int(v, lo, hi, what):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
        raise ValueError(f"{what} = {v!r}: expected an integer in [{lo}, {hi}]")
    return int(v)


def _finite(v, what, lo=-math.inf, hi=math.inf):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v) \
            or not lo <= float(v) <= hi:
        raise ValueError(f"{what} = {v!r}: expected a finite number in [{lo}, {hi}]")


def _check_conv_config(kw, w):
    """Bounds of a ``Conv2d`` config ``kw`` (``w`` names the layer); returns its parameter count."""
    cin = _bounded_int(kw.get("in_ch"), 1, MAX_CHANNELS, f"{w} in_ch")
    cout = _bounded_int(kw.get("out_ch"), 1, MAX_CHANNELS, f"{w} out_ch")
    k = _bounded_int(kw.get("k"), 1, MAX_KERNEL, f"{w} k")
    _bounded_int(kw.get("stride", 1), 1, MAX_KERNEL, f"{w} stride")
    _bounded_int(kw.get("pad", 0), 0, MAX_KERNEL, f"{w} pad")
    g = _bounded_int(kw.get("groups", 1), 1, MAX_CHANNELS, f"{w} groups")
    if cin % g or cout % g:
        raise ValueError(f"{w}: groups {g} must divide in_ch {cin} and out_ch {cout}")
    return cout * (cin // g) * k * k + cout


def _check_linear_config(kw, w):
    """Bounds of a ``Linear`` config; returns its parameter count."""
    fi = _bounded_int(kw.get("in_f"), 1, MAX_FEATURES, f"{w} in_f")
    fo = _bounded_int(kw.get("out_f"), 1, MAX_FEATURES, f"{w} out_f")
    return fi * fo + fo


def _check_pool_config(kw, w):
    """Bounds of a ``MaxPool2d`` config (the padding at most the window); no parameters."""
    k = _bounded_int(kw.get("k"), 1, MAX_KERNEL, f"{w} k")
    if kw.get("stride") is not None:
        _bounded_int(kw["stride"], 1, MAX_KERNEL, f"{w} stride")
    _bounded_int(kw.get("pad", 0), 0, k, f"{w} pad")
    return 0


def _check_norm_config(kw, w):
    """Bounds of a ``LocalResponseNorm`` / ``LocalContrastNorm`` config; no parameters."""
    _bounded_int(kw.get("size", 5), 1, MAX_KERNEL, f"{w} size")
    for key in ("alpha", "beta", "k", "sigma", "floor"):
        if key in kw:
            _finite(kw[key], f"{w} {key}", lo=0.0 if key != "beta" else -1e6)
    if "sigma" in kw and not kw["sigma"] > 0:
        raise ValueError(f"{w} sigma = {kw['sigma']!r}: expected > 0")
    return 0


def _check_dropout_config(kw, w):
    """Bounds of a ``Dropout`` config (p below 1: p = 1 would divide by zero); no parameters."""
    _finite(kw.get("p", 0.5), f"{w} p", 0.0, 0.999)
    return 0


#: kind -> checker of its config, returning its parameter count; kinds not listed take no numbers
_CONFIG_CHECKS = {
    "Conv2d": _check_conv_config,
    "Linear": _check_linear_config,
    "MaxPool2d": _check_pool_config,
    "LocalResponseNorm": _check_norm_config,
    "LocalContrastNorm": _check_norm_config,
    "Dropout": _check_dropout_config,
}


def _check_spec_identity(i, spec, names):
    """Check spec ``#i``'s shape, kind and name (safe, not in ``names``); returns ``(kind, name, config)``."""
    from zfscratch.layers import LAYER_KINDS
    from zfscratch.util.files import MAX_NAME, is_safe_name

    if not isinstance(spec, dict) or not isinstance(spec.get("config", {}), dict):
        raise ValueError(f"layer #{i}: expected an object with kind, name and config")
    kind, name, kw = spec.get("kind"), spec.get("name"), spec.get("config", {})
    if not isinstance(kind, str) or kind not in LAYER_KINDS:
        raise ValueError(f"layer #{i}: unknown layer kind {str(kind)[:40]!r}; expected one of "
                         f"{', '.join(LAYER_KINDS)}")
    if not is_safe_name(name):
        raise ValueError(f"layer #{i}: name {str(name)[:40]!r} is not a safe name (letters, digits, "
                         f"'_', '.', '+', '-', at most {MAX_NAME} characters)")
    if name in names:
        raise ValueError(f"layer #{i}: duplicate name {name!r}")
    return kind, name, kw


def validate_specs(specs):
    """Check layer specs from outside (a weights file, an ONNX model) before anything is allocated.

    Kinds must be known, names safe file-name components (:func:`zfscratch.util.files.is_safe_name`)
    and unique, sizes positive integers within :data:`MAX_CHANNELS`, :data:`MAX_KERNEL`,
    :data:`MAX_FEATURES`, the whole network within :data:`MAX_PARAMS` parameters, other numbers finite.

    Raises
    ------
    ValueError
        naming the layer and the bound.
    """
    if not isinstance(specs, list) or not 0 < len(specs) <= MAX_LAYERS:
        raise ValueError(f"layers: expected a list of 1 to {MAX_LAYERS} layer specs")
    names, params = set(), 0
    for i, spec in enumerate(specs):
        kind, name, kw = _check_spec_identity(i, spec, names)
        names.add(name)
        check = _CONFIG_CHECKS.get(kind)
        if check is not None:
            params += check(kw, f"layer {name} ({kind})")
        # checked after every layer, so the message names the layer where the total passes the bound
        if params > MAX_PARAMS:
            raise ValueError(f"the network asks for more than {MAX_PARAMS} parameters (at layer {name}); "
                             f"refused")


def build_from_specs(specs, backend=None, config=None, seed=0, dtype=np.float32, init=True):
    """Build a :class:`Sequential` from ``[{"kind", "name", "config"}, ...]`` (see ``layer_specs``).

    ``init=False`` leaves weights at zero (no random draws): for networks about to load saved weights.
    The specs are checked first (:func:`validate_specs`; ValueError naming the layer).
    """
    validate_specs(specs)
    rng = np.random.default_rng(seed)
    drop_rng = np.random.default_rng([seed, 1])  # dropout seeds do not depend on the weight draws
    layers = []
    for spec in specs:
        kind = spec["kind"]
        kw = dict(spec.get("config", {}))
        cls = layer_class(kind, kw)
        if cls is None:
            raise ValueError(f"unknown layer kind {kind!r} (layer {spec.get('name')})")
        if kind in ("Conv2d", "Linear"):
            kw.update(rng=rng, dtype=dtype)
            kw.update((k, v) for k, v in spec.get("init", {}).items())
            if not init:
                kw["init_std"] = 0.0
        elif kind == "Dropout":
            kw["seed"] = int(drop_rng.integers(2**31))
        layers.append(cls(name=spec["name"], **kw))
    return Sequential(layers, backend=backend, config=config)
