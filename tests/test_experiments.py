"""Paper experiments: occlusion (Fig 7), invariance (Fig 5), correspondence (Table 1), layerwise
(Table 7), architecture (Fig 6), with ground truth from the synthetic data.

A tiny model is trained once per session (``trained`` fixture: 3 classes, 32x32, ~1200 images x 5
epochs through ``train_model``); everything else uses small random networks. Correctness only.
"""
import json
import os

import numpy as np
import pytest

from zfscratch.data.synthetic import SyntheticDataset
from zfscratch.experiments import correspondence as C
from zfscratch.experiments import invariance as I
from zfscratch.experiments import layerwise as L
from zfscratch.experiments import occlusion as O
from zfscratch.experiments import _shared as S
from zfscratch.models import zfnet_small

SIZE = 32
CLASSES = "face+house+star"
SPEC = f"synthetic:n=1200,size={SIZE},classes={CLASSES}"
SMALL = dict(widths=[16, 32, 48, 48, 32], fc=64)


def tiny_net(k=3, size=SIZE, backend="numpy", seed=0, **kw):
    return zfnet_small(k, size, backend=backend, seed=seed, **{**SMALL, **kw})


def meta_for(net, classes=None):
    k = S.num_classes(net)
    return {"config": net.config, "extra": {}, "classes": classes or [f"c{i}" for i in range(k)]}


