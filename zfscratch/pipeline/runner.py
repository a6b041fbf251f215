"""The stage runner of the main job, ``zfscratch run``: data -> training -> every paper experiment -> an offline HTML report.

The job is a list of :class:`Stage` objects run in order. Each stage has a name (also its folder
under the output directory), a function ``func(ctx, cfg) -> result`` (a JSON-able dict of numbers
and file paths), the stages whose outputs it reads (``inputs``), its configuration ``cfg`` and what
the report needs to present it (title, paper figure, a two-line "what to look for", the equivalent
stand-alone commands and a ``render`` function that turns the result into report blocks).

Reuse. After every stage the manifest ``OUT/manifest.json`` is rewritten (atomically) with the
stage's status, timing, result and a *hash* of everything that determines its output: the stage's
configuration, the data spec and the run tokens of its input stages (a token changes whenever a
stage is recomputed, so everything downstream of a recomputed stage is recomputed too). Running
the command again reuses a finished stage when its hash matches and every file it reported still
exists; ``force=True`` recomputes everything. The backend is not part of the hash: results are
reused across backends (the report says which backend computed each stage).

Failures. A stage that raises is recorded as failed (with the message), the stages that depend on
it are not run, the others are, the report is written anyway and :func:`run_pipeline` reports the
failure (the CLI exits 1). A :class:`~zfscratch.errors.UserError` from the data stage (bad
``--data``) stops the job at once.

Budgets (profiles). ``default``: a few minutes on 2 CPU cores; ``quick``: about a minute (smaller
data, fewer epochs) for smoke tests. See :data:`PROFILES`.

Python API::

    from zfscratch.pipeline import run_pipeline
    summary = run_pipeline("report", quick=True)            # returns the manifest dict
    print(summary["stages"]["evaluate"]["result"]["accuracy"])
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import traceback
import uuid
from dataclasses import dataclass, field

import numpy as np

from zfscratch.errors import UserError
from zfscratch.pipeline.profiles import BUDGET_NOTE, PROFILES, TRAINING_ONLY, data_spec, profile_values
from zfscratch.pipeline.text import _q
from zfscratch.util.jsonio import jsonable as _jsonable

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "zfscratch-run-manifest"
#: bump to invalidate every stored stage (e.g. when a stage's output format changes)
PIPELINE_VERSION = 1


# ============================================================================================ stages
@dataclass
class Stage:
    """One step of the main job.

    Attributes
    ----------
    name : folder under the output directory and key in the manifest
    title : section title in the report
    func : ``func(ctx, cfg) -> dict`` (JSON-able; file paths anywhere inside are made relative to
        the output directory when stored)
    inputs : names of the stages whose outputs ``func`` reads
    config : the stage's settings (hashed)
    paper : the figure/table of the paper it reproduces ("Fig 2", "Table 1", ...)
    what : two sentences for the report: what is shown and what to look for
    commands : ``commands(ctx, cfg) -> [str]``: stand-alone commands that redo the stage
    render : ``render(result, ctx) -> [block]`` (see :mod:`zfscratch.report`)
    synthetic_only : skipped (with a note in the report) on data without part landmarks
    optional : run only when named in ``--stages`` (costly extras, e.g. more trainings); the report
        then says how to ask for it
    needs_history : skipped (with a one-line note) when the report is built on ``--weights`` (no
        training run, hence no snapshots or curves)
    requires : ``(modules, extra)``: optional libraries the stage needs (e.g. ``(("scipy", "skimage"),
        "sanity")``); without them it is skipped with a note naming the pip extra, and computed by the
        next run that finds them
    """

    name: str
    title: str
    func: object
    inputs: tuple = ()
    config: dict = field(default_factory=dict)
    paper: str = ""
    what: str = ""
    commands: object = None
    render: object = None
    synthetic_only: bool = False
    optional: bool = False
    needs_history: bool = False
    requires: tuple = ()


class Context:
    """What a stage function sees: output folders, data, backend, the trained model, earlier results."""

    def __init__(self, out, spec, backend, profile, progress=True, log=print):
        self.out = os.path.abspath(os.fspath(out))
        self.cwd = os.getcwd()
        self.spec = spec
        self.backend = backend
        self.profile = profile
        self.progress = progress
        self.log = log
        self.results = {}
        self._datasets = {}
        self._model = None
        self.kind = spec.split(":", 1)[0].strip().lower()
        self.synthetic = self.kind == "synthetic"

    # -- paths --------------------------------------------------------------------------------
    def dir(self, name):
        """``OUT/name`` (created)."""
        path = os.path.join(self.out, name)
        os.makedirs(path, exist_ok=True)
        return path

    def rel(self, path):
        """Path relative to the output directory, with forward slashes (for HTML)."""
        return os.path.relpath(os.path.abspath(path), self.out).replace(os.sep, "/")

    def abs(self, rel):
        return os.path.join(self.out, *str(rel).split("/"))

    def cmd(self, path):
        """A path as typed on the command line in the folder the job was started from."""
        r = os.path.relpath(os.path.abspath(path), self.cwd)
        return path if r.startswith(os.pardir + os.sep + os.pardir) else r

    # -- data -----------------------------------------------------------------------------------
    def splits(self):
        from zfscratch.data import available_splits
        return available_splits(self.spec)

    def split(self, prefer):
        """The first available split among ``prefer`` (a tuple), else "train"."""
        have = self.splits()
        for s in prefer:
            if s in have:
                return s
        return "train"

    def dataset(self, split):
        if split not in self._datasets:
            from zfscratch.data import open_dataset
            self._datasets[split] = open_dataset(self.spec, split=split)
        return self._datasets[split]

    def heldout(self):
        """(split name, dataset) used to look at the trained model: val, else test, else train."""
        s = self.split(("val", "test"))
        return s, self.dataset(s)

    def test(self):
        s = self.split(("test", "val"))
        return s, self.dataset(s)

    # -- model -----------------------------------------------------------------------------------
    @property
    def weights(self):
        return os.path.join(self.out, "train", "weights.npz")

    def model(self):
        """(net, meta) of the trained model, loaded once per process on the chosen backend."""
        if self._model is None:
            from zfscratch.io import load_weights
            self._model = load_weights(self.weights, backend=self.backend)
        return self._model

    def forget_model(self):
        self._model = None


def _relativize(o, ctx, files):
    """Absolute paths inside ``ctx.out`` -> relative (collected in ``files``); the rest unchanged."""
    if isinstance(o, dict):
        return {k: _relativize(v, ctx, files) for k, v in o.items()}
    if isinstance(o, list):
        return [_relativize(v, ctx, files) for v in o]
    if isinstance(o, str) and os.path.isabs(o) and os.path.isfile(o):
        ap = os.path.abspath(o)
        if ap.startswith(ctx.out + os.sep):
            r = ctx.rel(ap)
            files.append(r)
            return r
    return o


def stage_hash(stage, spec, tokens):
    """Hash of everything that determines a stage's output."""
    blob = json.dumps({"v": PIPELINE_VERSION, "stage": stage.name, "config": _jsonable(stage.config),
                       "data": spec, "inputs": {i: tokens.get(i) for i in stage.inputs}}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def load_manifest(out):
    path = os.path.join(out, MANIFEST)
    if not os.path.isfile(path):
        return {"format": MANIFEST_FORMAT, "version": PIPELINE_VERSION, "stages": {}}
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
        if not isinstance(m, dict):
            raise ValueError(f"a JSON {type(m).__name__}, expected an object")
        if m.get("format") != MANIFEST_FORMAT or not isinstance(m.get("stages"), dict):
            raise ValueError("not a run manifest")
        from zfscratch.util.files import is_safe_name
        bad = [k for k in m["stages"] if not is_safe_name(k)]
        if bad:
            raise ValueError(f"stage name {bad[0][:40]!r} is not a safe name")
        return m
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to be a zfscratch run manifest; remove it or use another "
                        f"--out") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a zfscratch run manifest ({e}); remove it or use another --out") from None


