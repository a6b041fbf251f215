"""Tests of zfscratch.data: synthetic dataset, IDX/CIFAR/folder loaders, transforms, iterator."""
import gzip
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zfscratch.data import (CLASS_NAMES, BatchIterator, CifarDataset, FolderDataset, IdxDataset,
                            SyntheticDataset, available_splits, compute_mean, holdout_split,
                            open_dataset, parse_spec, transforms as T)
from zfscratch.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CIFAR_TGZ = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


# --------------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------------

def test_synthetic_deterministic_per_seed_and_index():
    a = SyntheticDataset(40, seed=3)
    b = SyntheticDataset(400, seed=3)           # sample i does not depend on n
    xa, ya = a.get_batch([5, 17, 3, 39])
    xb, yb = b.get_batch([5, 17, 3, 39])
    assert xa.dtype == np.uint8 and xa.shape == (4, 64, 64, 3) and ya.dtype == np.int64
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    xc, _ = SyntheticDataset(40, seed=4).get_batch([5, 17, 3, 39])
    assert not np.array_equal(xa, xc)
    # splits are different streams
    xv, _ = SyntheticDataset(40, seed=3, split="val").get_batch(range(40))
    xt, _ = a.get_batch(range(40))
    flat_t = {x.tobytes() for x in xt}
    assert not any(x.tobytes() in flat_t for x in xv)
    # __getitem__ agrees with get_batch
    s = a[17]
    assert np.array_equal(s.image, xa[1]) and s.label == ya[1]
    assert s.class_name == a.classes[s.label]


def test_synthetic_classes_balanced_and_present():
    ds = SyntheticDataset(50, seed=0)
    assert ds.classes == list(CLASS_NAMES) and len(CLASS_NAMES) >= 8
    counts = np.bincount(ds.labels, minlength=len(CLASS_NAMES))
    assert np.all(counts == 5)
    _, y = ds.get_batch(range(50))
    assert np.array_equal(y, ds.labels)


@pytest.mark.parametrize("background", ["plain", "colored"])
def test_synthetic_landmarks_inside_bbox(background):
    ds = SyntheticDataset(60, seed=1, background=background)
    for s in ds.samples(range(60)):
        x0, y0, x1, y1 = s.bbox
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        # objects are big: at least ~30% of the side
        assert max(x1 - x0, y1 - y0) >= 0.3 * 64
        assert set(s.landmarks) == set(ds.parts(s.class_name)) == set(s.part_radii)
        for name, (x, y) in s.landmarks.items():
            assert x0 <= x <= x1 and y0 <= y <= y1, (s.class_name, name, (x, y), s.bbox)


def test_synthetic_backgrounds_differ_and_sizes():
    p, _ = SyntheticDataset(8, background="plain").get_batch(range(8))
    c, _ = SyntheticDataset(8, background="colored").get_batch(range(8))
    # plain: a grey background (objects never touch the corner pixel)
    assert np.all(p[:, 0, 0, 0] == p[:, 0, 0, 1]) and np.all(p[:, 0, 0, 1] == p[:, 0, 0, 2])
    assert c.std(axis=(1, 2)).mean() > p[:, :4, :4].std(axis=(1, 2)).mean()
    x, _ = SyntheticDataset(4, size=32).get_batch(range(4))
    assert x.shape == (4, 32, 32, 3)


def test_synthetic_class_subset_and_parts():
    ds = SyntheticDataset(20, classes=["face", "house"], seed=2)
    assert ds.classes == ["face", "house"] and ds.num_classes == 2
    assert set(np.unique(ds.labels)) == {0, 1}
    faces = ds.indices_of("face")
    assert len(faces) == 10 and all(ds[int(i)].class_name == "face" for i in faces[:3])
    assert {"left_eye", "right_eye", "nose", "mouth"} <= set(ds.parts("face"))
    assert {"roof", "door", "window"} <= set(ds.parts(1))
    with pytest.raises(UserError, match="car"):
        ds.parts("car")
    with pytest.raises(UserError, match="unknown synthetic class 'nope'"):
        SyntheticDataset(5, classes=["face", "nope"])


