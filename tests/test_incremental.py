"""Incremental occlusion (zfscratch.experiments.incremental) against full recompute and the
position-by-position oracle: odd sizes, occluders at the borders and over the margins, strides that
do not divide, ceil- and floor-mode pools, padded pools, grouped convolutions; float32 and float64."""
import numpy as np
import pytest

from zfscratch.backend import available_backends
from zfscratch.experiments import occlusion as O
from zfscratch.experiments.incremental import IncrementalOccluder
from zfscratch.models import zfnet_small
from zfscratch.net import build_from_specs

BACKENDS = [b for b in ("numpy", "numba") if b in available_backends()]
SMALL = dict(widths=[16, 32, 48, 48, 32], fc=64)


def odd_net(backend="numpy", dtype=np.float64, size=23):
    """Every geometry the engine must handle: a grouped strided padded conv, a ceil-mode pool whose last
    window hangs over the edge, LRN, a padded floor-mode pool, a 1x1 conv, a stride that does not
    divide, dropout (identity in evaluation)."""
    c = lambda kind, name, **cfg: {"kind": kind, "name": name, "config": cfg}
    specs = [c("Conv2d", "conv1", in_ch=3, out_ch=8, k=5, stride=2, pad=2, groups=1),
             c("ReLU", "relu1"), c("MaxPool2d", "pool1", k=3, stride=2, ceil_mode=True),
             c("LocalResponseNorm", "norm1", size=5, alpha=1e-2, beta=0.75, k=2.0),
             c("Conv2d", "conv2", in_ch=8, out_ch=12, k=3, stride=3, pad=1, groups=2),
             c("ReLU", "relu2"), c("MaxPool2d", "pool2", k=2, stride=1, ceil_mode=False, pad=1),
             c("Conv2d", "conv3", in_ch=12, out_ch=10, k=1, stride=1, pad=0), c("ReLU", "relu3"),
             c("Dropout", "drop3", p=0.5), c("Flatten", "flatten")]
    net = build_from_specs(specs, dtype=dtype)
    shp = net.output_shapes((1, 3, size, size))[-1][1]
    specs.append(c("Linear", "fc", in_f=int(np.prod(shp[1:])), out_f=5))
    net = build_from_specs(specs, backend=backend, dtype=dtype, seed=3)
    return net


def boxes_for(size, patch, stride, margin):
    ys = O.occluder_positions(size, patch, stride, margin)
    return [(y, x, y + patch, x + patch) for y in ys for x in ys]


def full_outputs(net, x, fill, boxes, names):
    imgs = O.occlude_batch(x, fill, [b[0] for b in boxes], [b[1] for b in boxes], boxes[0][2] - boxes[0][0])
    out, a = {}, imgs
    for i, l in enumerate(net.layers):
        a = l.forward(a)
        if l.name in names:
            out[l.name] = a
    out["logits"] = a
    return out


def close(a, b, rtol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    scale = max(np.abs(b).max(), 1e-30)
    assert np.abs(a - b).max() <= rtol * scale, (np.abs(a - b).max() / scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-5), (np.float64, 1e-10)])
@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("size,patch,stride,margin", [(23, 5, 3, 2), (24, 7, 5, 0), (23, 23, 1, 0),
                                                      (25, 1, 4, 0)])
def test_every_layer_matches_full_recompute(backend, dtype, rtol, uniform, size, patch, stride, margin):
    net = odd_net(backend, dtype, size)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, size, size)).astype(dtype)
    fill = rng.normal(size=x.shape).astype(dtype)
    names = [l.name for l in net.layers if l.kind != "Flatten"]
    boxes = boxes_for(size, patch, stride, margin)
    inc = IncrementalOccluder(net, x, fill, keep=names, uniform=uniform)
    got = inc.positions(boxes)
    ref = full_outputs(net, x, fill, boxes, names)
    for name in names + ["logits"]:
        close(net.backend.to_host(got[name]), net.backend.to_host(ref[name]), rtol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-5), (np.float64, 1e-10)])
