"""``zfscratch bench`` on a tiny network: structure of the report and the JSON (no timing assertions)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from zfscratch import bench
from zfscratch.cli import main

TINY = dict(model="zfnet_small", batch=2, size=32, repeats=1, sgemm_sizes=(64,))
LAYERS = ["conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2", "conv3", "relu3", "conv4",
          "relu4", "conv5", "relu5", "pool5", "flatten", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8"]


def _has_torch():
    return bench.torch_installed()  # without importing it here: --compare torch runs it in a child process


def _check_common(res, backend):
    assert res["config"]["backend"] == backend and res["config"]["batch"] == 2
    assert res["sgemm_gflops"] > 0 and res["jit_s"] >= 0
    assert [r["name"] for r in res["layers"]] == LAYERS
    for r in res["layers"]:
        assert r["fwd_ms"] >= 0 and r["bwd_ms"] >= 0
        if r["kind"] in ("Conv2d", "Linear"):
            assert r["fwd_gflop"] > 0 and r["fwd_gflops"] > 0 and r["fwd_pct_sgemm"] > 0
        else:
            assert r["fwd_gflops"] is None
    conv1 = res["layers"][0]
    assert conv1["bwd_gflop"] == pytest.approx(conv1["fwd_gflop"])  # the first conv skips its input gradient
    assert res["layers"][4]["bwd_gflop"] == pytest.approx(2 * res["layers"][4]["fwd_gflop"])
    net = res["network"]
    for key in ("fwd_ms", "step_ms", "fwd_img_s", "step_img_s", "step_peak_rss_mb", "step_rss_added_mb",
                "step_page_faults", "step_gflop", "step_pct_roofline"):
        assert net[key] >= 0, key
    blas = res["blas"]
    assert blas["kernels"] and all(k["architecture"] for k in blas["kernels"])
    json.dumps(res)  # serializable


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_run_bench_structure(backend):
    lines = []
    res = bench.run_bench(backend=backend, progress=lines.append, **TINY)
    _check_common(res, backend)
    assert "torch" not in res and lines
    text = bench.format_report(res)
    for name in LAYERS + ["sum", "zfscratch", "sgemm", "JIT", "BLAS:", "faults/step", "roofline"]:
        assert name in text


def test_layer_flops_match_hand_count():
    from zfscratch.layers import Conv2d, Linear
    conv = Conv2d(96, 256, 5, stride=2)
    assert bench.layer_flops(conv, (16, 96, 55, 55), (16, 256, 26, 26)) == (2.0 * 16 * 256 * 96 * 25 * 676,) * 1 + (
        4.0 * 16 * 256 * 96 * 25 * 676,)
    assert bench.layer_flops(Linear(10, 4), (3, 10), (3, 4)) == (240.0, 480.0)


@pytest.fixture
def restore_threads():
    """--threads changes process-wide settings (Numba's, the BLAS's): put them back afterwards."""
    import numba
    nb, blas = numba.get_num_threads(), bench.get_blas_threads()
    yield
    numba.set_num_threads(nb)
    if blas is not None:
        bench.set_blas_threads(blas)


def test_cli_json(tmp_path, capsys, restore_threads):
    out = tmp_path / "sub" / "bench.json"
    rc = main(["bench", "--model", "zfnet_small", "--batch", "2", "--size", "32", "--repeats", "1",
               "--threads", "1", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "conv1" in text and "train img/s" in text
    res = json.loads(out.read_text())
    assert res["threads_set"]["requested"] == 1
    assert [r["name"] for r in res["layers"]] == LAYERS
    assert not list(out.parent.glob(".tmp-*"))  # atomic write left no temporary file


def test_cli_bad_arguments(capsys):
    assert main(["bench", "--batch", "0"]) == 2
    assert "--batch" in capsys.readouterr().err
    assert main(["bench", "--model", "zfnet_small", "--size", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zfscratch: error:") and err.count("\n") == 1


def test_compare_torch_missing(monkeypatch, capsys):
    import importlib.util
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real_find(name, *a))
    assert main(["bench", "--model", "zfnet_small", "--size", "32", "--batch", "1", "--compare", "torch"]) == 2
    err = capsys.readouterr().err
    assert "PyTorch" in err and err.count("\n") == 1


def test_compare_torch_that_cannot_be_imported(tmp_path, monkeypatch, capsys):
    """PyTorch found but failing to import in the twin's process: one line, exit 2, nothing timed."""
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('libtorch_cpu.so: cannot open shared object file')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(bench, "torch_installed", lambda: True)
    assert main(["bench", "--model", "zfnet_small", "--size", "32", "--batch", "1", "--compare", "torch"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("zfscratch: error:") and "libtorch_cpu.so" in err[-1] and "PyTorch" in err[-1]
    assert not any("per layer" in line for line in err)


def test_twin_process_reports_its_failures_in_one_line():
    """A request the PyTorch process cannot serve comes back as one TwinError line; the process lives on."""
    if not _has_torch():
        pytest.skip("PyTorch is not installed")
    from zfscratch.backend import get_backend
    from zfscratch.bench_twin import TwinError, TwinProcess
    from zfscratch.models import build_model
    net = build_model({"arch": "zfnet_small", "input_size": 32}, backend=get_backend("numpy"), seed=0)
    x, labels = bench._bench_inputs(net, 2, 32, 0)
    with TwinProcess(net, x, labels, env=bench.twin_env()) as twin:
        with pytest.raises(TwinError, match="time: KeyError"):
            twin.request("time", call="nothing.fwd")
        assert twin.request("time", call="net.fwd")["seconds"] > 0
        logits, loss, grads = twin.agreement()
        assert logits.shape == (2, net.config["num_classes"]) and loss > 0 and "conv1.w" in grads
    assert twin.proc.poll() == 0  # quit cleanly


@pytest.mark.skipif(not _has_torch(), reason="PyTorch is not installed")
def test_compare_torch():
    import sys
    had_torch = "torch" in sys.modules
    res = bench.run_bench(compare="torch", **TINY)
    assert had_torch or "torch" not in sys.modules  # PyTorch ran in its own process
    _check_common(res, "numba")
    agree = res["agreement"]
    assert agree["logits_max_rel_diff"] < 1e-4
    assert agree["grads_max_rel_diff"] < 1e-3
    # against a float64 run of the same weights, our float32 gradients are within float32 rounding
    ours, param = agree["grads_vs_float64"]["ours"]
    assert 0 < ours < 1e-4 and param.split(".")[1] in ("w", "b")
    assert agree["grads_vs_float64"]["torch"][0] > 0
    for r in res["layers"]:
        assert r["torch_fwd_ms"] >= 0 and "fwd_speedup" in r
    assert res["torch"]["step_img_s"] > 0 and res["speedup"]["fwd"] > 0
    text = bench.format_report(res)
    assert "torch" in text and "agreement" in text and "ratio" in text and "float64 run" in text
    assert "in a process of its own" in text and res["versions"]["torch"]
    assert np.isfinite(res["speedup"]["step"])


def test_blas_kernel_check_warns_when_coretype_forces_another_kernel(monkeypatch):
    """A forced OPENBLAS_CORETYPE is reported with the kernel the CPU would pick by itself (a child
    Python without the variable); a warning only when the two differ."""
    monkeypatch.setattr(bench, "blas_kernels", lambda: [dict(filepath="x", internal_api="openblas",
                                                             architecture="Prescott", version=None)])
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Prescott")
    monkeypatch.delenv("OPENBLAS_L2_SIZE", raising=False)
    out = bench.blas_kernel_check()
    assert out["forced"] == {"OPENBLAS_CORETYPE": "Prescott"}
    assert out["default_architecture"]  # the child's own pick, real
    if out["default_architecture"] != "Prescott":
        assert "forces OpenBLAS's Prescott kernel" in out["warning"]
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    out = bench.blas_kernel_check()
    assert out["forced"] == {} and out["warning"] is None and out["default_architecture"] is None


def test_page_faults_per_step_sees_fresh_memory():
    """Touching a fresh 64 MiB array per call costs hundreds of faults or more (one per 4 KiB page, fewer
    where the kernel maps larger folios); refilling one buffer already touched costs about none."""
    buf = np.ones(1 << 24, np.float32)
    reuse = bench.page_faults_per_step(lambda: buf.fill(1.0), lambda: None)
    fresh = bench.page_faults_per_step(lambda: np.ones(1 << 24, np.float32), lambda: None)
    assert reuse < 20 and fresh > 100


def _has_captum():
    import importlib.util
    return importlib.util.find_spec("captum") is not None and bench.torch_installed()  # not imported here


def test_occlusion_bench_cli(tmp_path, capsys, restore_threads):
    out = tmp_path / "occ.json"
    rc = main(["bench", "--occlusion", "--model", "zfnet_small", "--size", "32", "--patch", "8", "--stride", "6",
               "--batch", "4", "--repeats", "1", "--threads", "1", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "positions/s" in text and "MACs saved" in text and "load average" in text
    res = json.loads(out.read_text())
    assert res["config"]["positions"] == 25 and set(res["positions_per_s"]) == {"full", "incremental"}
    assert res["logits_max_rel_diff"] < 1e-5 and res["top_label_agree"] == 1.0
    assert [r["layer"] for r in res["layers"]] == LAYERS
    conv1 = res["layers"][0]
    assert conv1["predicted_saving"] > 1 and conv1["full_s"] > 0 and conv1["incremental_s"] > 0
    assert main(["bench", "--model", "zfnet_small", "--compare", "captum"]) == 2  # captum only with --occlusion
    assert main(["bench", "--occlusion", "--model", "zfnet_small", "--size", "32", "--patch", "40"]) == 2


@pytest.mark.skipif(not _has_captum(), reason="Captum is not installed")
def test_occlusion_bench_captum():
    from zfscratch.bench_occlusion import format_occlusion, run_occlusion_bench
    res = run_occlusion_bench(model="zfnet_small", size=32, patch=8, stride=6, batch=4, captum=True,
                              progress=lambda m: None)
    assert res["positions_per_s"]["captum"] > 0 and res["speedup_vs_captum"] > 0
    assert "captum" in format_occlusion(res)


def test_cli_widths_fc_classes(capsys, restore_threads):
    """--widths/--fc/--num-classes shape the benched model (as zfscratch train's); bad values: one line, exit 2."""
    rc = main(["bench", "--model", "zfnet_small", "--batch", "1", "--size", "32", "--repeats", "1",
               "--widths", "8,16,16,16,8", "--fc", "32", "--num-classes", "3"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "widths [8, 16, 16, 16, 8], fc 32, num_classes 3" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("fc8"))
    assert line.split()[2] == "3"
    assert main(["bench", "--widths", "8,16"]) == 2
    assert "--widths 8,16" in capsys.readouterr().err
