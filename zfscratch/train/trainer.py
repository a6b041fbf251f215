"""The training loop (:class:`Trainer`) and :func:`train_model`."""
from __future__ import annotations

import csv
import io as _io
import json
import math
import os
import time
from typing import NamedTuple

import numpy as np

from zfscratch import io as zio
from zfscratch.backend import resolve_backend
from zfscratch.errors import UserError
from zfscratch.preprocess import Preprocess
from zfscratch.samplerng import SampleRNG
from zfscratch.train.data import Cached, _describe, _labels_of, resolve_data
from zfscratch.train.evaluation import evaluate
from zfscratch.train.faults import FaultInjection
from zfscratch.train.options import (DEFAULTS, METRIC_FIELDS, RESUME_MAY_CHANGE, TrainingDiverged, _check_options,
                                     _parse_augment, _parse_snapshots)
from zfscratch.train.plots import plot_curve
from zfscratch.train.rundir import (CHECKPOINT_FORMAT, check_writable_dir, clear_snapshots, load_checkpoint, run_files,
                                   snapshot_path)
from zfscratch.util.jsonio import jsonable as _jsonable
from zfscratch.util.progress import tqdm_bar as _tqdm
from zfscratch.util.progress import write as _log


class _Plan(NamedTuple):
    """Step counts of a run: batches per epoch, steps in all, warm-up steps."""
    batches: int
    total_steps: int
    warm_steps: int


