"""ONNX import and export for networks of the AlexNet/ZFNet family (optional: needs ``onnx``).

Import (:func:`load_onnx`, :func:`zfscratch.io.import_onnx`, ``zfscratch import-onnx``) turns a *chain* of
supported operators into a :class:`~zfscratch.net.Sequential` of this engine, stored like a trained
model (``io.save_weights``: ``config = {"arch": "custom", "layers": specs, ...}``, class names,
preprocessing, the mean beside the weights), so every command (visualize, occlude, invariance, run)
takes it. Files are parsed with the ``onnx`` package (protobuf) and never executed; the weights are
validated (shapes against the graph, floating point, finite).

=============  ================================================================================
ONNX operator  becomes
=============  ================================================================================
Conv           ``Conv2d`` (square kernel, equal strides, dilation 1, any ``group``; pads equal on
               every side, or asymmetric pads that give the same output as a symmetric pad;
               ``auto_pad`` resolved)
Relu           ``ReLU``
MaxPool        ``MaxPool2d`` (square kernel, equal strides, ``ceil_mode``, pads: a leading pad
               equal on both axes plus any trailing pad that ends up in the output count — e.g.
               Caffe2's ``pads=[0, 0, 1, 1]`` becomes ``ceil_mode=True``)
LRN            ``LocalResponseNorm(size, alpha, beta, k=bias)`` (odd ``size`` only: ONNX centres
               even windows on ``[c-(size-2)/2, c+size/2]``, this engine on ``[c-size/2, c+size/2-1]``)
Gemm           ``Linear`` (``transA=0``; ``transB`` 0 or 1; ``alpha``/``beta`` folded into w and b)
MatMul (+Add)  ``Linear`` (constant right operand; a following constant ``Add`` is its bias)
Add            folded into the bias of the Conv/Gemm/MatMul right before it
Flatten        ``Flatten`` (axis 1), Reshape ``(N, C, H, W) -> (N, C*H*W)`` likewise
Dropout        ``Dropout(p=ratio)`` (identity at inference)
Softmax        only as the last node: dropped (this engine's networks output logits); recorded in
               ``meta["source"]["softmax_output"]``
Identity       skipped; ``Constant`` nodes feed constant inputs (shapes, ratios); an ``AveragePool``
               of kernel 1x1, stride 1 (PyTorch's export of an ``AdaptiveAvgPool2d`` that changes
               nothing, e.g. torchvision's AlexNet at 224 px) is skipped too
=============  ================================================================================

Anything else raises :class:`~zfscratch.errors.UserError` with one line naming the node, its
operator and the supported operators (the CLI exits 2). Initializers may also be listed as graph
inputs (older opsets); the image input is the one graph input that is not an initializer.

Channel order and per-channel std are folded into ``conv1``: an imported network always takes RGB
input ``(pixel - mean) * scale`` (the :mod:`zfscratch.preprocess` convention, mean in 0..255 units),
whatever order/normalization the ONNX file expects (``bgr=True`` reverses conv1's input channels,
``std`` divides them).

Export (:func:`export_onnx`, ``zfscratch export-onnx``) writes the inverse mapping (opset 10 and up,
13 by default), with class names, preprocessing and mean in the model's ``metadata_props`` so that
``import(export(net))`` gives back the same layers, weights and metadata.

Layout: :mod:`.reading` (the optional ``onnx`` dependency, parsing and validating the file, attribute
helpers), :mod:`.importer` (the graph walk) and :mod:`.operators` (one method per operator), which turn
nodes into layer specs, :mod:`.metadata` (exported metadata, labels, mean and std), :mod:`.load`
(``import_model``, ``load_onnx``: specs + preprocessing -> ``(net, meta)``), :mod:`.export`.
"""
from __future__ import annotations

from .export import DEFAULT_OPSET, MIN_EXPORT_OPSET, export_onnx, to_model
from .load import import_model, load_onnx
from .metadata import META_PREFIX, ZOO_MEAN_RGB, parse_triple, read_labels, read_mean
from .operators import SUPPORTED_OPS
from .reading import INSTALL_HINT, available, drop_final_softmax, read_model

__all__ = ["DEFAULT_OPSET", "INSTALL_HINT", "META_PREFIX", "MIN_EXPORT_OPSET", "SUPPORTED_OPS", "ZOO_MEAN_RGB",
           "available", "drop_final_softmax", "export_onnx", "import_model", "load_onnx", "parse_triple",
           "read_labels", "read_mean", "read_model", "to_model"]
