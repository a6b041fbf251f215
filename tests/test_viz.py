"""Display normalization, grids, streaming top-k (vs brute force, sharded + merged), and smoke runs of
the visualization experiments and their CLI."""
import os

import numpy as np
import pytest

from zfscratch import viz
from zfscratch.experiments import topk
from zfscratch.models import zfnet_small as _zfnet_small

PNG = b"\x89PNG\r\n\x1a\n"


def zfnet_small(**kw):
    """ZFNet-small geometry with narrow layers: the same code paths, a fraction of the compute."""
    return _zfnet_small(widths=[8, 12, 16, 16, 12], fc=16, **kw)


# ----------------------------------------------------------------------------- normalization
def test_to_display_keeps_sign_with_grey_zero():
    r = np.zeros((2, 3, 2, 2))
    r[0, 0, 0, 0], r[0, 1, 1, 1] = 2.0, -1.0
    r[1, 2, 0, 1] = 0.5
    d = viz.to_display(r, "image")
    assert d.shape == (2, 2, 2, 3)
    assert d[0, 0, 0, 0] == 1.0 and d[0, 1, 1, 1] == 0.25 and d[0, 0, 1, 2] == 0.5
    assert d[1, 0, 1, 2] == 1.0  # each image reaches its own maximum
    g = viz.to_display(r, "grid")
    assert g[1, 0, 1, 2] == pytest.approx(0.625)  # 0.5 + 0.5 * 0.5 / 2
    c = viz.to_display(r, "channel")
    assert c[0, 1, 1, 1] == 0.0  # channel 1's own max |r| is 1
    assert np.all(viz.to_display(np.zeros((3, 4, 4))) == 0.5)
    assert viz.to_display(r, max_abs=4.0)[0, 0, 0, 0] == 0.75  # a scale shared with other arrays
    with pytest.raises(ValueError):
        viz.to_display(r, "bogus")
    assert "max|r|" in viz.caption("grid")


def test_filter_grid_normalizes_each_filter():
    w = np.zeros((5, 3, 3, 3))
    for f in range(5):
        w[f, 0, 1, 1] = 10.0 ** f
        w[f, 2, 0, 0] = -(10.0 ** f) / 2
    g = viz.filter_grid(w, ncols=5, pad=1)
    assert g.shape == (3, 5 * 4 - 1, 3)
    for f in range(5):
        tile = g[:, f * 4:f * 4 + 3]
        assert tile[1, 1, 0] == 1.0 and tile[0, 0, 2] == 0.25 and tile[2, 2, 1] == 0.5
    g_all = viz.filter_grid(w, ncols=5, scope="all")
    assert g_all[1, 1, 0] < 0.51  # the small filter is nearly grey on a common scale


