"""Back-projection to pixel space: the DeconvNet (Zeiler & Fergus 2014, section 2.1), guided
backpropagation and the plain gradient; receptive-field arithmetic.

All three rules map chosen activations of a layer back to pixel space, built only from the kernel
contract (docs/design.md sections 3, 6), so they run on every backend (numpy, numba, cupy) with the same
batching and memory budget:

1. run the net forward to layer ``L`` (eval mode), recording every max-pool's switches, every ReLU's
   output and every normalization's forward state;
2. keep only the chosen activations of ``L`` and zero everything else:

   * ``mode="max"``: the single strongest activation of each chosen map (paper Fig 2);
   * ``mode="map"``: the whole chosen map (every other map zeroed);
   * on an fc layer (``fc6``, ``relu7``, ``fc8`` = the class logits) each unit is its own "map":
     ``project(net, x, "fc8", maps=[class])``;
   * :func:`reconstruct`: every activation of the layer at once (one picture per image);
   * :func:`project_activation`: one given unit ``(image, map, y, x)``, optionally with a given value;

3. walk down to the input, layer by layer in reverse, with the rule's step at each layer:

   ===================  ======================  =====================  ======================
   forward layer        ``rule="deconvnet"``    ``rule="guided"``      ``rule="gradient"``
   ===================  ======================  =====================  ======================
   MaxPool2d            unpool with the recorded switches (``maxpool_backward``), every rule
   ReLU                 ``relu(r)``: rectify    ``relu(r) * [y > 0]``  ``r * [y > 0]``: gate
                        the signal itself       both                   by the forward mask
   Conv2d               transposed weights (``Conv2d.backward_data``), biases not used, every rule
   Linear               transposed weights (``r @ W``), no bias, every rule
   LocalResponseNorm,   passed through          true backward          true backward
   LocalContrastNorm    unchanged (§2.1)        (``lrn_backward``,     (``lrn_backward``,
                                                ``lcn_backward``)      ``lcn_backward``)
   Flatten / Dropout    reshape / identity (evaluation), every rule
   ===================  ======================  =====================  ======================

   ``"gradient"`` is the true input gradient of the kept units (Simonyan et al. 2014) times their
   values; ``"guided"`` (Springenberg et al. 2015) is that gradient with the backward signal also
   rectified at each ReLU; ``"deconvnet"`` is the paper's rule, unchanged. :func:`project_rules`
   runs several rules from one forward pass.

The result is image-shaped, ``(C, H, W)`` per projection, with its sign kept; display it with
:func:`zfscratch.viz.to_display` (``0.5 + 0.5 * r / max|r|``). Projections start from any layer but
Flatten (:func:`start_layers`); the receptive-field helpers and top-k searches cover the conv part.

Every rule is positively homogeneous in the kept activations (scaling them by ``a > 0`` scales the
result by ``a``); the gradient is linear in them; all are linear where no ReLU is crossed (e.g. from
``conv1``).

Receptive fields: a unit at ``(y, x)`` of a layer sees the input rows
``[start + y*jump, start + y*jump + size)`` (same for columns), where ``(size, jump, start)`` come from
the architecture (:func:`receptive_field`); ``start`` is negative where padding reaches outside the
image. :func:`unit_box` clips that box to the image, :func:`patch_box` gives a box of one fixed size
inside the image that holds it (used to crop top-9 patches).
"""
from __future__ import annotations

import re

import numpy as np

from zfscratch.layers import NORM_KINDS  # the DeconvNet passes them through; the gradient does not

#: layer kinds of the conv part of a net (receptive fields, top-k, reconstructions)
PROJECTABLE_KINDS = ("Conv2d", "ReLU", "MaxPool2d", "LocalResponseNorm", "LocalContrastNorm", "Dropout")

#: every layer kind the walk down goes through (the conv part and the fc part after it)
WALK_KINDS = PROJECTABLE_KINDS + ("Flatten", "Linear")

#: the back-projection rules (module docstring)
RULES = ("deconvnet", "guided", "gradient")



#: default working-set budget of one projection pass, in array elements (float32: 4 bytes each)
ROW_BUDGET = 1 << 25


# ----------------------------------------------------------------------------- layer names
def projectable_layers(net):
    """Names of the layers a projection may start from: every layer before the first fc/Flatten."""
    out = []
    for l in net.layers:
        if l.kind not in PROJECTABLE_KINDS:
            break
        out.append(l.name)
    return out