def test_synthetic_render_pose_and_part_mask():
    ds = SyntheticDataset(10, background="plain")
    a = ds.render("face", cx=30, cy=32, scale=0.6, angle=0, background_seed=7)
    b = ds.render("face", cx=34, cy=32, scale=0.6, angle=0, background_seed=7)
    # a pure translation by 4 pixels on a plain background shifts the image
    assert np.array_equal(b.image[:, 4:], a.image[:, :-4])
    assert b.bbox[0] == a.bbox[0] + 4 and b.bbox[2] == a.bbox[2] + 4
    # landmarks rotate with the object (90 degrees clockwise: left eye goes up)
    r = ds.render("face", cx=32, cy=32, scale=0.6, angle=90, background_seed=7)
    lx, ly = a.landmarks["left_eye"]
    rx, ry = r.landmarks["left_eye"]
    assert np.allclose((rx - 32, ry - 32), (-(ly - 32), lx - 30), atol=1e-6)
    assert r.landmarks["left_eye"][1] < 32
    # colours: a given RGB body colour is used
    red = ds.render("star", color=(255, 0, 0), background_seed=1)
    assert tuple(red.image[32, 32]) != (255, 0, 0)  # the centre of a star has the detail disc
    assert np.any(np.all(red.image == (255, 0, 0), axis=-1))
    # batch rendering broadcasts
    imgs, metas = ds.render_batch("car", cx=[20, 32, 44], scale=0.5, angle=[0, 10, 20])
    assert imgs.shape == (3, 64, 64, 3) and len(metas) == 3
    # part masks: the disc covers the landmark; the shape mask covers the eye pixels
    m = ds.part_mask(a, "left_eye")
    x, y = a.landmarks["left_eye"]
    assert m.dtype == bool and m[int(y), int(x)] and 10 < m.sum() < 400
    ms = ds.part_mask(a, "left_eye", mode="shape")
    assert ms.sum() > 5 and (ms & ~m).sum() == 0
    assert ds.part_mask(ds.render("ring"), "hole", mode="shape").sum() > 0  # falls back to disc
    occluded = a.image.copy()
    occluded[m] = 128
    assert not np.array_equal(occluded, a.image)
    with pytest.raises(UserError, match="no part"):
        ds.part_mask(a, "roof")


# --------------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------------

def _idx_bytes(arr):
    arr = np.asarray(arr, np.uint8)
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


def _write(path, data, gz=False):
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        Path(path).write_bytes(data)
    return str(path)


def test_idx_loader_raw_and_gz(tmp_path):
    rng = np.random.default_rng(0)
    xtr, ytr = rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12)
    xte, yte = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)
    _write(tmp_path / "train-images-idx3-ubyte.gz", _idx_bytes(xtr), gz=True)
    _write(tmp_path / "train-labels-idx1-ubyte.gz", _idx_bytes(ytr), gz=True)
    _write(tmp_path / "t10k-images-idx3-ubyte", _idx_bytes(xte))
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(yte))
    tr = open_dataset(f"idx:{tmp_path}", "train")
    assert len(tr) == 12 and tr.image_shape == (28, 28, 3) and tr.classes == [str(i) for i in range(10)]
    x, y = tr.get_batch([0, 11])
    assert x.shape == (2, 28, 28, 3) and np.array_equal(x[..., 1], xtr[[0, 11]])
    assert np.array_equal(y, ytr[[0, 11]])
    te = open_dataset(f"idx:{tmp_path}", "test")
    assert len(te) == 5 and np.array_equal(te.labels, yte)
    assert available_splits(f"idx:{tmp_path}") == ["train", "val", "test"]
    f = open_dataset(f"idx:{tmp_path / 't10k-images-idx3-ubyte'},classes=fashion")
    assert f.classes[9] == "Ankle boot"


