"""Export: a network of this engine as an ONNX ``ModelProto`` (opset 10 and up), with its class
names, preprocessing and mean in ``metadata_props``, written atomically."""
from __future__ import annotations

import json

import numpy as np

from ..errors import UserError
from .metadata import META_PREFIX, _encode_array
from .reading import _one_line, _onnx

DEFAULT_OPSET = 13
MIN_EXPORT_OPSET = 10


def _min_ir_version(opset):
    from onnx import helper
    try:
        return int(helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
    except Exception:  # pragma: no cover - very old onnx
        return 7


def to_model(net, meta=None, opset=DEFAULT_OPSET, softmax=False, input_name="input", output_name=None):
    """Build an ONNX ``ModelProto`` from a network (see :func:`export_onnx`)."""
    onnx = _onnx()
    from onnx import TensorProto, helper

    from zfscratch import __version__

    meta = dict(meta or {})
    opset = _check_opset(onnx, opset)
    c, s = _input_size(net)
    nodes, inits, cur, k = _layer_nodes(net, (1, c, s, s), input_name, opset)
    out_name = output_name or ("probabilities" if softmax else "logits")
    if softmax:
        nodes.append(helper.make_node("Softmax", [cur], [out_name], name="softmax", axis=1))
    else:
        nodes[-1].output[0] = out_name
    graph = helper.make_graph(
        nodes, "zfscratch", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", c, s, s])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", k])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="zfscratch", ir_version=_min_ir_version(opset))
    model.producer_version = __version__
    model.doc_string = ("zfscratch network; input: RGB (pixel - mean) * scale, NCHW float32 (see metadata "
                        "zfscratch.preprocessing); output: " + ("softmax probabilities" if softmax else "logits"))
    helper.set_model_props(model, {META_PREFIX + key: v for key, v in _metadata_props(meta, softmax).items()})
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # pragma: no cover - would be a bug in the exporter
        raise UserError(f"the exported graph fails the ONNX checker: {_one_line(e)}") from None
    return model


def _check_opset(onnx, opset):
    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_EXPORT_OPSET <= int(opset) <= max_opset:
        raise UserError(f"--opset {opset}: expected {MIN_EXPORT_OPSET}..{max_opset}")
    return int(opset)


def _input_size(net):
    """``(channels, side)`` of the network's input, from its config."""
    from zfscratch.models import input_shape
    try:
        c, s, _ = input_shape(net)
    except (KeyError, TypeError):
        raise UserError("the network's config has no input_size; cannot export it") from None
    return c, s


def _layer_nodes(net, in_shape, input_name, opset):
    """The chain of nodes, one per layer, and their initializers.

    Returns ``(nodes, initializers, name of the last output, number of classes)``."""
    shapes = net.output_shapes(in_shape)
    state = net.state_dict()
    nodes, inits = [], []
    cur = input_name
    for layer, (_, out_shape) in zip(net.layers, shapes):
        out = f"{layer.name}.out"
        node, layer_inits = _layer_node(layer, cur, out, in_shape, out_shape, state, opset)
        nodes.append(node)
        inits += layer_inits
        cur, in_shape = out, out_shape
    return nodes, inits, cur, shapes[-1][1][1]


