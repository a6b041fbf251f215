"""DeconvNet projection and receptive fields (zfscratch.deconv): correctness on hand-built cases."""
import numpy as np
import pytest

from zfscratch import deconv
from zfscratch.layers import Conv2d, LocalResponseNorm, MaxPool2d, ReLU
from zfscratch.models import build_model, zfnet_small
from zfscratch.net import Sequential


def _numba_or_skip():
    try:
        from zfscratch.backend import get_backend
        return get_backend("numba")
    except Exception as e:  # kernels/cpu/ or numba missing
        pytest.skip(f"numba backend not available: {e}")


def _conv_net(stride=2, pad=1, k=3, c_out=4, seed=0):
    rng = np.random.default_rng(seed)
    net = Sequential([Conv2d(3, c_out, k, stride, pad, name="conv1", rng=rng, dtype=np.float64),
                      ReLU(name="relu1")])
    net.layer("conv1").params["b"][...] = rng.normal(size=c_out)  # biases must not matter
    return net


# ----------------------------------------------------------------------------- layer 1
@pytest.mark.parametrize("layer", ["conv1", "relu1"])
@pytest.mark.parametrize("unit", [(2, 1, 3), (0, 0, 0), (3, 4, 4)])
def test_layer1_projection_is_the_transposed_filter_at_the_unit(layer, unit):
    net = _conv_net()
    w = net.layer("conv1").params["w"]
    x = np.random.default_rng(1).normal(size=(2, 3, 9, 9))
    c, y, xx = unit
    v = 1.7
    rec, kept = deconv.project_activation(net, x, layer, [(1, c, y, xx)], values=v)
    expect = np.zeros((3, 9, 9))
    for i in range(3):
        for j in range(3):
            r, q = y * 2 - 1 + i, xx * 2 - 1 + j
            if 0 <= r < 9 and 0 <= q < 9:
                expect[:, r, q] += v * w[c, :, i, j]
    assert kept[0] == v
    np.testing.assert_allclose(rec[0], expect, rtol=1e-12, atol=1e-12)


def test_layer1_projection_uses_the_forward_activation_by_default():
    net = _conv_net()
    x = np.random.default_rng(2).normal(size=(1, 3, 9, 9))
    act = net.forward_to(x, "conv1")
    rec, kept = deconv.project_activation(net, x, "conv1", [(0, 2, 1, 1)])
    ref, _ = deconv.project_activation(net, x, "conv1", [(0, 2, 1, 1)], values=1.0)
    assert kept[0] == pytest.approx(act[0, 2, 1, 1])
    np.testing.assert_allclose(rec[0], act[0, 2, 1, 1] * ref[0], rtol=1e-12)


# ----------------------------------------------------------------------------- unpooling
def _identity_pool_net(k=2, stride=2):
    conv = Conv2d(1, 1, 1, name="conv1", dtype=np.float64)
    conv.params["w"][...] = 1.0
    conv.params["b"][...] = 0.0
    return Sequential([conv, ReLU(name="relu1"), MaxPool2d(k, stride, name="pool1")])


def test_projection_goes_through_the_pool_switches():
    x = np.array([[1, 5, 0, 2],
                  [3, 2, 9, 1],
                  [0, 4, 1, 1],
                  [7, 1, 3, 8]], np.float64)[None, None]
    net = _identity_pool_net()
    rec = deconv.project(net, x, "pool1", maps=0, mode="map")
    expect = np.zeros((4, 4))
    expect[0, 1], expect[1, 2], expect[3, 0], expect[3, 3] = 5, 9, 7, 8
    np.testing.assert_array_equal(rec[0, 0], expect)
    # mode max: only the strongest pooled unit, at its switch
    rec, info = deconv.project(net, x, "pool1", maps=[0], mode="max", return_info=True)
    expect = np.zeros((4, 4))
    expect[1, 2] = 9
    np.testing.assert_array_equal(rec[0, 0, 0], expect)
    assert (info["y"][0, 0], info["x"][0, 0], info["value"][0, 0]) == (0, 1, 9)


def test_overlapping_pool_switches_sum_and_follow_each_image():
    # 3x3 stride-2 ceil pool on 5x5: windows overlap; the centre 9 wins all four windows
    a = np.zeros((5, 5))
    a[2, 2] = 9
    b = np.zeros((5, 5))
    b[0, 0], b[4, 4], b[0, 4], b[4, 0] = 1, 2, 3, 4
    x = np.stack([a, b])[:, None]
    net = _identity_pool_net(3, 2)
    rec = deconv.project(net, x, "pool1", maps=0, mode="map")
    ea = np.zeros((5, 5))
    ea[2, 2] = 4 * 9  # four pooled units unpool to the same switch
    np.testing.assert_array_equal(rec[0, 0], ea)
    assert rec[1, 0, 0, 0] == 1 and rec[1, 0, 4, 4] == 2 and rec[1, 0, 0, 4] == 3 and rec[1, 0, 4, 0] == 4