def test_occlusion_maps_match_the_position_by_position_oracle(backend, dtype, rtol):
    size = 29  # odd; patch 9, stride 4 does not divide 29 - 9 + 2*3; margins hang over both edges
    net = zfnet_small(4, size, backend=backend, seed=1, **SMALL).astype(dtype)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, size, size)).astype(dtype)
    fill = rng.normal(size=x.shape).astype(dtype)
    res = O.occlusion_maps(net, x, label=2, patch=9, stride=4, margin=3, fill=fill, batch=16)
    assert res["incremental"]
    ref = O.occlusion_reference(net, x, 2, 9, 4, margin=3, fill=fill, map_index=res["map_index"])
    close(res["activation"], ref["activation"], rtol)
    np.testing.assert_allclose(res["prob_true"], ref["prob_true"], rtol=rtol * 10, atol=rtol * 1e-2)
    assert (res["top_label"] == ref["top_label"]).all()
    full = O.occlusion_maps(net, x, label=2, patch=9, stride=4, margin=3, fill=fill, batch=16,
                            incremental=False)
    close(res["activation"], full["activation"], rtol)
    np.testing.assert_allclose(res["prob_true"], full["prob_true"], rtol=rtol * 10, atol=rtol * 1e-2)
    assert (res["top_label"] == full["top_label"]).all() and res["map_index"] == full["map_index"]


def test_empty_and_whole_image_boxes():
    net = odd_net()
    x = np.random.default_rng(1).normal(size=(3, 23, 23))
    inc = IncrementalOccluder(net, x, np.zeros_like(x), keep=["relu2"])
    r = inc.positions([(0, 0, 0, 0), (-5, -5, 0, 3), (-1, -1, 30, 30)])
    base = net.forward(x[None])
    np.testing.assert_allclose(r["logits"][:2], np.repeat(base, 2, 0), rtol=1e-12)
    np.testing.assert_allclose(r["logits"][2], net.forward(np.zeros_like(x)[None])[0], rtol=1e-10)
    assert inc.positions([])["logits"].shape == (0, 5)


def test_plan_counts_less_work_for_small_occluders():
    net = zfnet_small(3, 64, **SMALL)
    x = np.zeros((3, 64, 64), np.float32)
    inc = IncrementalOccluder(net, x)
    rows = inc.plan(boxes_for(64, 12, 4, 0))
    conv = [r for r in rows if r["kind"] == "Conv2d"]
    assert conv[0]["incremental_macs"] < 0.2 * conv[0]["full_macs"]
    assert all(r["incremental_macs"] <= r["full_macs"] for r in rows)
    assert [r["window"] for r in conv] == sorted(r["window"] for r in conv)  # windows grow with depth
    whole = inc.plan([(0, 0, 64, 64)])
    assert all(r["incremental_macs"] == r["full_macs"] for r in whole)


def test_bad_image_shape():
    from zfscratch.errors import UserError
    with pytest.raises(UserError, match="expected one image"):
        IncrementalOccluder(odd_net(), np.zeros((1, 3, 23, 23)))


def test_a_global_layer_ends_the_incremental_part():
    """LocalContrastNorm divides by a whole-map mean: every output changes, so it and what follows run
    in full, and the results stay exact."""
    c = lambda kind, name, **cfg: {"kind": kind, "name": name, "config": cfg}
    specs = [c("Conv2d", "conv1", in_ch=3, out_ch=4, k=3, stride=1, pad=1), c("ReLU", "relu1"),
             c("LocalContrastNorm", "lcn", size=3, sigma=1.0), c("Conv2d", "conv2", in_ch=4, out_ch=4, k=3),
             c("Flatten", "flatten"), c("Linear", "fc", in_f=4 * 9 * 9, out_f=3)]
    net = build_from_specs(specs, dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(3, 11, 11))
    fill = np.zeros_like(x)
    boxes = boxes_for(11, 3, 4, 0)
    inc = IncrementalOccluder(net, x, fill, keep=["relu1", "conv2"])
    assert [g.layer.name for g in inc.spatial] == ["conv1", "relu1"]
    got = inc.positions(boxes)
    ref = full_outputs(net, x, fill, boxes, ["relu1", "conv2"])
    for name in ("relu1", "conv2", "logits"):
        close(got[name], ref[name], 1e-10)