class Trainer:
    """One training run (use :func:`train_model`)."""

    def __init__(self, data, out_dir, cfg, backend=None, resume=False, overwrite=False, quiet=False,
                 progress=None, world=None, faults=None):
        from zfscratch.distributed import World
        self.t0, self.c0 = time.perf_counter(), time.process_time()  # data loading counts too
        self.world = world or World()
        self.faults = faults  # a FaultInjection (tests); None: from the environment when run() starts
        self.out_dir = os.fspath(out_dir)
        self.files = run_files(self.out_dir)
        self.quiet, self.progress_cb = quiet or not self.world.is_root, progress
        # every rank checks everything; errors are agreed on before anything is written
        err = None
        try:
            try:
                self._setup(data, cfg, backend, resume, overwrite)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
                if not resume:
                    raise
                # a checkpoint missing keys or holding a bad RNG/iterator state: one line, not a traceback
                raise UserError(f"checkpoint {self.files['checkpoint']} is damaged or incomplete "
                                f"({type(e).__name__}: {str(e)[:120]}); start again with --overwrite") from None
        except UserError as e:
            if not self.world.distributed:
                raise
            err = e
        self.world.agree(err)
        if self.world.distributed:
            self._check_ranks_agree()
        # one training per run directory: a second process gets a UserError naming this one's pid
        self.lock = None
        if self.world.is_root:
            from zfscratch.util.files import FolderLock
            self.lock = FolderLock(self.out_dir, what="run directory").acquire()
        if self._clear_pending and self.world.is_root:
            self._clear_run()

    def release(self):
        """Release the run directory's lock (:func:`train_model` does it when the run ends)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _setup(self, data, cfg, backend, resume, overwrite):
        self.resume = resume
        cfg, data, ck_arrays, ck_meta = self._options(data, cfg, resume, overwrite)
        self.cfg = cfg
        self.data_spec = data if isinstance(data, str) else None
        self.be = resolve_backend(backend)
        if self.be.name == "cupy" and self.world.distributed:
            from zfscratch.distributed import select_gpu
            select_gpu(self.world)  # one GPU per rank, before any array is made

        # data (loader errors surface here, before anything is written)
        self._open_data(data, ck_meta)
        self.backend_name = backend

        if self.world.is_root:  # only rank 0 writes the run directory
            check_writable_dir(self.out_dir)
        k_ranks = self.world.size
        if cfg["batch"] % k_ranks:
            raise UserError(f"--batch {cfg['batch']} (the global batch) is not divisible by the {k_ranks} ranks")

        # preprocessing and model
        if ck_meta is not None:
            self.prep = Preprocess.from_meta({"preprocessing": ck_meta["preprocessing"],
                                              "extra": {"mean": ck_arrays["mean"]} if "mean" in ck_arrays else {}})
        else:
            self.prep = self._make_prep()
        self._clear_pending = ck_meta is None and overwrite  # once every rank has agreed
        self._load_caches()
        if ck_meta is None:
            self.prep.fit_mean(b for b, _ in self.train.batches(512))
        self._build(ck_meta, ck_arrays)

    def _options(self, data, cfg, resume, overwrite):
        """The run's options (the checkpoint's when resuming) and data, checked.

        Returns ``(cfg, data, checkpoint arrays, checkpoint metadata)``; the last two are None for a new run."""
        ck_arrays = ck_meta = None
        if resume:
            ck_arrays, ck_meta = load_checkpoint(self.files["checkpoint"])
            cfg = self._merge_resumed(cfg, ck_meta["train"])
            stored = ck_meta.get("data_spec")
            if data is not None and stored is not None and isinstance(data, str) and data != stored:
                raise UserError(f"--resume: --data {data} differs from the checkpoint's {stored}")
            if data is None:
                data = stored
                if data is None:
                    raise UserError(f"checkpoint {self.files['checkpoint']} was trained on a dataset object; "
                                    f"pass the data again to resume")
        else:
            cfg = {**DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
            if data is None:
                raise UserError("no training data given (--data)")
            existing = [p for p in (self.files["checkpoint"], self.files["weights"], self.files["metrics_json"])
                        if os.path.exists(p)]
            if existing and not overwrite:
                raise UserError(f"output directory {self.out_dir} already holds a run ({os.path.basename(existing[0])}); "
                                f"use --resume to continue it or --overwrite to start again")
        cfg["snapshots"] = _parse_snapshots(cfg["snapshots"])
        cfg["augment"] = _parse_augment(cfg["augment"])
        _check_options(cfg)
        return cfg, data, ck_arrays, ck_meta

    def _open_data(self, data, ck_meta):
        """Training and validation sets, class names and count, checked against each other and the checkpoint."""
        cfg = self.cfg
        self.train_ds, self.val_ds = resolve_data(data, cfg["val_data"], cfg["val_split"], cfg["seed"])
        if len(self.train_ds) == 0:
            raise UserError(f"training data {data} holds no images")
        if len(self.val_ds) == 0:
            raise UserError("the validation set holds no images")
        self.classes = list(getattr(self.train_ds, "classes", None) or [])
        labels = _labels_of(self.train_ds)
        k = len(self.classes) or int(labels.max()) + 1
        if not self.classes:
            self.classes = [str(i) for i in range(k)]
        for name, ds in (("training", self.train_ds), ("validation", self.val_ds)):
            lab = _labels_of(ds)
            if lab.size and (lab.min() < 0 or lab.max() >= k):
                raise UserError(f"{name} data {_describe(ds)}: labels span [{lab.min()}, {lab.max()}], "
                                f"expected 0..{k - 1} for {k} classes")
        if k < 2:  # one class trains to a meaningless "100 %"
            raise UserError(f"training data {data if isinstance(data, str) else _describe(self.train_ds)} has "
                            f"{k} class; at least 2 classes are needed")
        self.num_classes = k
        if ck_meta is not None and ck_meta.get("classes") is not None and list(ck_meta["classes"]) != self.classes:
            raise UserError(f"--resume: the data's classes ({', '.join(self.classes[:5])}"
                            f"{', ...' if len(self.classes) > 5 else ''}) differ from the checkpoint's "
                            f"({', '.join(map(str, ck_meta['classes'][:5]))}{', ...' if len(ck_meta['classes']) > 5 else ''}); "
                            f"resuming would remap labels silently")

    # -- set-up -----------------------------------------------------------------------------
    def _merge_resumed(self, given, stored):
        cfg = {**DEFAULTS, **stored}  # options added since the checkpoint was written take their defaults
        for k, v in given.items():
            if v is None:
                continue
            if k in RESUME_MAY_CHANGE:
                cfg[k] = v
                continue
            sv = stored.get(k)
            if k == "augment":
                v, sv = list(_parse_augment(v)), list(sv or ())
            norm = (lambda x: list(x) if isinstance(x, (tuple, list)) else x)
            if norm(v) != norm(sv):
                raise UserError(f"--resume: option {k}={v!r} differs from the checkpoint's {sv!r}; a resumed "
                                f"run keeps its settings (only {', '.join(RESUME_MAY_CHANGE)} may change)")
        return {**DEFAULTS, **cfg}

    def _make_prep(self):
        cfg = self.cfg
        first, _ = self.train_ds.get_batch(np.arange(1))
        h, w = first.shape[1:3]
        size = cfg["input_size"]
        if size is None:
            from zfscratch.models import PRESETS
            size = h if h == w else PRESETS[cfg["model"]]["input_size"]
        resize = cfg["resize"] or size
        if resize < size:
            raise UserError(f"--resize {resize} is smaller than the input size {size}")
        return Preprocess(size, resize=resize, scale=cfg["scale"], pad=cfg["pad"], mean_mode=cfg["mean"])

    def _clear_run(self):
        for key in ("checkpoint", "weights", "metrics_csv", "metrics_json", "curve"):
            if os.path.exists(self.files[key]):
                os.unlink(self.files[key])
        clear_snapshots(self.out_dir)

    def _load_caches(self):
        self.train = Cached(self.train_ds, self.prep, desc="loading training images", quiet=self.quiet)
        self.val = Cached(self.val_ds, self.prep, desc="loading validation images", quiet=self.quiet)
        if self.train.channels != self.val.channels:
            raise UserError(f"training images have {self.train.channels} channels, validation images "
                            f"{self.val.channels}")

    def _build(self, ck_meta, ck_arrays):
        from zfscratch.layers import SoftmaxCrossEntropy
        from zfscratch.models import build_model
        from zfscratch.optim import SGD, PlateauSchedule
        cfg = self.cfg
        if ck_meta is not None:
            mcfg = ck_meta["config"]
        else:
            mcfg = dict(cfg["model_config"] or {})
            mcfg.update(arch=cfg["model"], num_classes=self.num_classes, input_size=self.prep.input_size,
                        in_channels=self.train.channels, seed=cfg["seed"])
        try:
            self.net = build_model(mcfg, backend=self.be)
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot build model {cfg['model']}: {e}") from None
        self.loss_fn = SoftmaxCrossEntropy(self.be)
        self.opt = SGD(self.net, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"],
                       renorm_rms=cfg["renorm_rms"])
        self.sched = PlateauSchedule(self.opt, factor=cfg["lr_factor"], patience=cfg["lr_patience"],
                                     threshold=cfg["lr_threshold"], min_lr=cfg["min_lr"], mode="max")
        self.epoch, self.pos, self.step = 0, 0, 0
        self.sums = {"loss": 0.0, "correct": 0, "seen": 0, "time": 0.0}
        self.history, self.elapsed_before, self.cpu_before = [], 0.0, 0.0
        from zfscratch.data import BatchIterator
        flip, crop, erase = ("flip" in cfg["augment"], "crop" in cfg["augment"], "erase" in cfg["augment"])
        w = self.world
        # augmentation and dropout keyed by (seed, epoch, global sample index): the same draws for
        # any number of ranks; each rank takes its share of every global batch
        self.it = BatchIterator(self.train, cfg["batch"] // w.size, shuffle=True, seed=cfg["seed"], rank=w.rank,
                                world_size=w.size, sample_keys=True, return_indices=True,
                                yield_empty=w.distributed,
                                transform=lambda imgs, rng: self.prep.augment(imgs, rng, flip=flip, crop=crop,
                                                                              erase=erase))
        self.reducer = None
        if w.distributed:
            from zfscratch.distributed import GradientReducer
            self.reducer = GradientReducer(self.net, w)
        if ck_meta is not None:
            self.it.load_state_dict(ck_meta["iterator"])
            params = {k[len("param/"):]: v for k, v in ck_arrays.items() if k.startswith("param/")}
            try:
                self.net.load_state_dict(params)
                self.opt.load_state_dict({**ck_meta["optimizer"], "velocity": {
                    k[len("velocity/"):]: v for k, v in ck_arrays.items() if k.startswith("velocity/")}})
            except (ValueError, KeyError) as e:
                raise UserError(f"checkpoint {self.files['checkpoint']} does not match its model: {e}") from None
            self.sched.load_state_dict(ck_meta["schedule"])
            self.net.set_rng_state(ck_meta["dropout_rng"])
            self.epoch, self.pos, self.step = ck_meta["epoch"], ck_meta["pos"], ck_meta["step"]
            self.sums = dict(ck_meta["sums"])
            self.history = list(ck_meta["history"])
            self.elapsed_before = float(ck_meta["elapsed_s"])
            self.cpu_before = float(ck_meta.get("cpu_s", 0.0))

    # -- several ranks -----------------------------------------------------------------------
    def _check_ranks_agree(self):
        """Every rank must hold the same data, preprocessing, model and state (CollectiveError)."""
        from zfscratch.distributed import array_digest
        w = self.world
        w.check_same("the training options", _fingerprint(self._cfg_json()))
        w.check_same("the training data", {"n": len(self.train), "labels": array_digest({"y": self.train.labels}),
                                           "val_n": len(self.val), "classes": self.classes},
                     describe=lambda v: f"{v['n']} training images (labels {v['labels']}), {v['val_n']} validation")
        mean = {} if self.prep.mean is None else {"mean": self.prep.mean}
        w.check_same("the preprocessing", [self.prep.to_meta(), array_digest(mean)])
        w.check_same("the model", [self.net.config, array_digest(self.net.state_dict())],
                     describe=lambda v: f"{v[0].get('arch')} weights {v[1]}")
        w.check_same("the resume point", [self.epoch, self.pos, self.step])

    def _distributed_step(self, x, y, idx, faults):
        """Forward and backward on this rank's share, gradients and loss sums all-reduced.
        Returns (global mean loss, images, correct predictions) of the global batch."""
        n_local, n_global = len(y), self.it.last_step[2]
        dy, loss_sum, correct = None, 0.0, 0
        if n_local:
            self.net.set_sample_rng(SampleRNG(self.cfg["seed"], self.it.last_step[0], idx, stream=0xD0))
            logits = self.net.forward(self.be.to_device(x), train=True)
            loss = float(self.loss_fn.forward(logits, y))
            loss = faults.loss(self.step + 1, loss)
            loss_sum = loss * n_local
            correct = int((self.be.to_host(self.loss_fn.probs).argmax(axis=1) == y).sum())
            dy = self.loss_fn.backward()
        self.reducer.backward(dy, scale=n_local / n_global)
        tot = self.world.allreduce_sum(np.array([loss_sum, correct, n_local], np.float64), what="loss all-reduce")
        return float(tot[0] / max(tot[2], 1)), int(tot[2]), int(tot[1])

    def _sync_weights(self):
        """All-reduce sums are not guaranteed bit-identical on every rank for every MPI algorithm:
        compare the weights' digests once an epoch and, if they drifted, take rank 0's."""
        from zfscratch.distributed import array_digest
        digests = self.world.allgather(array_digest(self.net.state_dict()), what="comparing weights")
        if len(set(digests)) > 1:
            for (_, p), v in zip(self.net.params(), self.opt.velocity):
                for a in (p, v):
                    h = np.ascontiguousarray(self.be.to_host(a))
                    self.world.bcast_array(h, what="broadcasting weights")
                    a[...] = self.be.to_device(h)
            if self.world.is_root and not self.quiet:
                _log("ranks' weights drifted by rounding; all ranks now hold rank 0's")

    # -- bookkeeping ------------------------------------------------------------------------
    def _train_meta(self):
        return {"model": self.cfg["model"], "epochs": self.epoch, "step": self.step, "batch": self.cfg["batch"],
                "lr_initial": self.cfg["lr"], "lr_final": self.opt.lr,
                "warmup_epochs": self.cfg["warmup"], "init": self.net.config.get("init"), "seed": self.cfg["seed"],
                "data": self.data_spec or _describe(self.train_ds), "backend": self.be.name,
                "val_acc": self.history[-1]["val_acc"] if self.history else None}

    def _weights_meta(self, epoch):
        return {"classes": self.classes, "preprocessing": self.prep.to_meta(), "epoch": int(epoch),
                "train": _jsonable(self._train_meta())}

    def _extra(self):
        return {} if self.prep.mean is None else {"mean": self.prep.mean}

    def _kept(self):
        """What a divergence leaves behind, for its message: only a checkpoint that exists is named."""
        if os.path.isfile(self.files["checkpoint"]):
            return f"the last good checkpoint {self.files['checkpoint']} is kept"
        return "no checkpoint had been written yet (start again with --overwrite)"

    def _check_finite_params(self, where):
        xp = self.be.xp
        for name, p in self.net.params():
            if not bool(xp.isfinite(p).all()):
                raise TrainingDiverged(
                    f"parameter {name} became NaN/inf at step {self.step} (epoch {self.epoch + 1}, lr "
                    f"{self.opt.lr:g}) before {where}; training stopped, {self._kept()} (try a lower --lr)")

    def save_checkpoint(self):
        self._check_finite_params("writing the checkpoint")
        if not self.world.is_root:
            return
        arrays = {f"param/{k}": v for k, v in self.net.state_dict().items()}
        opt_state = self.opt.state_dict()
        arrays.update({f"velocity/{k}": v for k, v in opt_state.pop("velocity").items()})
        if self.prep.mean is not None:
            arrays["mean"] = self.prep.mean
        meta = {"format": CHECKPOINT_FORMAT, "version": 1, "config": self.net.config,
                "train": self._cfg_json(), "data_spec": self.data_spec,
                "data": _jsonable(_describe(self.train_ds)), "classes": self.classes,
                "preprocessing": self.prep.to_meta(), "epoch": self.epoch, "pos": self.pos, "step": self.step,
                "optimizer": _jsonable(opt_state), "schedule": _jsonable(self.sched.state_dict()),
                "dropout_rng": self.net.rng_state(), "iterator": self.it.state_dict(), "sums": _jsonable(self.sums),
                "history": _jsonable(self.history), "elapsed_s": self._elapsed(), "cpu_s": self._cpu()}
        zio.atomic_savez(self.files["checkpoint"], arrays, meta)

    def _cfg_json(self):
        c = dict(self.cfg)
        if c.get("val_data") is not None and not isinstance(c["val_data"], str):
            c["val_data"] = _describe(c["val_data"])
        return _jsonable(c)

    def _elapsed(self):
        return self.elapsed_before + (time.perf_counter() - self.t0)

    def _cpu(self):
        """Process CPU seconds (all threads) since the run started, resumed sessions included: on a
        shared machine, cpu_s / cores approximates the wall time on an idle one."""
        return self.cpu_before + (time.process_time() - self.c0)

    def _write_metrics(self, final=False):
        """metrics.csv and metrics.json every time; the curve at the end, and during the run at most
        once a minute (drawing it costs about a second)."""
        if not self.world.is_root:
            return
        buf = _io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for h in self.history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in h.items()})
        zio.atomic_write_text(self.files["metrics_csv"], buf.getvalue())
        best = max(self.history, key=lambda h: h["val_acc"]) if self.history else None
        summary = {"config": self.net.config, "train": self._cfg_json(),
                   "data": self.data_spec or _jsonable(_describe(self.train_ds)),
                   "val_data": _jsonable(_describe(self.val_ds)), "n_train": len(self.train),
                   "n_val": len(self.val), "classes": self.classes, "backend": self.be.name,
                   "epochs_done": self.epoch, "steps": self.step,
                   "final_val_acc": self.history[-1]["val_acc"] if self.history else None,
                   "best_val_acc": best["val_acc"] if best else None, "best_epoch": best["epoch"] if best else None,
                   "elapsed_s": self._elapsed(), "history": self.history}
        zio.atomic_write_text(self.files["metrics_json"], json.dumps(_jsonable(summary), indent=1) + "\n")
        now = time.perf_counter()
        if final or now - getattr(self, "_curve_t", -1e9) >= 60:
            plot_curve(self.history, self.files["curve"], title=f"{self.cfg['model']}")
            self._curve_t = now

    def _emit(self, **event):
        if self.progress_cb is not None:
            self.progress_cb(event)

    def save_snapshot(self, epoch):
        self._check_finite_params("writing a snapshot")
        if not self.world.is_root:
            return
        zio.save_weights(snapshot_path(self.out_dir, epoch), self.net, meta=self._weights_meta(epoch),
                         extra=self._extra())

    # -- loop -------------------------------------------------------------------------------
    def run(self):
        cfg = self.cfg
        faults = self.faults or FaultInjection.from_environment(rank=self.world.rank)
        n, bsz = len(self.train), cfg["batch"]
        nb = math.ceil(n / bsz)
        eval_batch = cfg["eval_batch"] or max(bsz, 64)
        if self.epoch == 0 and self.pos == 0 and 0 in cfg["snapshots"]:
            self.save_snapshot(0)
        # linear lr warm-up over the first ``warmup`` epochs (a function of the step: resume-exact)
        plan = _Plan(batches=nb, total_steps=nb * cfg["epochs"], warm_steps=int(round(cfg["warmup"] * nb)))
        if not self.quiet:
            self._announce()
        while self.epoch < cfg["epochs"]:
            e = self.epoch + 1
            self._train_epoch(e, plan, faults)
            self._end_epoch(e, eval_batch)
        return self._finish()

    def _announce(self):
        cfg, n = self.cfg, len(self.train)
        _log(f"training {cfg['model']} ({sum(p.size for _, p in self.net.params()):,} parameters) on "
             f"{n} images, validating on {len(self.val)}, {self.num_classes} classes, input "
             f"{self.prep.input_size}x{self.prep.input_size}, backend {self.be.name}, batch {cfg['batch']}, "
             f"lr {self.opt.lr:g}" + (f"; resuming at epoch {self.epoch + 1}, batch {self.pos}"
                                      if self.resume else ""))

    def _train_epoch(self, e, plan, faults):
        """The steps of epoch ``e`` from the current position (none left when a resumed run had done them)."""
        cfg, n, bsz, nb = self.cfg, len(self.train), self.cfg["batch"], plan.batches
        bar = _tqdm(total=nb, initial=self.pos, desc=f"epoch {e}/{cfg['epochs']}", unit="batch",
                    disable=self.quiet, leave=False)
        t_ep = t_wall = time.perf_counter()
        seen0 = self.sums["seen"]
        if self.pos < nb and (self.it.epoch, self.it.position) != (self.epoch, min(self.pos * bsz, n)):
            raise UserError(f"checkpoint {self.files['checkpoint']} is inconsistent: iterator at epoch "
                            f"{self.it.epoch} position {self.it.position}, training at epoch {self.epoch} "
                            f"batch {self.pos}")
        for x, y, idx in (self.it if self.pos < nb else ()):
            i = self.pos
            loss, step_lr = self._step(x, y, idx, e, plan, faults, bar)
            bar.update(1)
            if not self.quiet:
                self._show_progress(bar, seen0, t_wall, plan.total_steps)
            self._emit(event="step", epoch=e, batch=i + 1, batches=nb, step=self.step, loss=loss,
                       lr=step_lr)
            if cfg["checkpoint_every"] and self.step % cfg["checkpoint_every"] == 0:
                self.sums["time"] += time.perf_counter() - t_ep
                t_ep = time.perf_counter()
                self.save_checkpoint()
            faults.after_step(self.step)
        bar.close()
        self.sums["time"] += time.perf_counter() - t_ep

    def _step(self, x, y, idx, e, plan, faults, bar):
        """One optimizer step on the batch at ``self.pos`` of epoch ``e``. Returns (loss, the step's lr)."""
        cfg, i = self.cfg, self.pos
        if cfg["lr_schedule"] == "cosine":
            self.opt.lr = cosine_lr(cfg["lr"], self.step, plan.total_steps)
        self.net.zero_grads()
        faults.before_step(self.step + 1)
        if self.reducer is not None:  # forward, backward, all-reduce (losses too)
            loss, n_seen, n_correct = self._distributed_step(x, y, idx, faults)
        else:
            self.net.set_sample_rng(SampleRNG(cfg["seed"], self.it.last_step[0], idx, stream=0xD0))
            logits = self.net.forward(self.be.to_device(x), train=True)
            loss = float(self.loss_fn.forward(logits, y))
            loss = faults.loss(self.step + 1, loss)
        if not math.isfinite(loss):
            bar.close()
            err = TrainingDiverged(
                f"loss became {loss} at step {self.step + 1} (epoch {e}, batch {i + 1}/{plan.batches}, lr "
                f"{self.opt.lr:g}); training stopped, {self._kept()} (resume with --resume, or start again "
                f"with a lower --lr)")
            err.collective = True  # with several ranks: all saw the same all-reduced loss
            raise err
        if self.reducer is None:
            self.net.backward(self.loss_fn.backward())
            pred = self.be.to_host(self.loss_fn.probs).argmax(axis=1)
            n_seen, n_correct = len(y), int((pred == y).sum())
        base_lr = self.opt.lr  # what the schedule controls; warm-up scales only this step
        if self.step < plan.warm_steps:
            self.opt.lr = base_lr * (self.step + 1) / plan.warm_steps
        self.opt.step()
        step_lr, self.opt.lr = self.opt.lr, base_lr
        self.step += 1
        self.pos = i + 1
        self.sums["loss"] += loss * n_seen
        self.sums["correct"] += n_correct
        self.sums["seen"] += n_seen
        return loss, step_lr

    def _show_progress(self, bar, seen0, t_wall, total_steps):
        """The epoch bar's running loss, accuracy, speed and the run's ETA."""
        dt = time.perf_counter() - t_wall
        rate = (self.sums["seen"] - seen0) / max(dt, 1e-9)
        left = (total_steps - self.step) * self.cfg["batch"] / max(rate, 1e-9)
        bar.set_postfix_str(f"loss {self.sums['loss'] / self.sums['seen']:.3f} acc "
                            f"{self.sums['correct'] / self.sums['seen']:.1%} {rate:.0f} img/s lr "
                            f"{self.opt.lr:.3g} run ETA {_fmt_time(left)}", refresh=False)

    def _end_epoch(self, e, eval_batch):
        self._check_finite_params("validation")
        if self.world.distributed:
            self._sync_weights()
        res = evaluate(self.net, self.val, self.prep, batch=eval_batch, classes=self.classes,
                       quiet=self.quiet, desc=f"validate {e}", world=self.world)
        if not math.isfinite(res["loss"]):
            raise TrainingDiverged(f"validation loss became {res['loss']} after epoch {e} (lr {self.opt.lr:g}); "
                                   f"{self._kept()}")
        lr_used = self.opt.lr
        annealed = self.sched.step(res["accuracy"]) if self.cfg["lr_schedule"] == "plateau" else False
        s = self.sums
        row = {"epoch": e, "step": self.step, "lr": lr_used, "train_loss": s["loss"] / max(s["seen"], 1),
               "train_acc": s["correct"] / max(s["seen"], 1), "val_loss": res["loss"], "val_acc": res["accuracy"],
               "val_top5_acc": res["top5_accuracy"], "epoch_time_s": s["time"], "elapsed_s": self._elapsed(),
               "cpu_s": self._cpu(),
               "images_per_s": s["seen"] / max(s["time"], 1e-9), "lr_annealed": int(annealed)}
        if self.reducer is not None:  # JSON only: ranks, and the all-reduce wait per step this session
            row.update(ranks=self.world.size,
                       allreduce_ms_per_step=1e3 * self.reducer.allreduce_s / max(self.reducer.steps, 1))
        self.history.append(row)
        self.epoch, self.pos = e, 0
        self.sums = {"loss": 0.0, "correct": 0, "seen": 0, "time": 0.0}
        if e in self.cfg["snapshots"] or (self.cfg["snapshots"] and e == self.cfg["epochs"]):
            self.save_snapshot(e)  # the chosen epochs, and the last one (the evolution figure picks its maps there)
        self.save_checkpoint()
        self._write_metrics()
        if not self.quiet:
            _log(f"epoch {e}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%} | val loss "
                 f"{row['val_loss']:.4f} acc {row['val_acc']:.2%} | lr {lr_used:g}"
                 f"{' -> ' + format(self.opt.lr, 'g') if annealed else ''} | {row['images_per_s']:.0f} img/s, "
                 f"{_fmt_time(row['elapsed_s'])} elapsed, {row['cpu_s']:.0f} CPU s")
        self._emit(event="epoch", **row)

    def _finish(self):
        self._check_finite_params("writing the final weights")
        meta = self._weights_meta(self.epoch)
        if self.world.is_root:
            zio.save_weights(self.files["weights"], self.net, meta=meta, extra=self._extra())
        self._write_metrics(final=True)
        last = self.history[-1] if self.history else {}
        result = {"out_dir": self.out_dir, **self.files,
                  "snapshot_files": [snapshot_path(self.out_dir, e) for e in self.cfg["snapshots"]
                                     if os.path.exists(snapshot_path(self.out_dir, e))],
                  "epochs": self.epoch, "steps": self.step, "val_acc": last.get("val_acc"),
                  "val_loss": last.get("val_loss"), "train_acc": last.get("train_acc"),
                  "best_val_acc": max((h["val_acc"] for h in self.history), default=None),
                  "elapsed_s": self._elapsed(), "history": self.history, "classes": self.classes,
                  "config": self.net.config, "backend": self.be.name, "preprocessing": self.prep.to_meta()}
        if not self.quiet:
            _log(f"done: {self.epoch} epochs, validation accuracy {result['val_acc']:.2%}, weights in "
                 f"{self.files['weights']}")
        self._emit(event="done", **{k: v for k, v in result.items() if k != "history"})
        return result


def _fingerprint(obj):
    import hashlib
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cosine_lr(lr0, step, total_steps):
    """Cosine decay from ``lr0`` at step 0 to 0 at ``total_steps`` (a function of the step alone, so
    resuming needs no extra state)."""
    return 0.5 * lr0 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def _fmt_time(s):
    s = int(max(s, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def train_model(data, out_dir, model=None, epochs=None, batch=None, lr=None, backend=None, snapshots=None,
                seed=None, quiet=False, progress=None, resume=False, overwrite=False, distributed=None, **options):
    """Train a network and write a run directory (see the module docstring).

    Parameters
    ----------
    data : spec string (``"synthetic"``, ``"synthetic:background=colored"``, ``"idx:PATH"``,
        ``"cifar:PATH"``, ``"folder:PATH"``), a dataset object (``get_batch``, ``labels``, ``classes``),
        or a ``(train, val)`` pair of either; None with ``resume=True`` reuses the checkpoint's spec.
    out_dir : run directory (created; must not hold a run unless ``resume`` or ``overwrite``).
    model : "zfnet_small" (default), "zfnet", "alexnet_like".
    epochs, batch, lr, seed : see :data:`DEFAULTS` (4, 32, 0.02, 0).
    backend : "numpy" | "numba" | "cupy" | "auto" | None ($ZFSCRATCH_BACKEND or auto).
    snapshots : epochs whose weights are kept in ``snapshots/`` (e.g. ``(1, 2, 5, 10)``; 0 = the
        initial weights); the last epoch is added unless this is empty.
    quiet : no progress bars or log lines.
    progress : callable(event dict) called after every step (``event="step"``), epoch
        (``"epoch"``, the metrics row) and at the end (``"done"``).
    resume : continue from ``out_dir/checkpoint.npz`` (options default to the checkpoint's; only
        epochs, snapshots, checkpoint_every and eval_batch may change).
    overwrite : replace a run already in ``out_dir``.
    distributed : data-parallel over the MPI world (``mpirun -n K``): True requires one, None
        (default) uses one when an MPI launcher started several processes, False never. ``batch`` is
        the global batch (divisible by K); each rank takes its share of every global batch, gradients
        are all-reduced, rank 0 writes the run directory. Results match one process to rounding.
    **options : any other key of :data:`DEFAULTS`: model_config (architecture overrides, e.g.
        ``{"conv1": [5, 1, 2]}``), input_size, resize, pad, momentum, weight_decay, renorm_rms,
        lr_schedule ("plateau": x lr_factor when the validation accuracy has not improved by
        lr_threshold for more than lr_patience epochs; "cosine": cosine decay to 0 over the run),
        lr_factor, lr_patience, min_lr, lr_threshold, val_split, val_data, checkpoint_every, augment
        ("flip,crop", "flip", "none"), scale, mean ("pixel", "channel", "none"), eval_batch, warmup
        (epochs of linear learning-rate warm-up from 0, default 0).

    Returns
    -------
    dict: out_dir, weights, checkpoint, metrics_csv, metrics_json, curve, snapshots (folder),
    snapshot_files, epochs, steps, val_acc, val_loss, train_acc, best_val_acc, elapsed_s, history (rows
    of metrics.csv), classes, config, backend, preprocessing.

    Raises
    ------
    UserError
        bad options or data (nothing is written); :class:`TrainingDiverged` when the loss becomes
        NaN/inf (the last good checkpoint stays).
    """
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"train_model() got unknown options: {', '.join(unknown)}")
    cfg = dict(options, model=model, epochs=epochs, batch=batch, lr=lr, snapshots=snapshots, seed=seed)
    from zfscratch.distributed import get_world
    world = get_world(distributed)
    trainer = Trainer(data, out_dir, cfg, backend=backend, resume=resume, overwrite=overwrite, quiet=quiet,
                      progress=progress, world=world)
    try:
        return trainer.run()
    except TrainingDiverged as e:
        e.collective = world.distributed  # decided on all-reduced values: every rank raises it
        raise
    finally:
        trainer.release()
