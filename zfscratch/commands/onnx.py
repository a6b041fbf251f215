"""``zfscratch import-onnx`` and ``zfscratch export-onnx`` (optional: needs ``zfscratch[onnx]``)."""
from __future__ import annotations

import os

ORDER = 80


def register(sub):
    p = sub.add_parser(
        "import-onnx", help="import an ONNX model (AlexNet/ZFNet family) as a weights file",
        description="Convert an ONNX model made of Conv, Relu, MaxPool, LRN, Gemm/MatMul(+Add), Flatten/"
                    "Reshape, Dropout, Softmax and Identity nodes into a zfscratch weights file usable by "
                    "every command. The imported network takes RGB input (pixel - mean) * scale; channel "
                    "order (--bgr) and --std are folded into the first convolution.")
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX file")
    p.add_argument("--out", required=True, metavar="WEIGHTS.npz", help="weights file to write")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (e.g. the model zoo's synset.txt)")
    p.add_argument("--mean", metavar="R,G,B|FILE",
                   help="mean subtracted from 0..255 RGB pixels: three numbers, or a .npy file of shape (3,) "
                        "or (R, R, 3) (a mean image larger than the input means resize to R, centre crop)")
    p.add_argument("--scale", type=float, default=None,
                   help="multiplies (pixel - mean) (default 1: 0..255 inputs, as Caffe-trained models expect)")
    p.add_argument("--std", metavar="R,G,B", help="per-channel divisor after scaling (e.g. torchvision "
                                                  "models: --scale 0.00392157 --std 0.229,0.224,0.225)")
    p.add_argument("--bgr", action="store_true", help="the ONNX model expects BGR channel order (Caffe models)")
    p.add_argument("--input-size", type=int, default=None, metavar="N",
                   help="input side, needed only when the model's input has no fixed height/width")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the comparison with onnxruntime on a random input (done when it is installed)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export-onnx", help="export a weights file as an ONNX model",
                       description="Write a zfscratch network as ONNX (Conv, Relu, MaxPool, LRN, Flatten, "
                                   "Gemm, Dropout), atomically. Class names, preprocessing and mean go into "
                                   "the model's metadata, so import-onnx restores them.")
    p.add_argument("--weights", required=True, metavar="W.npz", help="weights file (trained or imported)")
    p.add_argument("--out", required=True, metavar="MODEL.onnx", help="ONNX file to write")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 13)")
    p.add_argument("--softmax", action="store_true", help="end with a Softmax (probabilities) instead of logits")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the comparison with onnxruntime on a random input (done when it is installed)")
    p.set_defaults(func=cmd_export)


def _ort_check(model_bytes, net, x, onnx_input, softmax):
    """Max relative error (max|a-b| / max|b|) between our logits/probs and onnxruntime's, or None."""
    import numpy as np
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: onnx_input})[0]
    ours = np.asarray(net.backend.to_host(net.forward(net.backend.to_device(x, net.dtype))), np.float64)
    if ref.shape != ours.shape:
        return float("inf")
    if softmax:  # compare probabilities
        z = ours - ours.max(axis=1, keepdims=True)
        ours = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


def cmd_import(args):
    import numpy as np

    from zfscratch import onnx_io
    from zfscratch.io import save_weights
    from zfscratch.models import input_shape

    lines = []
    say = lines.append
    model = onnx_io.read_model(args.model)
    net, meta = onnx_io.import_model(model, source=args.model, input_size=args.input_size, labels=args.labels,
                                     mean=args.mean, scale=args.scale, std=args.std, bgr=args.bgr or None)
    src, pre = meta["source"], meta["preprocessing"]
    c, s, _ = input_shape(net)
    soft = " (softmax; imported as logits)" if src["softmax_output"] else ""
    say(f"{args.model}: opset {src['opset']}, producer {src['producer'] or '?'}, input {src['input']!r} "
          f"({c}x{s}x{s}), output {src['output']!r}{soft}")
    say(net.summary((1, c, s, s)))
    mean = (meta.get("extra") or {}).get("mean")
    if mean is None:
        mean_txt = "none"
    else:
        mean_txt = ", ".join(f"{v:g}" for v in mean) if mean.ndim == 1 else f"image {mean.shape}"
    std = pre.get("std_folded_into_conv1")
    say(f"preprocessing: RGB, resize {pre.get('resize')}, centre crop {s}, mean {mean_txt}, "
          f"scale {pre.get('scale'):g}" + (f", std {std} folded into conv1" if std else "")
          + (", BGR model: conv1 input channels reversed" if args.bgr else ""))
    if mean is None and args.mean is None and args.scale is None:
        say("note: no --mean/--scale given: images go in as raw 0..255 RGB values; see docs/onnx.md for "
              "the preprocessing of the model zoo's networks")
    if args.verify:
        rng = np.random.default_rng(0)
        x = rng.normal(0, 50 * float(pre.get("scale", 1.0)), size=(1, c, s, s)).astype(np.float32)
        v = x.copy()  # what the ONNX model wants: our input with this import's --std and --bgr undone
        if args.std is not None:
            v = v / onnx_io.parse_triple(args.std, "--std").reshape(1, 3, 1, 1)
        if args.bgr:
            v = np.ascontiguousarray(v[:, ::-1])
        err = _ort_check(onnx_io.drop_final_softmax(model).SerializeToString(), net, x, v, False)
        if err is not None:
            say(f"check against onnxruntime on a random input: max relative error of the logits {err:.2e}")
            if not err < 1e-3:
                from zfscratch.errors import UserError
                raise UserError(f"{args.model}: the imported network disagrees with onnxruntime (max relative "
                                f"error {err:.2e}); nothing written")
    save_weights(args.out, net, meta={k: v for k, v in meta.items() if k != "extra"}, extra=meta.get("extra"))
    say(f"wrote {args.out} ({len(meta['classes'])} classes)")
    # printed only now: a reader that leaves early (``| head``) cannot stop the weights being written
    print("\n".join(lines))
    return 0


def cmd_export(args):
    import numpy as np

    from zfscratch import onnx_io
    from zfscratch.io import load_weights
    from zfscratch.models import input_shape

    net, meta = load_weights(args.weights)
    model = onnx_io.export_onnx(net, args.out, meta=meta, opset=args.opset or onnx_io.DEFAULT_OPSET,
                                softmax=args.softmax)
    c, s, _ = input_shape(net)
    print(f"wrote {args.out}: opset {args.opset or onnx_io.DEFAULT_OPSET}, input 'input' (N, {c}, {s}, {s}) "
          f"RGB, output {model.graph.output[0].name!r}, {os.path.getsize(args.out) / 1e6:.1f} MB")
    if args.verify:
        x = np.random.default_rng(0).normal(0, 1, size=(2, c, s, s)).astype(np.float32)
        err = _ort_check(model.SerializeToString(), net, x, x, args.softmax)
        if err is not None:
            print(f"check against onnxruntime on a random input: max relative error {err:.2e}")
    return 0