def test_idx_bad_inputs(tmp_path):
    x = np.zeros((4, 8, 8), np.uint8)
    good_labels = _write(tmp_path / "l", _idx_bytes(np.arange(4)))
    bad_magic = _write(tmp_path / "bad-magic", b"\x01\x02\x08\x03" + _idx_bytes(x)[4:])
    with pytest.raises(UserError, match="bad-magic.*magic"):
        IdxDataset(bad_magic, good_labels)
    short = _write(tmp_path / "short", _idx_bytes(x)[:-10])
    with pytest.raises(UserError, match="short.*bytes"):
        IdxDataset(short, good_labels)
    imgs = _write(tmp_path / "imgs", _idx_bytes(x))
    with pytest.raises(UserError, match="dimensions"):
        IdxDataset(good_labels, good_labels)
    few = _write(tmp_path / "few", _idx_bytes(np.arange(3)))
    with pytest.raises(UserError, match="3 labels"):
        IdxDataset(imgs, few)
    big = _write(tmp_path / "big", _idx_bytes(np.array([0, 1, 12, 3])))
    with pytest.raises(UserError, match="big.*label 12 out of range"):
        IdxDataset(imgs, big, classes="fashion")
    badgz = _write(tmp_path / "x.gz", b"\x1f\x8b" + b"garbage" * 5)
    with pytest.raises(UserError, match="x.gz"):
        IdxDataset(badgz, good_labels)
    with pytest.raises(UserError, match="does not exist"):
        open_dataset(f"idx:{tmp_path / 'nowhere'}")
    with pytest.raises(UserError, match="no train-images"):
        open_dataset(f"idx:{tmp_path}")


# --------------------------------------------------------------------------------------------
# CIFAR-10 binary
# --------------------------------------------------------------------------------------------

def _cifar_file(path, images, labels):
    rec = np.concatenate([np.asarray(labels, np.uint8)[:, None],
                          np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(len(labels), -1)], 1)
    rec.tofile(path)
    return str(path)