def test_rectification_applies_to_the_reconstruction():
    # conv2 with a negative filter: projecting through relu1 rectifies the reconstruction itself
    conv1 = Conv2d(1, 1, 1, name="conv1", dtype=np.float64)
    conv1.params["w"][...] = 1.0
    conv2 = Conv2d(1, 1, 1, name="conv2", dtype=np.float64)
    conv2.params["w"][...] = -1.0
    net = Sequential([conv1, ReLU(name="relu1"), conv2, ReLU(name="relu2")])
    x = np.ones((1, 1, 2, 2))
    rec, _ = deconv.project_activation(net, x, "conv2", [(0, 0, 0, 0)], values=2.0)
    np.testing.assert_array_equal(rec[0], np.zeros((1, 2, 2)))  # relu(-2) = 0
    rec, _ = deconv.project_activation(net, x, "conv2", [(0, 0, 0, 0)], values=-2.0)
    assert rec[0, 0, 0, 0] == 2.0


# ----------------------------------------------------------------------------- linearity
def test_projection_is_linear_in_the_kept_activation():
    net = zfnet_small(input_size=32, widths=[8, 12, 16, 16, 12], fc=16).astype(np.float64)
    x = np.random.default_rng(3).normal(size=(2, 3, 32, 32))
    u = [(1, 5, 2, 3)]
    r1, _ = deconv.project_activation(net, x, "relu3", u, values=1.0)
    r3, _ = deconv.project_activation(net, x, "relu3", u, values=3.25)
    assert np.abs(r1).max() > 0
    np.testing.assert_allclose(r3, 3.25 * r1, rtol=1e-10, atol=1e-14)
    # with no rectification crossed (conv1) the projection is additive: a whole map = sum of its units
    net = _conv_net(stride=2, pad=1)
    x = np.random.default_rng(4).normal(size=(1, 3, 8, 8))
    whole = deconv.project(net, x, "conv1", maps=1, mode="map")[0]
    units = [(0, 1, i, j) for i in range(4) for j in range(4)]
    parts, _ = deconv.project_activation(net, x, "conv1", units)
    np.testing.assert_allclose(parts.sum(axis=0), whole, rtol=1e-10, atol=1e-12)