def save_manifest(out, manifest):
    from zfscratch.io import atomic_write_text
    atomic_write_text(os.path.join(out, MANIFEST), json.dumps(_jsonable(manifest), indent=1) + "\n")


def _reusable(entry, h, ctx):
    if not entry or entry.get("hash") != h or entry.get("status") not in ("done", "skipped"):
        return False
    return all(os.path.isfile(ctx.abs(f)) for f in entry.get("files", []))


def machine_info(backend):
    """Platform, CPU count, numpy/BLAS, backend: shown in the report."""
    info = {"python": platform.python_version(), "platform": platform.platform(terse=True),
            "machine": platform.machine(), "cpus": os.cpu_count(), "numpy": np.__version__,
            "backend": backend.name}
    try:
        from zfscratch.util.threads import blas_info
        info["blas"] = blas_info()
    except Exception:  # noqa: BLE001 - informative only
        pass
    try:
        import numba
        info["numba"] = f"{numba.__version__} ({numba.config.NUMBA_NUM_THREADS} threads)"
    except ImportError:
        pass
    from zfscratch import __version__
    info["zfscratch"] = __version__
    return info


def _check_weights_fit(weights, net, meta, prep, ctx):
    """UserError unless the model in ``weights`` can be used on ``ctx``'s data: same number of classes
    (and the same names, when both sides name them), same number of channels, images at least as
    large as the model's input."""
    ds = ctx.dataset("train")
    data_classes = [str(c) for c in (getattr(ds, "classes", None) or [])]
    w_classes = [str(c) for c in (meta.get("classes") or [])]
    n_out = len(w_classes) or net.config.get("num_classes")
    if n_out is None:
        try:
            n_out = int(np.asarray(net.layer("fc8").params["b"]).shape[0])
        except Exception:  # noqa: BLE001 - custom (imported) models may name their layers otherwise
            n_out = None
    if n_out is not None and data_classes and n_out != len(data_classes):
        raise UserError(f"--weights {weights}: the model has {n_out} classes, the data {ctx.spec} has "
                        f"{len(data_classes)}; expected weights trained on this data")
    numeric = all(c.isdigit() for c in w_classes) or all(c.isdigit() for c in data_classes)
    if w_classes and data_classes and not numeric and w_classes != data_classes:
        diff = [f"{a} vs {b}" for a, b in zip(w_classes, data_classes) if a != b][:3]
        raise UserError(f"--weights {weights}: its classes differ from those of {ctx.spec} ({'; '.join(diff)}); "
                        "expected weights trained on this data")
    first, _ = ds.get_batch([0])
    ch = int(first.shape[-1])
    want_ch = int(net.config.get("in_channels", 3) or 3)
    if ch != want_ch:
        raise UserError(f"--weights {weights}: the model takes {want_ch}-channel images, {ctx.spec} has {ch}")
    h, w = first.shape[1:3]
    if min(h, w) < prep.input_size:
        raise UserError(f"--weights {weights}: the model's input is {prep.input_size}x{prep.input_size} px, the "
                        f"images of {ctx.spec} are {h}x{w}; expected images at least as large (drop size= from "
                        "--data, or use weights trained at this size)")


