"""The three back-projection rules of zfscratch.deconv (DeconvNet, guided backprop, gradient).

Oracles: per-layer Jacobians by float64 central finite differences of each layer's forward pass
(no backward kernel involved), composed with each rule's step at the ReLUs and normalizations; the
end-to-end finite-difference gradient of the chosen unit; and the DeconvNet outputs stored by the code
before the rules were added (tests/data/deconvnet_ref.npz, see tests/data/make_deconvnet_ref.py).
"""
import functools
import json
import os

import numpy as np
import pytest

from zfscratch import deconv
from zfscratch.layers import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU
from zfscratch.net import Sequential, build_from_specs

REF = os.path.join(os.path.dirname(__file__), "data", "deconvnet_ref.npz")
RULES = ("deconvnet", "guided", "gradient")
CONV_LAYERS = ["conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2"]
FC_LAYERS = ["fc6", "relu6", "drop6", "fc7"]


def _ref():
    return np.load(REF, allow_pickle=False)


def _numba_or_skip():
    try:
        from zfscratch.backend import get_backend
        return get_backend("numba")
    except Exception as e:  # numba missing
        pytest.skip(f"numba backend not available: {e}")


@functools.lru_cache(maxsize=None)
def _tiny(norm, fc=True):
    """The stored tiny net (conv1-pool2 with an LRN or LCN, input 3x15x13) plus an fc part:
    flatten, fc6 (20 -> 6), relu6, drop6, fc7 (6 -> 4, the logits). Returns (specs, state, images)."""
    d = _ref()
    specs = json.loads(str(d[f"{norm}/specs"]))
    state = {k.split("/", 2)[2]: d[k] for k in d.files if k.startswith(f"{norm}/param/")}
    x = d[f"{norm}/images"]
    if fc:
        rng = np.random.default_rng(5)
        specs = specs + [dict(kind="Flatten", name="flatten", config={}),
                         dict(kind="Linear", name="fc6", config=dict(in_f=20, out_f=6)),
                         dict(kind="ReLU", name="relu6", config={}),
                         dict(kind="Dropout", name="drop6", config=dict(p=0.5)),
                         dict(kind="Linear", name="fc7", config=dict(in_f=6, out_f=4))]
        state = dict(state)
        state["fc6.w"], state["fc6.b"] = rng.normal(0, 0.6, (6, 20)), rng.normal(0, 0.2, 6)
        state["fc7.w"], state["fc7.b"] = rng.normal(0, 0.6, (4, 6)), rng.normal(0, 0.2, 4)
    return specs, state, x


def _net(norm, fc=True, backend="numpy", dtype=np.float64):
    specs, state, x = _tiny(norm, fc)
    net = build_from_specs(specs, dtype=np.float64)
    net.load_state_dict(state)
    net.to(backend, dtype)
    return net, x.astype(dtype)


# ----------------------------------------------------------------------------- the oracle
def _jacobian(layer, a, eps=1e-6):
    """d layer.forward(a) / d a for one input ``a`` (1, ...), by central differences: (out, in)."""
    y0 = layer.forward(a.copy(), train=False)
    jac = np.zeros((y0.size, a.size))
    flat = a.reshape(-1)
    for j in range(a.size):
        p, m = flat.copy(), flat.copy()
        p[j] += eps
        m[j] -= eps
        jac[:, j] = (layer.forward(p.reshape(a.shape), train=False)
                     - layer.forward(m.reshape(a.shape), train=False)).reshape(-1) / (2 * eps)
    return jac


def _pool_jacobian(switches, in_shape, fd):
    """A max-pool's Jacobian with ties broken as the forward pass broke them (its switches: the first
    maximum), written out as a 0/1 matrix; equal to the finite-difference one on untied windows (where
    relu zeros tie, central differences give 1/2 to each tied input, and which one the walk takes
    matters for the DeconvNet)."""
    _, c, h, w = in_shape
    sw = np.asarray(switches)[0]
    jac = np.zeros((sw.size, c * h * w))
    for o, (ch, idx) in enumerate(zip(np.repeat(np.arange(c), sw[0].size), sw.reshape(-1))):
        jac[o, ch * h * w + int(idx)] = 1.0
    untied = np.isclose(np.abs(fd).max(axis=1), 1.0, atol=1e-6)
    assert untied.any()
    np.testing.assert_allclose(fd[untied], jac[untied], atol=1e-6)
    return jac