def test_cifar_loader(tmp_path):
    rng = np.random.default_rng(1)
    x1, y1 = rng.integers(0, 256, (3, 32, 32, 3)), np.array([0, 9, 4])
    x2, y2 = rng.integers(0, 256, (2, 32, 32, 3)), np.array([1, 2])
    xt, yt = rng.integers(0, 256, (4, 32, 32, 3)), np.array([3, 3, 5, 7])
    _cifar_file(tmp_path / "data_batch_1.bin", x1, y1)
    _cifar_file(tmp_path / "data_batch_2.bin", x2, y2)
    _cifar_file(tmp_path / "test_batch.bin", xt, yt)
    tr = open_dataset(f"cifar:{tmp_path}")
    assert len(tr) == 5 and tr.classes[0] == "airplane" and tr.image_shape == (32, 32, 3)
    x, y = tr.get_batch(range(5))
    assert np.array_equal(x, np.concatenate([x1, x2])) and np.array_equal(y, [0, 9, 4, 1, 2])
    # record layout: byte 1 is the red value of pixel (0, 0), byte 1025 its green value
    raw = (tmp_path / "data_batch_1.bin").read_bytes()
    assert raw[1] == x1[0, 0, 0, 0] and raw[1 + 1024] == x1[0, 0, 0, 1] and raw[2] == x1[0, 0, 1, 0]
    (tmp_path / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n\n")
    te = CifarDataset(tmp_path, split="test")
    assert te.classes[3] == "c3" and np.array_equal(te.labels, yt)
    assert open_dataset(f"cifar:{tmp_path}", "val").labels.tolist() == yt.tolist()


def test_cifar_bad_inputs(tmp_path):
    (tmp_path / "data_batch_1.bin").write_bytes(b"\0" * 3073 * 2 + b"\0" * 7)
    with pytest.raises(UserError, match="data_batch_1.bin.*multiple of 3073"):
        open_dataset(f"cifar:{tmp_path}")
    x = np.zeros((2, 32, 32, 3), np.uint8)
    _cifar_file(tmp_path / "data_batch_1.bin", x, [1, 10])
    with pytest.raises(UserError, match="data_batch_1.bin.*label 10"):
        open_dataset(f"cifar:{tmp_path}")
    with pytest.raises(UserError, match="no test_batch.bin"):
        open_dataset(f"cifar:{tmp_path}", "test")
    with pytest.raises(UserError, match="does not exist"):
        open_dataset(f"cifar:{tmp_path / 'missing'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no data_batch"):
        open_dataset(f"cifar:{empty}")


# --------------------------------------------------------------------------------------------
# image folder
# --------------------------------------------------------------------------------------------

def _png_variants(d):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "a_rgb.png")
    Image.fromarray(rgb[..., 0]).save(d / "b_grey.png")
    rgba = np.dstack([rgb, np.full((16, 16), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(d / "c_rgba.png")
    Image.fromarray(rgb).quantize(32).save(d / "d_palette.png")
    g16 = (rgb[..., 1].astype(np.uint16) * 257)
    Image.fromarray(g16).save(d / "e_grey16.png")
    yy, xx = np.mgrid[0:16, 0:16]
    smooth = np.stack([xx * 16, yy * 16, (xx + yy) * 8], -1).astype(np.uint8)
    Image.fromarray(smooth).save(d / "f.JPG", quality=95)
    (d / "notes.txt").write_text("ignored")
    return rgb


def test_folder_loader_modes_and_splits(tmp_path):
    rgb = _png_variants(tmp_path / "train" / "zebra")
    _png_variants(tmp_path / "train" / "apple")
    _png_variants(tmp_path / "test" / "apple")
    tr = open_dataset(f"folder:{tmp_path}", "train")
    assert tr.classes == ["apple", "zebra"] and len(tr) == 12 and tr.image_shape == (16, 16, 3)
    assert tr.cached
    x, y = tr.get_batch(range(12))
    assert x.dtype == np.uint8 and x.shape == (12, 16, 16, 3)
    assert y.tolist() == [0] * 6 + [1] * 6
    assert np.array_equal(x[6], rgb)                               # RGB
    assert np.array_equal(x[7], np.repeat(rgb[..., :1], 3, -1))    # grey -> RGB
    assert np.array_equal(x[8], rgb)                               # opaque RGBA
    assert np.array_equal(x[9], np.asarray(Image.fromarray(rgb).quantize(32).convert("RGB")))
    assert np.array_equal(x[10], np.repeat(rgb[..., 1:2], 3, -1))  # 16-bit grey scaled to 8 bits
    yy, xx = np.mgrid[0:16, 0:16]
    smooth = np.stack([xx * 16, yy * 16, (xx + yy) * 8], -1)
    assert np.abs(x[11].astype(int) - smooth).mean() < 8           # JPEG
    te = open_dataset(f"folder:{tmp_path}", "test")
    assert te.classes == ["apple", "zebra"] and te.labels.tolist() == [0] * 6
    assert open_dataset(f"folder:{tmp_path}", "val").labels.tolist() == [0] * 6
    # no cache: decoded per batch, same pixels; resized on request
    nc = FolderDataset(tmp_path, cache=False)
    assert not nc.cached and np.array_equal(nc.get_batch([3, 7])[0], x[[3, 7]])
    small = open_dataset(f"folder:{tmp_path},size=8,cache=no")
    assert small.get_batch([0])[0].shape == (1, 8, 8, 3)
    # a plain folder is one split
    flat = open_dataset(f"folder:{tmp_path / 'train'}")
    assert len(flat) == 12
    with pytest.raises(UserError, match="no 'test' split"):
        open_dataset(f"folder:{tmp_path / 'train'}", "test")
    tr2, va2 = holdout_split(flat, 0.5, seed=0)
    assert len(tr2) + len(va2) == 12 and set(va2.labels.tolist()) == {0, 1}


def test_folder_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_dataset(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class subfolders"):
        open_dataset(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "noimg" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match="cat.*no .png"):
        open_dataset(f"folder:{tmp_path / 'noimg'}")
    bad = tmp_path / "bad" / "cat"
    bad.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(bad / "a.png")
    (bad / "b.png").write_text("this is not a png")
    with pytest.raises(UserError, match=r"b\.png is not an image"):
        open_dataset(f"folder:{tmp_path / 'bad'}")
    (bad / "b.png").unlink()
    data = (bad / "a.png").read_bytes()
    (bad / "c.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"c\.png is truncated or corrupt"):
        open_dataset(f"folder:{tmp_path / 'bad'}")
    lazy = FolderDataset(tmp_path / "bad", cache=False)   # lazy: the error comes with the batch
    with pytest.raises(UserError, match=r"c\.png"):
        lazy.get_batch([1])


@pytest.mark.skipif(not CIFAR_TGZ.exists(), reason=f"{CIFAR_TGZ} not present")
def test_real_cifar_folder_sample(tmp_path):
    want = {}
    with tarfile.open(CIFAR_TGZ, "r:gz") as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and m.name.endswith(".jpg") and len(parts) == 4:
                key = (parts[1], parts[2])
                if len(want.setdefault(key, [])) < 3:
                    want[key].append(m)
                    tar.extract(m, tmp_path, filter="data") if hasattr(tarfile, "data_filter") \
                        else tar.extract(m, tmp_path)
            full = [k for k, v in want.items() if len(v) == 3]
            split = next((s for s in ("train", "test") if sum(k[0] == s for k in full) >= 2), None)
            if split:
                break
    assert split, "the archive has no split with two classes"
    ds = open_dataset(f"folder:{tmp_path / 'cifar10-jpg' / split}")
    x, y = ds.get_batch(range(len(ds)))
    assert x.shape[1:] == (32, 32, 3) and x.dtype == np.uint8 and len(ds) >= 3
    assert set(ds.classes) <= {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                               "horse", "ship", "truck"}
    assert x.std() > 10


# --------------------------------------------------------------------------------------------
# spec strings
# --------------------------------------------------------------------------------------------

def test_spec_parsing():
    assert parse_spec("synthetic") == ("synthetic", None, {})
    k, p, o = parse_spec("synthetic:n=200,size=32,background=colored,seed=5")
    assert (k, p, o["n"], o["background"]) == ("synthetic", None, "200", "colored")
    assert parse_spec("folder:/a/b,c,size=64") == ("folder", "/a/b,c", {"size": "64"})
    ds = open_dataset("synthetic:n=200,size=32,background=colored,seed=5,classes=face+star")
    assert len(ds) == 200 and ds.image_shape == (32, 32, 3) and ds.classes == ["face", "star"]
    assert len(open_dataset("synthetic:n=200", "val")) == 40
    assert len(open_dataset("synthetic:n=200", "test", n_test=7)) == 7
    sc = open_dataset("synthetic:scale=0.6-0.8,max_angle=10")
    assert sc.scale_range == (0.6, 0.8) and sc.max_angle == 10
    for bad, msg in [("imagenet:/x", "unknown kind"), ("synthetic:colour=red", "unknown option"),
                     ("synthetic:n=abc", "not an integer"), ("cifar", "needs a path"),
                     ("synthetic:background=tartan", "background"), ("", "expected")]:
        with pytest.raises(UserError, match=msg):
            open_dataset(bad)


# --------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------

def test_transforms_shapes_and_mean():
    ds = SyntheticDataset(64, size=32, seed=0)
    mean = compute_mean(ds, batch_size=20)
    x, _ = ds.get_batch(range(64))
    assert mean.shape == (32, 32, 3) and mean.dtype == np.float32
    assert np.allclose(mean, x.mean(axis=0), atol=1e-3)
    cm = compute_mean(ds, per_channel=True)
    assert cm.shape == (3,) and np.allclose(cm, x.reshape(-1, 3).mean(0), atol=1e-3)
    f = T.to_float_nchw(x, mean, scale=1.0)
    assert f.shape == (64, 3, 32, 32) and f.dtype == np.float32
    assert np.abs(f.mean(axis=0)).max() < 1e-3                  # per-pixel mean removed
    rng = np.random.default_rng(0)
    tr = T.train_transform(mean, crop=28, flip=True)(x[:5], rng)
    assert tr.shape == (5, 3, 28, 28) and tr.dtype == np.float32
    ev = T.eval_transform(mean, crop=28)(x[:5])
    assert np.allclose(ev, T.to_float_nchw(x[:5], mean)[:, :, 2:30, 2:30])
    tc = T.ten_crop(T.to_float_nchw(x[:5], mean), 28)
    assert tc.shape == (10, 5, 3, 28, 28)
    assert np.array_equal(tc[8], ev) and np.array_equal(tc[9], ev[..., ::-1])
    assert np.array_equal(tc[1], tc[0][..., ::-1])
    flat = T.eval_transform(mean, crop=28, ten_crop=True)(x[:5])
    assert flat.shape == (50, 3, 28, 28)
    assert T.ten_crop_average(np.ones((50, 4))).shape == (5, 4)
    # uint8 NHWC crops and flips
    assert T.random_crop(x[:3], 20, rng, pad=2).shape == (3, 20, 20, 3)
    fl = T.random_flip(x[:8], np.random.default_rng(1), p=1.0)
    assert np.array_equal(fl, x[:8, :, ::-1])
    big = T.resize_center_crop(np.zeros((40, 60, 3), np.uint8), 32)
    assert big.shape == (32, 32, 3)
    assert T.resize_shorter(np.zeros((40, 60, 3), np.uint8), 20).shape == (20, 30, 3)
    with pytest.raises(UserError, match="mean of shape"):
        T.to_float_nchw(x, np.zeros((8, 8, 3)))


# --------------------------------------------------------------------------------------------
# iterator
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_iterator_shards_cover_each_index_once(world_size):
    ds = SyntheticDataset(23, size=16)
    seen = []
    for rank in range(world_size):
        it = BatchIterator(ds, 4, shuffle=True, seed=5, rank=rank, world_size=world_size,
                           return_indices=True)
        for x, y, idx in it:
            assert x.dtype == np.float32 and x.shape[1:] == (3, 16, 16) and x.shape[0] == len(idx)
            assert np.array_equal(y, ds.labels[idx])
            seen.extend(idx.tolist())
        assert it.epoch == 1 and it.position == 0
        assert np.array_equal(it.shard_indices(0), np.asarray(seen[-len(it.shard_indices(0)):]))
    assert sorted(seen) == list(range(23))
    # drop_last: every rank runs the same number of full batches
    counts = {len(list(BatchIterator(ds, 4, seed=5, rank=r, world_size=world_size, drop_last=True)))
              for r in range(world_size)}
    assert counts == {23 // (4 * world_size)}


def test_iterator_resume_reproduces_batches():
    ds = SyntheticDataset(30, size=16)
    mean = compute_mean(ds)

    def make():
        return BatchIterator(ds, 4, shuffle=True, seed=9, transform=T.train_transform(mean, crop=12, pad=2),
                             return_indices=True)

    ref = make()
    full = list(ref.epochs(2))
    assert len(full) == 2 * 8
    it = make()
    first = []
    gen = iter(it)
    for _ in range(3):
        first.append(next(gen))
    state = it.state_dict()
    assert state["epoch"] == 0 and state["position"] == 12
    resumed = make()
    resumed.load_state_dict(state)
    rest = list(resumed) + list(resumed)
    got = first + rest
    assert len(got) == len(full)
    for (xa, ya, ia), (xb, yb, ib) in zip(got, full):
        assert np.array_equal(ia, ib) and np.array_equal(ya, yb) and np.array_equal(xa, xb)
    # epochs differ in order
    assert not np.array_equal(full[0][2], full[8][2])
    # a global position resumes on a different number of workers without losing an index
    seen = []
    for r in range(2):
        w = BatchIterator(ds, 2, seed=9, rank=r, world_size=2, return_indices=True)
        w.load_state_dict(state)
        seen += [i for _, _, idx in w for i in idx.tolist()]
    assert sorted(seen + [i for b in first for i in b[2].tolist()]) == list(range(30))
    with pytest.raises(UserError, match="dataset of"):
        BatchIterator(SyntheticDataset(31), 4, seed=9).load_state_dict(state)


def _photo_folder(root, held_out="val"):
    """train/ and val/ (or test/) with WordNet-id class folders, a greyscale, a CMYK, an RGBA and an
    upper-case .JPEG file."""
    rng = np.random.default_rng(5)
    for split, n in (("train", 3), (held_out, 2)):
        for wnid in ("n02102040", "n01440764"):
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / f"{wnid}_{i}.JPEG")
    d = root / "train" / "n01440764"
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(d / "grey.jpg")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).convert("CMYK").save(d / "cmyk.JPEG")
    Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), "RGBA").save(d / "alpha.PNG")
    return root


@pytest.mark.parametrize("mapping,text", [
    ("classes.txt", "# index wnid name\n0 n01440764 tench\n1 n02102040 English springer\n"),
    ("synsets.txt", "n02102040 English springer\nn01440764 tench\n"),
    ("LOC_synset_mapping.txt", "n01440764 tench, Tinca tinca\nn02102040 English springer, English springer spaniel\n"),
])
@pytest.mark.parametrize("held_out", ["val", "test"])
def test_folder_class_names_and_photo_modes(tmp_path, mapping, text, held_out):
    root = _photo_folder(tmp_path / "photos", held_out)
    (root / mapping).write_text(text)
    tr = open_dataset(f"folder:{root},size=16", "train")
    assert tr.folders == ["n01440764", "n02102040"]
    assert tr.classes == ["tench", "English springer"]
    assert tr.describe()["class_file"].endswith(mapping)
    assert len(tr) == 9                                   # .JPEG, .jpg and .PNG all found
    x, y = tr.get_batch(range(len(tr)))
    assert x.shape == (9, 16, 16, 3) and x.dtype == np.uint8 and y.tolist() == [0] * 6 + [1] * 3
    grey = x[[i for i, f in enumerate(tr.files) if f.endswith("grey.jpg")][0]]
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    for split in ("val", "test"):                          # either name reaches the held-out folder
        ho = open_dataset(f"folder:{root}", split)
        assert ho.classes == tr.classes and len(ho) == 4 and ho.folder.endswith(held_out)


def test_folder_class_file_mismatch_is_one_line(tmp_path):
    root = _photo_folder(tmp_path / "photos")
    (root / "classes.txt").write_text("0 n01440764 tench\n1 n09999999 unicorn\n")
    with pytest.raises(UserError) as e:
        open_dataset(f"folder:{root}", "train")
    msg = str(e.value)
    assert "\n" not in msg and "classes.txt" in msg and "n09999999" in msg and "n02102040" in msg
    (root / "classes.txt").write_text("0 n01440764 tench\n")
    with pytest.raises(UserError, match="misses class folders"):
        open_dataset(f"folder:{root}", "val")
    (root / "classes.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match="not UTF-8"):
        open_dataset(f"folder:{root}", "train")
    # two folders with one display name stay apart
    (root / "classes.txt").write_text("n01440764 fish\nn02102040 fish\n")
    assert open_dataset(f"folder:{root}").classes == ["fish (n01440764)", "fish (n02102040)"]