def run_pipeline(out="report", quick=False, backend=None, data=None, force=False, stages=None, progress=True,
                 log=None, command=None, profile=None, weights=None, overrides=None, architecture=None,
                 *, build):
    """Run (or resume) the main job and write ``OUT/index.html``.

    Parameters
    ----------
    out : output directory (stage folders, ``manifest.json``, ``index.html``)
    quick : the ``quick`` profile (an alias of ``profile="quick"``)
    backend : backend name or Backend (default: ``$ZFSCRATCH_BACKEND`` or auto)
    data : data spec (default: the embedded synthetic data)
    force : recompute the stages named in ``stages`` (every stage when ``stages`` is None)
    stages : names of the stages to run (their inputs are added, and reused when finished); default all
    progress : progress bars of the stages
    log : callable for the per-stage progress lines (default: print to stdout)
    command : the command line shown in the report (default: reconstructed from the arguments)
    build : ``build(profile) -> [Stage]``, the job's stages (:func:`zfscratch.pipeline.build_stages`; the
        package's :func:`zfscratch.pipeline.run_pipeline` passes it)
    profile : "default" (a few minutes on 2 cores), "quick" (about a minute) or "imagenette" (real
        photos, see :data:`PROFILES`)
    weights : build the report on this weights file (trained by ``zfscratch train`` or imported from
        ONNX) instead of training: no training stage, the evolution section (which needs the
        training snapshots) says so, the architecture comparison runs only when asked
    overrides : {key: value} for keys of :data:`OVERRIDABLE` (``model``, ``size`` (input size),
        ``epochs``, ``batch``, ``lr``, ``dropout``, ``augment``, ``lr_schedule``, ``warmup``, ``init``,
        ``resize``); they go into the training stage's configuration, hence its hash
    architecture : True/False forces the architecture comparison on/off (default: the profile's)

    Returns
    -------
    the manifest dict (``stages``: name -> status, hash, seconds, result, ...), plus ``report`` (the
    HTML path) and ``failed`` (names of failed stages).

    Raises
    ------
    UserError
        bad options, data or weights; raised before anything in ``out`` is written.
    """
    from zfscratch.train import check_writable_dir
    log = log or (lambda msg: print(msg, flush=True))
    profile, overrides, values = _profile_values(quick, profile, overrides, architecture)
    be = _backend(backend)
    weights, loaded = _report_weights(weights, overrides, values, architecture)
    out = os.path.abspath(os.fspath(out))
    ctx = Context(out, data_spec(data, values), be, profile, progress=progress, log=log)
    if weights is not None:
        _check_weights_fit(weights, *loaded, ctx)
    del loaded
    check_writable_dir(out)
    all_stages = build(values, weights=weights)
    wanted, forced = _select(all_stages, stages, force)
    manifest = load_manifest(out)
    if command is None:
        command = _default_command(out, quick, be, backend, data, force, profile, weights, overrides)
    _start_manifest(manifest, ctx, command, values, overrides, weights, data)
    return _run_stages(ctx, manifest, all_stages, wanted, forced, weights)