@functools.lru_cache(maxsize=None)
def _trace(norm, image):
    """Forward trace of one stored image through the tiny net: per layer (kind, input, output, J)."""
    net, x = _net(norm)
    a = x[image:image + 1]
    out = []
    for l in net.layers:
        jac = None if l.kind in ("ReLU", "Flatten", "Dropout") else _jacobian(l, a)
        y = l.forward(a.copy(), train=False)
        if l.kind == "MaxPool2d":
            jac = _pool_jacobian(l.switches, a.shape, jac)
        out.append((l.name, l.kind, a, y, jac))
        a = y
    return out


def _oracle(norm, image, layer, seed, rule):
    """Walk ``seed`` (shaped like the layer's output for one image) down with dense Jacobians."""
    trace = _trace(norm, image)
    stop = [t[0] for t in trace].index(layer)
    r = np.asarray(seed, dtype=np.float64).reshape(-1)
    for name, kind, a, y, jac in reversed(trace[:stop + 1]):
        if kind == "ReLU":
            if rule != "gradient":
                r = np.maximum(r, 0)
            if rule != "deconvnet":
                r = r * (y.reshape(-1) > 0)
        elif kind in ("LocalResponseNorm", "LocalContrastNorm") and rule == "deconvnet":
            pass
        elif jac is not None:
            r = jac.T @ r
    return r.reshape(trace[0][2].shape[1:])


def _seed_max(norm, image, layer, m, value=None):
    """One-hot seed at the strongest unit of map ``m`` (first in row-major order), holding its value."""
    y = [t for t in _trace(norm, image) if t[0] == layer][0][3][0]
    seed = np.zeros_like(y)
    if y.ndim == 1:  # an fc layer: the map is the unit
        seed[m] = y[m] if value is None else value
        return seed
    flat = y[m].reshape(-1)
    k = int(np.argmax(flat))
    seed[m].reshape(-1)[k] = flat[k] if value is None else value
    return seed


# ----------------------------------------------------------------------------- DeconvNet unchanged
@pytest.mark.parametrize("norm", ["lrn", "lcn"])
def test_deconvnet_is_unchanged_from_the_stored_outputs(norm, backend):
    net, x = _net(norm, fc=False, backend=backend.name)
    d = _ref()
    checked = 0
    for key in d.files:
        parts = key.split("/")
        if parts[0] != norm or parts[-1] not in ("max", "map", "reconstruct"):
            continue
        layer, what = parts[1], parts[2]
        if what == "reconstruct":
            got = deconv.reconstruct(net, x, layer, rule="deconvnet")
        else:
            maps = [0, 2, 3] if what == "max" else [1, 3]
            got = deconv.project(net, x, layer, maps=maps, mode=what)  # the default rule
            np.testing.assert_array_equal(got, deconv.project(net, x, layer, maps=maps, mode=what,
                                                              rule="deconvnet"))
        # float64; the stored outputs came from another CPU's BLAS kernel, whose summation order differs
        # in the last bit (seen: 1 ulp on an AMD Zen 5 with OpenBLAS's Haswell kernel vs the Xeon that wrote them)
        tol = 1e-13 if backend.name == "numpy" else 1e-11
        np.testing.assert_allclose(got, d[key], rtol=tol, atol=tol * max(1.0, np.abs(d[key]).max()))
        checked += 1
    assert checked == 13


