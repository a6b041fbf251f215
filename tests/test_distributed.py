"""Data-parallel training and sharded passes over MPI (``mpirun -n 2`` on CPU), per-sample keyed
randomness, and failures that must stop every rank with one line.

The MPI tests need the ``[distributed]`` extra (mpi4py and the mpich wheel's ``mpirun``); they skip,
saying so, when it is not installed. Each MPI run is a subprocess with a timeout, one thread per rank.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from zfscratch import io as zio
from zfscratch.samplerng import SampleRNG

SPEC = "synthetic:n=96,n_val=32,size=16"
TINY = ["--widths", "4,4,4,4,4", "--fc", "16", "--backend", "numpy", "--quiet", "--snapshots", "none"]
TRAIN = ["train", "--data", SPEC, "--batch", "16", "--lr", "0.05", "--lr-schedule", "plateau", *TINY]


def _mpirun():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    for cand in (Path(sys.executable).parent / "mpirun", shutil.which("mpirun")):
        if cand and os.access(str(cand), os.X_OK):
            return str(cand)
    return None


MPIRUN = _mpirun()
needs_mpi = pytest.mark.skipif(MPIRUN is None, reason="the [distributed] extra (mpi4py + an mpirun) is not "
                                                      "installed: pip install -e '.[distributed]'")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZFSCRATCH_TEST_", "PMI_", "OMPI_"))}
    env.update(NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.update(extra)
    return env


def _zf(argv, timeout=240, **env):
    return subprocess.run([sys.executable, "-m", "zfscratch", *argv], env=_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def _mpi(k, argv, timeout=240, **env):
    return subprocess.run([MPIRUN, "-n", str(k), sys.executable, "-m", "zfscratch", *argv], env=_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def _error_lines(stderr):
    return [l for l in stderr.splitlines() if l.startswith("zfscratch: error")]


def _weights(path):
    arrays, _ = zio.load_npz(path)
    return {k: v for k, v in arrays.items() if not k.startswith("extra/")}


def _max_rel(a, b):
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-30)) for k in a)


# -- keyed randomness (no MPI) ----------------------------------------------------------------

def test_sample_rng_does_not_depend_on_the_batch_split():
    idx = np.array([5, 17, 2, 40, 9, 33])
    whole = SampleRNG(0, 3, idx, stream=7)
    r_all, i_all = whole.random((6, 50)), whole.integers(0, 11, size=6)
    for part in (idx[:2], idx[2:], idx[::2]):
        rng = SampleRNG(0, 3, part, stream=7)
        rows = [int(np.flatnonzero(idx == j)[0]) for j in part]
        np.testing.assert_array_equal(rng.random((len(part), 50)), r_all[rows])
        np.testing.assert_array_equal(rng.integers(0, 11, size=len(part)), i_all[rows])
    assert not np.array_equal(SampleRNG(0, 4, idx, stream=7).random((6, 50)), r_all)  # epoch matters
    assert not np.array_equal(whole.stream(1).random((6, 50)), SampleRNG(0, 3, idx, 7).random((6, 50)))
    u = SampleRNG(1, 0, np.arange(4000)).random((4000, 25))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.005
    counts = np.bincount(SampleRNG(2, 0, np.arange(60000)).integers(0, 6, size=60000), minlength=6)
    assert counts.min() > 9500


def test_dropout_masks_keyed_by_sample():
    from zfscratch.layers import Dropout
    x = np.ones((6, 300), np.float32)
    d = Dropout(0.5, seed=11)
    idx = np.array([3, 8, 1, 20, 4, 7])
    d.sample_rng = SampleRNG(0, 1, idx)
    full = d.forward(x, train=True)
    assert set(np.unique(full)) == {0.0, 2.0} and 0.4 < (full == 0).mean() < 0.6
    d.sample_rng = SampleRNG(0, 1, idx[3:])
    np.testing.assert_array_equal(d.forward(x[3:], train=True), full[3:])
    np.testing.assert_array_equal(d.backward(np.ones_like(x[3:])), full[3:])


def test_augmentation_keyed_by_sample():
    from zfscratch.preprocess import Preprocess
    prep = Preprocess(12, resize=16, scale=1 / 64, mean_mode="none")
    imgs = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    idx = np.arange(100, 108)
    a = prep.augment(imgs, SampleRNG(0, 2, idx))
    b = prep.augment(imgs[5:], SampleRNG(0, 2, idx[5:]))
    np.testing.assert_array_equal(a[5:], b)


def test_distributed_flag_without_an_mpi_world(tmp_path):
    r = _zf([*TRAIN, "--epochs", "1", "--out", str(tmp_path / "run"), "--distributed"], timeout=120)
    assert r.returncode == 2, r.stderr
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "--distributed" in lines[0] and "mpirun" in lines[0], r.stderr
    assert not (tmp_path / "run").exists()


# -- MPI: training --------------------------------------------------------------------------------

@needs_mpi
def test_two_ranks_train_like_one_process_and_resume_on_other_k(tmp_path):
    """2 ranks x batch 8 == 1 process x batch 16 (global batch 16) to 1e-5 relative in every weight
    tensor after 12 steps (2 epochs); a run checkpointed by 2 ranks resumes on 1 process (and the
    reverse) to the same weights."""
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = _zf([*TRAIN, "--epochs", "2", "--out", str(one)])
    assert r1.returncode == 0, r1.stderr
    r2 = _mpi(2, [*TRAIN, "--epochs", "2", "--out", str(two), "--distributed"])
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.count("validation accuracy") == 1  # rank 0 reports
    wa, wb = _weights(one / "weights.npz"), _weights(two / "weights.npz")
    assert set(wa) == set(wb)
    rel = _max_rel(wa, wb)
    assert rel < 1e-5, rel
    h1 = json.loads((one / "metrics.json").read_text())["history"]
    h2 = json.loads((two / "metrics.json").read_text())["history"]
    assert [h["step"] for h in h2] == [6, 12] and h2[-1]["ranks"] == 2 and h2[-1]["allreduce_ms_per_step"] > 0
    for a, b in zip(h1, h2):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5 * abs(a["train_loss"])
        assert a["val_acc"] == b["val_acc"]
    # K changes across a resume: 2 ranks for epoch 1, then 1 process; 1 process, then 2 ranks
    mixed = tmp_path / "mixed"
    assert _mpi(2, [*TRAIN, "--epochs", "1", "--out", str(mixed)]).returncode == 0  # detected without the flag
    r = _zf(["train", "--out", str(mixed), "--resume", "--epochs", "2", "--quiet", "--backend", "numpy"])
    assert r.returncode == 0, r.stderr
    assert _max_rel(wa, _weights(mixed / "weights.npz")) < 1e-5
    back = tmp_path / "back"
    assert _zf([*TRAIN, "--epochs", "1", "--out", str(back)]).returncode == 0
    r = _mpi(2, ["train", "--out", str(back), "--resume", "--epochs", "2", "--quiet", "--backend", "numpy"])
    assert r.returncode == 0, r.stderr
    assert _max_rel(wa, _weights(back / "weights.npz")) < 1e-5


@needs_mpi
def test_rank_failure_stops_every_rank_with_one_line(tmp_path):
    t = time.monotonic()
    r = _mpi(2, [*TRAIN, "--epochs", "2", "--out", str(tmp_path / "a")], timeout=120,
             ZFSCRATCH_TEST_FAIL_RANK="1:3")
    assert r.returncode != 0 and time.monotonic() - t < 100
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "rank 1" in lines[0] and "injected failure" in lines[0], r.stderr
    assert not (tmp_path / "a" / "weights.npz").exists()


@needs_mpi
def test_hung_rank_is_caught_by_the_collective_watchdog(tmp_path):
    t = time.monotonic()
    r = _mpi(2, [*TRAIN, "--epochs", "2", "--out", str(tmp_path / "a")], timeout=120,
             ZFSCRATCH_TEST_HANG_RANK="1:3", ZFSCRATCH_COLLECTIVE_TIMEOUT="4")
    assert r.returncode == 2, r.stderr
    assert time.monotonic() - t < 100
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "rank 0" in lines[0] and "timed out after 4 s" in lines[0], r.stderr


@needs_mpi
def test_ranks_disagreeing_on_the_data_or_the_model(tmp_path):
    out = tmp_path / "run"
    base = ["train", "--batch", "16", "--epochs", "1", "--out", str(out), *TINY]
    argv = [MPIRUN, "-n", "1", sys.executable, "-m", "zfscratch", *base, "--data", SPEC, ":",
            "-n", "1", sys.executable, "-m", "zfscratch", *base, "--data", "synthetic:n=64,n_val=32,size=16"]
    r = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 2, r.stderr
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "ranks disagree" in lines[0], r.stderr
    assert not out.exists() or not any(out.iterdir())
    argv = [a if a != "4,4,4,4,4" else "4,4,4,4,6" for a in argv[:argv.index(":") + 1]] + argv[argv.index(":") + 1:]
    argv = [a if a != "synthetic:n=64,n_val=32,size=16" else SPEC for a in argv]
    r = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 2, r.stderr
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "ranks disagree" in lines[0], r.stderr
    assert not out.exists() or not any(out.iterdir())


@needs_mpi
def test_bad_resume_and_batch_one_line_every_rank_exits_2(tmp_path):
    run = tmp_path / "run"
    assert _zf([*TRAIN, "--epochs", "1", "--out", str(run)]).returncode == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    r = _mpi(2, ["train", "--out", str(run), "--resume", "--epochs", "2", "--batch", "32", *TINY])
    assert r.returncode == 2, r.stderr
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "batch" in lines[0] and "checkpoint" in lines[0], r.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    r = _mpi(2, [*TRAIN, "--batch", "15", "--epochs", "1", "--out", str(tmp_path / "odd")])
    assert r.returncode == 2 and len(_error_lines(r.stderr)) == 1 and "divisible" in r.stderr, r.stderr
    assert not (tmp_path / "odd" / "checkpoint.npz").exists()


# -- MPI: sharded passes ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("w") / "run"
    r = _zf([*TRAIN, "--epochs", "1", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    return out / "weights.npz"


@needs_mpi
def test_sharded_top9_equals_one_process(tmp_path, weights):
    args = ["visualize", "--weights", str(weights), "--data", "synthetic:n=40,n_val=150,size=16", "--maps", "2",
            "--batch", "16", "--quiet", "--backend", "numpy"]
    r1 = _zf([*args, "--out", str(tmp_path / "one")])
    assert r1.returncode == 0, r1.stderr
    r2 = _mpi(2, [*args, "--out", str(tmp_path / "two"), "--distributed"])
    assert r2.returncode == 0, r2.stderr
    a, _ = zio.load_npz(tmp_path / "one" / "topk.npz")
    b, meta = zio.load_npz(tmp_path / "two" / "topk.npz")
    assert meta["count"] == 150
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert (tmp_path / "two" / "topk_relu1.png").exists()


@needs_mpi
def test_sharded_evaluate_equals_one_process(tmp_path, weights):
    args = ["evaluate", "--weights", str(weights), "--data", "synthetic:n=40,n_val=77,size=16", "--split", "val",
            "--quiet", "--backend", "numpy", "--batch", "16"]
    assert _zf([*args, "--out", str(tmp_path / "one")]).returncode == 0
    r = _mpi(2, [*args, "--out", str(tmp_path / "two")])
    assert r.returncode == 0, r.stderr
    a = json.loads((tmp_path / "one" / "evaluation_val.json").read_text())
    b = json.loads((tmp_path / "two" / "evaluation_val.json").read_text())
    assert b["ranks"] == 2 and a["n"] == b["n"] == 77
    assert a["confusion"] == b["confusion"] and a["top5_accuracy"] == b["top5_accuracy"]
    assert abs(a["loss"] - b["loss"]) < 1e-12 * max(1.0, abs(a["loss"]))


@needs_mpi
def test_sharded_occlusion_and_layerwise_equal_one_process(tmp_path, weights):
    occ = ["occlude", "--weights", str(weights), "--data", "synthetic:n=40,n_val=20,size=16", "--index", "3",
           "--patch", "4", "--stride", "1", "--batch", "8", "--quiet", "--backend", "numpy"]
    assert _zf([*occ, "--out", str(tmp_path / "o1")]).returncode == 0
    r = _mpi(2, [*occ, "--out", str(tmp_path / "o2"), "--distributed"])
    assert r.returncode == 0, r.stderr
    a = json.loads((tmp_path / "o1" / "occlusion.json").read_text())
    b = json.loads((tmp_path / "o2" / "occlusion.json").read_text())
    assert a["positions"] == b["positions"] == 169
    # the incremental engine's float32 windows agree with one process to rounding, not bit for bit
    for key in ("activation", "prob_true", "base_prob_true"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-7, err_msg=key)
    assert a["top_label"] == b["top_label"]
    lw = ["layerwise", "--weights", str(weights), "--data", "synthetic:n=72,n_val=40,size=16", "--epochs", "2",
          "--batch", "16", "--quiet", "--backend", "numpy"]
    assert _zf([*lw, "--out", str(tmp_path / "l1")]).returncode == 0
    r = _mpi(2, [*lw, "--out", str(tmp_path / "l2"), "--distributed"])
    assert r.returncode == 0, r.stderr
    a = json.loads((tmp_path / "l1" / "layerwise.json").read_text())
    b = json.loads((tmp_path / "l2" / "layerwise.json").read_text())
    assert a["rows"] == b["rows"] and a["net_accuracy"] == b["net_accuracy"] and len(a["rows"]) >= 3