def layer_name(net, layer):
    """Resolve a layer given as a name (``"conv3"``, ``"pool2"``) or a paper layer number.

    A number ``k`` (int or digit string) means "layer k" of the paper: the rectified output of the
    k-th convolution (``relu<k>`` in the zfscratch models; the k-th Conv2d's following ReLU in any
    net). Raises ValueError naming the projectable layers for anything else.
    """
    names = projectable_layers(net)
    if isinstance(layer, (int, np.integer)) or (isinstance(layer, str) and layer.strip().isdigit()):
        k = int(layer)
        convs = [i for i, l in enumerate(net.layers[:len(names)]) if l.kind == "Conv2d"]
        if not 1 <= k <= len(convs):
            raise ValueError(f"layer {k}: the net has conv layers 1..{len(convs)}")
        i = convs[k - 1]
        if i + 1 < len(names) and net.layers[i + 1].kind == "ReLU":
            i += 1
        return net.layers[i].name
    layer = str(layer).strip()
    if layer not in names:
        raise ValueError(f"layer {layer!r} cannot be projected; projectable layers: {', '.join(names)}")
    return layer


def parse_layers(net, text):
    """Layers from a user string: ``"1-5"``, ``"1,3,5"``, ``"conv5,pool2"``, ``"2-3,pool5"``.

    Returns a list of layer names (duplicates removed, order kept). ValueError on bad input.
    """
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [t for t in re.split(r"[,\s]+", str(text).strip()) if t]
    out = []
    for it in items:
        m = re.fullmatch(r"(\d+)-(\d+)", str(it))
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if a > b:
                raise ValueError(f"layer range {it!r}: start after end")
            out.extend(layer_name(net, k) for k in range(a, b + 1))
        else:
            out.append(layer_name(net, it))
    if not out:
        raise ValueError(f"no layers in {text!r}")
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------- receptive fields
def receptive_field(net, layer):
    """``(size, jump, start)`` of the units of ``layer`` (name or paper number), in input pixels.

    Derived from ``net.layer_specs()``: a conv or pool of kernel ``k``, stride ``s``, padding ``p``
    maps ``(size, jump, start)`` to ``(size + (k-1)*jump, jump*s, start - p*jump)``; other
    projectable layers keep it. Unit ``y`` covers input rows ``[start + y*jump, start + y*jump + size)``
    (the same along columns), before clipping to the image.
    """
    name = layer_name(net, layer)
    size, jump, start = 1, 1, 0
    for spec in net.layer_specs():
        cfg = spec["config"]
        if spec["kind"] == "Conv2d":
            k, s, p = cfg["k"], cfg["stride"], cfg["pad"]
        elif spec["kind"] == "MaxPool2d":
            k, s, p = cfg["k"], cfg["stride"], cfg.get("pad", 0)
        else:
            k, s, p = 1, 1, 0
        size += (k - 1) * jump
        start -= p * jump
        jump *= s
        if spec["name"] == name:
            break
    return size, jump, start


def unit_box(net, layer, y, x, image_size=None):
    """Input box ``(y0, y1, x0, x1)`` (end exclusive) seen by unit ``(y, x)`` of ``layer``, clipped to
    the image (``image_size`` = side or (H, W); default the model's input size)."""
    size, jump, start = receptive_field(net, layer)
    h, w = _image_hw(net, image_size)
    y0, x0 = start + int(y) * jump, start + int(x) * jump
    return max(y0, 0), min(y0 + size, h), max(x0, 0), min(x0 + size, w)


def patch_box(net, layer, y, x, image_size=None):
    """A box of fixed side ``min(size, H)`` x ``min(size, W)`` inside the image that holds the clipped
    receptive field of unit ``(y, x)`` (the raw field shifted inwards where it crosses a border).

    Every unit of a layer gets the same patch size, so top-9 crops tile; away from the borders the
    patch is exactly the receptive field.
    """
    size, jump, start = receptive_field(net, layer)
    h, w = _image_hw(net, image_size)
    sh, sw = min(size, h), min(size, w)
    y0 = min(max(start + int(y) * jump, 0), h - sh)
    x0 = min(max(start + int(x) * jump, 0), w - sw)
    return y0, y0 + sh, x0, x0 + sw


def _image_hw(net, image_size):
    if image_size is None:
        s = net.config.get("input_size")
        if s is None:
            raise ValueError("image_size is needed: the net's config has no input_size")
        return int(s), int(s)
    if isinstance(image_size, (tuple, list)):
        return int(image_size[0]), int(image_size[1])
    return int(image_size), int(image_size)