# ----------------------------------------------------------------------------- the finite-difference oracle
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("norm", ["lrn", "lcn"])
@pytest.mark.parametrize("layer", CONV_LAYERS + FC_LAYERS)
def test_every_rule_matches_the_jacobian_oracle(rule, norm, layer):
    net, x = _net(norm)
    channels = dict(net.output_shapes((1,) + x.shape[1:]))[layer][1]
    maps = sorted({0, 2 % channels, channels - 1})
    got = deconv.project(net, x, layer, maps=maps, mode="max", rule=rule)
    assert got.shape == (2, len(maps)) + x.shape[1:]
    for i in range(2):
        for j, m in enumerate(maps):
            want = _oracle(norm, i, layer, _seed_max(norm, i, layer, m), rule)
            np.testing.assert_allclose(got[i, j], want, rtol=1e-6, atol=1e-7 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("layer", ["relu1", "norm1", "pool2"])
def test_whole_map_mode_matches_the_oracle(rule, layer):
    net, x = _net("lrn")
    got = deconv.project(net, x, layer, maps=[1, 3], mode="map", rule=rule)
    for i in range(2):
        y = [t for t in _trace("lrn", i) if t[0] == layer][0][3][0]
        for j, m in enumerate([1, 3]):
            seed = np.zeros_like(y)
            seed[m] = y[m]
            want = _oracle("lrn", i, layer, seed, rule)
            np.testing.assert_allclose(got[i, j], want, rtol=1e-6, atol=1e-7 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("norm", ["lrn", "lcn"])
@pytest.mark.parametrize("layer, m", [("conv1", 1), ("relu2", 3), ("norm1", 2), ("pool2", 4), ("relu6", 0),
                                      ("fc7", 2)])
def test_gradient_rule_is_the_input_gradient_of_the_chosen_unit(norm, layer, m):
    """value=1: d(activation of the kept unit)/d(pixels), by central differences of the whole net."""
    net, x = _net(norm)
    got, info = deconv.project(net, x, layer, maps=m, rule="gradient", value=1.0, return_info=True)
    eps, live = 1e-6, 0
    for i in range(2):
        y, xx = int(info["y"][i]), int(info["x"][i])

        def unit(img):
            a = net.forward_to(img[None], layer)[0]
            return a[m] if a.ndim == 1 else a[m, y, xx]

        fd = np.zeros(x.shape[1:])
        for p in np.ndindex(*x.shape[1:]):
            xp_, xm_ = x[i].copy(), x[i].copy()
            xp_[p] += eps
            xm_[p] -= eps
            fd[p] = (unit(xp_) - unit(xm_)) / (2 * eps)
        live += np.abs(fd).max() > 0  # a dead relu unit has a zero gradient (and the rule agrees)
        np.testing.assert_allclose(got[i], fd, rtol=1e-5, atol=1e-7 * max(np.abs(fd).max(), 1e-3))
    assert live


def test_the_logits_start_one_class_at_a_time():
    net, x = _net("lcn")
    logits = net.forward(x)
    for c in range(4):
        got, info = deconv.project(net, x, "fc7", maps=c, rule="gradient", return_info=True)
        assert got.shape == x.shape
        np.testing.assert_allclose(info["value"], logits[:, c], rtol=1e-12)
        assert (info["y"] == 0).all() and (info["x"] == 0).all()
        one = deconv.project(net, x, "fc7", maps=[c], rule="gradient", value=1.0)[:, 0]
        np.testing.assert_allclose(got, logits[:, c, None, None, None] * one, rtol=1e-10, atol=1e-14)


# ----------------------------------------------------------------------------- how the rules relate
def _relations_net(positive_backward=False, active=None, seed=0):
    """conv-relu-pool-conv-relu-fc-relu-fc, no normalization. ``positive_backward``: every weight
    above the first conv is positive (backward signals never change sign); ``active``: images for
    which biases are raised until every ReLU of the forward pass is on."""
    rng = np.random.default_rng(seed)
    layers = [Conv2d(3, 4, 3, 1, 1, name="conv1", rng=rng, dtype=np.float64, init_std=0.5), ReLU(name="relu1"),
              MaxPool2d(2, 2, name="pool1"), Conv2d(4, 3, 3, 2, 0, name="conv2", rng=rng, dtype=np.float64,
                                                       init_std=0.5),
              ReLU(name="relu2"), Flatten(name="flatten"), Linear(12, 5, name="fc1", rng=rng, init_std=0.5,
                                                                 dtype=np.float64),
              ReLU(name="relu3"), Dropout(name="drop3"), Linear(5, 3, name="fc2", rng=rng, init_std=0.5,
                                                                dtype=np.float64)]
    net = Sequential(layers)
    for l in net.layers:
        if l.params:
            if positive_backward and l.name != "conv1":
                l.params["w"][...] = np.abs(l.params["w"])
            l.params["b"][...] = rng.normal(0, 0.3, l.params["b"].shape)
    if active is not None:
        a = active
        for l in net.layers:
            if l.params:
                l.params["b"][...] = 0.0
                l.params["b"][...] = 1.0 + np.abs(l.forward(a)).max()
            a = l.forward(a)
    return net


def test_guided_is_the_gradient_where_backward_signals_stay_positive():
    net = _relations_net(positive_backward=True)
    x = np.random.default_rng(3).normal(size=(2, 3, 11, 9))
    for layer in ("fc2", "relu3", "relu2"):
        g = deconv.project(net, x, layer, maps=[0, 1], rule="gradient", value=1.0)
        gb = deconv.project(net, x, layer, maps=[0, 1], rule="guided", value=1.0)
        np.testing.assert_allclose(gb, g, rtol=1e-12, atol=1e-14)


def test_guided_is_the_deconvnet_where_every_relu_is_on():
    x = np.random.default_rng(4).normal(size=(2, 3, 11, 9))
    net = _relations_net(active=x)
    assert all((net.forward_to(x, r) > 0).all() for r in ("relu1", "relu2", "relu3"))
    for layer in ("fc2", "relu2"):
        d = deconv.project(net, x, layer, maps=[0, 2], rule="deconvnet")
        gb = deconv.project(net, x, layer, maps=[0, 2], rule="guided")
        np.testing.assert_allclose(gb, d, rtol=1e-12, atol=1e-14)


def test_guided_is_zero_where_either_gradient_or_deconvnet_gates_it_off():
    """Gated by both signs: at each ReLU the guided signal is the gradient's where both the forward
    activation and the backward signal are positive, zero elsewhere; a one-ReLU net shows it at the pixels."""
    rng = np.random.default_rng(7)
    net = Sequential([Linear(6, 6, name="fc0", rng=rng, init_std=1.0, dtype=np.float64), ReLU(name="relu0"),
                      Linear(6, 2, name="fc1", rng=rng, init_std=1.0, dtype=np.float64)])
    # a Linear-first net takes (N, F) inputs; the projection walks Linear/ReLU only
    x = rng.normal(size=(5, 6))
    w0, w1 = net.layer("fc0").params["w"], net.layer("fc1").params["w"]
    h = x @ w0.T + net.layer("fc0").params["b"]
    for c in range(2):
        s = w1[c]  # the signal reaching relu0
        want = {"gradient": (s * (h > 0)) @ w0, "deconvnet": np.maximum(s, 0)[None].repeat(5, 0) @ w0,
                "guided": (np.maximum(s, 0) * (h > 0)) @ w0}
        got = deconv.project_rules(net, x, "fc1", maps=[c], value=1.0)
        for rule in RULES:
            np.testing.assert_allclose(got[rule][:, 0], want[rule], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("layer", ["relu1", "norm1", "pool2", "relu6", "fc7"])
def test_every_rule_is_positively_homogeneous(rule, layer):
    net, x = _net("lrn")
    base, info = deconv.project(net, x, layer, maps=[0, 1], rule=rule, value=1.0, return_info=True)
    for a in (0.25, 3.0):
        np.testing.assert_allclose(deconv.project(net, x, layer, maps=[0, 1], rule=rule, value=a), a * base,
                                   rtol=1e-11, atol=1e-15)
    # by default the kept unit holds its forward value; positive values scale the unit-seed result
    got = deconv.project(net, x, layer, maps=[0, 1], rule=rule)
    v = info["value"]
    for i in range(2):
        for j in range(2):
            if v[i, j] > 0:
                np.testing.assert_allclose(got[i, j], v[i, j] * base[i, j], rtol=1e-11, atol=1e-15)
    if rule == "gradient":  # linear: negative seeds too
        np.testing.assert_allclose(deconv.project(net, x, layer, maps=[0, 1], rule=rule, value=-2.0), -2 * base,
                                   rtol=1e-11, atol=1e-15)


# ----------------------------------------------------------------------------- batching, backends, entry points
@pytest.mark.parametrize("layer", ["relu2", "fc7"])
def test_rules_agree_across_batches_budgets_and_entry_points(layer):
    net, x = _net("lcn")
    x = np.concatenate([x, x[::-1] * 0.7])
    full = deconv.project_rules(net, x, layer, maps=None, mode="max")
    for rule in RULES:
        np.testing.assert_array_equal(full[rule], deconv.project(net, x, layer, maps=None, rule=rule))
        small = deconv.project(net, x, layer, maps=None, rule=rule, batch=1, budget=1)
        np.testing.assert_allclose(small, full[rule], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("rule", RULES)
def test_project_activation_and_reconstruct_take_the_rule(rule):
    net, x = _net("lrn", fc=False)
    r, info = deconv.project(net, x, "relu2", maps=[0, 3], rule=rule, return_info=True)
    units = [(i, m, info["y"][i, j], info["x"][i, j]) for i in range(2) for j, m in enumerate([0, 3])]
    pa, kept = deconv.project_activation(net, x, "relu2", units, rule=rule)
    np.testing.assert_allclose(pa.reshape(r.shape), r, rtol=1e-12, atol=1e-15)
    rec = deconv.reconstruct(net, x, "pool1", rule=rule)
    y = [t for t in _trace("lrn", 1) if t[0] == "pool1"][0][3][0]
    np.testing.assert_allclose(rec[1], _oracle("lrn", 1, "pool1", y, rule), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-11), (np.float32, 2e-4)])
@pytest.mark.parametrize("rule", RULES)
def test_numpy_and_numba_agree_for_every_rule(rule, dtype, tol):
    _numba_or_skip()
    for norm in ("lrn", "lcn"):
        a_net, x = _net(norm, dtype=dtype)
        b_net, _ = _net(norm, backend="numba", dtype=dtype)
        for layer in ("relu1", "norm1", "pool2", "relu6", "fc7"):
            a = deconv.project(a_net, x, layer, maps=[0, 1], rule=rule)
            b = deconv.project(b_net, x, layer, maps=[0, 1], rule=rule)
            np.testing.assert_allclose(b, a, rtol=tol, atol=tol * max(1e-30, np.abs(a).max()))


def test_gpu_backend_agrees_for_every_rule():
    from conftest import backend_or_skip
    be = backend_or_skip("cupy")
    for norm in ("lrn", "lcn"):
        a_net, x = _net(norm)
        b_net, _ = _net(norm, backend=be.name)
        for rule in RULES:
            for layer in ("norm1", "pool2", "fc7"):
                a = deconv.project(a_net, x, layer, maps=[0, 1], rule=rule)
                b = deconv.project(b_net, x, layer, maps=[0, 1], rule=rule)
                np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(a).max()))