def test_project_max_equals_project_activation_at_the_argmax():
    net = zfnet_small(input_size=32, widths=[8, 12, 16, 16, 12], fc=16)
    x = np.random.default_rng(5).normal(size=(3, 3, 32, 32)).astype(np.float32)
    rec, info = deconv.project(net, x, "relu2", maps=[0, 7, 3], return_info=True, budget=4000)
    units = [(i, m, info["y"][i, j], info["x"][i, j]) for i in range(3) for j, m in enumerate([0, 7, 3])]
    ref, kept = deconv.project_activation(net, x, "relu2", units)
    np.testing.assert_allclose(rec.reshape(9, 3, 32, 32), ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(kept, info["value"].reshape(-1), rtol=1e-6)
    act = net.forward_to(x, "relu2")
    assert info["value"][1, 1] == pytest.approx(act[1, 7].max())


# ----------------------------------------------------------------------------- LCN skipped
def test_lcn_layers_are_passed_through():
    def build(with_norm):
        rng = np.random.default_rng(6)
        layers = [Conv2d(3, 8, 3, 1, 1, name="conv1", rng=rng, dtype=np.float64), ReLU(name="relu1"),
                  MaxPool2d(3, 2, name="pool1")]
        if with_norm:
            layers.append(LocalResponseNorm(5, alpha=0.5, beta=0.75, k=1.0, name="norm1"))
        layers += [Conv2d(8, 6, 3, 1, 1, name="conv2", rng=rng, dtype=np.float64), ReLU(name="relu2")]
        return Sequential(layers)

    a, b = build(True), build(False)
    x = np.random.default_rng(7).normal(size=(2, 3, 11, 11))
    units = [(0, 2, 1, 3), (1, 5, 4, 0)]
    ra, _ = deconv.project_activation(a, x, "relu2", units, values=1.0)
    rb, _ = deconv.project_activation(b, x, "relu2", units, values=1.0)
    np.testing.assert_allclose(ra, rb, rtol=1e-12)

    def boom(*args, **kw):
        raise AssertionError("the DeconvNet must not run LCN backward")
    a.layer("norm1").backward = boom
    deconv.project(a, x, "relu2", maps=[1, 2])


# ----------------------------------------------------------------------------- receptive fields
def test_receptive_field_arithmetic_of_zfnet():
    z = build_model({"arch": "zfnet", "fc": 8})  # the paper's conv/pool geometry; small fc layers
    assert deconv.receptive_field(z, 1) == (7, 2, -1)
    assert deconv.receptive_field(z, "pool1") == (11, 4, -1)
    assert deconv.receptive_field(z, 2) == (27, 8, -1)
    assert deconv.receptive_field(z, "pool2") == (43, 16, -1)
    assert deconv.receptive_field(z, 5) == (139, 16, -49)
    assert deconv.receptive_field(z, "pool5") == (171, 32, -49)
    s = zfnet_small()
    assert deconv.receptive_field(s, "conv1") == (7, 2, -3)
    assert deconv.unit_box(s, 1, 0, 0) == (0, 4, 0, 4)
    assert deconv.patch_box(s, 1, 0, 0) == (0, 7, 0, 7)
    assert deconv.patch_box(s, 5, 3, 3) == (0, 64, 0, 64)


@pytest.mark.parametrize("layer,units", [("relu1", [(7, 9), (0, 0), (15, 15)]),
                                         ("pool1", [(4, 3), (0, 7), (7, 7)]),
                                         ("relu2", [(4, 5), (0, 0)]),
                                         ("pool2", [(2, 1), (3, 3)])])
def test_receptive_field_matches_the_input_gradient_support(layer, units):
    net = zfnet_small(input_size=32, seed=1).astype(np.float64)
    net.layers[0].need_dx = True
    idx = net.index(layer)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(4, 3, 32, 32))
    for (y, xx) in units:
        out = net.forward_range(x, 0, idx + 1)
        d = np.zeros_like(out)
        d[:, :, y, xx] = 1.0  # every map of the unit, every image: union of the supports
        for l in reversed(net.layers[:idx + 1]):
            d = l.backward(d)
        support = np.nonzero(np.abs(d).sum(axis=(0, 1)))
        box = (support[0].min(), support[0].max() + 1, support[1].min(), support[1].max() + 1)
        assert box == deconv.unit_box(net, layer, y, xx), (layer, y, xx)
        # and the DeconvNet projection of that unit never leaves the box
        rec, _ = deconv.project_activation(net, x, layer, [(0, 3, y, xx)], values=1.0)
        y0, y1, x0, x1 = deconv.unit_box(net, layer, y, xx)
        outside = np.ones((32, 32), bool)
        outside[y0:y1, x0:x1] = False
        assert np.all(rec[0][:, outside] == 0) and np.any(rec[0] != 0)


# ----------------------------------------------------------------------------- names, errors
def test_layer_names_and_errors():
    net = zfnet_small()
    assert deconv.parse_layers(net, "1-5") == ["relu1", "relu2", "relu3", "relu4", "relu5"]
    assert deconv.parse_layers(net, "2, conv5,pool2,2") == ["relu2", "conv5", "pool2"]
    assert deconv.projectable_layers(net)[-1] == "pool5"
    for bad in ("fc6", "6", "nope", "3-1"):
        with pytest.raises(ValueError):
            deconv.parse_layers(net, bad)
    x = np.zeros((1, 3, 64, 64), np.float32)
    with pytest.raises(ValueError):
        deconv.project(net, x, "relu1", maps=[32])
    with pytest.raises(ValueError):
        deconv.project_activation(net, x, "relu1", [(0, 0, 32, 0)])


def test_reconstruct_sums_nothing_when_activations_are_zero():
    net = _conv_net()
    net.layer("conv1").params["b"][...] = -1e6  # every unit rectified away
    x = np.random.default_rng(9).normal(size=(2, 3, 9, 9))
    assert np.all(deconv.reconstruct(net, x, "relu1") == 0)


# ----------------------------------------------------------------------------- backends
def test_numpy_and_numba_backends_agree():
    _numba_or_skip()
    a = zfnet_small(input_size=32, backend="numpy")
    b = zfnet_small(input_size=32, backend="numba")
    x = np.random.default_rng(10).normal(size=(3, 3, 32, 32)).astype(np.float32)
    for layer in ("relu1", "pool2", "relu5"):
        ra, ia = deconv.project(a, x, layer, maps=[0, 5], return_info=True)
        rb, ib = deconv.project(b, x, layer, maps=[0, 5], return_info=True)
        np.testing.assert_array_equal(ia["y"], ib["y"])
        np.testing.assert_array_equal(ia["x"], ib["x"])
        scale = np.abs(ra).max()
        np.testing.assert_allclose(rb, ra, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(deconv.reconstruct(b, x, 3), deconv.reconstruct(a, x, 3), rtol=1e-3,
                               atol=1e-5 * np.abs(deconv.reconstruct(a, x, 3)).max())
