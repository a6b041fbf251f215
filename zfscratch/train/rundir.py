"""The run directory: its files, snapshots, checkpoints (see :mod:`zfscratch.train`)."""
from __future__ import annotations

import os
import tempfile

from zfscratch import io as zio
from zfscratch.errors import UserError

CHECKPOINT_FORMAT = "zfscratch-checkpoint"


def check_writable_dir(path):
    """Create ``path`` if needed and check that files can be written in it (UserError otherwise)."""
    path = os.fspath(path)
    try:
        os.makedirs(path, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".probe-", dir=path)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(f"cannot write to output directory {path}: {e.strerror or e}") from None


def run_files(out_dir):
    """Paths of a run directory's files (see the module docstring)."""
    j = lambda *p: os.path.join(out_dir, *p)  # noqa: E731
    return {"weights": j("weights.npz"), "checkpoint": j("checkpoint.npz"), "snapshots": j("snapshots"),
            "metrics_csv": j("metrics.csv"), "metrics_json": j("metrics.json"), "curve": j("curve.png")}


def snapshot_path(out_dir, epoch):
    return os.path.join(out_dir, "snapshots", f"epoch_{int(epoch):04d}.npz")


def load_checkpoint(path):
    """Read a checkpoint: (arrays, meta). UserError when missing or not a checkpoint."""
    if not os.path.isfile(path):
        raise UserError(f"--resume: no checkpoint {path} to resume from")
    arrays, meta = zio.load_npz(path, "checkpoint")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"checkpoint {path} is not a zfscratch training checkpoint")
    return arrays, meta
