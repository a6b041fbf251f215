"""Sequential bookkeeping, optimizer, and npz weights: round trips and bad files."""
import json

import numpy as np
import pytest

from zfscratch import io, models
from zfscratch.errors import UserError
from zfscratch.optim import SGD, PlateauSchedule, StepSchedule, renormalize_filters


def test_params_and_grads_in_fixed_order():
    net = models.zfnet_small()
    names = [n for n, _ in net.params()]
    assert names[:4] == ["conv1.w", "conv1.b", "conv2.w", "conv2.b"] and names[-1] == "fc8.b"
    assert [g.shape for g in net.grads()] == [p.shape for _, p in net.params()]


def test_forward_to_and_range_agree_with_forward():
    net = models.zfnet_small(input_size=32)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    mid = net.forward_to(x, "pool2")
    assert mid.shape == (2, 64, 4, 4)
    np.testing.assert_allclose(net.forward_range(mid, net.index("pool2") + 1, len(net.layers)), net.forward(x),
                               rtol=1e-6)
    with pytest.raises(KeyError, match="no layer"):
        net.layer("conv9")


def test_first_conv_skips_input_gradient():
    net = models.zfnet_small(input_size=32)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y = net.forward(x, train=True)
    assert net.backward(np.ones_like(y)) is None
    assert float(np.abs(net.layer("conv1").grads["w"]).sum()) > 0


def test_state_dict_round_trip():
    a, b = models.zfnet_small(seed=1), models.zfnet_small(seed=2)
    b.load_state_dict(a.state_dict())
    for (_, p), (_, q) in zip(a.params(), b.params()):
        np.testing.assert_array_equal(p, q)
    bad = a.state_dict()
    bad["conv1.w"] = bad["conv1.w"][:, :2]
    with pytest.raises(ValueError, match="conv1.w"):
        b.load_state_dict(bad)


def test_npz_round_trip_with_meta_and_extra(tmp_path):
    net = models.zfnet_small(num_classes=3, seed=5)
    mean = np.full((64, 64, 3), 0.5, np.float32)
    path = tmp_path / "w.npz"
    io.save_weights(path, net, {"classes": ["a", "b", "c"]}, extra={"mean": mean})
    loaded, meta = io.load_weights(path)
    assert meta["classes"] == ["a", "b", "c"] and meta["config"]["num_classes"] == 3
    np.testing.assert_array_equal(meta["extra"]["mean"], mean)
    for (n, p), (m, q) in zip(net.params(), loaded.params()):
        assert n == m
        np.testing.assert_array_equal(p, q)
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".tmp")]