# ----------------------------------------------------------------------------- bad input
def test_bad_starting_layers_classes_and_rules_are_one_line_errors():
    net, x = _net("lrn")
    with pytest.raises(ValueError, match=r"'flatten' only reshapes pool2.*can start from: conv1"):
        deconv.project(net, x, "flatten")
    with pytest.raises(ValueError, match=r"'fc9' is not in the net"):
        deconv.project(net, x, "fc9")
    with pytest.raises(ValueError, match=r"map indices must lie in \[0, 4\), got 0\.\.4"):
        deconv.project(net, x, "fc7", maps=[0, 4])
    with pytest.raises(ValueError, match=r"map indices must lie in \[0, 4\)"):
        deconv.project(net, x, "fc7", maps=-1, rule="gradient")
    for bad in ("guided-backprop", "Gradient", None, 3):
        with pytest.raises(ValueError, match=r"expected one of deconvnet, guided, gradient"):
            deconv.project(net, x, "relu1", rule=bad)
    with pytest.raises(ValueError, match=r"expected one of"):
        deconv.project_rules(net, x, "relu1", rules=("gradient", "saliency"))
    with pytest.raises(ValueError, match=r"needs mode='max'"):
        deconv.project(net, x, "relu1", mode="map", value=1.0)
    with pytest.raises(ValueError, match=r"finite"):
        deconv.project(net, x, "relu1", value=float("nan"))
    assert deconv.start_layers(net) == CONV_LAYERS + FC_LAYERS
    assert deconv.start_layer_name(net, 2) == "relu2"
    for msg in ("flatten", "fc9"):
        try:
            deconv.project(net, x, msg)
        except ValueError as e:
            assert "\n" not in str(e)


