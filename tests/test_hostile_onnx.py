"""Hostile ONNX models: absurd declared input sizes, zero strides, NaN weights (import-onnx --no-verify)."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from hostile_util import assert_refused  # noqa: E402


def _model(path, s=16, stride=1, w=None):
    w = np.full((4, 3, 3, 3), 0.1, np.float32) if w is None else w
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, s, s])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], strides=[stride, stride]),
             helper.make_node("Flatten", ["c"], ["y"])]
    g = helper.make_graph(nodes, "g", [x], [y], initializer=[numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("kw,words", [
    (dict(s=40000), "refused before allocating"),
    (dict(stride=0), "stride"),
])
def test_onnx_bad_shapes(tmp_path, kw, words):
    p = _model(tmp_path / "m.onnx", **kw)
    assert_refused(["import-onnx", p.name, "--out", "out/w.npz", "--no-verify"], tmp_path, ["m.onnx", words],
                   out=tmp_path / "out")


def test_onnx_nan_weights_refused_even_without_verify(tmp_path):
    w = np.full((4, 3, 3, 3), np.nan, np.float32)
    p = _model(tmp_path / "nan.onnx", w=w)
    assert_refused(["import-onnx", p.name, "--out", "out/w.npz", "--no-verify"], tmp_path, ["nan.onnx"],
                   out=tmp_path / "out")
    assert not (tmp_path / "out" / "w.npz").exists()


def test_import_onnx_into_a_closed_pipe_still_writes_weights(tmp_path):
    import os
    import subprocess
    import sys
    p = _model(tmp_path / "ok.onnx")
    code = "import sys\nfrom zfscratch.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = subprocess.Popen([sys.executable, "-c", code, "import-onnx", str(p), "--out", str(tmp_path / "w.npz"),
                             "--no-verify"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()  # ``| head -0``: nobody reads
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err, err
    assert os.path.getsize(tmp_path / "w.npz") > 0
