"""From a parsed ONNX model to ``(net, meta)``: the importer's layer specs and weights, the
preprocessing (explicit arguments or exported metadata, channel order and std folded into conv1),
the class names, and the :class:`~zfscratch.net.Sequential` built from them."""
from __future__ import annotations

import json
import math
import os

import numpy as np

from ..errors import UserError
from .importer import _Importer
from .metadata import _decode_array, _parse_meta_props, parse_triple, read_labels, read_mean
from .reading import _f32, read_model


def import_model(model, source="model", input_size=None, labels=None, mean=None, scale=None, std=None,
                 bgr=None, backend=None):
    """Convert a parsed ONNX ``ModelProto`` into ``(net, meta)`` (see :func:`load_onnx`)."""
    imp = _Importer(model, source, input_size).run()
    props = _parse_meta_props(model)
    specs, params = imp.specs, imp.params
    num_classes = imp.shape[1]
    in_ch = imp.in_channels or specs[0]["config"].get("in_ch", 3)

    # -- preprocessing: explicit arguments win over metadata written by export_onnx ----------
    saved_pre = json.loads(props["preprocessing"]) if "preprocessing" in props else {}
    mean_arr = _mean_array(mean, props, imp.input_size)
    scale_value = _scale(scale, saved_pre)
    std_arr = _std_array(std)
    _fold_into_conv1(specs[0], params, source, bgr, std_arr)
    classes = _class_names(labels, props, num_classes)
    overridden = mean is not None or std is not None or bool(bgr) or scale is not None
    if saved_pre and not overridden and saved_pre.get("input_size") == imp.input_size:
        pre = dict(saved_pre)  # written by export_onnx: keep it as it was
    else:
        pre = _preprocessing(imp.input_size, mean_arr, scale_value, std_arr)

    config = {"arch": "custom", "layers": specs, "input_size": imp.input_size, "in_channels": int(in_ch),
              "num_classes": int(num_classes)}
    net = _build(specs, config, params)
    if backend is not None:
        net.to(backend)
    meta = {"classes": classes, "preprocessing": pre, "output": "logits",
            "source": _source_info(model, imp, source, bgr),
            "extra": {} if mean_arr is None else {"mean": mean_arr}}
    return net, meta


def _mean_array(mean, props, input_size):
    """The mean to subtract: the ``mean`` argument (see :func:`read_mean`), else the exported one, else None."""
    if mean is None and "mean" in props:
        return _decode_array(props["mean"])
    if mean is not None:
        return read_mean(mean, input_size)
    return None


def _scale(scale, saved_pre):
    """The ``scale`` argument, else the exported one, else 1; a positive finite float."""
    if scale is None:
        scale = saved_pre.get("scale", 1.0) if saved_pre else 1.0
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise UserError(f"--scale {scale}: expected a positive number")
    return scale


def _std_array(std):
    """``std`` (``"R,G,B"`` or 3 numbers) as a positive float32 (3,) array, or None."""
    std_arr = None if std is None else (parse_triple(std, "--std") if isinstance(std, str)
                                       else np.asarray(std, np.float32).reshape(-1))
    if std_arr is not None and (std_arr.shape != (3,) or np.any(std_arr <= 0)):
        raise UserError(f"--std {std}: expected three positive numbers R,G,B")
    return std_arr


def _fold_into_conv1(first, params, source, bgr, std_arr):
    """Fold the channel order and per-channel std into the first convolution's weights (in ``params``)."""
    if bgr or std_arr is not None:
        if first["kind"] != "Conv2d" or first["config"]["groups"] != 1 or first["config"]["in_ch"] != 3:
            raise UserError(f"{source}: --bgr/--std need a first layer that is an ungrouped convolution of "
                            f"3 input channels")
        w = params[f"{first['name']}.w"]
        if std_arr is not None:
            # the ONNX input channel j is RGB channel j (or 2 - j when the model wants BGR)
            order = std_arr[::-1] if bgr else std_arr
            w = w / order.reshape(1, 3, 1, 1)
        if bgr:
            w = w[:, ::-1]
        params[f"{first['name']}.w"] = np.ascontiguousarray(w, np.float32)