# ----------------------------------------------------------------------------- the commands
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A tiny zfnet_small (widths 4, fc 16, 24 px) trained for one epoch on synthetic data."""
    from zfscratch.cli import main
    out = tmp_path_factory.mktemp("rules_run")
    assert main(["train", "--data", SYN, "--batch", "16", "--widths", "4,4,4,4,4", "--fc", "16", "--backend",
                 "numpy", "--quiet", "--snapshots", "none", "--epochs", "1", "--out", str(out / "run")]) == 0
    return str(out / "run" / "weights.npz")


SYN = "synthetic:n=48,n_val=16,n_test=16,size=24"


def _cli(args, capsys):
    from zfscratch.cli import main
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_attribute_writes_the_figure_for_a_class_and_a_layer(tiny_weights, tmp_path, capsys):
    rc, out, err = _cli(["attribute", "--weights", tiny_weights, "--data", SYN, "--index", "2", "--class", "1",
                         "--out", str(tmp_path), "--backend", "numpy"], capsys)
    assert rc == 0, err
    res = json.load(open(tmp_path / "attribute.json"))
    assert res["is_class"] and res["unit"] == 1 and res["layer"] == "fc8"
    assert os.path.getsize(tmp_path / "attribute.png") > 5000
    rc, out, err = _cli(["attribute", "--weights", tiny_weights, "--data", SYN, "--layer", "relu3", "--map", "2",
                         "--rule", "gradient,guided", "--name", "l3", "--out", str(tmp_path)], capsys)
    assert rc == 0, err
    res = json.load(open(tmp_path / "l3.json"))
    assert res["layer"] == "relu3" and res["unit"] == 2 and res["rules"] == ["gradient", "guided"]


def test_sanity_command_writes_figures_and_table(tiny_weights, tmp_path, capsys):
    pytest.importorskip("scipy")
    pytest.importorskip("skimage")
    rc, out, err = _cli(["sanity", "--weights", tiny_weights, "--data", SYN, "--n", "4", "--out", str(tmp_path),
                         "--quiet", "--backend", "numpy"], capsys)
    assert rc == 0, err
    res = json.load(open(tmp_path / "sanity.json"))
    assert res["layers"] == ["fc8", "fc7", "fc6", "conv5", "conv4", "conv3", "conv2", "conv1"]
    for mode in ("cascade", "independent"):
        for r in RULES:
            assert len(res[mode][r]) == 8
            for step in res[mode][r]:
                v = step["ssim"]["mean"]
                assert v is None or -1 <= v <= 1
    for f in ("sanity_cascade.png", "sanity_independent.png", "sanity_metrics.png", "sanity_table.md"):
        assert os.path.getsize(tmp_path / f) > 200
    assert "cascading" in out and "fc8..conv1" in out


def test_sanity_check_restores_the_weights_and_randomizing_everything_decorrelates():
    pytest.importorskip("scipy")
    pytest.importorskip("skimage")
    from zfscratch.experiments.attribution import sanity_check
    net, x = _net("lrn")
    before = net.state_dict()
    res = sanity_check(net, x, progress=False)
    after = net.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert res["layers"] == ["fc7", "fc6", "conv2", "conv1"]
    # the independent step of the top layer is the first cascading step (same random draw)
    for r in RULES:
        assert res["cascade"][r][0] == res["independent"][r][0]


@pytest.mark.parametrize("argv, msg", [
    (["attribute", "--layer", "flatten"], "--layer: layer 'flatten' only reshapes"),
    (["attribute", "--layer", "nope"], "--layer: layer 'nope' is not in the net"),
    (["attribute", "--class", "99"], "--class 99: out of range 0..9"),
    (["attribute", "--class", "unicorn"], "--class 'unicorn': not a class of this model"),
    (["attribute", "--layer", "relu2", "--map", "4"], "--map 4: layer relu2 has maps 0..3"),
    (["attribute", "--layer", "relu2", "--class", "1"], "--class: picks a class logit"),
    (["attribute", "--rule", "saliency"], "--rule 'saliency': expected one or more of deconvnet, guided, gradient"),
    (["sanity", "--rule", "deconvnet,smoothgrad"], "--rule 'deconvnet,smoothgrad': expected one or more"),
    (["sanity", "--n", "0"], "--n 0: expected a positive integer"),
])
def test_bad_input_is_one_line_exit_2(tiny_weights, tmp_path, capsys, argv, msg):
    rc, out, err = _cli(argv[:1] + ["--weights", tiny_weights, "--data", SYN] + argv[1:] + ["--out", str(tmp_path)],
                        capsys)
    assert rc == 2
    assert err.startswith("zfscratch: error: ") and msg in err, err
    assert err.count("\n") == 1


def test_sanity_without_the_extra_is_one_line(tiny_weights, tmp_path, capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # import fails as if scipy were not installed
    rc, out, err = _cli(["sanity", "--weights", tiny_weights, "--data", SYN, "--out", str(tmp_path)], capsys)
    assert rc == 2 and "pip install 'zfscratch[sanity]'" in err and err.count("\n") == 1


def test_attribute_reads_an_image_file(tiny_weights, tmp_path, capsys):
    from PIL import Image
    img = (np.random.default_rng(0).random((37, 29, 3)) * 255).astype(np.uint8)  # odd size, not the input size
    Image.fromarray(img).save(tmp_path / "photo.png")
    rc, out, err = _cli(["attribute", "--weights", tiny_weights, "--image", str(tmp_path / "photo.png"),
                         "--layer", "fc7", "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, err
    res = json.load(open(tmp_path / "o" / "attribute.json"))
    assert res["layer"] == "fc7" and not res["is_class"] and res["label"] is None
    rc, out, err = _cli(["attribute", "--weights", tiny_weights, "--image", str(tmp_path / "missing.png"),
                         "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and err.count("\n") == 1
