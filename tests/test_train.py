"""Training loop, preprocessing, evaluation and reliability (exact resume after SIGKILL, NaN stop).

Everything runs on a tiny network (zfnet_small with widths 4 on 16x16 synthetic images) so that the
whole file takes seconds; accuracy targets are measured elsewhere (see the training report).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from zfscratch import io as zio
from zfscratch.errors import UserError
from zfscratch.preprocess import Preprocess, load_image
from zfscratch.train import (CHECKPOINT_FORMAT, METRIC_FIELDS, TrainingDiverged, evaluate, load_checkpoint,
                             train_model)

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

TINY = {"widths": [4, 4, 4, 4, 4], "fc": 16}
TINY_SPEC = "synthetic:n=96,size=16"


def _tiny_data(n=96, n_val=32):
    from zfscratch.data.synthetic import SyntheticDataset
    return (SyntheticDataset(n=n, size=16, split="train"), SyntheticDataset(n=n_val, size=16, split="val"))


def _train(out, **kw):
    args = dict(epochs=2, batch=16, backend="numpy", quiet=True, model_config=TINY, snapshots="1",
                lr_schedule="plateau")
    args.update(kw)
    data = args.pop("data", None) or _tiny_data()
    return train_model(data, out, **args)


def _weights(path):
    arrays, _ = zio.load_npz(path)
    return {k: v for k, v in arrays.items() if not k.startswith("extra/")}


def _backends():
    from zfscratch.backend import available_backends
    return [b for b in ("numpy", "numba") if b in available_backends()]


# =============================================================================== preprocessing
def test_preprocess_centre_crop_mean_scale():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 10, 10, 3), dtype=np.uint8)
    prep = Preprocess(8, resize=10, scale=0.5)
    prep.fit_mean([imgs])
    assert prep.mean.shape == (10, 10, 3)
    x = prep(imgs)
    assert x.shape == (3, 3, 8, 8) and x.dtype == np.float32
    want = (imgs[:, 1:9, 1:9, :].astype(np.float32) - prep.mean[1:9, 1:9]) * 0.5
    np.testing.assert_allclose(x, want.transpose(0, 3, 1, 2), rtol=1e-6)
    # the batch mean is subtracted: the preprocessed batch averages to zero
    np.testing.assert_allclose(prep.normalize(imgs).mean(axis=0), 0, atol=1e-4)
    np.testing.assert_array_equal(prep.deprocess(x), imgs[:, 1:9, 1:9, :])


def test_preprocess_channel_mean_and_meta_roundtrip():
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    prep = Preprocess(8, mean_mode="channel", scale=1 / 64)
    prep.fit_mean([imgs[:2], imgs[2:]])
    np.testing.assert_allclose(prep.mean, imgs.reshape(-1, 3).mean(axis=0), rtol=1e-5)
    meta = {"preprocessing": prep.to_meta(), "extra": {"mean": prep.mean}}
    json.dumps(meta["preprocessing"])
    back = Preprocess.from_meta(meta)
    np.testing.assert_array_equal(back(imgs), prep(imgs))


def test_preprocess_resizes_any_image_size():
    prep = Preprocess(16, resize=16)
    big = np.zeros((40, 64, 3), np.uint8)
    big[:, 32:] = 255
    x = prep([big, np.full((16, 16, 3), 7, np.uint8)])
    assert x.shape == (2, 3, 16, 16)
    assert x[1].min() == x[1].max() == pytest.approx(7 / 64)


def test_ten_crop_views():
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)
    prep = Preprocess(8, resize=12)
    views = prep.ten_crop(imgs)
    assert views.shape == (10, 2, 3, 8, 8)
    np.testing.assert_array_equal(views[8], prep(imgs))            # centre
    np.testing.assert_array_equal(views[9], views[8][..., ::-1])   # its mirror
    np.testing.assert_array_equal(views[0], (imgs[:, :8, :8].astype(np.float32) / 64).transpose(0, 3, 1, 2))


def test_augment_is_seeded_and_flips_and_crops():
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (16, 12, 12, 3), dtype=np.uint8)
    prep = Preprocess(8, resize=12, pad=2)
    a = prep.augment(imgs, np.random.default_rng(5))
    b = prep.augment(imgs, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (16, 3, 8, 8)
    plain = Preprocess(12)
    c = plain.augment(imgs, np.random.default_rng(0), flip=True, crop=True)
    full = plain(imgs)
    flipped = [bool(np.array_equal(c[i], full[i][..., ::-1])) for i in range(16)]
    same = [bool(np.array_equal(c[i], full[i])) for i in range(16)]
    assert all(f or s for f, s in zip(flipped, same)) and any(flipped) and any(same)


def test_random_erase_squares_of_mean_keyed_by_sample():
    from zfscratch.data import transforms as T
    from zfscratch.samplerng import SampleRNG
    x = np.random.default_rng(0).standard_normal((64, 3, 20, 20)).astype(np.float32) + 5  # no zeros
    e = T.random_erase(x, np.random.default_rng(1), p=1.0, min_side=0.2, max_side=0.4)
    assert e.shape == x.shape and not np.shares_memory(e, x) and (x != 0).all()
    for i in range(64):
        z = (e[i] == 0).all(axis=0)
        rows, cols = np.nonzero(z.any(axis=1))[0], np.nonzero(z.any(axis=0))[0]
        assert rows.size and cols.size, i  # every image got a square (p=1)
        # one axis-aligned rectangle (a square cut by the border), all channels, nothing else changed
        assert z[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all() and z.sum() == rows.size * cols.size
        assert max(rows.size, cols.size) <= 8 and (e[i][:, ~z] == x[i][:, ~z]).all()
    assert np.array_equal(T.random_erase(x, np.random.default_rng(1), p=0.0), x)
    some = T.random_erase(x, np.random.default_rng(2), p=0.5)
    hit = [(some[i] == 0).any() for i in range(64)]
    assert 16 < sum(hit) < 48
    # keyed by sample: the same squares whatever the batch split (data-parallel training)
    idx = np.arange(100, 164)
    whole = T.random_erase(x, SampleRNG(0, 1, idx))
    np.testing.assert_array_equal(whole[40:], T.random_erase(x[40:], SampleRNG(0, 1, idx[40:])))
    with pytest.raises(ValueError, match="B, C, H, W"):
        T.random_erase(np.zeros((2, 8, 8, 3), np.uint8), np.random.default_rng(0))


def test_augment_erase_option_reaches_the_views():
    imgs = np.random.default_rng(3).integers(1, 256, (32, 12, 12, 3), dtype=np.uint8)
    prep = Preprocess(12)  # no mean: a pixel is 0 only where erased
    a = prep.augment(imgs, np.random.default_rng(5), flip=False, crop=False, erase=True)
    assert any((a[i] == 0).all(axis=0).any() for i in range(32))
    assert not (prep.augment(imgs, np.random.default_rng(5), flip=False, crop=False) == 0).any()
    from zfscratch.train.options import _parse_augment
    assert _parse_augment("erase,flip") == ("erase", "flip")
    with pytest.raises(UserError, match="flip, crop, erase"):
        _parse_augment("flip,blur")


# =============================================================================== image files
def _save(tmp_path, name, arr, mode=None, **kw):
    p = tmp_path / name
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(p, **kw)
    return p


def test_load_image_modes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(_save(tmp_path, "rgb.png", rgb)), rgb)
    grey = rgb[..., 0]
    g = load_image(_save(tmp_path, "grey.png", grey))
    assert g.shape == (5, 7, 3) and (g == grey[..., None]).all()
    rgba = np.dstack([rgb, np.zeros((5, 7), np.uint8)])  # fully transparent -> white background
    assert (load_image(_save(tmp_path, "rgba.png", rgba)) == 255).all()
    g16 = (grey.astype(np.uint16) * 257)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g16.png")[..., 0], grey)
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    assert load_image(tmp_path / "pal.png").shape == (5, 7, 3)
    Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=95)
    assert load_image(tmp_path / "x.jpg").shape == (5, 7, 3)


def test_load_image_bad_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("this is not an image\n")
    with pytest.raises(UserError, match="text.png"):
        load_image(tmp_path / "text.png")
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for ext in ("png", "jpg"):
        full = tmp_path / f"full.{ext}"
        Image.fromarray(rgb).save(full)
        data = full.read_bytes()
        cut = tmp_path / f"cut.{ext}"
        cut.write_bytes(data[:len(data) // 2])
        with pytest.raises(UserError, match=f"cut.{ext}"):
            load_image(cut)
    with pytest.raises(UserError, match="folder"):
        load_image(tmp_path)


# =============================================================================== training
def test_train_writes_a_complete_run_dir(tmp_path):
    events = []
    out = tmp_path / "run"
    res = _train(out, epochs=2, snapshots="0,1,2", progress=events.append)
    for key in ("weights", "checkpoint", "metrics_csv", "metrics_json", "curve"):
        assert os.path.isfile(res[key]), key
    assert res["epochs"] == 2 and res["steps"] == 2 * 6
    assert sorted(os.listdir(out / "snapshots")) == [".zfscratch-snapshots", "epoch_0000.npz", "epoch_0001.npz", "epoch_0002.npz"]
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",") == list(METRIC_FIELDS) and len(rows) == 3
    summary = json.loads((out / "metrics.json").read_text())
    assert len(summary["history"]) == 2 and summary["n_train"] == 96 and summary["n_val"] == 32
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the final weights are self-describing: net, classes, preprocessing and mean from one file
    net, meta = zio.load_weights(res["weights"])
    assert meta["classes"] == res["classes"] and len(meta["classes"]) == 10
    assert meta["extra"]["mean"].shape == (16, 16, 3)
    prep = Preprocess.from_meta(meta)
    assert prep.input_size == 16
    snap_net, snap_meta = zio.load_weights(out / "snapshots" / "epoch_0001.npz")
    assert snap_meta["epoch"] == 1
    # the epoch-2 snapshot is the final network
    for (k, a), (_, b) in zip(net.params(), zio.load_weights(out / "snapshots" / "epoch_0002.npz")[0].params()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    kinds = [e["event"] for e in events]
    assert kinds.count("step") == 12 and kinds.count("epoch") == 2 and kinds[-1] == "done"
    _, ck = load_checkpoint(res["checkpoint"])
    assert ck["format"] == CHECKPOINT_FORMAT and ck["epoch"] == 2 and ck["pos"] == 0


def test_train_refuses_to_overwrite_a_run(tmp_path):
    out = tmp_path / "run"
    _train(out, epochs=1)
    before = {p: (out / p).read_bytes() for p in ("weights.npz", "checkpoint.npz", "metrics.json")}
    with pytest.raises(UserError, match="already holds a run"):
        _train(out, epochs=1)
    assert before == {p: (out / p).read_bytes() for p in before}
    _train(out, epochs=1, overwrite=True, seed=3)
    assert (out / "weights.npz").read_bytes() != before["weights.npz"]


def test_resume_in_process_extends_exactly(tmp_path):
    """Training 3 epochs == training 2, then resuming with epochs=3 (same process)."""
    a = _train(tmp_path / "a", epochs=3)
    _train(tmp_path / "b", epochs=2)
    b = train_model(_tiny_data(), tmp_path / "b", epochs=3, backend="numpy", quiet=True, resume=True)
    wa, wb = _weights(a["weights"]), _weights(b["weights"])
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    assert [h["val_acc"] for h in a["history"]] == [h["val_acc"] for h in b["history"]]


def test_resume_refuses_changed_settings_and_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        train_model(_tiny_data(), tmp_path / "none", resume=True, quiet=True)
    assert not (tmp_path / "none" / "weights.npz").exists()
    _train(tmp_path / "r", epochs=1)
    with pytest.raises(UserError, match="lr"):
        train_model(_tiny_data(), tmp_path / "r", epochs=2, lr=0.5, resume=True, quiet=True)


KILL_SPEC = "synthetic:n=96,n_val=32,size=16"
KILL_ARGS = ["--epochs", "3", "--batch", "16", "--checkpoint-every", "4", "--snapshots", "1,2,3",
             "--widths", "4,4,4,4,4", "--fc", "16", "--quiet"]


def _cli_subprocess(argv, kill_at=None):
    env = dict(os.environ)
    env.pop("ZFSCRATCH_TEST_KILL_AT_STEP", None)
    if kill_at:
        env["ZFSCRATCH_TEST_KILL_AT_STEP"] = str(kill_at)
    return subprocess.run([sys.executable, "-m", "zfscratch", *argv], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("backend", _backends())
def test_kill9_mid_epoch_then_resume_is_bit_identical(tmp_path, backend):
    """``zfscratch train`` killed by SIGKILL during epoch 2 (step 10 of 18; last checkpoint at step 8),
    then ``zfscratch train --out RUN --resume``: the final weights, snapshots and metrics equal those of
    an uninterrupted run."""
    from zfscratch.cli import main
    ref = tmp_path / "ref"  # the uninterrupted run, in this process (same backend and threads)
    assert main(["train", "--data", KILL_SPEC, "--out", str(ref), "--backend", backend, *KILL_ARGS]) == 0
    run = tmp_path / "run"
    r = _cli_subprocess(["train", "--data", KILL_SPEC, "--out", str(run), "--backend", backend, *KILL_ARGS],
                        kill_at=10)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    assert not (run / "weights.npz").exists()
    _, ck = load_checkpoint(run / "checkpoint.npz")
    assert (ck["epoch"], ck["pos"], ck["step"]) == (1, 2, 8)
    r = _cli_subprocess(["train", "--out", str(run), "--resume", "--backend", backend, "--quiet"])
    assert r.returncode == 0, r.stderr
    for name in ("weights.npz", "snapshots/epoch_0001.npz", "snapshots/epoch_0002.npz", "snapshots/epoch_0003.npz"):
        wa, wb = _weights(ref / name), _weights(run / name)
        for k in wa:
            np.testing.assert_array_equal(wa[k], wb[k], err_msg=f"{name}:{k}")
    ha = json.loads((ref / "metrics.json").read_text())["history"]
    hb = json.loads((run / "metrics.json").read_text())["history"]
    assert len(ha) == len(hb) == 3
    for a, b in zip(ha, hb):
        for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "step"):
            assert a[k] == b[k], (k, a, b)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("ZFSCRATCH_TEST_NAN_AT_STEP", "7")
    with pytest.raises(TrainingDiverged, match=r"step 7 .*lr 0\.02"):
        _train(out, epochs=2, checkpoint_every=4)
    _, ck = load_checkpoint(out / "checkpoint.npz")
    assert ck["step"] == 6 and ck["epoch"] == 1  # the end-of-epoch-1 checkpoint (steps 4 and 6 were good)
    assert not (out / "weights.npz").exists()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_with_a_huge_learning_rate(tmp_path):
    """A real blow-up (absurd lr, no renorm: float32 overflow): stops with a message naming the step
    and the lr, and every checkpoint written holds finite values."""
    with pytest.raises(TrainingDiverged, match=r"step \d+.*lr 1e\+30"):
        _train(tmp_path / "run", epochs=3, lr=1e30, renorm_rms=None, checkpoint_every=1)
    _, ck = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    arrays, _ = zio.load_npz(tmp_path / "run" / "checkpoint.npz")
    assert all(np.isfinite(v).all() for v in arrays.values())


# =============================================================================== evaluation
def test_evaluate_scores_and_confusion(tmp_path):
    res = _train(tmp_path / "run", epochs=1)
    net, meta = zio.load_weights(res["weights"])
    prep = Preprocess.from_meta(meta)
    _, val = _tiny_data()
    ev = evaluate(net, val, prep, batch=7)
    conf = np.array(ev["confusion"])
    assert conf.shape == (10, 10) and conf.sum() == 32 == ev["n"]
    assert conf.sum(axis=1).tolist() == np.bincount(val.labels, minlength=10).tolist()
    assert ev["accuracy"] == pytest.approx(np.trace(conf) / 32)
    assert ev["accuracy"] == pytest.approx(res["val_acc"])
    assert 0 <= ev["top5_error"] <= ev["top1_error"] <= 1
    ev10 = evaluate(net, val, prep, ten_crop=True)
    assert ev10["n"] == 32 and ev10["ten_crop"]


def test_cosine_schedule(tmp_path):
    """Cosine decay is a function of the step alone; a resumed run may not switch schedules."""
    from zfscratch.train import cosine_lr
    a = _train(tmp_path / "a", epochs=2, lr_schedule="cosine")
    # the lr of the last step of each epoch (6 steps per epoch, 12 in all)
    assert [h["lr"] for h in a["history"]] == [cosine_lr(0.02, 5, 12), cosine_lr(0.02, 11, 12)]
    with pytest.raises(UserError, match="lr_schedule"):
        train_model(_tiny_data(), tmp_path / "a", epochs=3, lr_schedule="plateau", resume=True, quiet=True)


# =============================================================================== real photos
# ../shared/data beside the repository (CI lays a copy of shared/ next to its clone)
CIFAR_JPG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "shared", "data", "cifar10-jpg.tar.gz")


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    """A small image folder (train/ and test/, 10 classes) cut from the real CIFAR-10 JPEG archive."""
    import tarfile
    if not os.path.isfile(CIFAR_JPG):
        pytest.skip(f"{CIFAR_JPG} is not available")
    root = tmp_path_factory.mktemp("cifar_small")
    want = {"train": 8, "test": 3}
    counts = {}
    with tarfile.open(CIFAR_JPG, "r:gz") as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 4 or parts[1] not in want or not parts[3].endswith(".jpg"):
                continue
            key = (parts[1], parts[2])
            if counts.get(key, 0) >= want[parts[1]]:
                continue
            counts[key] = counts.get(key, 0) + 1
            dest = root / parts[1] / parts[2]
            dest.mkdir(parents=True, exist_ok=True)
            (dest / parts[3]).write_bytes(tar.extractfile(m).read())
            if len(counts) == 20 and all(counts[k] >= want[k[0]] for k in counts):
                break
    return root


def test_real_photos_train_and_evaluate(tmp_path, cifar_folder):
    """folder:PATH end to end on real JPEGs: 32x32 model (conv1 5x5 stride 1), pad-and-crop + flip,
    held-out validation, then ``zfscratch evaluate`` on the test split."""
    from zfscratch.cli import main
    run = tmp_path / "run"
    rc = main(["train", "--data", f"folder:{cifar_folder}", "--out", str(run), "--backend", "numpy",
               "--input-size", "32", "--conv1", "5,1,2", "--widths", "4,4,4,4,4", "--fc", "16", "--pad", "4",
               "--epochs", "1", "--batch", "16", "--val-split", "0.25", "--quiet"])
    assert rc == 0
    net, meta = zio.load_weights(run / "weights.npz")
    assert meta["classes"][:2] == ["airplane", "automobile"] and len(meta["classes"]) == 10
    assert net.config["conv1"] == [5, 1, 2] and meta["preprocessing"]["pad"] == 4
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["n_train"] == 60 and summary["n_val"] == 20
    assert main(["evaluate", "--weights", str(run / "weights.npz"), "--data", f"folder:{cifar_folder}",
                 "--split", "test", "--backend", "numpy", "--quiet"]) == 0
    ev = json.loads((run / "evaluation_test.json").read_text())
    assert ev["n"] == 30 and np.array(ev["confusion"]).sum() == 30
    assert (run / "confusion_test.png").is_file()


def test_warmup_and_init_choice_are_applied_and_recorded(tmp_path):
    """--warmup ramps the lr linearly over its steps (then the schedule rules); --init is recorded."""
    from zfscratch.train import cosine_lr
    events = []
    res = _train(tmp_path / "w", epochs=2, lr_schedule="cosine", warmup=0.5, progress=events.append,
                 model_config={**TINY, "init": "paper"})
    lrs = [e["lr"] for e in events if e["event"] == "step"]   # 6 steps an epoch: 3 warm-up steps
    expect = [cosine_lr(0.02, s, 12) * min(1.0, (s + 1) / 3) for s in range(12)]
    np.testing.assert_allclose(lrs, expect, rtol=1e-12)
    net, meta = zio.load_weights(res["weights"])
    assert net.config["init"] == "paper" and meta["train"]["init"] == "paper"
    assert meta["train"]["warmup_epochs"] == 0.5
    with pytest.raises(UserError, match="--warmup"):
        _train(tmp_path / "bad", warmup=-1)
    # resuming a warmed-up run mid-way is exact
    _train(tmp_path / "r", epochs=1, warmup=1.5, model_config={**TINY, "init": "paper"})
    b = train_model(_tiny_data(), tmp_path / "r", epochs=2, backend="numpy", quiet=True, resume=True)
    a = _train(tmp_path / "full", epochs=2, warmup=1.5, model_config={**TINY, "init": "paper"})
    wa, wb = _weights(a["weights"]), _weights(b["weights"])
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