# ----------------------------------------------------------------------------- the walk down
def check_rule(rule):
    """``rule`` if it is one of :data:`RULES`, else ValueError naming them."""
    if not isinstance(rule, str) or rule not in RULES:
        raise ValueError(f"rule {rule!r}: expected one of {', '.join(RULES)}")
    return rule


def start_layers(net):
    """Names of the layers :func:`project` may start from, for every rule: the conv/relu/pool/norm part
    (:func:`projectable_layers`) and the fc part after it (Linear, its ReLU and Dropout, the logits),
    every layer but Flatten (which only reshapes the layer before it)."""
    out = []
    for l in net.layers:
        if l.kind not in WALK_KINDS:
            break
        if l.kind != "Flatten":
            out.append(l.name)
    return out


def start_layer_name(net, layer):
    """Resolve a starting layer for :func:`project`: a paper layer number or conv-part name as in
    :func:`layer_name`, or the name of an fc-part layer (``"fc6"``, ``"relu7"``, ``"fc8"`` = the class
    logits). ValueError naming the layers a projection can start from otherwise."""
    if isinstance(layer, (int, np.integer)) or (isinstance(layer, str) and layer.strip().isdigit()):
        return layer_name(net, layer)
    name = str(layer).strip()
    names = start_layers(net)
    if name in names:
        return name
    if name in net.names():
        l = net.layer(name)
        i = net.index(name)
        why = (f"only reshapes {net.layers[i - 1].name}; start from that layer or the one after"
               if l.kind == "Flatten" and i > 0 else f"({l.kind}) cannot be walked back to the input")
        raise ValueError(f"layer {name!r} {why}; layers a projection can start from: {', '.join(names)}")
    raise ValueError(f"layer {name!r} is not in the net; layers a projection can start from: {', '.join(names)}")


def _forward_record(net, x, stop):
    """Run layers ``[0, stop]`` (eval) recording each layer's input shape and what the walk down needs:
    the pools' switches, each ReLU's output (its mask), each normalization's forward cache.

    Nothing is copied: these are the arrays the layers keep for their own backward pass anyway.
    """
    rec = []
    for l in net.layers[:stop + 1]:
        shape = tuple(x.shape)
        x = l.forward(x, train=False)
        if l.kind == "MaxPool2d":
            aux = l.switches
        elif l.kind == "ReLU":
            aux = x
        elif l.kind in NORM_KINDS:
            aux = l._cache  # (x, y, scale) for LRN, (shape, v, sig, mean_sig) for LCN: their backward's inputs
        else:
            aux = None
        rec.append((l, shape, aux))
    return x, rec


def walk_down(net, r, rec, rows, rule="deconvnet"):
    """Project ``r`` (B, C_L, H_L, W_L) or (B, F_L) down to the input with ``rule``.

    ``rows`` (B,) device int array: the image (in the recorded forward batch) whose switches, masks and
    normalization state each row uses; None when row b is image b (no gather needed).
    """
    kern, xp = net.backend.kernels, net.backend.xp

    def take(a):
        return a if rows is None else xp.ascontiguousarray(a[rows])

    for l, shape, aux in reversed(rec):
        in_shape = (r.shape[0],) + tuple(shape[1:])
        kind = l.kind
        if kind == "MaxPool2d":  # unpooling = the max-pool's true gradient
            r = l.unpool(r, take(aux), in_shape)
        elif kind == "ReLU":
            if rule != "gradient":  # DeconvNet and guided: rectify the backward signal itself
                r = kern.relu_forward(r)
            if rule != "deconvnet":  # gradient and guided: gate by the forward activation
                r = kern.relu_backward(r, take(aux))
        elif kind == "Conv2d":
            r = l.backward_data(r, in_shape)
        elif kind == "Linear":  # transpose, no bias (the DeconvNet's filtering, also the true gradient)
            r = l._mm(xp.ascontiguousarray(r), l.params["w"])
        elif kind == "Flatten":
            r = r.reshape(in_shape)
        elif kind in NORM_KINDS:
            if rule == "deconvnet":
                continue  # passed through unchanged (paper section 2.1)
            if kind == "LocalResponseNorm":
                x, y, scale = aux
                r = kern.lrn_backward(r, take(x), take(y), take(scale), l.size, l.alpha, l.beta, l.k)
            else:
                _, v, sig, mean_sig = aux
                r = kern.lcn_backward(r, take(v), take(sig), take(mean_sig), l.size, l.sigma, l.floor)
        elif kind == "Dropout":
            pass  # identity in evaluation
        else:  # pragma: no cover - excluded by start_layer_name
            raise ValueError(f"layer {l.name} ({l.kind}) cannot be projected")
    return r