def _class_names(labels, props, num_classes):
    """Class names: ``labels`` (a file or a list), else the exported ones, else "0", "1", ..."""
    if labels is not None:
        classes = read_labels(labels, num_classes) if not isinstance(labels, (list, tuple)) else list(labels)
        if len(classes) != num_classes:
            raise UserError(f"{len(classes)} class names given, the model has {num_classes} outputs")
    elif "classes" in props:
        classes = json.loads(props["classes"])
    else:
        classes = [str(i) for i in range(num_classes)]
    return classes


def _preprocessing(input_size, mean_arr, scale, std_arr):
    """The :class:`~zfscratch.preprocess.Preprocess` record of an import without exported metadata."""
    resize = input_size
    if mean_arr is not None and mean_arr.ndim == 3:
        resize = int(mean_arr.shape[0])
    mean_mode = "none" if mean_arr is None else ("channel" if mean_arr.ndim == 1 else "pixel")
    pre = {"input_size": input_size, "resize": resize, "pad": 0, "scale": scale,
           "mean_mode": mean_mode, "mean_shape": None if mean_arr is None else list(mean_arr.shape),
           "layout": "NCHW float32 = (centre_crop(resize(img)) - mean) * scale; img uint8 RGB 0..255",
           "channel_order": "RGB"}
    if std_arr is not None:
        pre["std_folded_into_conv1"] = [_f32(v) for v in std_arr]
    return pre


def _source_info(model, imp, source, bgr):
    """``meta["source"]``: what was imported (file, producer, opset, input/output, layer -> node names)."""
    return {
        "format": "onnx", "file": os.path.basename(source), "producer": f"{model.producer_name} "
        f"{model.producer_version}".strip(), "ir_version": int(model.ir_version), "opset": imp.opset,
        "input": imp.input_name, "output": imp.output_name, "softmax_output": imp.softmax,
        "input_channel_order": "BGR" if bgr else "RGB", "layer_nodes": imp.nodes,
    }


class _NoInit:
    """Stands in for the weight-init generator: the weights are overwritten right away, so skip
    drawing ~10^8 normals for a ZFNet-sized model."""

    @staticmethod
    def normal(loc=0.0, scale=1.0, size=None):
        return np.zeros(size, np.float32)


def _build(specs, config, params):
    """Sequential from layer specs with ``params`` loaded (shapes checked by ``load_state_dict``)."""
    from zfscratch.layers import layer_class
    from zfscratch.net import Sequential
    layers = []
    for i, spec in enumerate(specs):
        kw = dict(spec["config"])
        if spec["kind"] in ("Conv2d", "Linear"):
            kw["rng"] = _NoInit()
        elif spec["kind"] == "Dropout":
            kw["seed"] = i
        layers.append(layer_class(spec["kind"], spec["config"])(name=spec["name"], **kw))
    net = Sequential(layers, config=config)
    net.load_state_dict(params)
    return net


def load_onnx(path, input_size=None, labels=None, mean=None, scale=None, std=None, bgr=None, backend=None):
    """Import an ONNX model as a network of this engine.

    Parameters
    ----------
    path : str, the ``.onnx`` file
    input_size : int, needed only when the graph's input has no fixed height/width
    labels : labels file (one class name per line) or a list of names
    mean : ``"R,G,B"`` (0..255), a (3,) or (R, R, 3) array, or a file (see :func:`read_mean`)
    scale : float multiplying ``pixel - mean`` (default 1: raw 0..255 values, as Caffe models expect)
    std : ``"R,G,B"`` or 3 numbers dividing the scaled input per channel (folded into conv1)
    bgr : the ONNX model expects BGR input (conv1's input channels are reversed so the imported
        network takes RGB)
    backend : backend name for the returned network (default numpy)

    Returns
    -------
    net : Sequential with ``net.config = {"arch": "custom", "layers": specs, "input_size", ...}``
    meta : dict like :func:`zfscratch.io.load_weights` returns: ``classes``, ``preprocessing`` (the
        :class:`~zfscratch.preprocess.Preprocess` record), ``output`` ("logits"), ``source`` (what was
        imported: file, opset, input/output names, ``softmax_output``, layer -> node names) and
        ``extra`` ({"mean": array} when a mean is known).
    """
    model = read_model(path)
    return import_model(model, source=os.fspath(path), input_size=input_size, labels=labels, mean=mean,
                        scale=scale, std=std, bgr=bgr, backend=backend)

