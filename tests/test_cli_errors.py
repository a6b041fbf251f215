"""Bad input to ``zfscratch train`` / ``zfscratch evaluate``: one line on stderr, exit status 2, no
traceback, and nothing written or overwritten.

Loader-level checks live in the data package; here they are exercised end to end through the CLI.
"""
from __future__ import annotations

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from zfscratch import io as zio
from zfscratch.cli import main
from zfscratch.models import build_model

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

TINY_ARGS = ["--backend", "numpy", "--epochs", "1", "--batch", "8", "--widths", "4,4,4,4,4", "--fc", "16", "--quiet"]


def _snapshot(folder):
    """{relative path: bytes} of everything under ``folder`` (to prove nothing changed)."""
    out = {}
    for d, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = f.read()
    return out


def _fails(capsys, argv, match):
    """Run the CLI in-process: exit 2, one stderr line ``zfscratch: error: ...`` containing ``match``."""
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, (rc, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("zfscratch: error:"), err
    assert "Traceback" not in err
    assert match.lower() in lines[0].lower(), (match, lines[0])
    if os.environ.get("ZFSCRATCH_SHOW_ERRORS"):
        print(lines[0], file=sys.__stdout__)
    return lines[0]


@pytest.fixture
def out(tmp_path):
    """An output folder that already holds a file: it must stay untouched."""
    d = tmp_path / "out"
    d.mkdir()
    (d / "keep.txt").write_text("precious\n")
    return d


def _train_fails(capsys, out, data, match, extra=()):
    before = _snapshot(out)
    msg = _fails(capsys, ["train", "--data", data, "--out", str(out / "run"), *TINY_ARGS, *extra], match)
    assert _snapshot(out) == before
    assert not (out / "run").exists()
    return msg


def _png(path, size=8, value=0):
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def _folder(root, classes=("a", "b"), n=3):
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _png(root / c / f"{i}.png", value=40 * i)
    return root


# ===================================================================================== data
def test_missing_path(capsys, out, tmp_path):
    for kind in ("folder", "idx", "cifar"):
        _train_fails(capsys, out, f"{kind}:{tmp_path / 'nope'}", "does not exist")


def test_empty_folder(capsys, out, tmp_path):
    (tmp_path / "empty").mkdir()
    _train_fails(capsys, out, f"folder:{tmp_path / 'empty'}", "no class subfolders")
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "notes.txt").write_text("x")
    _train_fails(capsys, out, f"folder:{tmp_path / 'noimg'}", "no .png")