def _rows_per_pass(net, idx, in_shape, budget, rules=("deconvnet",)):
    """How many projections fit one pass under ``budget`` elements (largest activation or im2col; the
    gradient and guided rules also gather a normalization's three forward arrays per row)."""
    peak = int(np.prod(in_shape[1:]))
    shape = tuple(in_shape)
    gathers = any(r != "deconvnet" for r in rules)
    for l in net.layers[:idx + 1]:
        out = l.output_shape(shape)
        peak = max(peak, int(np.prod(out[1:])))
        if l.kind == "Conv2d":
            peak = max(peak, (l.in_ch // l.groups) * l.k * l.k * int(np.prod(out[2:])) * 2)
        elif l.kind in NORM_KINDS and gathers:
            peak = max(peak, 4 * int(np.prod(out[1:])))
        shape = out
    return max(1, int(budget) // max(peak, 1))


def _map_list(maps, channels):
    scalar = isinstance(maps, (int, np.integer))
    if maps is None:
        arr = np.arange(channels)
    else:
        arr = np.atleast_1d(np.asarray(maps, dtype=np.int64)).reshape(-1)
    if arr.size == 0:
        raise ValueError("no maps to project")
    if arr.min() < 0 or arr.max() >= channels:
        raise ValueError(f"map indices must lie in [0, {channels}), got {arr.min()}..{arr.max()}")
    return arr, scalar


def project(net, images, layer, maps=None, mode="max", rule="deconvnet", value=None, batch=None,
            budget=ROW_BUDGET, return_info=False):
    """Project feature maps (or units, or class logits) of ``layer`` back to pixel space.

    Parameters
    ----------
    net : Sequential (any backend; images are moved to it)
    images : (N, C, H, W) float array, preprocessed network input (host or device)
    layer : layer name or paper layer number (see :func:`start_layer_name`): any conv/relu/pool/norm
        layer, or an fc-part layer (``"fc6"``, ``"relu7"``, ``"fc8"``: the class logits); for an fc
        layer each "map" is one unit (``maps=[class]`` on the logits)
    maps : int, sequence of ints, or None (every map of the layer)
    mode : ``"max"`` keep only the strongest activation of each map (first in row-major order on
        ties); ``"map"`` keep the whole map (the same as ``"max"`` on an fc layer)
    rule : ``"deconvnet"`` (ReLU on the backward signal, normalizations passed through),
        ``"gradient"`` (the true input gradient: ReLU gated by the forward mask, true backward of the
        normalizations) or ``"guided"`` (guided backpropagation: the gradient with the backward signal
        also rectified at every ReLU); see the module docstring
    value : None (the kept unit holds its forward activation, as the paper does) or a number placed at
        the kept unit instead (``mode="max"`` only; ``value=1.0`` with ``rule="gradient"`` gives the
        derivative of that unit with respect to the input pixels)
    batch : images per forward pass (default: all at once, up to the memory budget)
    budget : elements per projection pass (bounds memory; the passes are batched over images x maps)
    return_info : also return the kept activation and its position

    Returns
    -------
    recon : numpy float array ``(N, M, C, H, W)``, or ``(N, C, H, W)`` when ``maps`` is an int
    info (only with ``return_info``) : dict ``value`` (N, M) the map's maximum (its forward value, even
        when ``value`` is given), ``y``, ``x`` (N, M) its position in the layer's output (0 on an fc layer).
    """
    check_rule(rule)
    out, info = _project(net, images, layer, maps, mode, (rule,), value, batch, budget)
    return (out[rule], info) if return_info else out[rule]


def project_rules(net, images, layer, maps=None, mode="max", rules=RULES, value=None, batch=None,
                  budget=ROW_BUDGET, return_info=False):
    """:func:`project` with several rules at once: one forward pass (and one choice of the kept
    units) serves every rule. Returns a dict ``rule -> recon`` (and the info dict with
    ``return_info``)."""
    rules = tuple(dict.fromkeys(check_rule(r) for r in ((rules,) if isinstance(rules, str) else rules)))
    if not rules:
        raise ValueError(f"no rules given; expected some of {', '.join(RULES)}")
    out, info = _project(net, images, layer, maps, mode, rules, value, batch, budget)
    return (out, info) if return_info else out


def _project(net, images, layer, maps, mode, rules, value, batch, budget):
    if mode not in ("max", "map"):
        raise ValueError(f"mode must be 'max' or 'map', got {mode!r}")
    be, xp = net.backend, net.backend.xp
    name = start_layer_name(net, layer)
    idx = net.index(name)
    n = int(images.shape[0])
    out_shape = net.output_shapes((1,) + tuple(images.shape[1:]))[idx][1]
    maps_arr, scalar = _map_list(maps, out_shape[1])
    if value is not None:
        if mode != "max" and len(out_shape) != 2:
            raise ValueError("value= places one number at the kept unit: it needs mode='max'")
        value = float(value)
        if not np.isfinite(value):
            raise ValueError(f"value must be a finite number, got {value}")
    m = maps_arr.size
    rows_cap = _rows_per_pass(net, idx, (1,) + tuple(images.shape[1:]), budget, rules)
    batch = int(batch or max(1, min(n, rows_cap)))
    recon = {r: np.zeros((n, m) + tuple(images.shape[1:]), dtype=np.dtype(net.dtype)) for r in rules}
    values = np.zeros((n, m), dtype=np.float64)
    ys = np.zeros((n, m), dtype=np.int64)
    xs = np.zeros((n, m), dtype=np.int64)
    maps_dev = be.to_device(maps_arr, np.int64)
    for s in range(0, n, batch):
        xb = be.to_device(images[s:s + batch], net.dtype)
        nb = int(xb.shape[0])
        act, rec = _forward_record(net, xb, idx)
        c = act.shape[1]
        hw = int(np.prod(act.shape[2:]))  # 1 for an fc layer's (N, F) output
        w = act.shape[3] if act.ndim == 4 else 1
        sel = act[:, maps_dev].reshape(nb, m, hw)
        arg = xp.argmax(sel, axis=2)
        val = xp.take_along_axis(sel, arg[..., None], axis=2)[..., 0]
        values[s:s + nb] = be.to_host(val)
        arg_h = be.to_host(arg)
        ys[s:s + nb], xs[s:s + nb] = arg_h // w, arg_h % w
        top_val = val if value is None else xp.full(val.shape, value, dtype=act.dtype)
        total = nb * m
        per = max(1, rows_cap)
        for r0 in range(0, total, per):
            r1 = min(total, r0 + per)
            flat = xp.arange(r0, r1)
            img, mi = flat // m, flat % m
            top = xp.zeros((r1 - r0, c, hw), dtype=act.dtype)
            chan = maps_dev[mi]
            if mode == "max" or hw == 1:
                pos = arg[img, mi]
                top[xp.arange(r1 - r0), chan, pos] = top_val[img, mi]
            else:
                top[xp.arange(r1 - r0), chan, :] = sel[img, mi]
            top = top.reshape((r1 - r0,) + tuple(act.shape[1:]))
            fl = np.arange(r0, r1)
            for rule in rules:
                rh = be.to_host(walk_down(net, top, rec, img, rule))
                recon[rule][s + fl // m, fl % m] = rh
    if scalar:
        recon = {r: a[:, 0] for r, a in recon.items()}
        values, ys, xs = values[:, 0], ys[:, 0], xs[:, 0]
    return recon, {"value": values, "y": ys, "x": xs}


def project_activation(net, images, layer, units, values=None, batch=64, budget=ROW_BUDGET, rule="deconvnet"):
    """Project single chosen activations: unit ``(image, map, y, x)`` kept alone in its layer.

    Parameters
    ----------
    images : (N, C, H, W) float array, preprocessed network input
    layer : layer name or paper layer number
    units : int array-like (K, 4) of rows ``(image index into images, map, y, x)``
    values : None (each unit keeps its own forward activation), a scalar, or (K,) values to place
        at the unit instead (the projection is positively homogeneous in it)
    batch : images per forward pass
    rule : "deconvnet" (default), "guided" or "gradient" (see :func:`project`)

    Returns
    -------
    recon : numpy float array (K, C, H, W), sign kept
    kept : numpy float64 (K,), the value that was placed at each unit
    """
    check_rule(rule)
    be, xp = net.backend, net.backend.xp
    name = layer_name(net, layer)
    idx = net.index(name)
    units = np.asarray(units, dtype=np.int64).reshape(-1, 4)
    k = units.shape[0]
    n = int(images.shape[0])
    out_shape = net.output_shapes((1,) + tuple(images.shape[1:]))[idx][1]
    _, c, h, w = out_shape
    if k and (units[:, 0].min() < 0 or units[:, 0].max() >= n):
        raise ValueError(f"unit image indices must lie in [0, {n})")
    for col, lim, what in ((1, c, "map"), (2, h, "y"), (3, w, "x")):
        if k and (units[:, col].min() < 0 or units[:, col].max() >= lim):
            raise ValueError(f"unit {what} must lie in [0, {lim}) for layer {name} {tuple(out_shape[1:])}")
    if values is not None:
        values = np.broadcast_to(np.asarray(values, dtype=np.float64), (k,))
    recon = np.zeros((k,) + tuple(images.shape[1:]), dtype=np.dtype(net.dtype))
    kept = np.zeros(k, dtype=np.float64)
    if k == 0:
        return recon, kept
    rows_cap = _rows_per_pass(net, idx, (1,) + tuple(images.shape[1:]), budget, (rule,))
    uniq = np.unique(units[:, 0])
    for s in range(0, uniq.size, int(batch)):
        chunk = uniq[s:s + int(batch)]
        sel = np.nonzero(np.isin(units[:, 0], chunk))[0]
        local = np.searchsorted(chunk, units[sel, 0])
        xb = be.to_device(_take(be, images, chunk), net.dtype)
        act, rec = _forward_record(net, xb, idx)
        for r0 in range(0, sel.size, rows_cap):
            part = sel[r0:r0 + rows_cap]
            loc = be.to_device(local[r0:r0 + rows_cap], np.int64)
            cc = be.to_device(units[part, 1], np.int64)
            yy = be.to_device(units[part, 2], np.int64)
            xx = be.to_device(units[part, 3], np.int64)
            a = act[loc, cc, yy, xx]
            if values is not None:
                a = be.to_device(values[part], act.dtype)
            kept[part] = be.to_host(a)
            top = xp.zeros((part.size, c, h, w), dtype=act.dtype)
            top[xp.arange(part.size), cc, yy, xx] = a
            recon[part] = be.to_host(walk_down(net, top, rec, loc, rule))
    return recon, kept


def _take(be, images, idx):
    """``images[idx]`` for a host or device array (idx: numpy int array)."""
    if hasattr(images, "get"):  # a device (cupy) array
        return images[be.xp.asarray(idx)]
    return np.asarray(images)[idx]


def reconstruct(net, images, layer, batch=None, budget=ROW_BUDGET, rule="deconvnet"):
    """Project *every* activation of ``layer`` at once (one reconstruction per image).

    Returns numpy (N, C, H, W). Used for the "reconstruction of layer L" figures. ``rule`` as in
    :func:`project` (with "gradient": the input gradient of the sum of activation times activation).
    """
    check_rule(rule)
    be = net.backend
    name = layer_name(net, layer)
    idx = net.index(name)
    n = int(images.shape[0])
    rows_cap = _rows_per_pass(net, idx, (1,) + tuple(images.shape[1:]), budget, (rule,))
    batch = int(batch or rows_cap)
    out = np.zeros((n,) + tuple(images.shape[1:]), dtype=np.dtype(net.dtype))
    for s in range(0, n, batch):
        xb = be.to_device(images[s:s + batch], net.dtype)
        act, rec = _forward_record(net, xb, idx)
        out[s:s + act.shape[0]] = be.to_host(walk_down(net, be.xp.ascontiguousarray(act), rec, None, rule))
    return out


def activations(net, images, layers, batch=None):
    """Host copies of the outputs of ``layers`` (names or numbers) for ``images``: dict name -> array.

    One forward pass up to the deepest requested layer (eval mode). Convenience for tests and small
    image sets; the top-k search streams instead.
    """
    be = net.backend
    names = [layer_name(net, l) for l in layers]
    stop = max(net.index(nm) for nm in names)
    n = int(images.shape[0])
    batch = int(batch or n)
    out = {nm: [] for nm in names}
    for s in range(0, n, batch):
        x = be.to_device(images[s:s + batch], net.dtype)
        for i, l in enumerate(net.layers[:stop + 1]):
            x = l.forward(x, train=False)
            if l.name in out:
                out[l.name].append(np.asarray(be.to_host(x)).copy())
    return {nm: np.concatenate(v) for nm, v in out.items()}