def _profile_values(quick, profile, overrides, architecture):
    """``(profile name, overrides given, the run's values)``: the profile's settings with the overrides."""
    if quick and profile not in (None, "quick"):
        raise UserError(f"--quick is the quick profile; it cannot be combined with --profile {profile}")
    profile = "quick" if quick else (profile or "default")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    values = profile_values(profile, overrides)
    if architecture is not None:
        values["architecture"] = bool(architecture)
    return profile, overrides, values


def _backend(backend):
    from zfscratch.backend import BackendError, get_backend
    try:
        return get_backend(backend)
    except BackendError as e:
        raise UserError(f"--backend: {e}") from None


def _report_weights(weights, overrides, values, architecture):
    """``--weights``: ``(absolute path, (net, meta, preprocessing))``, the model's input size, resize and
    architecture put into ``values``; ``(None, None)`` without weights."""
    if weights is None:
        return None, None
    bad = [k for k in TRAINING_ONLY + ("size", "resize") if k in overrides]
    if bad:
        raise UserError(f"--{'input-size' if bad[0] == 'size' else bad[0].replace('_', '-')}: the report on "
                        "--weights trains nothing (the model's own input size and preprocessing are used); "
                        "drop the option or the --weights")
    weights = os.path.abspath(os.fspath(weights))
    from zfscratch.io import load_weights
    from zfscratch.preprocess import Preprocess
    if not os.path.isfile(weights):
        raise UserError(f"--weights {weights}: no such file (expected a zfscratch weights .npz)")
    wnet, wmeta = load_weights(weights)
    wprep = Preprocess.from_meta(wmeta)
    values.update(size=wprep.input_size, resize=wprep.resize, model=wnet.config.get("arch"),
                  architecture=bool(architecture))
    return weights, (wnet, wmeta, wprep)