def test_bad_npz_files_give_clear_errors(tmp_path):
    net = models.zfnet_small(num_classes=3)
    good = tmp_path / "good.npz"
    io.save_weights(good, net)
    arrays, meta = io.load_npz(good)

    with pytest.raises(UserError, match="does not exist"):
        io.load_weights(tmp_path / "missing.npz")

    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    with pytest.raises(UserError, match="not a valid .npz"):
        io.load_weights(text)

    obj = tmp_path / "obj.npz"
    np.savez(obj, **{"conv1.w": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(UserError, match="object arrays"):
        io.load_weights(obj)

    missing = tmp_path / "missing_key.npz"
    a2 = dict(arrays)
    del a2["fc8.b"]
    io.atomic_savez(missing, a2, meta)
    with pytest.raises(UserError, match="missing fc8.b"):
        io.load_weights(missing)

    shapes = tmp_path / "shape.npz"
    a3 = dict(arrays)
    a3["conv2.w"] = np.zeros((5, 5), np.float32)
    io.atomic_savez(shapes, a3, meta)
    with pytest.raises(UserError, match=r"conv2.w has shape \(5, 5\)"):
        io.load_weights(shapes)

    other = tmp_path / "other_arch.npz"
    io.save_weights(other, models.alexnet_like(num_classes=3))
    arr_other, _ = io.load_npz(other)
    io.atomic_savez(tmp_path / "mixed.npz", arr_other, meta)  # alexnet arrays, zfnet_small config
    with pytest.raises(UserError, match="conv1.w has shape"):
        io.load_weights(tmp_path / "mixed.npz")

    nometa = tmp_path / "nometa.npz"
    np.savez(nometa, **arrays)
    with pytest.raises(UserError, match="no zfscratch metadata"):
        io.load_weights(nometa)

    nan = tmp_path / "nan.npz"
    a4 = dict(arrays)
    a4["fc8.b"] = np.full_like(a4["fc8.b"], np.nan)
    io.atomic_savez(nan, a4, meta)
    with pytest.raises(UserError, match="NaN"):
        io.load_weights(nan)


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    io.atomic_write_text(path, json.dumps({"v": 1}))

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(io.os, "replace", boom)
    with pytest.raises(UserError, match="cannot write .*x.json: disk full"):  # one line, not a traceback
        io.atomic_write_text(path, json.dumps({"v": 2}))
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_renormalization_caps_filter_rms():
    net = models.zfnet_small(input_size=32)
    w = net.layer("conv1").params["w"]
    w[0] = 5.0          # RMS 5 -> must come back to 0.1
    w[1] = 0.01         # RMS 0.01 -> untouched
    opt = SGD(net, lr=1e-3)
    opt.step()          # zero gradients: only the renormalization acts (and weight decay, tiny)
    rms = np.sqrt((w.reshape(w.shape[0], -1) ** 2).mean(axis=1))
    assert rms.max() <= 0.1 + 1e-6
    assert rms[0] == pytest.approx(0.1, rel=1e-5)
    assert rms[1] == pytest.approx(0.01, rel=1e-3)
    w2 = np.full((2, 1, 2, 2), 0.3)
    renormalize_filters(w2, 0.1)
    np.testing.assert_allclose(w2, 0.1)


def test_sgd_update_rule():
    net = models.zfnet_small(input_size=32)
    p = net.layer("fc8").params["b"]
    g = net.layer("fc8").grads["b"]
    p[...] = 1.0
    g[...] = 2.0
    opt = SGD(net, lr=0.1, momentum=0.5, weight_decay=0.1, renorm_rms=None)
    opt.step()          # biases have no weight decay: v = -0.1*2 = -0.2
    np.testing.assert_allclose(p, 0.8)
    opt.step()          # v = 0.5*-0.2 - 0.2 = -0.3
    np.testing.assert_allclose(p, 0.5)
    w = net.layer("fc8").params["w"]
    state = opt.state_dict()
    opt2 = SGD(net, lr=0.5)
    opt2.load_state_dict(state)
    assert opt2.lr == 0.1
    np.testing.assert_array_equal(opt2.velocity[-1], opt.velocity[-1])
    assert w.shape == (10, 256)


def test_schedules():
    net = models.zfnet_small(input_size=32)
    opt = SGD(net, lr=0.1)
    sched = PlateauSchedule(opt, factor=0.5, patience=1)
    for acc in [0.5, 0.6, 0.6, 0.6]:
        sched.step(acc)
    assert opt.lr == pytest.approx(0.05)
    step = StepSchedule(opt, milestones=[3], gamma=0.1)
    step.step(2)
    assert opt.lr == pytest.approx(0.05)
    step.step(3)
    assert opt.lr == pytest.approx(0.005)


def test_fused_sgd_update_matches_reference():
    from zfscratch.kernels import reference as R
    cpu = pytest.importorskip("zfscratch.kernels.cpu")
    rng = np.random.default_rng(0)
    for dt, tol in ((np.float32, 1e-6), (np.float64, 1e-14)):
        p, g, v = (rng.standard_normal((7, 13)).astype(dt) for _ in range(3))
        p2, g2, v2 = p.copy(), g.copy(), v.copy()
        R.sgd_update(p, g, v, 0.1, 0.9, 5e-4)
        cpu.sgd_update(p2, g2, v2, 0.1, 0.9, 5e-4)
        np.testing.assert_allclose(p2, p, rtol=tol, atol=tol)
        np.testing.assert_allclose(v2, v, rtol=tol, atol=tol)
        R.sgd_update(p, g, v, 0.1, 0.9, 0.0)
        cpu.sgd_update(p2, g2, v2, 0.1, 0.9, 0.0)
        np.testing.assert_allclose(p2, p, rtol=tol, atol=tol)