def _layer_node(layer, cur, out, in_shape, out_shape, state, opset):
    """The ONNX node of one layer (reading ``cur``, writing ``out``) and the initializers it reads."""
    from onnx import helper, numpy_helper
    name, kind, cfg = layer.name, layer.kind, layer.config()

    def weights():
        return [numpy_helper.from_array(state[f"{name}.{p}"].astype(np.float32), f"{name}.{p}") for p in "wb"]

    if kind == "Conv2d":
        p = cfg["pad"]
        return helper.make_node("Conv", [cur, f"{name}.w", f"{name}.b"], [out], name=name,
                                kernel_shape=[cfg["k"]] * 2, strides=[cfg["stride"]] * 2,
                                pads=[p] * 4, dilations=[1, 1], group=cfg["groups"]), weights()
    if kind == "ReLU":
        return helper.make_node("Relu", [cur], [out], name=name), []
    if kind == "MaxPool2d":
        return _pool_node(helper, name, cur, out, cfg, in_shape[2], out_shape[2]), []
    if kind == "LocalContrastNorm":
        raise UserError(f"layer {name}: LocalContrastNorm (subtractive + divisive, Jarrett et al. 2009) has no "
                        f"ONNX operator; only the cross-channel LRN (LocalResponseNorm) can be exported")
    if kind == "LocalResponseNorm":
        if cfg["size"] % 2 == 0:
            raise UserError(f"layer {name}: LRN size {cfg['size']} is even; ONNX centres even windows "
                            f"differently from this engine, so it cannot be exported exactly")
        return helper.make_node("LRN", [cur], [out], name=name, size=cfg["size"], alpha=cfg["alpha"],
                                beta=cfg["beta"], bias=cfg["k"]), []
    if kind == "Flatten":
        return helper.make_node("Flatten", [cur], [out], name=name, axis=1), []
    if kind == "Linear":
        return helper.make_node("Gemm", [cur, f"{name}.w", f"{name}.b"], [out], name=name, transB=1), weights()
    if kind == "Dropout":
        if opset >= 12:
            ratio = numpy_helper.from_array(np.asarray(cfg["p"], np.float32), f"{name}.ratio")
            return helper.make_node("Dropout", [cur, f"{name}.ratio"], [out], name=name), [ratio]
        return helper.make_node("Dropout", [cur], [out], name=name, ratio=cfg["p"]), []
    raise UserError(f"layer {name} ({kind}) has no ONNX export")


def _metadata_props(meta, softmax):
    """The ``zfscratch.*`` metadata (without the prefix): output kind, classes, preprocessing, mean."""
    props = {"output": "softmax" if softmax else "logits"}
    if meta.get("classes") is not None:
        props["classes"] = json.dumps(list(meta["classes"]))
    if meta.get("preprocessing") is not None:
        props["preprocessing"] = json.dumps(meta["preprocessing"], sort_keys=True)
    mean = (meta.get("extra") or {}).get("mean")
    if mean is not None:
        props["mean"] = _encode_array(np.asarray(mean))
    return props


def _pool_node(helper, name, cur, out, cfg, h, ho):
    """MaxPool node with this engine's exact output size.

    ``ceil_mode=1`` is used when ONNX's ceil formula gives our size; otherwise (our ceil rule dropped a
    last window that would start in the padding) floor mode with explicit trailing pads.
    """
    k, s, p = cfg["k"], cfg["stride"], cfg.get("pad", 0)
    span = h + 2 * p - k
    if not cfg["ceil_mode"] or -(-span // s) + 1 == ho:
        return helper.make_node("MaxPool", [cur], [out], name=name, kernel_shape=[k, k], strides=[s, s],
                                pads=[p] * 4, ceil_mode=int(cfg["ceil_mode"]))
    q = (ho - 1) * s + k - h - p
    if q < 0 or (h + p + q - k) // s + 1 != ho:  # pragma: no cover - cannot happen for valid pools
        raise UserError(f"layer {name}: cannot express its pooling output size in ONNX")
    return helper.make_node("MaxPool", [cur], [out], name=name, kernel_shape=[k, k], strides=[s, s],
                            pads=[p, p, q, q], ceil_mode=0)


def export_onnx(net, path, meta=None, opset=DEFAULT_OPSET, softmax=False, input_name="input", output_name=None):
    """Write a network as an ONNX model, atomically.

    Parameters
    ----------
    net : Sequential of Conv2d/ReLU/MaxPool2d/LocalResponseNorm/Flatten/Linear/Dropout layers with
        ``config["input_size"]`` (every model of this engine, and imported ones)
    path : output ``.onnx`` file
    meta : weights metadata (``classes``, ``preprocessing``, ``extra["mean"]``), stored in the model's
        ``metadata_props`` under ``zfscratch.*`` so :func:`load_onnx` restores it
    opset : ONNX opset (10 .. what the installed onnx knows; default 13)
    softmax : append a Softmax (output ``probabilities``) instead of returning logits

    Returns the ``ModelProto``. The graph takes ``input`` (N, C, S, S) RGB float32, preprocessed as
    the metadata says, and gives ``logits`` (N, classes).
    """
    from zfscratch.util.files import atomic_write_bytes
    model = to_model(net, meta=meta, opset=opset, softmax=softmax, input_name=input_name,
                     output_name=output_name)
    try:
        data = model.SerializeToString()
    except ValueError as e:  # protobuf's 2 GiB limit
        raise UserError(f"cannot serialize the model to {path}: {_one_line(e)}") from None
    atomic_write_bytes(path, data)
    return model
