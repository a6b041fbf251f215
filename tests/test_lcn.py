"""Local contrast normalization (subtractive + divisive) beside the cross-channel LRN.

The reference kernels against float64 central differences, the Numba kernels against the reference
(float32 1e-5, float64 1e-12, odd sizes, the floor-bound and sigma-bound branches of the divisor), the
layer's bad-input errors, the ``norm`` choice in model configs and weights files (old files that
called the LRN ``LocalContrastNorm`` still load), and the DeconvNet passing both norms through.
"""
from __future__ import annotations

import numpy as np
import pytest

from zfscratch import deconv, io, models
from zfscratch.gradcheck import check_layer
from zfscratch.kernels import reference as ref
from zfscratch.layers import LocalContrastNorm, LocalResponseNorm, layer_class
from zfscratch.net import Sequential

TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
CASES = [  # size, sigma, floor, shape
    (3, 1.0, 1e-4, (2, 5, 6, 7)),
    (5, 1.5, 1e-4, (3, 4, 7, 9)),
    (5, 2.0, 1e-4, (1, 96, 13, 11)),   # ZFNet-like channel count, odd map
    (3, 1.0, 10.0, (2, 2, 5, 5)),      # every divisor is the floor
    (7, 0.5, 1e-4, (1, 3, 7, 7)),      # window as large as the map
    (1, 1.0, 1e-4, (2, 3, 1, 1)),      # 1x1 maps: v = x - mean over channels
]


def _close(got, want, dtype):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == np.dtype(dtype)
    scale = max(float(np.max(np.abs(want))), 1e-30)
    err = float(np.max(np.abs(got.astype(np.float64) - want)))
    assert err <= TOL[np.dtype(dtype)] * scale, f"error {err:.3g} vs max |ref| {scale:.3g}"


def _fd_input_grad(f, x, dy, eps=1e-6):
    num = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        num[i] = float(((f(xp) - f(xm)) * dy).sum()) / (2 * eps)
    return num


@pytest.mark.parametrize("size,sigma,floor,shape", [c for c in CASES if np.prod(c[3]) < 400])
def test_reference_backward_matches_finite_differences(size, sigma, floor, shape):
    rng = np.random.default_rng(size * 7 + shape[1])
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    y, v, sig, msig = ref.lcn_forward(x, size, sigma, floor)
    dx = ref.lcn_backward(dy, v, sig, msig, size, sigma, floor)
    num = _fd_input_grad(lambda a: ref.lcn_forward(a, size, sigma, floor)[0], x, dy)
    assert np.abs(dx - num).max() <= 1e-7 * max(np.abs(num).max(), 1.0)