def test_text_file_named_png(capsys, out, tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / "a" / "fake.png").write_text("I am text, not a PNG\n")
    _train_fails(capsys, out, f"folder:{root}", "fake.png")


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_image(capsys, out, tmp_path, ext):
    root = _folder(tmp_path / "imgs")
    full = tmp_path / f"full.{ext}"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    (root / "b" / f"cut.{ext}").write_bytes(data[:len(data) // 2])
    _train_fails(capsys, out, f"folder:{root}", f"cut.{ext}")


def _idx(path, magic, dims, payload):
    head = bytes(magic) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    path.write_bytes(head + payload)


def test_idx_wrong_magic_and_length(capsys, out, tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    imgs = np.zeros((4, 8, 8), np.uint8).tobytes()
    _idx(d / "train-labels-idx1-ubyte", [0, 0, 8, 1], [4], bytes([0, 1, 2, 3]))
    _idx(d / "train-images-idx3-ubyte", [1, 2, 8, 3], [4, 8, 8], imgs)
    _train_fails(capsys, out, f"idx:{d}", "magic")
    _idx(d / "train-images-idx3-ubyte", [0, 0, 8, 3], [4, 8, 8], imgs[:-10])
    _train_fails(capsys, out, f"idx:{d}", "bytes, expected")
    # a corrupt gzip too
    (d / "train-images-idx3-ubyte").unlink()
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 9)[:-6])
    _train_fails(capsys, out, f"idx:{d}", "train-images-idx3-ubyte.gz")


def _cifar(path, labels):
    rec = []
    for lab in labels:
        rec.append(bytes([lab]) + bytes(3072))
    path.write_bytes(b"".join(rec))


def test_cifar_wrong_size_and_labels_out_of_range(capsys, out, tmp_path):
    d = tmp_path / "cifar"
    d.mkdir()
    (d / "data_batch_1.bin").write_bytes(bytes(3073 * 2 + 100))
    _train_fails(capsys, out, f"cifar:{d}", "multiple of 3073")
    _cifar(d / "data_batch_1.bin", [0, 1, 12, 3])
    _train_fails(capsys, out, f"cifar:{d}", "label 12 out of range")


def test_labels_out_of_range_for_the_model(capsys, tmp_path):
    """Evaluating a 3-class model on 10-class data."""
    w = tmp_path / "w3.npz"
    zio.save_weights(w, build_model({"arch": "zfnet_small", "num_classes": 3, "input_size": 16, "widths": [4] * 5,
                                     "fc": 16}))
    before = _snapshot(tmp_path)
    _fails(capsys, ["evaluate", "--weights", str(w), "--data", "synthetic:n=20,size=16", "--backend", "numpy",
                    "--quiet"], "classes")
    assert _snapshot(tmp_path) == before


def test_bad_spec(capsys, out):
    _train_fails(capsys, out, "mnist:/x", "unknown kind")
    _train_fails(capsys, out, "synthetic:n=abc", "not an integer")


# ===================================================================================== weights
@pytest.fixture
def tiny_weights(tmp_path):
    w = tmp_path / "w.npz"
    net = build_model({"arch": "zfnet_small", "num_classes": 10, "input_size": 16, "widths": [4] * 5, "fc": 16})
    zio.save_weights(w, net, meta={"classes": [str(i) for i in range(10)]})
    return w


def _eval_fails(capsys, weights, match, data="synthetic:n=20,size=16", extra=()):
    folder = os.path.dirname(weights)
    before = _snapshot(folder)
    _fails(capsys, ["evaluate", "--weights", str(weights), "--data", data, "--backend", "numpy", "--quiet",
                    *extra], match)
    assert _snapshot(folder) == before


def test_evaluate_missing_weights(capsys, tmp_path):
    _eval_fails(capsys, tmp_path / "none.npz", "does not exist")


def test_weights_of_another_architecture(capsys, tmp_path, tiny_weights):
    arrays, meta = zio.load_npz(tiny_weights)
    meta["config"]["widths"] = [8, 4, 4, 4, 4]  # the config now disagrees with conv1/conv2 shapes
    bad = tmp_path / "other.npz"
    zio.atomic_savez(bad, arrays, meta)
    _eval_fails(capsys, bad, "shape")
    # arrays of a different network altogether
    meta2 = dict(meta, config={"arch": "zfnet_small", "num_classes": 10, "input_size": 32})
    zio.atomic_savez(tmp_path / "other2.npz", arrays, meta2)
    _eval_fails(capsys, tmp_path / "other2.npz", "other2.npz")


def test_npz_with_object_arrays(capsys, tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, **{"conv1.w": np.array([{"a": 1}, None], dtype=object)})
    _eval_fails(capsys, p, "object arrays")


def test_not_an_npz(capsys, tmp_path):
    p = tmp_path / "junk.npz"
    p.write_text("hello")
    _eval_fails(capsys, p, "junk.npz")


# ===================================================================================== options
def test_batch_size_zero(capsys, out, tiny_weights):
    _train_fails(capsys, out, "synthetic:n=20,size=16", "--batch 0", extra=["--batch", "0"])
    _eval_fails(capsys, tiny_weights, "--batch 0", extra=["--batch", "0"])


def test_other_bad_options(capsys, out):
    _train_fails(capsys, out, "synthetic:n=20,size=16", "--lr", extra=["--lr", "-1"])
    _train_fails(capsys, out, "synthetic:n=20,size=16", "--epochs", extra=["--epochs", "0"])
    _train_fails(capsys, out, "synthetic:n=20,size=16", "--augment", extra=["--augment", "rotate"])
    _train_fails(capsys, out, "synthetic:n=20,size=16", "--snapshots", extra=["--snapshots", "1,x"])
    _train_fails(capsys, out, "synthetic:n=20,size=16", "--conv1", extra=["--conv1", "5,1"])


def test_unwritable_output_directory(capsys, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder\n")
    before = _snapshot(tmp_path)
    _fails(capsys, ["train", "--data", "synthetic:n=20,size=16", "--out", str(blocker / "run"), *TINY_ARGS],
           "cannot write")
    assert _snapshot(tmp_path) == before


def test_resume_without_checkpoint(capsys, out):
    before = _snapshot(out)
    _fails(capsys, ["train", "--resume", "--out", str(out), *TINY_ARGS], "no checkpoint")
    assert _snapshot(out) == before


def test_existing_run_is_not_overwritten(capsys, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", "synthetic:n=20,size=16", "--out", str(run), *TINY_ARGS]) == 0
    capsys.readouterr()
    before = _snapshot(run)
    _fails(capsys, ["train", "--data", "synthetic:n=20,size=16", "--out", str(run), *TINY_ARGS], "already holds a run")
    assert _snapshot(run) == before


def test_console_script_prints_one_line(tmp_path):
    """The real entry point (a subprocess): one line, exit 2, no traceback."""
    r = subprocess.run([sys.executable, "-m", "zfscratch", "train", "--data", f"folder:{tmp_path / 'nope'}",
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("zfscratch: error:"), r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()


def test_unavailable_backend(capsys, out):
    from zfscratch.backend import available_backends
    if "cupy" in available_backends():
        pytest.skip("a GPU is usable here")
    _train_fails(capsys, out, "synthetic:n=20,size=16", "--backend", extra=["--backend", "cupy"])
