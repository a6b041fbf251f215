"""ONNX import/export (zfscratch.onnx_io), checked against onnxruntime.

Every supported operator and attribute combination is built as a small graph with ``onnx.helper``,
imported, and its forward pass compared with onnxruntime on random inputs (max relative error
``max|ours - ort| / max|ort|`` < 1e-4 in float32). The whole file runs in well under a minute.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from zfscratch import onnx_io  # noqa: E402
from zfscratch.cli import main  # noqa: E402
from zfscratch.errors import UserError  # noqa: E402
from zfscratch.io import load_onnx, load_weights, save_weights  # noqa: E402
from zfscratch.models import alexnet_like, zfnet_small  # noqa: E402

TOL = 1e-4
RNG = np.random.default_rng(1234)


# ----------------------------------------------------------------------------- helpers
_BLOCK = RNG.uniform(-1.0, 1.0, 1_000_003).astype(np.float32)  # prime length: no row-aligned repeats


def _w(*shape, fan_in=None):
    """Random weights, uniform with He variance 2/fan_in (big arrays tile a fixed random block: fast)."""
    fan_in = fan_in or int(np.prod(shape[1:])) or 1
    a = np.float32(np.sqrt(6.0 / fan_in))
    n = int(np.prod(shape))
    if n > _BLOCK.size:
        start = int(RNG.integers(_BLOCK.size))
        return np.resize(np.roll(_BLOCK, start), shape) * a
    return RNG.uniform(-1.0, 1.0, shape).astype(np.float32) * a


class G:
    """A tiny graph builder: a chain starting at ``x``."""

    def __init__(self, c=3, s=16, batch=2, opset=13):
        self.nodes, self.inits, self.cur, self.n = [], [], "x", 0
        self.in_shape, self.opset = [batch, c, s, s], opset

    def init(self, arr, name=None):
        name = name or f"p{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op_type, *consts, outputs=1, **attrs):
        self.n += 1
        out = [f"t{self.n}"] + [f"t{self.n}_extra{i}" for i in range(1, outputs)]
        ins = [self.cur] + [c if isinstance(c, str) else self.init(c) for c in consts]
        self.nodes.append(helper.make_node(op_type, ins, out, name=f"n{self.n}_{op_type.lower()}", **attrs))
        self.cur = out[0]
        return self

    def model(self, inits_as_inputs=False, ir_version=None):
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, self.in_shape)]
        if inits_as_inputs:
            inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.inits]
        graph = helper.make_graph(self.nodes, "g", inputs,
                                  [helper.make_tensor_value_info(self.cur, TensorProto.FLOAT, None)],
                                  initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = ir_version or helper.find_min_ir_version_for([helper.make_opsetid("", self.opset)])
        return m


def _session(model):
    """onnxruntime session (``model``: ModelProto or a path), graph optimizations off: the reference
    is the plain operator semantics, and big models load faster."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _rel(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _compare(model, x=None, backend="numpy", **kw):
    """Import ``model``, run it and onnxruntime on ``x``; return (max relative error, net, meta)."""
    net, meta = onnx_io.import_model(model, source="test.onnx", backend=backend, **kw)
    if x is None:
        shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
        x = RNG.standard_normal(shape, dtype=np.float32)
    ref = _session(model).run(None, {model.graph.input[0].name: x})[0]
    ours = net.backend.to_host(net.forward(net.backend.to_device(x, np.float32)))
    if meta["source"]["softmax_output"]:
        ours = _softmax(ours)
    return _rel(ours, ref), net, meta


def _head(g, feat, classes=5):
    g.op("Flatten", axis=1)
    g.op("Gemm", _w(classes, feat), _w(classes, fan_in=1) * 0.1, transB=1)
    return g


# ----------------------------------------------------------------------------- operators
CONV_CASES = [  # k, stride, pads, group, bias, size
    (3, 1, [1, 1, 1, 1], 1, True, 16),
    (3, 2, [0, 0, 0, 0], 1, False, 17),
    (5, 1, [2, 2, 2, 2], 2, True, 15),
    (7, 2, [1, 1, 1, 1], 1, True, 24),
    (7, 2, [3, 3, 3, 3], 3, True, 21),
    (11, 4, [2, 2, 2, 2], 1, True, 35),
    (1, 1, [0, 0, 0, 0], 1, True, 9),
    (3, 2, [1, 1, 0, 0], 1, True, 16),  # asymmetric, same output as pad 1
    (3, 2, [1, 1, 2, 2], 1, True, 17),  # asymmetric, same output as pad 1
]


