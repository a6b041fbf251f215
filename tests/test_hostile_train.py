"""Training runs: --overwrite removes only what a run made, one training per run directory (lock)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image

from hostile_util import assert_refused, run_cli


def _folder(root, n=6, size=32):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        d = root / "imgs" / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root / "imgs"


TRAIN = ["train", "--data", "folder:imgs", "--out", "run", "--epochs", "1", "--quiet", "--backend", "numpy",
         "--batch", "4"]


def test_overwrite_keeps_a_snapshots_folder_it_did_not_make(tmp_path):
    _folder(tmp_path)
    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    (run / "snapshots" / "precious.txt").write_text("not a snapshot")
    (run / "snapshots" / "epoch_0001.npz").write_bytes(b"old snapshot of an old run")
    (run / "weights.npz").write_bytes(b"old")
    r = run_cli([*TRAIN, "--overwrite"], cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "snapshots" / "precious.txt").read_text() == "not a snapshot"
    # a run made snapshots/ now: it carries the marker and is removed whole by the next --overwrite
    run2 = tmp_path / "run2"
    r = run_cli([*TRAIN[:4], "run2", *TRAIN[5:]], cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run2 / "snapshots" / ".zfscratch-snapshots").exists()
    from zfscratch.train.rundir import clear_snapshots
    clear_snapshots(run2)
    assert not (run2 / "snapshots").exists()


def test_overwrite_does_not_follow_a_snapshots_symlink(tmp_path):
    from zfscratch.train.rundir import clear_snapshots
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "epoch_0001.npz").write_bytes(b"x")
    (tmp_path / "run").mkdir()
    os.symlink(elsewhere, tmp_path / "run" / "snapshots")
    clear_snapshots(tmp_path / "run")
    assert (elsewhere / "epoch_0001.npz").exists()


_HOLD = textwrap.dedent("""
    import sys, time
    from zfscratch.util.files import FolderLock
    with FolderLock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
""")


def test_second_training_into_one_run_dir_refused(tmp_path):
    _folder(tmp_path)
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        assert_refused(TRAIN, tmp_path, ["run", f"pid {p.pid}"], out=tmp_path / "run", timeout=300)
        assert sorted(os.listdir(tmp_path / "run")) == [".zfscratch.lock"]  # nothing written into it
    finally:
        p.kill()
        p.wait()


def _checkpointed(tmp_path):
    _folder(tmp_path)
    r = run_cli(TRAIN, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp_path / "run" / "checkpoint.npz"


def test_resume_refuses_damaged_checkpoints_and_changed_classes(tmp_path):
    from zfscratch import io as zio
    ck = _checkpointed(tmp_path)
    arrays, meta = zio.load_npz(ck)
    resume = ["train", "--resume", "--out", "run", "--epochs", "2", "--quiet", "--backend", "numpy"]
    cases = [
        ({k: v for k, v in meta.items() if k != "iterator"}, arrays, "damaged"),
        ({**meta, "dropout_rng": "not a state"}, arrays, "damaged"),
        (meta, {**arrays, next(k for k in arrays if k.startswith("param/")):
                np.full_like(arrays[next(k for k in arrays if k.startswith("param/"))], np.nan)}, "NaN"),
    ]
    for m, a, words in cases:
        zio.atomic_savez(ck, a, m)
        assert_refused(resume, tmp_path, ["checkpoint", words], out=tmp_path / "run", timeout=300)
    zio.atomic_savez(ck, arrays, meta)
    os.rename(tmp_path / "imgs" / "b", tmp_path / "imgs" / "c")  # a renamed class would remap labels
    assert_refused(resume, tmp_path, ["--resume", "classes"], out=tmp_path / "run", timeout=300)