def dataset(split="test", n=60, size=SIZE, classes=CLASSES):
    return SyntheticDataset(n=n, size=size, split=split, classes=classes)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(weights path, net, meta): zfnet_small (narrow) trained for a few epochs on 3 synthetic classes."""
    from zfscratch.io import load_weights
    from zfscratch.train import train_model
    out = tmp_path_factory.mktemp("trained")
    tr = SyntheticDataset(n=1200, size=SIZE, split="train", classes=CLASSES)
    va = SyntheticDataset(n=200, size=SIZE, split="val", classes=CLASSES)
    r = train_model((tr, va), str(out / "run"), model="zfnet_small", epochs=5, batch=16, lr=0.01,
                    backend="numpy", quiet=True, input_size=SIZE, snapshots=(), augment="none",
                    lr_patience=10, model_config={**SMALL, "dropout": 0.0})
    net, meta = load_weights(r["weights"], backend="numpy")
    print(f"\ntrained fixture: val accuracy {r['val_acc']:.3f}")
    return r["weights"], net, meta


# ----------------------------------------------------------------------------- occlusion
def test_positions_cover_the_image():
    assert O.occluder_positions(224, 48, 8).size == 23
    assert O.occluder_positions(224, 48, 8, margin=8).size == 25
    p = O.occluder_positions(30, 8, 7)
    assert p[0] == 0 and p[-1] == 22  # the last position is added so the far edge is covered
    with pytest.raises(Exception):
        O.occluder_positions(32, 0, 2)


def test_occluder_fill():
    from zfscratch.preprocess import Preprocess
    assert not O.occluder_fill(None, 8, "mean").any()
    mean = np.full((8, 8, 3), 100.0, np.float32)
    pre = Preprocess(8, mean=mean, scale=0.5)
    f = O.occluder_fill(pre, 8, 140)
    assert f.shape == (3, 8, 8) and np.allclose(f, 20.0)
    assert not O.occluder_fill(pre, 8, "mean").any()


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_occlusion_batched_equals_position_by_position(batch):
    net = tiny_net()
    x = np.random.default_rng(1).normal(size=(3, SIZE, SIZE)).astype(np.float32)
    fill = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
    res = O.occlusion_maps(net, x, label=1, patch=9, stride=6, margin=3, fill=fill, batch=batch)
    ref = O.occlusion_reference(net, x, 1, 9, 6, margin=3, fill=fill, map_index=res["map_index"])
    assert res["activation"].shape == ref["activation"].shape == (len(res["ys"]), len(res["xs"]))
    np.testing.assert_allclose(res["activation"], ref["activation"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res["prob_true"], ref["prob_true"], rtol=1e-4, atol=1e-6)
    assert (res["top_label"] == ref["top_label"]).mean() > 0.95
    # the map is the strongest of the unoccluded image
    a = S.forward_layers(net, x[None], [res["layer"]])[res["layer"]][0]
    assert res["map_index"] == int(np.argmax(a.reshape(a.shape[0], -1).max(1)))
    assert res["layer"] == "relu5"


def test_occlusion_minimum_inside_bounding_box(trained):
    _, net, meta = trained
    pre = S.get_preprocess(meta)
    ds = SyntheticDataset(n=20, size=SIZE, split="test", classes=CLASSES)
    samples = ds.samples(range(20))
    x = np.asarray(pre(np.stack([s.image for s in samples])), np.float32)
    inside = 0
    for i, s in enumerate(samples):
        res = O.occlusion_maps(net, x[i], label=s.label, patch=8, stride=2, batch=256)
        inside += O.inside_bbox(O.min_position(res), s.bbox)
    print(f"\nP(true) minimum inside the object's box: {inside}/20")
    assert inside >= 14


def test_occlude_cli_on_an_image_file(trained, tmp_path):
    from PIL import Image

    from zfscratch.cli import main
    weights, _, _ = trained
    img = dataset(n=3)[1].image
    path = tmp_path / "mine.png"
    Image.fromarray(np.repeat(np.repeat(img, 2, 0), 2, 1)).save(path)  # another size: resized by Preprocess
    out = tmp_path / "occ"
    rc = main(["occlude", "--weights", weights, "--image", str(path), "--patch", "8", "--stride", "4",
               "--out", str(out), "--quiet", "--backend", "numpy", "--label", "house"])
    assert rc == 0
    d = json.loads((out / "occlusion.json").read_text())
    assert d["positions"] == 49 and d["label_name"] == "house"
    assert len(d["prob_true"]) == 7 and os.path.getsize(out / "occlusion.png") > 1000
    rc = main(["occlude", "--weights", weights, "--data", SPEC, "--index", "2", "--patch", "8", "--stride", "8",
               "--out", str(out), "--quiet", "--backend", "numpy", "--value", "128", "--name", "occ2"])
    d = json.loads((out / "occ2.json").read_text())
    assert rc == 0 and d["bbox"] is not None and d["value"] == "128"
    assert main(["occlude", "--weights", weights, "--image", str(tmp_path / "missing.png"), "--out",
                 str(out), "--quiet"]) == 2
    # several images, one progress bar; the incremental engine (default) and full recompute agree
    for flag, name in (([], "inc"), (["--no-incremental"], "full")):
        rc = main(["occlude", "--weights", weights, "--data", SPEC, "--indices", "0,2-3", "--patch", "8",
                   "--stride", "8", "--out", str(out), "--quiet", "--backend", "numpy", "--name", name] + flag)
        assert rc == 0
    for i in (0, 2, 3):
        a, b = (json.loads((out / f"{n}_{i}.json").read_text()) for n in ("inc", "full"))
        assert a["incremental"] and not b["incremental"]
        np.testing.assert_allclose(a["prob_true"], b["prob_true"], rtol=1e-5, atol=1e-7)
        assert a["top_label"] == b["top_label"]
    assert not (out / "inc_1.json").exists()
    for bad in (["--indices", "3-1"], ["--indices", "x"], ["--indices", "99999"]):
        assert main(["occlude", "--weights", weights, "--data", SPEC, "--out", str(out), "--quiet"] + bad) == 2


# ----------------------------------------------------------------------------- invariance
def test_warp_identity_and_exact_cases():
    x = np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32)
    for kind, v in (("translation", 0.0), ("scale", 1.0), ("rotation", 0.0), ("rotation", 360.0)):
        assert np.array_equal(I.warp(x, kind, v), x)
    t = I.warp(x, "translation", 0.25)  # 4 pixels down, zeros (the mean) enter from the top
    np.testing.assert_allclose(t[:, 4:], x[:, :12], atol=1e-6)
    assert not t[:, :4].any()
    r = I.warp(x, "rotation", 90.0)  # clockwise quarter turn = transpose + flip, exactly on the grid
    np.testing.assert_allclose(r, np.rot90(x, k=-1, axes=(1, 2)), atol=1e-5)


@pytest.mark.parametrize("source", ["render", "warp"])
def test_invariance_zero_transform_is_unchanged(source, tmp_path):
    net = tiny_net()
    ds = dataset(n=10)

    class Plain:  # a dataset without a renderer: images are warped
        classes = ds.classes

        def __len__(self):
            return len(ds)

        def get_batch(self, idx):
            return ds.get_batch(idx)

    data = ds if source == "render" else Plain()
    sweeps = {"translation": [-0.2, 0.0, 0.2], "scale": [0.8, 1.0, 1.2], "rotation": [0, 90, 180, 360]}
    out = I.invariance(net, meta_for(net, list(ds.classes)), data, str(tmp_path), n_images=2, eval_images=3,
                       sweeps=sweeps, batch=5, progress=False)
    assert out["source"]["method"].startswith("re-rendered" if source == "render" else "bilinear")
    for k, ident in (("translation", [1]), ("scale", [1]), ("rotation", [0, 3])):
        c = out["curves"][k]
        for j in ident:
            for key in c:
                if key.startswith("dist_"):
                    assert np.abs(np.asarray(c[key])[:, j]).max() < 1e-5
            base = [im["base_prob_true"] for im in out["images"]]
            np.testing.assert_allclose(np.asarray(c["prob_true"])[:, j], base, rtol=1e-5)
        other = [j for j in range(len(out["values"][k])) if j not in ident]
        assert np.asarray(c[f"dist_{out['layers'][0]}"])[:, other].min() > 0
    assert out["layers"] == ["relu1", "relu7"]
    assert len(out["rotation"]["accuracy"]) == 4
    assert os.path.exists(out["figure"]) and json.load(open(out["json"]))["eval_images"] == 3


def test_parse_range():
    np.testing.assert_allclose(I.parse_range("0:30:10", "rotation"), [0, 10, 20, 30])
    np.testing.assert_allclose(I.parse_range("0.8,1.2", "scale"), [0.8, 1.2])
    with pytest.raises(Exception):
        I.parse_range("a:b", "scale")


# ----------------------------------------------------------------------------- correspondence
def test_delta_vectorized_equals_loop():
    rng = np.random.default_rng(0)
    for n, d in ((2, 5), (5, 37), (7, 200)):
        s = rng.integers(-1, 2, size=(n, d))
        assert C.delta(s) == C.delta_loop(s)
    s = np.array([[1, 0, -1, 0], [1, 1, -1, 0], [-1, 0, 0, 0]])
    # feature-wise: f0 {+,+,-}: 2*2*1=4; f1 {0,+,0}: 4; f2 {-,-,0}: 4; f3 all 0: 0
    assert C.delta(s) == C.delta_loop(s) == 12
    eps = np.array([[1e-9, 2.0, -3.0], [0.0, -1.0, 1.0]])
    np.testing.assert_array_equal(C.signs(eps, zero_tol=1e-6), [[0, 1, -1], [0, -1, 1]])
    np.testing.assert_array_equal(C.signs(eps), [[1, 1, -1], [0, -1, 1]])


def test_correspondence_table(tmp_path):
    net = tiny_net()
    ds = dataset(n=80)
    out = C.correspondence(net, meta_for(net, list(ds.classes)), ds, str(tmp_path), n_images=3, groups=2,
                           parts=["left_eye", "nose"], progress=False)
    assert out["class"] == "face" and [r["part"] for r in out["table"]] == ["left_eye", "nose", "random"]
    for r in out["rows"]:
        for l in ("pool5", "relu7"):
            assert 0.0 <= r[l]["mean"] <= 1.0 and len(r[l]["values"]) == 2
            # normalization: raw Delta / (n (n-1) D)
            assert r[l]["delta_raw"][0] >= 0
    assert os.path.exists(out["figure"]) and "random" in out["table_markdown"]


# ----------------------------------------------------------------------------- layerwise
def test_grid_pool():
    a = np.arange(2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5)
    g = L.grid_pool(a, 2, "max").reshape(2, 3, 2, 2)
    assert g[0, 0, 0, 0] == a[0, 0, :3, :3].max() and g[1, 2, 1, 1] == a[1, 2, 2:, 2:].max()
    g = L.grid_pool(a, 8, "avg")  # grid larger than the map: one cell per pixel
    np.testing.assert_allclose(g, a.reshape(2, -1))
    assert L.grid_pool(np.ones((4, 7)), 2).shape == (4, 7)


def test_layerwise_last_layer_matches_evaluate(trained, tmp_path):
    from zfscratch.train import evaluate
    _, net, meta = trained
    tr = SyntheticDataset(n=600, size=SIZE, split="train", classes=CLASSES)
    te = SyntheticDataset(n=300, size=SIZE, split="test", classes=CLASSES)
    out = L.layerwise(net, meta, tr, te, str(tmp_path), epochs=8, progress=False)
    ev = evaluate(net, te, S.get_preprocess(meta))
    assert abs(out["net_accuracy"] - ev["accuracy"]) < 1e-9
    rows = {r["layer"]: r for r in out["rows"]}
    assert list(rows) == ["relu1", "relu2", "relu3", "relu4", "relu5", "relu6", "relu7", "fc8"]
    print(f"\nlayerwise: {out['table_markdown']}")
    assert abs(rows["fc8"]["test_accuracy"] - ev["accuracy"]) <= 0.08
    assert rows["relu1"]["dim"] == 16 * 4 * 4
    assert os.path.exists(out["figure"])


# ----------------------------------------------------------------------------- architecture
def test_filter_statistics():
    from zfscratch.experiments import architecture as A
    k = 11
    yy, xx = np.mgrid[0:k, 0:k] - k // 2
    smooth = np.exp(-(xx ** 2 + yy ** 2) / 8.0) * np.cos(0.3 * xx)
    checker = (-1.0) ** (xx + yy)
    w = np.stack([np.stack([smooth] * 3), np.stack([checker] * 3), np.zeros((3, k, k)) + 1e-4])
    hf = A.hf_energy(w)
    assert hf[0] < 0.05 and hf[1] > 0.9
    assert A.dead_fraction(w, 0.05) == pytest.approx(1 / 3)
    st = A.filter_stats(w)
    assert st["filters"] == 3 and st["kernel"] == k


def test_architecture_compare_and_cli(trained, tmp_path):
    from zfscratch.cli import main
    from zfscratch.experiments import architecture as A
    from zfscratch.io import save_weights
    weights, net, meta = trained
    other = zfnet_small(3, SIZE, backend="numpy", **SMALL, conv1=[11, 2, 5])  # 11x11 first layer at 32 px
    wpath = str(tmp_path / "alex.npz")
    save_weights(wpath, other, meta={k: v for k, v in meta.items() if k not in ("config", "extra")},
                 extra=meta["extra"])
    val = dataset("val", n=40)
    out = A.compare({"zf": (net, meta), "alex": (other, meta)}, val, str(tmp_path / "cmp"), probe_images=16,
                    progress=False)
    assert set(out["models"]) == {"zf", "alex"}
    assert out["models"]["alex"]["kernel"] == 11 and 0 <= out["models"]["zf"]["hf_energy"] <= 1
    assert os.path.exists(out["figure"]) and os.path.exists(out["models"]["zf"]["filter_figure"])
    rc = main(["architecture", "--weights", weights, wpath, "--val-data", SPEC, "--out", str(tmp_path / "c2"),
               "--quiet", "--backend", "numpy"])
    assert rc == 0 and os.path.exists(tmp_path / "c2" / "architecture.json")


def test_architecture_trains_both_with_one_budget(tmp_path):
    from zfscratch.experiments import architecture as A
    tr = SyntheticDataset(n=32, size=64, split="train", classes=CLASSES)  # alexnet_like needs >= 64 px
    va = SyntheticDataset(n=16, size=64, split="val", classes=CLASSES)
    out = A.architecture((tr, va), str(tmp_path), epochs=1, batch=16, backend="numpy", input_size=64,
                         probe_images=8, progress=False, train_options={"model_config": SMALL})
    assert set(out["runs"]) == {"zfnet_small", "alexnet_like"}
    assert out["models"]["alexnet_like"]["conv1"] == "11x11 stride 4"
    assert out["models"]["zfnet_small"]["conv1"] == "7x7 stride 2"
    for run in out["runs"].values():
        assert os.path.exists(os.path.join(run, "weights.npz"))


# ----------------------------------------------------------------------------- CLI
def test_cli_invariance_correspondence_layerwise(trained, tmp_path):
    from zfscratch.cli import main
    weights, _, _ = trained
    out = str(tmp_path)
    assert main(["invariance", "--weights", weights, "--images", "2", "--eval-images", "3",
                 "--rotation", "0:360:90", "--scale", "0.8:1.2:0.2", "--translation=-0.2:0.2:0.2",
                 "--out", out, "--quiet", "--backend", "numpy"]) == 0  # data from the weights' metadata
    d = json.load(open(os.path.join(out, "invariance.json")))
    assert d["values"]["rotation"] == [0, 90, 180, 270, 360]
    assert main(["correspondence", "--weights", weights, "--data", SPEC, "--images", "3", "--groups", "1",
                 "--out", out, "--quiet", "--backend", "numpy"]) == 0
    assert main(["layerwise", "--weights", weights, "--data", SPEC, "--train-images", "60",
                 "--test-images", "30", "--epochs", "2", "--layers", "relu1,relu7,fc8", "--out", out,
                 "--quiet", "--backend", "numpy"]) == 0
    d = json.load(open(os.path.join(out, "layerwise.json")))
    assert [r["layer"] for r in d["rows"]] == ["relu1", "relu7", "fc8"]
    assert main(["correspondence", "--weights", weights, "--data", SPEC, "--class", "nothing", "--out", out,
                 "--quiet"]) == 2