def _start_manifest(manifest, ctx, command, values, overrides, weights, data):
    """This run's settings into the manifest (its stages' entries are kept)."""
    shown = dict(values)
    if weights is not None:  # the profile's training values only shape the (optional) architecture twin
        shown = {k: v for k, v in values.items() if k not in TRAINING_ONLY + ("snapshots",) or k == "model"}
    profile = ctx.profile
    manifest.update(format=MANIFEST_FORMAT, version=PIPELINE_VERSION, profile=profile, spec=ctx.spec,
                    command=command, machine=machine_info(ctx.backend), budget=_jsonable(shown), overrides=overrides,
                    weights=weights,
                    budget_note=BUDGET_NOTE if not data and not weights and profile in ("default", "quick") else None)
    manifest.setdefault("stages", {})


def _run_stages(ctx, manifest, all_stages, wanted, forced, weights):
    """Run (or reuse) the wanted stages in order, save the manifest, write the report; returns the manifest."""
    from zfscratch.report import write_report
    out, log = ctx.out, ctx.log
    run = _Run(ctx, manifest, wanted, forced, weights=weights)
    t_all, c_all = time.perf_counter(), time.process_time()
    run_list = [s for s in all_stages if s.name in wanted]
    log(f"zfscratch run: {len(run_list)} stages, profile {ctx.profile}, data {ctx.spec}, backend {ctx.backend.name}, "
        f"output {out}")
    for k, st in enumerate(run_list, 1):
        run.stage(st, f"[{k}/{len(run_list)}] {st.name:<15}")
    manifest["total_seconds"] = time.perf_counter() - t_all
    manifest["total_cpu_seconds"] = time.process_time() - c_all
    manifest["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save_manifest(out, manifest)
    html = write_report(out, manifest, all_stages, ctx)
    failed = run.failed
    log(f"report: {html}" + (f"  ({len(failed)} stage(s) failed: {', '.join(failed)})" if failed else ""))
    manifest["report"] = html
    manifest["failed"] = failed
    return manifest


def _select(all_stages, stages, force):
    """(names to run, names to recompute) for ``--stages`` (with their inputs, recursively) and ``--force``.

    Optional stages run only when named."""
    names = [s.name for s in all_stages]
    wanted = {s.name for s in all_stages if not s.optional}
    if stages:
        unknown = [s for s in stages if s not in names]
        if unknown:
            raise UserError(f"--stages: unknown stage(s) {', '.join(unknown)}; stages: {', '.join(names)}")
        wanted = set()
        todo = list(stages)
        by_name = {s.name: s for s in all_stages}
        while todo:
            n = todo.pop()
            if n not in wanted:
                wanted.add(n)
                todo.extend(by_name[n].inputs)
    forced = wanted if force and not stages else (set(stages) if force else set())
    return wanted, forced


def _default_command(out, quick, be, backend, data, force, profile="default", weights=None, overrides=None):
    """The ``zfscratch run`` command line that reproduces these arguments (shown in the report)."""
    rel = os.path.relpath(out)
    opts = "".join(f" --{'input-size' if k == 'size' else k.replace('_', '-')} "
                   f"{','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in (overrides or {}).items())
    return ("zfscratch run" + (f" --out {_q(rel)}" if rel != "report" else "")
            + (" --quick" if quick else (f" --profile {profile}" if profile not in (None, "default") else ""))
            + (f" --backend {be.name}" if backend else "") + (f" --weights {_q(weights)}" if weights else "")
            + (f" --data {_q(data)}" if data else "") + opts + (" --force" if force else ""))


def _missing_modules(requires):
    """The modules of a stage's ``requires`` that cannot be imported here."""
    if not requires:
        return []
    import importlib.util
    return [m for m in requires[0] if importlib.util.find_spec(m) is None]


class _Run:
    """One pass over the stages: decides per stage whether to run, reuse or skip it, records the outcome
    in the manifest (saved after every stage) and keeps the run tokens that chain the hashes."""

    def __init__(self, ctx, manifest, wanted, forced, weights=None):
        self.ctx, self.manifest, self.wanted, self.forced = ctx, manifest, wanted, forced
        self.weights = weights
        self.entries = manifest["stages"]
        self.last = manifest["last_run"] = {}
        self.tokens = {n: e.get("token") for n, e in self.entries.items()}
        self.failed = []

    def _record(self, name, entry, outcome, token=None):
        self.entries[name] = entry
        self.tokens[name] = token
        self.last[name] = outcome
        if outcome in ("failed", "not run"):
            self.failed.append(name)

    def stage(self, st, head):
        ctx, log = self.ctx, self.ctx.log
        bad_inputs = [i for i in st.inputs if i in self.failed or (
            i not in self.wanted and self.entries.get(i, {}).get("status") != "done")]
        h = stage_hash(st, ctx.spec, self.tokens)
        entry = self.entries.get(st.name)
        if bad_inputs:
            self._record(st.name, {"hash": None, "status": "not run", "token": None,
                                   "error": f"needs {', '.join(bad_inputs)}, which did not finish"}, "not run")
            log(f"{head} not run: needs {', '.join(bad_inputs)}")
        elif st.name not in self.forced and _reusable(entry, h, ctx):
            ctx.results[st.name] = entry.get("result") or {}
            self.last[st.name] = "reused"
            log(f"{head} reused (computed {entry.get('finished', '?')} in {entry.get('seconds', 0):.1f} s)")
            return
        elif _missing_modules(st.requires):
            mods, extra = st.requires
            res = {"skipped": f"needs {', '.join(_missing_modules(st.requires))} (pip install "
                              f"'zfscratch[{extra}]'), not installed here"}
            # no hash: a later run with the libraries installed computes the stage
            self._record(st.name, {"hash": None, "status": "skipped", "token": None, "result": res, "files": [],
                                   "seconds": 0.0, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, "skipped")
            ctx.results[st.name] = res
            log(f"{head} skipped: {res['skipped']}")
        elif (st.synthetic_only and not ctx.synthetic) or (st.needs_history and self.weights):
            res = {"skipped": f"needs part landmarks, which only the synthetic data has (data: {ctx.spec})"
                   if st.synthetic_only and not ctx.synthetic else
                   "needs the training history (the snapshots of a zfscratch train run), which a report on "
                   "--weights does not have"}
            self._record(st.name, {"hash": h, "status": "skipped", "token": h, "result": res, "files": [],
                                   "seconds": 0.0, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, "skipped", h)
            ctx.results[st.name] = res
            log(f"{head} skipped: {res['skipped']}")
        else:
            self._compute(st, head, h)
        save_manifest(ctx.out, self.manifest)

    def _compute(self, st, head, h):
        ctx, be = self.ctx, self.ctx.backend
        ctx.log(f"{head} {st.title} ...")
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            res = st.func(ctx, dict(st.config))
        except KeyboardInterrupt:
            save_manifest(ctx.out, self.manifest)
            raise
        except Exception as e:  # noqa: BLE001 - recorded, the job goes on
            if st.name == "data" and isinstance(e, UserError):
                raise
            dt = time.perf_counter() - t0
            msg = f"{type(e).__name__}: {e}"
            self._record(st.name, {"hash": None, "status": "failed", "token": None, "error": msg,
                                   "traceback": traceback.format_exc(limit=6), "seconds": dt,
                                   "started": started, "backend": be.name}, "failed")
            ctx.log(f"{head} FAILED after {dt:.1f} s: {msg}")
            return
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        files = []
        res = _relativize(_jsonable(res), ctx, files)
        entry = {"hash": h, "status": "done", "token": uuid.uuid4().hex[:12], "result": res,
                 "files": sorted(set(files)), "seconds": dt, "cpu_seconds": cpu, "started": started,
                 "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "backend": be.name,
                 "config": _jsonable(st.config)}
        self._record(st.name, entry, "computed", entry["token"])
        ctx.results[st.name] = res
        ctx.log(f"{head} done in {dt:.1f} s")