def test_reference_forward_formulas():
    """The subtractive and divisive steps written out for one pixel, and the per-image divisor."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 5))
    size, sigma, floor = 3, 1.0, 1e-4
    y, v, sig, msig = ref.lcn_forward(x, size, sigma, floor)
    g = ref.gaussian_window(size, sigma)
    g2 = np.outer(g, g)
    i, j = 2, 3    # interior pixel: no border correction
    w = g2 / x.shape[1]                           # sums to one over the window and the 3 maps
    m = (w * x[0, :, i - 1:i + 2, j - 1:j + 2]).sum()
    assert np.isclose(v[0, 1, i, j], x[0, 1, i, j] - m)
    s = np.sqrt((w * v[0, :, i - 1:i + 2, j - 1:j + 2] ** 2).sum())
    assert np.isclose(sig[0, i, j], s)
    assert np.allclose(msig, sig.mean(axis=(1, 2)))
    assert np.isclose(y[0, 1, i, j], v[0, 1, i, j] / max(msig[0], s))
    # border pixel: the weights outside the map are dropped and the rest renormalized
    wb = g2[1:, 1:] / g2[1:, 1:].sum() / x.shape[1]
    assert np.isclose(v[1, 0, 0, 0], x[1, 0, 0, 0] - (wb * x[1, :, :2, :2]).sum())
    # a flat image: v = 0 and the floor keeps y finite
    yf = ref.lcn_forward(np.full((1, 2, 4, 4), 3.0), 3, 1.0, floor)[0]
    assert np.abs(yf).max() < 1e-10 and np.isfinite(yf).all()


cpu = pytest.importorskip("zfscratch.kernels.cpu", reason="numba is not installed")


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("size,sigma,floor,shape", CASES)
def test_numba_matches_reference(size, sigma, floor, shape, dtype):
    rng = np.random.default_rng(size + shape[1] + shape[2])
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    want = ref.lcn_forward(x, size, sigma, floor)
    got = cpu.lcn_forward(x, size, sigma, floor)
    for g, w in zip(got, want):
        _close(g, w, dtype)
    _close(cpu.lcn_backward(dy, *got[1:], size, sigma, floor), ref.lcn_backward(dy, *want[1:], size, sigma, floor),
           dtype)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_layer_gradient_check(backend):
    rng = np.random.default_rng(0)
    layer = LocalContrastNorm(3, 1.0, 1e-4, name="norm1").set_backend(backend)
    errs = check_layer(layer, rng.standard_normal((2, 4, 6, 5)), rng)
    assert max(errs.values()) < 1e-6, errs


@pytest.mark.parametrize("kw,what", [(dict(size=4), "odd integer"), (dict(size=0), "odd integer"),
                                     (dict(size=2.5), "odd integer"), (dict(sigma=0), "sigma"),
                                     (dict(sigma=float("nan")), "sigma"), (dict(floor=0.0), "floor"),
                                     (dict(floor=-1.0), "floor"), (dict(size="x"), "numbers")])
def test_layer_refuses_bad_settings(kw, what):
    with pytest.raises(ValueError, match=what) as e:
        LocalContrastNorm(name="norm2", **kw)
    assert "norm2" in str(e.value)


def test_window_that_does_not_fit_names_the_layer():
    layer = LocalContrastNorm(size=7, name="norm2")
    with pytest.raises(ValueError, match=r"norm2.*7x7 does not fit its 5x6"):
        layer.forward(np.zeros((1, 2, 5, 6), np.float32))
    with pytest.raises(ValueError, match="layer norm2 .*choose lcn size <= 4"):
        models.build_model(dict(arch="zfnet_small", input_size=32, norm="lcn", lcn=dict(size=5, sigma=1.0,
                                                                                        floor=1e-4)))


@pytest.mark.parametrize("norm,kinds", [("lrn", ["LocalResponseNorm"] * 2), ("lcn", ["LocalContrastNorm"] * 2),
                                        ("none", [])])
def test_model_norm_choice_and_weights_roundtrip(tmp_path, norm, kinds):
    net = models.build_model(dict(arch="zfnet_small", input_size=48, num_classes=3, norm=norm), backend="numpy")
    assert [l.kind for l in net.layers if l.kind in ("LocalResponseNorm", "LocalContrastNorm")] == kinds
    assert net.config["norm"] == norm
    x = np.random.default_rng(0).standard_normal((2, 3, 48, 48)).astype(np.float32)
    path = tmp_path / "w.npz"
    io.save_weights(path, net)
    back, meta = io.load_weights(path, backend="numpy")
    assert back.config["norm"] == norm
    np.testing.assert_array_equal(back.forward(x), net.forward(x))


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="unknown normalization 'batch'"):
        models.default_config("zfnet_small", norm="batch")


def test_old_files_calling_the_lrn_local_contrast_norm_still_load():
    spec = dict(kind="LocalContrastNorm", name="norm1", config=dict(size=5, alpha=1e-4, beta=0.75, k=2.0))
    assert layer_class(spec["kind"], spec["config"]) is LocalResponseNorm
    assert layer_class("LocalContrastNorm", dict(size=5, sigma=1.0, floor=1e-4)) is LocalContrastNorm
    from zfscratch.net import build_from_specs
    net = build_from_specs([spec])
    assert net.layers[0].kind == "LocalResponseNorm" and net.layers[0].alpha == 1e-4


@pytest.mark.parametrize("norm_layer", [LocalResponseNorm(5, 0.5, 0.75, 1.0, name="norm1"),
                                        LocalContrastNorm(3, 1.0, 1e-4, name="norm1")])
def test_deconvnet_passes_both_norms_through(norm_layer):
    """Projecting from above a norm layer equals projecting the same net without it (paper section 2.1),
    given the same switches: the norm only changes which switches the forward pass records."""
    from zfscratch.layers import Conv2d, MaxPool2d, ReLU
    rng = np.random.default_rng(5)
    conv = Conv2d(3, 4, 3, pad=1, name="conv1", rng=rng, init_std=0.5)
    top = Conv2d(4, 3, 3, pad=1, name="conv2", rng=rng, init_std=0.5)
    net = Sequential([conv, ReLU(name="relu1"), norm_layer, top, ReLU(name="relu2")])
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    proj = deconv.project(net, x, "relu2", maps=[1])
    # by hand: relu the top map's kept activation, transposed conv2, (norm skipped), relu, transposed conv1
    a = net.forward(x)
    r = np.zeros_like(a)
    for n in range(2):
        fm = a[n, 1]
        pos = np.unravel_index(np.argmax(fm), fm.shape)
        r[n, 1][pos] = fm[pos]
    h = top.backward_data(np.maximum(r, 0), (2, 4, 7, 7))
    want = conv.backward_data(np.maximum(h, 0), x.shape)
    np.testing.assert_allclose(proj[:, 0], want, rtol=1e-5, atol=1e-6)


def test_normalization_experiment_end_to_end(tmp_path):
    """Three tiny trainings through the CLI: the table, the figure, one layer-2 top-9 per norm."""
    import json
    import subprocess
    import sys
    out = tmp_path / "norms"
    cmd = [sys.executable, "-m", "zfscratch", "normalization", "--data", "synthetic:n=160,n_val=48,size=48",
           "--input-size", "48", "--epochs", "1", "--batch", "32", "--topk-images", "32", "--out", str(out),
           "--quiet", "--backend", "numba"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "normalization.json").read_text())
    assert list(res["models"]) == ["lrn", "lcn", "none"]
    for norm, st in res["models"].items():
        assert 0.0 <= st["val_accuracy"] <= 1.0 and np.isfinite(st["hf_energy"])
        assert (out / norm / "topk" / "topk_relu2.png").stat().st_size > 1000
        assert (out / norm / "weights.npz").is_file()
    assert "| lcn |" in r.stdout and (out / "normalization.png").stat().st_size > 1000


@pytest.mark.parametrize("args,msg", [(["--norms", "lrn,batch"], "--norms lrn,batch: expected distinct names"),
                                      (["--input-size", "32"], "norm2 (LocalContrastNorm): window 5x5 does not fit")])
def test_normalization_bad_input_is_one_line(tmp_path, args, msg):
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "zfscratch", "normalization", "--data", "synthetic:n=64,n_val=16,size=32",
           "--epochs", "1", "--out", str(tmp_path / "o"), "--quiet", "--norms", "lcn"] + args
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