@pytest.mark.parametrize("k,s,pads,group,bias,size", CONV_CASES)
def test_conv(k, s, pads, group, bias, size):
    c, f = 6, 12
    g = G(c=c, s=size)
    consts = [_w(f, c // group, k, k)] + ([_w(f, fan_in=1)] if bias else [])
    g.op("Conv", *consts, kernel_shape=[k, k], strides=[s, s], pads=pads, group=group)
    g.op("Relu")
    ho = (size + pads[0] + pads[2] - k) // s + 1
    err, net, _ = _compare(_head(g, f * ho * ho).model())
    assert err < TOL
    conv = net.layer("conv1")
    assert (conv.k, conv.stride, conv.pad, conv.groups) == (k, s, pads[0], group)


@pytest.mark.parametrize("auto_pad,s", [("SAME_UPPER", 1), ("SAME_UPPER", 2), ("SAME_LOWER", 1), ("VALID", 2)])
def test_conv_auto_pad(auto_pad, s):
    g = G(c=3, s=15)
    g.op("Conv", _w(4, 3, 3, 3), _w(4, fan_in=1), kernel_shape=[3, 3], strides=[s, s], auto_pad=auto_pad)
    ho = -(-15 // s) if auto_pad != "VALID" else (15 - 3) // s + 1
    err, _, _ = _compare(_head(g, 4 * ho * ho).model())
    assert err < TOL


def test_conv_add_bias_and_identity():
    g = G(c=3, s=12)
    g.op("Conv", _w(8, 3, 3, 3), kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    g.op("Add", _w(1, 8, 1, 1, fan_in=1)).op("Identity").op("Relu")
    err, net, _ = _compare(_head(g, 8 * 12 * 12).model())
    assert err < TOL
    assert [l.kind for l in net.layers[:2]] == ["Conv2d", "ReLU"]


POOL_CASES = [  # k, stride, pads, ceil, size
    (3, 2, [0, 0, 0, 0], 1, 13), (3, 2, [0, 0, 0, 0], 1, 14), (3, 2, [0, 0, 0, 0], 0, 14),
    (2, 2, [0, 0, 0, 0], 0, 15), (2, 2, [0, 0, 0, 0], 1, 15), (3, 1, [0, 0, 0, 0], 0, 9),
    (3, 2, [1, 1, 1, 1], 0, 14), (3, 2, [1, 1, 1, 1], 1, 14), (3, 2, [1, 1, 1, 1], 1, 13),
    (3, 3, [1, 1, 1, 1], 1, 10), (2, 2, [1, 1, 1, 1], 1, 11), (5, 2, [2, 2, 2, 2], 0, 12),
    (3, 2, [0, 0, 1, 1], 0, 12),  # Caffe2 export of Caffe's ceil pooling (ZFNet-512, CaffeNet)
    (3, 2, [0, 0, 1, 1], 0, 109), (3, 2, [0, 0, 1, 1], 0, 25),
    (3, 2, [1, 1, 0, 0], 0, 14), (3, 2, [1, 1, 2, 2], 1, 14),
]


@pytest.mark.parametrize("k,s,pads,ceil,size", POOL_CASES)
def test_maxpool(k, s, pads, ceil, size):
    g = G(c=4, s=size, opset=13)
    g.op("MaxPool", kernel_shape=[k, k], strides=[s, s], pads=pads, ceil_mode=ceil).op("Flatten", axis=1)
    # (no Gemm head: where ONNX's ceil formula and onnxruntime's runtime size differ, a fixed-size weight
    # would fail onnxruntime's static shape inference)
    err, net, _ = _compare(g.model())
    assert err < TOL
    pool = net.layer("pool0")
    assert pool.pad == pads[0]


def test_maxpool_pad_switches(backend):
    """The padded pool (every backend, conftest fixture): switches index the unpadded plane, backward
    routes through them, and the default (pad 0) layer is unchanged."""
    from zfscratch.layers import MaxPool2d
    x = RNG.standard_normal((2, 3, 11, 11)).astype(np.float32)
    ref = MaxPool2d(3, 2, ceil_mode=True, pad=1)
    for ceil in (True, False):
        p = MaxPool2d(3, 2, ceil_mode=ceil, pad=1).set_backend(backend)
        y = backend.to_host(p.forward(backend.to_device(x)))
        sw = backend.to_host(p.switches)
        assert sw.dtype == np.int32 and p.x_shape == x.shape
        picked = np.take_along_axis(x.reshape(2, 3, -1), sw.reshape(2, 3, -1).astype(np.int64), 2)
        assert np.array_equal(picked.reshape(y.shape), y)
        dx = backend.to_host(p.backward(backend.xp.ones(y.shape, np.float32)))
        assert dx.shape == x.shape and dx.sum() == y.size
        if ceil:
            assert np.array_equal(y, ref.forward(x))
    assert MaxPool2d(3, 2).config() == {"k": 3, "stride": 2, "ceil_mode": True}  # default unchanged


@pytest.mark.parametrize("size,alpha,beta,bias", [(5, 1e-4, 0.75, 1.0), (5, 0.5, 0.75, 2.0), (3, 0.9, 0.6, 1.0),
                                                  (1, 0.3, 0.75, 1.5), (7, 2.0, 0.9, 1.0)])
def test_lrn(size, alpha, beta, bias):
    g = G(c=9, s=6)
    g.op("LRN", size=size, alpha=alpha, beta=beta, bias=bias)
    err, net, _ = _compare(_head(g, 9 * 36).model(), RNG.standard_normal((2, 9, 6, 6), dtype=np.float32) * 3)
    assert err < TOL
    assert net.layer("norm0").config() == dict(size=size, alpha=alpha, beta=beta, k=bias)


def test_lrn_even_size_rejected():
    g = G(c=9, s=6)
    g.op("LRN", size=4)
    with pytest.raises(UserError, match="size 4 is even"):
        onnx_io.import_model(_head(g, 9 * 36).model(), "even.onnx")


@pytest.mark.parametrize("trans_b,alpha,beta,c_shape", [(1, 1.0, 1.0, "vec"), (0, 1.0, 1.0, "row"),
                                                        (1, 0.5, 2.0, "scalar"), (0, 1.5, 0.5, "none")])
def test_gemm(trans_b, alpha, beta, c_shape):
    g = G(c=2, s=4)
    g.op("Flatten", axis=1)
    w = _w(6, 32) if trans_b else np.ascontiguousarray(_w(6, 32).T)
    cvals = {"vec": _w(6, fan_in=1), "row": _w(1, 6, fan_in=1), "scalar": np.float32(0.3), "none": None}[c_shape]
    consts = [w] + ([] if cvals is None else [np.asarray(cvals, np.float32)])
    g.op("Gemm", *consts, transB=trans_b, alpha=alpha, beta=beta)
    err, net, _ = _compare(g.model())
    assert err < TOL
    assert net.layer("fc1").params["w"].shape == (6, 32)


@pytest.mark.parametrize("with_add", [True, False])
def test_matmul_add(with_add):
    g = G(c=2, s=4)
    g.op("Reshape", np.array([0, -1], np.int64))
    g.op("MatMul", _w(32, 10, fan_in=32))
    if with_add:
        g.op("Add", _w(10, fan_in=1))
    g.op("Relu").op("MatMul", _w(10, 3, fan_in=10))
    err, net, _ = _compare(g.model())
    assert err < TOL
    assert [l.kind for l in net.layers] == ["Flatten", "Linear", "ReLU", "Linear"]


@pytest.mark.parametrize("target", [[0, -1], [-1, 72], [2, 72], [2, -1]])
def test_reshape_flatten(target):
    g = G(c=2, s=6, batch=2)
    g.op("Relu").op("Reshape", np.array(target, np.int64)).op("Gemm", _w(4, 72), transB=1)
    err, net, _ = _compare(g.model())
    assert err < TOL and "flatten" in net.names()


def test_reshape_from_constant_node():
    g = G(c=2, s=6, batch=1)
    g.nodes.append(helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(
        np.array([1, 72], np.int64))))
    g.op("Reshape", "shape").op("Gemm", _w(4, 72), transB=1)
    err, _, _ = _compare(g.model())
    assert err < TOL


@pytest.mark.parametrize("opset", [7, 11, 13])
def test_dropout_softmax(opset):
    g = G(c=2, s=4, opset=opset)
    g.op("Flatten", axis=1).op("Gemm", _w(16, 32), _w(16, fan_in=1), transB=1).op("Relu")
    if opset >= 12:
        g.op("Dropout", np.array(0.3, np.float32), outputs=2)
    else:
        g.op("Dropout", ratio=0.3, outputs=2)
    g.op("Gemm", _w(5, 16), _w(5, fan_in=1), transB=1)
    g.op("Softmax", **({"axis": 1} if opset < 13 else {}))
    err, net, meta = _compare(g.model())
    assert err < TOL
    assert meta["source"]["softmax_output"] and meta["output"] == "logits"
    assert net.layer("drop1").p == pytest.approx(0.3)


def test_old_opset_initializers_as_inputs():
    """Caffe2-era files (opset 7-9, IR 3) list every initializer among the graph inputs."""
    g = G(c=3, s=20, batch=1, opset=9)
    g.op("Conv", _w(8, 3, 5, 5), _w(8, fan_in=1), kernel_shape=[5, 5], strides=[2, 2])
    g.op("Relu").op("LRN", size=5, alpha=1e-4, beta=0.75, bias=1.0)
    g.op("MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])
    g.op("Reshape", np.array([1, 8 * 4 * 4], np.int64))
    g.op("Gemm", _w(6, 128), _w(6, fan_in=1), transB=1)
    g.op("Softmax")
    err, net, _ = _compare(g.model(inits_as_inputs=True, ir_version=3))
    assert err < TOL
    assert net.names() == ["conv1", "relu1", "norm1", "pool1", "flatten", "fc2"]
    assert net.layer("pool1").config() == {"k": 3, "stride": 2, "ceil_mode": True}


def test_bgr_and_std_folded_into_conv1():
    g = G(c=3, s=10, batch=1)
    g.op("Conv", _w(4, 3, 3, 3), _w(4, fan_in=1), kernel_shape=[3, 3]).op("Relu")
    model = _head(g, 4 * 8 * 8).model()
    std = np.array([0.229, 0.224, 0.225], np.float32)
    net, meta = onnx_io.import_model(model, "m.onnx", bgr=True, std="0.229,0.224,0.225", mean="1,2,3", scale=0.5)
    x = RNG.standard_normal((1, 3, 10, 10), dtype=np.float32)  # our input: RGB (pixel - mean) * scale
    v = np.ascontiguousarray((x / std.reshape(1, 3, 1, 1))[:, ::-1])  # what the ONNX model wants
    ref = _session(model).run(None, {"x": v})[0]
    assert _rel(net.forward(x), ref) < TOL
    pre = meta["preprocessing"]
    assert pre["scale"] == 0.5 and pre["mean_mode"] == "channel" and meta["source"]["input_channel_order"] == "BGR"
    assert np.allclose(meta["extra"]["mean"], [1, 2, 3])


# ----------------------------------------------------------------------------- errors
def _one_line_error(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("op", ["Sigmoid", "BatchNormalization", "AveragePool"])
def test_unsupported_operator(op):
    g = G(c=2, s=4)
    if op == "BatchNormalization":
        g.op(op, *[np.ones(2, np.float32)] * 4)
    elif op == "AveragePool":
        g.op(op, kernel_shape=[2, 2])
    else:
        g.op(op)
    with pytest.raises(UserError) as e:
        onnx_io.import_model(g.op("Flatten").model(), "m.onnx")
    msg = _one_line_error(e)
    assert f"node 'n1_{op.lower()}' ({op})" in msg and "supported operators: Conv, Relu, MaxPool" in msg


def test_identity_average_pool():
    """torchvision's AlexNet exports AdaptiveAvgPool2d((6, 6)) on a 6x6 map as a 1x1 AveragePool."""
    g = G(c=4, s=6)
    g.op("AveragePool", kernel_shape=[1, 1], strides=[1, 1])
    err, net, _ = _compare(_head(g, 4 * 36).model())
    assert err < TOL and [l.kind for l in net.layers] == ["Flatten", "Linear"]


def test_branching_graph_rejected():
    g = G(c=2, s=4)
    g.op("Relu")
    g.nodes.append(helper.make_node("Add", ["x", "t1"], ["t2"], name="skip"))
    g.cur = "t2"
    with pytest.raises(UserError) as e:
        onnx_io.import_model(g.op("Flatten").model(), "m.onnx")
    assert "simple chain" in _one_line_error(e) or "feeds 2 nodes" in str(e.value)


def test_bad_weights_rejected():
    g = G(c=2, s=4)
    w = _w(3, 2, 3, 3)
    w[0, 0, 0, 0] = np.nan
    g.op("Conv", w, kernel_shape=[3, 3])
    with pytest.raises(UserError, match="NaN or infinite"):
        onnx_io.import_model(_head(g, 12).model(), "m.onnx")
    g = G(c=2, s=4)
    g.op("Conv", _w(3, 5, 3, 3), kernel_shape=[3, 3])
    with pytest.raises(UserError, match="does not fit 2 input channels"):
        onnx_io.import_model(_head(g, 12).model(), "m.onnx")


def test_malformed_files(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07\x12\x00garbage\xff\xff\xff not a protobuf")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for path in (bad, empty, tmp_path / "missing.onnx"):
        with pytest.raises(UserError) as e:
            load_onnx(str(path))
        assert str(path) in _one_line_error(e)
        assert main(["import-onnx", str(path), "--out", str(tmp_path / "w.npz")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("zfscratch: error: ")
    assert not (tmp_path / "w.npz").exists()


def test_missing_onnx_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["import-onnx", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "w.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "zfscratch: error: ONNX support needs the onnx package: pip install 'zfscratch[onnx]'"


def test_engine_imports_without_onnx():
    code = ("import sys; sys.modules['onnx'] = None; sys.modules['onnxruntime'] = None\n"
            "import zfscratch.io, zfscratch.cli, zfscratch.onnx_io\n"
            "from zfscratch.models import zfnet_small; zfnet_small()\n"
            "assert not zfscratch.onnx_io.available()\n"
            "zfscratch.cli.build_parser().parse_args(['import-onnx', 'm.onnx', '--out', 'w.npz'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ----------------------------------------------------------------------------- export
@pytest.mark.parametrize("make,opset", [(zfnet_small, 13), (alexnet_like, 10), (zfnet_small, 17)])
def test_export_matches_onnxruntime(tmp_path, make, opset):
    net = make(num_classes=10, input_size=64, seed=3)
    for l in net.layers:  # non-zero biases so that they are checked too
        if "b" in l.params:
            l.params["b"][...] = RNG.standard_normal(l.params["b"].shape).astype(np.float32) * 0.1
    path = tmp_path / "m.onnx"
    model = onnx_io.export_onnx(net, str(path), opset=opset)
    x = RNG.standard_normal((3, 3, 64, 64), dtype=np.float32)
    ref = _session(model).run(None, {"input": x})[0]
    assert _rel(net.forward(x), ref) < TOL
    onnx.checker.check_model(str(path))
    probs = _session(onnx_io.to_model(net, softmax=True)).run(None, {"input": x})[0]
    assert _rel(_softmax(net.forward(x)), probs) < TOL


def test_export_pool_rule_and_pads():
    """A ceil pool whose last window ONNX's formula would keep, and a padded pool, export exactly."""
    from zfscratch.net import build_from_specs
    specs = [dict(kind="Conv2d", name="conv1", config=dict(in_ch=3, out_ch=4, k=3, stride=1, pad=0, groups=1)),
             dict(kind="MaxPool2d", name="pool1", config=dict(k=2, stride=2, ceil_mode=True, pad=1)),
             dict(kind="MaxPool2d", name="pool1b", config=dict(k=3, stride=3, ceil_mode=True)),
             dict(kind="Flatten", name="flatten", config={}),
             dict(kind="Linear", name="fc2", config=dict(in_f=4 * 2 * 2, out_f=5))]
    net = build_from_specs(specs, config={"arch": "custom", "layers": specs, "input_size": 13})
    assert net.output_shapes((1, 3, 13, 13))[1][1] == (1, 4, 6, 6)  # ONNX's ceil formula would say 7
    model = onnx_io.to_model(net)
    x = RNG.standard_normal((2, 3, 13, 13), dtype=np.float32)
    assert _rel(net.forward(x), _session(model).run(None, {"input": x})[0]) < TOL
    back, _ = onnx_io.import_model(model, "m.onnx")
    assert back.layer_specs() == net.layer_specs()


def test_round_trip(tmp_path):
    net = zfnet_small(num_classes=4, input_size=32, seed=5)
    mean = RNG.uniform(0, 255, (32, 32, 3)).astype(np.float32)
    meta = {"classes": ["a", "b", "c", "d"], "preprocessing": {"input_size": 32, "resize": 32, "pad": 4,
                                                                 "scale": 1 / 64, "mean_mode": "pixel"},
            "extra": {"mean": mean}}
    w = tmp_path / "w.npz"
    save_weights(str(w), net, meta={k: v for k, v in meta.items() if k != "extra"}, extra=meta["extra"])
    assert main(["export-onnx", "--weights", str(w), "--out", str(tmp_path / "m.onnx")]) == 0
    assert main(["import-onnx", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "w2.npz")]) == 0
    back, meta2 = load_weights(str(tmp_path / "w2.npz"))
    a, b = net.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert back.layer_specs() == net.layer_specs()
    assert meta2["classes"] == meta["classes"] and meta2["preprocessing"]["pad"] == 4
    assert np.array_equal(meta2["extra"]["mean"], mean)
    from zfscratch.preprocess import Preprocess
    pre = Preprocess.from_meta(meta2)
    assert pre.scale == pytest.approx(1 / 64) and pre.mean.shape == (32, 32, 3)


# ----------------------------------------------------------------------------- ZFNet-512
def _zfnet512_graph():
    """The ONNX model zoo's ZFNet-512 topology (Caffe2 export, opset 9) with random weights.

    conv1 96 7x7/2 (no pad) 224 -> 109, relu, LRN, maxpool 3/2 pads [0,0,1,1] -> 54, conv2 256 5x5/2 -> 25,
    relu, LRN, pool -> 12, conv3-5 512 maps 3x3 pad 1, pool -> 6, Reshape (1, 18432), fc6 4096, fc7 1024,
    fc8 1000, Softmax; input gpu_0/data_0 (1, 3, 224, 224), output gpu_0/softmax_1.
    """
    g = G(c=3, s=224, batch=1, opset=9)
    lrn = dict(size=5, alpha=1e-4, beta=0.75, bias=1.0)
    pool = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])
    g.op("Conv", _w(96, 3, 7, 7), _w(96, fan_in=1) * 0.1, kernel_shape=[7, 7], strides=[2, 2], pads=[0, 0, 0, 0])
    g.op("Relu").op("LRN", **lrn).op("MaxPool", **pool)
    g.op("Conv", _w(256, 96, 5, 5), _w(256, fan_in=1) * 0.1, kernel_shape=[5, 5], strides=[2, 2])
    g.op("Relu").op("LRN", **lrn).op("MaxPool", **pool)
    cin = 256
    for f in (512, 512, 512):
        g.op("Conv", _w(f, cin, 3, 3), _w(f, fan_in=1) * 0.1, kernel_shape=[3, 3], pads=[1, 1, 1, 1]).op("Relu")
        cin = f
    g.op("MaxPool", **pool).op("Reshape", np.array([1, 18432], np.int64))
    for fin, fout in ((18432, 4096), (4096, 1024)):
        g.op("Gemm", _w(fout, fin), _w(fout, fan_in=1) * 0.1, transB=1).op("Relu").op("Dropout", ratio=0.5)
    g.op("Gemm", _w(1000, 1024), _w(1000, fan_in=1) * 0.1, transB=1).op("Softmax")
    m = g.model(inits_as_inputs=True, ir_version=3)
    m.graph.input[0].name = "gpu_0/data_0"
    for n in m.graph.node:
        n.input[:] = ["gpu_0/data_0" if i == "x" else i for i in n.input]
    return m


def test_zfnet512(tmp_path):
    model = _zfnet512_graph()
    path = tmp_path / "zfnet512.onnx"
    path.write_bytes(model.SerializeToString())
    labels = tmp_path / "synset.txt"
    labels.write_text("".join(f"n{i:08d} class {i}\n" for i in range(1000)))
    net, meta = load_onnx(str(path), labels=str(labels), mean=",".join(map(str, onnx_io.ZOO_MEAN_RGB)), bgr=True)
    assert net.names() == ["conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2", "conv3", "relu3",
                           "conv4", "relu4", "conv5", "relu5", "pool5", "flatten", "fc6", "relu6", "drop6", "fc7",
                           "relu7", "drop7", "fc8"]
    shapes = dict(net.output_shapes((1, 3, 224, 224)))
    assert shapes["pool1"][2:] == (54, 54) and shapes["pool2"][2:] == (12, 12) and shapes["pool5"][1:] == (512, 6, 6)
    assert all(net.layer(p).config() == {"k": 3, "stride": 2, "ceil_mode": True} for p in ("pool1", "pool2", "pool5"))
    x = RNG.standard_normal((1, 3, 224, 224), dtype=np.float32)  # our input: RGB, pixel - mean
    v = np.ascontiguousarray(x[:, ::-1])  # the ONNX model wants BGR
    probs = _session(str(path)).run(None, {"gpu_0/data_0": v})[0]
    ref = _session(onnx_io.drop_final_softmax(model)).run(None, {"gpu_0/data_0": v})[0]
    del model
    logits = net.forward(x)
    assert _rel(logits, ref) < TOL and _rel(_softmax(logits), probs) < TOL
    assert meta["classes"][3] == "n00000003 class 3" and meta["source"]["softmax_output"]
    assert net.config["arch"] == "custom" and net.config["input_size"] == 224
    assert meta["preprocessing"]["mean_mode"] == "channel"  # (saving/loading the weights: test_round_trip)

    # DeconvNet: project the strongest activation of the strongest conv5 map down to the image
    from zfscratch import deconv
    act = net.forward_to(x, "relu5")
    m = int(act[0].reshape(512, -1).max(axis=1).argmax())
    recon, info = deconv.project(net, x, "relu5", maps=[m, 7], mode="max", return_info=True)
    assert recon.shape == (1, 2, 3, 224, 224) and np.isfinite(recon).all()
    assert info["value"][0, 0] == pytest.approx(float(act[0, m].max())) and info["value"][0, 0] > 0
    assert np.abs(recon[0, 0]).max() > 0
    y0, y1, x0, x1 = deconv.unit_box(net, "relu5", info["y"][0, 0], info["x"][0, 0])
    outside = np.ones((224, 224), bool)
    outside[y0:y1, x0:x1] = False
    assert np.abs(recon[0, 0][:, outside]).max() == 0  # the projection stays in the unit's receptive field

    # occlusion (paper Fig 7): grey squares (= 0 after mean subtraction), 2 x 2 positions
    try:
        from zfscratch.experiments.occlusion import occlusion_maps
    except ImportError:  # the experiment module not there: the same sweep through the net's API
        occlusion_maps = None
    if occlusion_maps is not None:
        res = occlusion_maps(net, x[0], patch=64, stride=160, batch=4)
        assert res["layer"] == "relu5" and res["activation"].shape == (2, 2)
        assert res["base_activation"] == pytest.approx(float(act[0, res["map_index"]].sum()), rel=1e-5)
        assert np.isfinite(res["prob_true"]).all() and res["positions"] == 4
    else:
        pos = [(0, 0), (0, 160), (160, 0), (160, 160)]
        batch = np.repeat(x, len(pos), axis=0)
        for b, (i, j) in enumerate(pos):
            batch[b, :, i:i + 64, j:j + 64] = 0
        out = net.forward_to(batch, "relu5")
        probs = _softmax(net.forward_range(out, net.index("relu5") + 1, len(net.layers)))
        assert out.shape == (len(pos), 512, 12, 12) and np.allclose(probs.sum(axis=1), 1)
        assert not np.allclose(out[0], out[-1])