def test_image_grid_and_png_written_atomically(tmp_path):
    imgs = np.random.default_rng(0).random((7, 4, 5, 3))
    m = viz.image_grid(imgs, ncols=3, pad=1)
    assert m.shape == (3 * 5 - 1, 3 * 6 - 1, 3)
    np.testing.assert_array_equal(m[5:9, 6:11], imgs[4])
    path = tmp_path / "sub" / "grid.png"
    viz.mosaic_figure(m, path, title="t", caption_text=viz.caption())
    assert path.read_bytes()[:8] == PNG
    assert not [p for p in os.listdir(path.parent) if p.startswith(".tmp")]
    w = np.random.default_rng(1).normal(size=(8, 3, 7, 7))
    viz.plot_filters(w, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == PNG


# ----------------------------------------------------------------------------- top-k
def _small():
    net = zfnet_small(input_size=32, seed=3)
    x = np.random.default_rng(2).normal(size=(23, 3, 32, 32)).astype(np.float32)
    x[5] = x[17]  # identical images: exact ties must resolve to the lower index everywhere
    return net, x


def _same(a, b):
    for name in a.layers:
        np.testing.assert_array_equal(a.index[name], b.index[name])
        np.testing.assert_array_equal(a.y[name], b.y[name])
        np.testing.assert_array_equal(a.x[name], b.x[name])
        np.testing.assert_allclose(a.value[name], b.value[name], rtol=1e-6)


def test_streaming_topk_equals_brute_force_and_shards_merge():
    net, x = _small()
    brute = topk.brute_force_topk(net, x, "1-5", k=9)
    one = topk.topk_search(net, x, "1-5", k=9, batch=5, progress=False)
    _same(one, brute)
    assert one.count == 23
    a = topk.topk_search(net, x, "1-5", k=9, batch=4, rank=0, world_size=2, progress=False)
    b = topk.topk_search(net, x, "1-5", k=9, batch=7, rank=1, world_size=2, progress=False)
    assert a.count + b.count == 23
    _same(topk.merge(a, b), brute)
    _same(topk.merge(b, a), brute)
    # a shard smaller than k leaves padding rows that merge away
    c = topk.topk_search(net, x, "1-5", k=9, indices=np.arange(4), progress=False)
    assert (c.index["relu1"][4:] == -1).all()
    d = topk.topk_search(net, x, "1-5", k=9, indices=np.arange(4, 23), progress=False)
    _same(topk.merge(c, d), brute)
    assert brute.entries("relu2", 0)[0][0] == brute.index["relu2"][0, 0]
    with pytest.raises(ValueError):
        topk.merge(a, topk.topk_search(net, x, "1-4", k=9, progress=False))


def test_topk_state_roundtrip(tmp_path):
    net, x = _small()
    st = topk.topk_search(net, x[:6], [2, "pool5"], k=3, progress=False)
    path = st.save(tmp_path / "t.npz")
    back = topk.TopK.load(path)
    _same(back, st)
    assert back.layers == ["relu2", "pool5"] and back.k == 3 and back.count == 6


def test_topk_projection_and_figure(tmp_path):
    net, x = _small()
    st = topk.topk_search(net, x, "1,3", k=4, progress=False)
    recs = topk.topk_project(net, x, st, maps=3, progress=False)
    r1 = recs["relu1"]
    assert len(r1["maps"]) == 3 and all(len(p) == 4 for p in r1["proj"])
    assert r1["proj"][0][0].shape == (3, 7, 7) and r1["patches"][0][0].shape == (7, 7, 3)
    # a layer-1 projection is its filter scaled by the activation
    m = r1["maps"][0]
    w = net.layer("conv1").params["w"][m]
    img, yy, xx, v = r1["entries"][0][0]
    box = r1["boxes"][0][0]
    if box == (2 * yy - 3, 2 * yy + 4, 2 * xx - 3, 2 * xx + 4):  # unit away from the border
        np.testing.assert_allclose(r1["proj"][0][0], v * w, rtol=1e-5, atol=1e-6)
    out = topk.topk_figure("relu1", r1, tmp_path / "r1.png", k=4)
    assert open(out, "rb").read(8) == PNG


def test_run_topk_on_synthetic_data(tmp_path):
    from zfscratch.data.synthetic import SyntheticDataset
    from zfscratch.preprocess import Preprocess
    net = zfnet_small(input_size=32)
    ds = SyntheticDataset(n=30, size=32)
    meta = {"config": net.config, "preprocessing": Preprocess(32).to_meta(), "extra": {}}
    res = topk.run_topk(net, meta, ds, tmp_path, layers="1-2", maps=2, k=4, images=20, batch=8,
                        progress=False)
    assert res["images"] == 20 and set(res["layers"]) == {"relu1", "relu2"}
    for r in res["layers"].values():
        assert open(r["figure"], "rb").read(8) == PNG
        assert len(r["top_values"]) == 2 and all(len(v) == 4 for v in r["top_values"])
        assert r["top_values"][0] == sorted(r["top_values"][0], reverse=True)
    assert os.path.isfile(res["state"]) and os.path.isfile(res["json"])


def test_reconstruct_and_evolution_smoke(tmp_path):
    from zfscratch import io
    from zfscratch.data.synthetic import SyntheticDataset
    from zfscratch.experiments import evolution, reconstruct
    from zfscratch.preprocess import Preprocess
    ds = SyntheticDataset(n=12, size=32, split="val")
    pre = Preprocess(32, mean=np.full(3, 120.0, np.float32))
    meta = {"classes": list(ds.classes), "preprocessing": pre.to_meta(), "extra": {"mean": pre.mean}}
    net = zfnet_small(input_size=32)
    res = reconstruct.run_reconstruct(net, meta, ds, tmp_path / "rec.png", layers="1-2", images=2,
                                      eval_images=6, scope="grid")
    assert open(res["figure"], "rb").read(8) == PNG
    assert set(res["accuracy"]) == {"plain", "colored"} and len(res["samples"]) == 2
    run = tmp_path / "run"
    for e in (1, 3, 4):
        io.save_weights(run / "snapshots" / f"epoch_{e:04d}.npz", zfnet_small(input_size=32, seed=e),
                        meta={"epoch": e, "preprocessing": pre.to_meta()}, extra={"mean": pre.mean})
    assert [e for e, _ in evolution.list_snapshots(run)] == [1, 3, 4]
    assert evolution.pick_epochs(list(range(1, 71)), 8)[::7] == [1, 70]
    res = evolution.run_evolution(run, ds, layers="1,3", maps_per_layer=2, images=6, progress=False)
    assert res["epochs"] == [1, 3, 4] and len(res["rows"]) == 4
    assert open(res["figure"], "rb").read(8) == PNG


# ----------------------------------------------------------------------------- CLI
def test_cli_filters_and_errors(tmp_path, capsys):
    from zfscratch import io
    from zfscratch.cli import main
    w = tmp_path / "w.npz"
    io.save_weights(w, zfnet_small(input_size=32))
    assert main(["filters", "--weights", str(w), "--out", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").read_bytes()[:8] == PNG
    capsys.readouterr()
    assert main(["filters", "--weights", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zfscratch: error:") and err.count("\n") == 1
    assert main(["visualize", "--weights", str(w), "--data", "synthetic", "--layers", "fc6",
                 "--out", str(tmp_path / "v")]) == 2
    assert "--layers" in capsys.readouterr().err
    assert main(["visualize", "--weights", str(w), "--maps", "0", "--out", str(tmp_path / "v")]) == 2
    assert main(["evolution", "--run", str(tmp_path / "norun")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_legibility_rule_enlarges_or_raises():
    """Text under 12 px on screen is enlarged by default and refused with strict=True; the report's
    1124-px display width scales a wider figure's text down before the check."""
    from zfscratch.util.figures import IllegibleFigure, enforce_legible, min_text_px, new_figure, png_bytes
    fig = new_figure(4, 3, dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title("tiny", fontsize=4)
    ax.set_xticks([]), ax.set_yticks([])
    assert min_text_px(fig) < 12
    with pytest.raises(IllegibleFigure, match="tiny"):
        png_bytes(fig, strict=True)
    enforce_legible(fig, strict=False)
    assert min_text_px(fig) >= 12 - 1e-6
    wide = new_figure(22.48, 2, dpi=100)  # 2248 px: shown at half size in the report
    wide.text(0.5, 0.5, "wide", fontsize=10)
    assert abs(min_text_px(wide) - 10 * 100 / 72 / 2) < 1e-6
    assert png_bytes(wide, strict=False)[:4] == b"\x89PNG"
    assert min_text_px(wide) >= 12 - 1e-6
