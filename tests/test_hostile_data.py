"""Hostile datasets and options: FIFO and decompression-bomb images, names that are paths, | head, bounds."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hostile_util import assert_refused, run_cli
from zfscratch import io as zio
from zfscratch import models


def _folder(root, classes=("a", "b"), n=6, size=16):
    rng = np.random.default_rng(0)
    for c in classes:
        d = root / "imgs" / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root / "imgs"


def _train(folder, *extra):
    return ["train", "--data", f"folder:{folder.name}", "--out", "run", "--epochs", "1", "--quiet",
            "--backend", "numpy", *extra]


def test_fifo_named_png_refused_without_hanging(tmp_path):
    f = _folder(tmp_path)
    os.mkfifo(f / "a" / "x.png")
    assert_refused(_train(f), tmp_path, ["x.png", "not a regular file"], out=tmp_path / "run", timeout=60)


def test_decompression_bomb_image_refused_from_header(tmp_path):
    f = _folder(tmp_path)
    # 20000 x 20000 one-bit PNG: ~50 KB on disk, 1.2 GB as RGB once decoded
    Image.new("1", (20000, 20000)).save(f / "a" / "0.png", optimize=True)
    assert (f / "a" / "0.png").stat().st_size < 1 << 20
    assert_refused(_train(f), tmp_path, ["0.png", "refused before decoding"], out=tmp_path / "run")


@pytest.mark.parametrize("opt,value", [("--input-size", "40000"), ("--resize", "20000"), ("--pad", "100000")])
def test_size_options_bounded(tmp_path, opt, value):
    f = _folder(tmp_path)
    assert_refused(_train(f, opt, value), tmp_path, [opt, "expected an integer in"], out=tmp_path / "run")


def _weights(tmp_path):
    net = models.zfnet_small(num_classes=2, input_size=32)
    p = tmp_path / "w.npz"
    zio.save_weights(p, net, meta={"classes": ["a", "b"], "preprocessing": {"input_size": 32, "resize": 32}})
    return p


@pytest.mark.parametrize("name", ["../escaped", "/tmp/zf-escaped", "a/b"])
def test_occlude_name_cannot_escape(tmp_path, name):
    w = _weights(tmp_path)
    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    assert_refused(["occlude", "--weights", w.name, "--image", img.name, "--out", "out", "--name", name,
                    "--backend", "numpy", "--quiet"], tmp_path, ["--name", "not a safe name"], out=tmp_path / "out",
                   timeout=300)
    assert not os.path.exists("/tmp/zf-escaped.png")


def test_broken_pipe_is_quiet(tmp_path):
    """``zfscratch --help | head -1``-like: the reader goes away; no traceback."""
    code = ("import sys\nfrom zfscratch.cli import main\n"
            "sys.exit(main(['occlude', '--help']))\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # nobody reads: every write gets EPIPE
    err = p.stderr.read().decode()
    p.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize("opt,value,words", [
    ("--conv1", "7,0,3", "conv1 stride"), ("--fc", "0", "fc"), ("--widths", "0,64,96,96,64", "widths[0]"),
    ("--seed", "-1", "--seed"), ("--weight-decay", "nan", "--weight-decay"), ("--momentum", "nan", "--momentum"),
])
def test_train_options_one_line(tmp_path, opt, value, words):
    f = _folder(tmp_path, size=32)
    assert_refused(_train(f, opt, value), tmp_path, [words], out=tmp_path / "run")


def test_single_class_folder_refused(tmp_path):
    f = _folder(tmp_path, classes=("only",), size=32)
    assert_refused(_train(f), tmp_path, ["1 class", "at least 2"], out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_mathtext_class_name_and_topk_layouts(tmp_path):
    from zfscratch.train import train_model
    f = _folder(tmp_path, classes=("$\\foo$", "b"), size=32)
    train_model(f"folder:{f}", tmp_path / "run", epochs=1, batch=4, quiet=True, backend="numpy")
    r = run_cli(["evaluate", "--weights", "run/weights.npz", "--data", f"folder:{f.name}", "--split", "train"],
                cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "run" / "confusion_train.png").stat().st_size > 0
    for k in (2, 5, 6):
        r = run_cli(["visualize", "--weights", "run/weights.npz", "--data", f"folder:{f.name}", "--k", str(k),
                     "--out", f"v{k}", "--layers", "conv1", "--quiet"], cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert (tmp_path / f"v{k}" / "topk_conv1.png").exists()
