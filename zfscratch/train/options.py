"""Training options: defaults, what a resumed run may change, their parsing and validation."""
from __future__ import annotations

import math

import numpy as np

from zfscratch.errors import UserError

DEFAULT_SNAPSHOTS = (1, 2, 5, 10, 20, 30, 40, 64)

#: Defaults of :func:`train_model` (and of ``zfscratch train``).
DEFAULTS = dict(
    model="zfnet_small", model_config=None, input_size=None, resize=None, pad=0,
    epochs=4, batch=32, lr=0.02, momentum=0.9, weight_decay=5e-4, renorm_rms=0.1,
    lr_schedule="cosine", lr_factor=0.1, lr_patience=1, min_lr=1e-5, lr_threshold=1e-3,
    seed=0, val_split=0.1, val_data=None, snapshots=DEFAULT_SNAPSHOTS, checkpoint_every=0,
    augment=("flip", "crop"), scale=1.0 / 64, mean="pixel", eval_batch=None, warmup=0.0,
)
#: options that a resumed run may change; every other option must match the checkpoint
RESUME_MAY_CHANGE = ("epochs", "snapshots", "checkpoint_every", "eval_batch")
AUGMENTS = ("flip", "crop", "erase")
LR_SCHEDULES = ("plateau", "cosine")

METRIC_FIELDS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5_acc",
                 "epoch_time_s", "elapsed_s", "cpu_s", "images_per_s", "lr_annealed")



class TrainingDiverged(UserError):
    """The loss (or the weights) became NaN or infinite; the last good checkpoint is kept."""


def _parse_snapshots(s):
    if s is None or (isinstance(s, str) and s.strip().lower() in ("", "none")):
        return ()
    orig = s if isinstance(s, str) else ",".join(map(str, s))
    if isinstance(s, str):
        s = [p for p in s.replace(" ", "").split(",") if p]
    try:
        out = sorted({int(v) for v in s})
    except (TypeError, ValueError):
        raise UserError(f"--snapshots {orig}: expected comma-separated epoch numbers such as 1,2,5,10") from None
    if any(v < 0 for v in out):
        raise UserError(f"--snapshots {orig}: epochs must be >= 0")
    return tuple(out)


def _parse_augment(a):
    if a is None or a == "" or a == "none":
        return ()
    if isinstance(a, str):
        a = [p for p in a.replace(" ", "").split(",") if p]
    a = tuple(sorted(set(a) - {"none"}))
    bad = [x for x in a if x not in AUGMENTS]
    if bad:
        raise UserError(f"--augment {','.join(bad)}: expected a comma-separated subset of "
                        f"{', '.join(AUGMENTS)} (or none)")
    return a


def _check_options(cfg):
    def pos_int(k, minimum=1):
        v = cfg[k]
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < minimum:
            raise UserError(f"--{k.replace('_', '-')} {v}: expected an integer >= {minimum}")
    pos_int("batch"), pos_int("epochs"), pos_int("checkpoint_every", 0)
    if cfg["eval_batch"] is not None:
        pos_int("eval_batch")
    for k in ("lr", "scale"):
        if not (isinstance(cfg[k], (int, float)) and math.isfinite(cfg[k]) and cfg[k] > 0):
            raise UserError(f"--{k} {cfg[k]}: expected a positive number")
    if not 0 <= cfg["momentum"] < 1:  # NaN fails every comparison: refused too
        raise UserError(f"--momentum {cfg['momentum']}: expected a value in [0, 1)")
    if not (math.isfinite(cfg["weight_decay"]) and cfg["weight_decay"] >= 0):
        raise UserError(f"--weight-decay {cfg['weight_decay']}: expected a finite number >= 0")
    sd = cfg.get("seed")
    if sd is not None and (isinstance(sd, bool) or not isinstance(sd, (int, np.integer)) or not 0 <= sd < 2 ** 32):
        raise UserError(f"--seed {sd}: expected an integer in [0, 2**32)")
    if not 0 < cfg["lr_factor"] < 1:
        raise UserError(f"--lr-factor {cfg['lr_factor']}: expected a value in (0, 1)")
    if cfg["pad"] < 0:
        raise UserError(f"--pad {cfg['pad']}: expected >= 0")
    if cfg["input_size"] is not None and cfg["input_size"] < 8:
        raise UserError(f"--input-size {cfg['input_size']}: expected >= 8")
    if cfg["resize"] is not None and cfg["input_size"] is not None and cfg["resize"] < cfg["input_size"]:
        raise UserError(f"--resize {cfg['resize']} is smaller than --input-size {cfg['input_size']}")
    w = cfg["warmup"]
    if not (isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0):
        raise UserError(f"--warmup {w}: expected a number of epochs >= 0")
    if cfg["lr_schedule"] not in LR_SCHEDULES:
        raise UserError(f"--lr-schedule {cfg['lr_schedule']!r}: expected one of {', '.join(LR_SCHEDULES)}")
    if cfg["mean"] not in ("pixel", "channel", "none"):
        raise UserError(f"--mean {cfg['mean']!r}: expected pixel, channel or none")
    from zfscratch.models import ARCHS
    if cfg["model"] not in ARCHS:
        raise UserError(f"--model {cfg['model']!r}: expected one of {', '.join(ARCHS)}")
