"""The run directory: its files, snapshots, checkpoints (see :mod:`zfscratch.train`)."""
from __future__ import annotations

import os
import re
import tempfile

import numpy as np

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


#: written into ``snapshots/`` when a run creates it: only a folder holding it is ever removed whole
SNAPSHOTS_MARKER = ".zfscratch-snapshots"
_SNAPSHOT_RE = re.compile(r"epoch_\d{4,}\.npz\Z")


def snapshot_path(out_dir, epoch):
    """``OUT/snapshots/epoch_NNNN.npz``; the folder is created with its marker (:data:`SNAPSHOTS_MARKER`)."""
    folder = os.path.join(out_dir, "snapshots")
    marker = os.path.join(folder, SNAPSHOTS_MARKER)
    if not os.path.isdir(folder):
        try:
            os.makedirs(folder)
            zio.atomic_write_text(marker, "snapshots of a zfscratch training run\n")
        except FileExistsError:
            pass
        except OSError as e:
            raise UserError(f"cannot create {folder}: {e.strerror or e}") from None
    return os.path.join(folder, f"epoch_{int(epoch):04d}.npz")


def clear_snapshots(out_dir):
    """Remove the snapshots of a run (``--overwrite``) -- only what a run wrote.

    A ``snapshots/`` folder holding our marker (and no symlinks) is removed whole; otherwise only its
    regular ``epoch_NNNN.npz`` files are removed, and the folder itself only when that leaves it empty.
    A folder that is not ours (or a symlink to one) is left as it is.
    """
    import shutil

    folder = os.path.join(os.fspath(out_dir), "snapshots")
    if os.path.islink(folder) or not os.path.isdir(folder):
        return
    entries = os.listdir(folder)
    ours = SNAPSHOTS_MARKER in entries and all(
        n == SNAPSHOTS_MARKER or (_SNAPSHOT_RE.match(n) and os.path.isfile(os.path.join(folder, n))
                                  and not os.path.islink(os.path.join(folder, n)))
        or n.startswith(".tmp-") for n in entries)
    if ours:
        shutil.rmtree(folder)
        return
    for n in entries:
        p = os.path.join(folder, n)
        if _SNAPSHOT_RE.match(n) and os.path.isfile(p) and not os.path.islink(p):
            os.unlink(p)
    try:
        os.rmdir(folder)
    except OSError:
        pass


def load_checkpoint(path):
    """Read a checkpoint: (arrays, meta). UserError when missing or not a checkpoint."""
    if not os.path.isfile(path):
        raise UserError(f"--resume: no checkpoint {path} to resume from")
    arrays, meta = zio.load_npz(path, "checkpoint")
    for k, a in arrays.items():
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise UserError(f"checkpoint {path}: {k} holds NaN or infinite values")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"checkpoint {path} is not a zfscratch training checkpoint")
    return arrays, meta
