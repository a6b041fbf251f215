"""Training and evaluation: SGD as in the paper, checkpoints with exact resume, metrics, snapshots.

Python API
----------
``train_model(data, out_dir, model="zfnet_small", epochs=..., batch=..., lr=..., ...) -> dict`` trains
and writes a *run directory*::

    RUN_DIR/weights.npz            final weights, self-describing (meta: config, classes, preprocessing,
                                   train summary; extra/mean: the mean image): all other commands need
                                   only this file
    RUN_DIR/checkpoint.npz         everything needed to resume exactly (written atomically after every
                                   epoch and every ``checkpoint_every`` steps)
    RUN_DIR/snapshots/epoch_0001.npz ...  weights at the chosen epochs and the last one (meta["epoch"]),
                                   for Fig 4
    RUN_DIR/metrics.csv            one row per epoch (lr, train/val loss and accuracy, times)
    RUN_DIR/metrics.json           the same rows + run summary (config, data, best/final accuracy)
    RUN_DIR/curve.png              loss and error curves

``evaluate(net, dataset, prep, ...) -> dict`` computes top-1/top-5 error, per-class accuracy and the
confusion matrix; ``evaluate_weights(weights, data, ...)`` does the same from a weights file and
writes ``evaluation.json`` + ``confusion.png``.

Recipe (docs/design.md section 4, paper §3): SGD with momentum 0.9, weight decay 5e-4, dropout 0.5 on fc6/fc7,
conv filters renormalized to RMS <= 0.1 after every step, lr divided by 10 when the validation
accuracy stops improving (``optim.PlateauSchedule``), per-pixel mean subtraction, random crops and
horizontal flips.

Determinism and exact resume
----------------------------
Batches come from ``zfscratch.data.BatchIterator``: the order of each epoch is a permutation drawn
from ``(seed, epoch)``, the augmentation of each batch draws from a generator seeded by ``(seed,
epoch, position, rank)``, and the iterator's state is ``(epoch, position)``; the dropout generators'
states are saved too (``net.rng_state()``). A checkpoint records (epoch, batch position, iterator
state, weights, optimizer velocities, lr, schedule state, dropout states, running epoch sums,
history), so a run killed at any point and resumed with ``resume=True`` produces
bit-identical weights to an uninterrupted run on the same backend and thread count. The iterator's
position is global (it shards each global batch over ``(rank, world_size)``), so the checkpoint does
not depend on the number of workers (docs/design.md section 9).

Layout: :mod:`.data` (datasets, validation split, :class:`Cached`), :mod:`.evaluation`, :mod:`.plots`,
:mod:`.rundir` (run-directory files, checkpoints), :mod:`.options` (defaults and validation),
:mod:`.trainer` (the loop, :func:`train_model`), :mod:`.faults` (fault injection for the reliability
tests, e.g. ``ZFSCRATCH_TEST_KILL_AT_STEP=N`` SIGKILLs the process right after optimizer step N,
``ZFSCRATCH_TEST_NAN_AT_STEP=N`` replaces the loss of step N with NaN).
"""
from __future__ import annotations

from zfscratch.train.data import Cached, open_data, resolve_data
from zfscratch.train.evaluation import evaluate, evaluate_weights
from zfscratch.train.faults import KILL_ENV, NAN_ENV, RANK_FAIL_ENV, RANK_HANG_ENV, FaultInjection
from zfscratch.train.options import (AUGMENTS, DEFAULT_SNAPSHOTS, DEFAULTS, LR_SCHEDULES, METRIC_FIELDS,
                                     RESUME_MAY_CHANGE, TrainingDiverged)
from zfscratch.train.plots import plot_confusion, plot_curve
from zfscratch.train.rundir import CHECKPOINT_FORMAT, check_writable_dir, load_checkpoint, run_files, snapshot_path
from zfscratch.train.trainer import Trainer, cosine_lr, train_model

__all__ = ["Cached", "open_data", "resolve_data", "evaluate", "evaluate_weights", "KILL_ENV", "NAN_ENV",
           "RANK_FAIL_ENV", "RANK_HANG_ENV", "FaultInjection", "AUGMENTS", "DEFAULT_SNAPSHOTS", "DEFAULTS",
           "LR_SCHEDULES", "METRIC_FIELDS", "RESUME_MAY_CHANGE", "TrainingDiverged", "plot_confusion",
           "plot_curve", "CHECKPOINT_FORMAT", "check_writable_dir", "load_checkpoint", "run_files",
           "snapshot_path", "Trainer", "cosine_lr", "train_model"]
