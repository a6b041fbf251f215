"""The main job, ``zfscratch run``: data -> training -> every paper experiment -> an offline HTML report.

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

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "zfscratch-run-manifest"
#: bump to invalidate every stored stage (e.g. when a stage's output format changes)
PIPELINE_VERSION = 1

#: budgets of the two modes; every number here is part of the stage hashes
PROFILES = {
    "default": dict(
        size=48, n_train=3000, n_val=300, n_test=300, classes="face+house+car+flower+star+tree", max_angle=30,
        epochs=6, batch=32, lr=0.02, dropout=0.0, snapshots=(0, 1, 2, 3, 4, 6),
        topk_images=300, topk_maps=8, evolution_images=150, evolution_maps=1,
        reconstruct_images=4, reconstruct_eval=200, occlusion_images=3, occlusion_stride=2,
        invariance_images=5, invariance_eval=30, correspondence_images=5, correspondence_groups=3,
        layerwise_train=1500, layerwise_test=300, layerwise_epochs=8, arch_probe=64,
    ),
    "quick": dict(
        size=48, n_train=600, n_val=120, n_test=120, classes="face+house+car+flower+star+tree", max_angle=30,
        epochs=3, batch=32, lr=0.02, dropout=0.0, snapshots=(0, 1, 3),
        topk_images=120, topk_maps=4, evolution_images=60, evolution_maps=1,
        reconstruct_images=2, reconstruct_eval=60, occlusion_images=1, occlusion_stride=4,
        invariance_images=2, invariance_eval=10, correspondence_images=4, correspondence_groups=2,
        layerwise_train=300, layerwise_test=120, layerwise_epochs=4, arch_probe=16,
    ),
}
#: why the run's data and recipe differ from the paper's (shown in the report)
BUDGET_NOTE = ("To fit a few CPU minutes the run uses 6 of the 10 synthetic classes, rotations within "
               "+-30 degrees, 48x48 inputs and no dropout; the architecture, SGD recipe (momentum, weight decay, "
               "filter renormalization, lr annealing on plateau) and every experiment are the paper's.")


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


# ============================================================================================ helpers
from zfscratch.util.jsonio import jsonable as _jsonable  # noqa: E402  (one home for JSON of results)


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


def _fmt(v, pct=False, digits=3):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.1%}" if pct else f"{v:.{digits}g}"
    return str(v)


def _q(s):
    """Shell-quote a command argument when needed."""
    s = str(s)
    if s and all(c.isalnum() or c in "-_=.,:/+@%" for c in s):
        return s
    return "'" + s.replace("'", "'\"'\"'") + "'"


def _backend_opt(ctx):
    return f" --backend {ctx.backend.name}"


# ============================================================================================ stage: data
def stage_data(ctx, cfg):
    """Open every split, count images and classes, draw a few training images per class."""
    from zfscratch.viz import new_figure, save_png
    t0 = time.perf_counter()
    splits = {s: len(ctx.dataset(s)) for s in ctx.splits()}
    train = ctx.dataset("train")
    classes = [str(c) for c in (getattr(train, "classes", None) or [])]
    labels = np.asarray(train.labels() if callable(getattr(train, "labels", None)) else train.labels, np.int64)
    counts = np.bincount(labels, minlength=len(classes)) if labels.size else np.zeros(len(classes), np.int64)
    per = 4
    rows = [np.nonzero(labels == c)[0][:per] for c in range(max(1, len(classes)))][:10]
    rows = [r for r in rows if r.size]
    coloured = ctx.synthetic and hasattr(train, "render_batch")
    ncols = 2 * per if coloured else per
    height = 1.25 * len(rows) + 0.5
    fig = new_figure(1.2 * ncols, height, dpi=100)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    fig.subplots_adjust(top=1 - 0.45 / height, bottom=0.01, left=0.01, right=0.99, hspace=0.35, wspace=0.05)
    for r, idx in enumerate(rows):
        imgs, labs = train.get_batch(idx)
        cols = [imgs]
        if coloured:
            from zfscratch.experiments.reconstruct import render_pairs
            cols.append(render_pairs(train, idx, ("colored",))["colored"][0])
        for j in range(ncols):
            ax = axes[r, j]
            ax.set_axis_off()
            src, k = cols[j // per], j % per
            if k < len(src):
                ax.imshow(src[k], interpolation="nearest")
        if classes:
            axes[r, 0].set_title(classes[int(labs[0])], fontsize=8, loc="left")
    if coloured:
        fig.suptitle("left: training images (plain background); right: the same objects on the coloured "
                     "background (used by the reconstruction section)", fontsize=9, y=1 - 0.1 / height)
    fig_path = save_png(fig, os.path.join(ctx.dir("data"), "samples.png"))
    first, _ = train.get_batch([0])
    return {"spec": ctx.spec, "kind": ctx.kind, "classes": classes, "splits": splits,
            "class_counts": counts.tolist(), "image_shape": list(first.shape[1:]), "figure": fig_path,
            "seconds": time.perf_counter() - t0}


def render_data(res, ctx):
    rows = [[s, n] for s, n in res["splits"].items()]
    blocks = [("fig", res["figure"], "A few training images per class."),
              ("table", ["split", "images"], rows),
              ("kv", [("data spec", res["spec"]), ("image shape", " x ".join(map(str, res["image_shape"]))),
                      ("classes", ", ".join(res["classes"]) or "n/a")])]
    if res.get("class_counts"):
        blocks.append(("table", ["class", "training images"],
                       [[c, n] for c, n in zip(res["classes"], res["class_counts"])]))
    return blocks


def cmds_data(ctx, cfg):
    return [f"python -c \"from zfscratch.data import open_dataset; ds = open_dataset({ctx.spec!r}, 'train'); "
            f"print(len(ds), ds.classes)\""]


# ============================================================================================ stage: train
def stage_train(ctx, cfg):
    from zfscratch.train import train_model
    run = ctx.dir("train")
    ctx.forget_model()
    r = train_model(ctx.spec, run, model="zfnet_small", epochs=cfg["epochs"], batch=cfg["batch"], lr=cfg["lr"],
                    backend=ctx.backend.name, snapshots=tuple(cfg["snapshots"]), seed=cfg["seed"],
                    quiet=not ctx.progress, overwrite=True, input_size=cfg["size"],
                    model_config={"dropout": cfg["dropout"]})
    hist = r.get("history") or []
    ips = [float(h.get("images_per_s") or 0) for h in hist if h.get("images_per_s")]
    net, _ = ctx.model()
    n_params = int(sum(int(np.prod(p.shape)) for _, p in net.params()))
    from zfscratch.models import input_shape
    summary = net.summary((1,) + tuple(input_shape(net)))
    return {"weights": r["weights"], "curve": r.get("curve"), "metrics_csv": r.get("metrics_csv"),
            "metrics_json": r.get("metrics_json"), "epochs": r.get("epochs"), "steps": r.get("steps"),
            "val_acc": r.get("val_acc"), "best_val_acc": r.get("best_val_acc"), "train_acc": r.get("train_acc"),
            "val_loss": r.get("val_loss"), "elapsed_s": r.get("elapsed_s"),
            "images_per_s": float(np.median(ips)) if ips else None, "classes": r.get("classes"),
            "config": r.get("config") or net.config, "preprocessing": r.get("preprocessing"),
            "params": n_params, "summary": summary, "backend": r.get("backend") or ctx.backend.name,
            "history": [{k: h.get(k) for k in ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
                                               "epoch_time_s")} for h in hist]}


def render_train(res, ctx):
    rows = [[h["epoch"], _fmt(h["lr"]), _fmt(h["train_loss"]), _fmt(h["train_acc"], True), _fmt(h["val_loss"]),
             _fmt(h["val_acc"], True), _fmt(h["epoch_time_s"])] for h in res.get("history", [])]
    blocks = []
    if res.get("curve"):
        blocks.append(("fig", res["curve"], "Training loss and error per epoch (train and validation)."))
    blocks += [("kv", [("final validation accuracy", _fmt(res.get("val_acc"), True)),
                       ("best validation accuracy", _fmt(res.get("best_val_acc"), True)),
                       ("epochs / steps", f"{res.get('epochs')} / {res.get('steps')}"),
                       ("training time", f"{_fmt(res.get('elapsed_s'))} s"),
                       ("throughput", f"{_fmt(res.get('images_per_s'))} images/s (median epoch)"),
                       ("parameters", f"{res.get('params', 0):,}"),
                       ("weights", res.get("weights"))]),
               ("table", ["epoch", "lr", "train loss", "train acc.", "val. loss", "val. acc.", "epoch s"], rows),
               ("pre", res.get("summary", ""))]
    return blocks


def cmds_train(ctx, cfg):
    snaps = ",".join(str(s) for s in cfg["snapshots"])
    return [f"zfscratch train --data {_q(ctx.spec)} --out {_q(ctx.cmd(ctx.dir('train')))} --model zfnet_small "
            f"--epochs {cfg['epochs']} --batch {cfg['batch']} --lr {cfg['lr']} --input-size {cfg['size']} "
            f"--seed {cfg['seed']} --dropout {cfg['dropout']} --snapshots {snaps}{_backend_opt(ctx)} --overwrite"]


# ============================================================================================ stage: evaluate
def stage_evaluate(ctx, cfg):
    from zfscratch.train import evaluate_weights
    split, _ = ctx.test()
    r = evaluate_weights(ctx.weights, ctx.spec, split=split, backend=ctx.backend, out_dir=ctx.dir("evaluate"),
                         quiet=not ctx.progress)
    return {"split": split, "n": r["n"], "accuracy": r["accuracy"], "top1_error": r["top1_error"],
            "top5_error": r["top5_error"], "topk": r.get("topk", 5), "loss": r["loss"],
            "per_class": r["per_class"], "classes": r["classes"], "figure": r["png"], "json": r["json"],
            "note": None if split == "test" else f"no test split in {ctx.spec}: evaluated on {split}"}


def render_evaluate(res, ctx):
    blocks = [("kv", [("split", f"{res['split']} ({res['n']} images)"),
                      ("top-1 accuracy", _fmt(res["accuracy"], True)),
                      ("top-1 error", _fmt(res["top1_error"], True)),
                      (f"top-{res.get('topk', 5)} error", _fmt(res["top5_error"], True)),
                      ("mean cross-entropy", _fmt(res["loss"]))]),
              ("table", ["class", "accuracy"], [[c, _fmt(a, True)] for c, a in res["per_class"].items()]),
              ("fig", res["figure"], "Confusion matrix (rows: true class, columns: predicted).")]
    if res.get("note"):
        blocks.insert(0, ("note", res["note"]))
    return blocks


def cmds_evaluate(ctx, cfg):
    split = ctx.split(("test", "val"))
    return [f"zfscratch evaluate --weights {_q(ctx.cmd(ctx.weights))} --data {_q(ctx.spec)} --split {split} "
            f"--out {_q(ctx.cmd(ctx.dir('evaluate')))}{_backend_opt(ctx)}"]


# ============================================================================================ stage: filters
def stage_filters(ctx, cfg):
    from zfscratch.experiments.architecture import filter_stats
    from zfscratch.experiments.evolution import list_snapshots
    from zfscratch.io import load_weights
    from zfscratch.viz import plot_filters
    out = ctx.dir("filters")
    net, _ = ctx.model()
    w = np.asarray(net.backend.to_host(net.layer("conv1").params["w"]))
    st = filter_stats(w)
    path = plot_filters(w, os.path.join(out, "conv1_final.png"), title="conv1 filters after training")
    rms = np.sqrt((w.reshape(w.shape[0], -1) ** 2).mean(1))
    res = {"figure": path, "shape": list(w.shape), "rms_max": float(rms.max()), "rms_mean": float(rms.mean()),
           "dead_fraction": st["dead_fraction"], "hf_energy": st["hf_energy"], "snapshots": []}
    snaps = list_snapshots(ctx.dir("train"))
    if snaps:
        e0, p0 = snaps[0]
        n0, _ = load_weights(p0)
        w0 = np.asarray(n0.layer("conv1").params["w"])
        res["initial_figure"] = plot_filters(w0, os.path.join(out, f"conv1_epoch{e0}.png"),
                                             title=f"conv1 filters at epoch {e0}")
        res["initial_epoch"] = int(e0)
    return res


def render_filters(res, ctx):
    blocks = [("fig", res["figure"], f"The {res['shape'][0]} first-layer filters "
                                     f"({res['shape'][2]}x{res['shape'][3]}, RGB) of the trained model.")]
    if res.get("initial_figure"):
        blocks.append(("fig", res["initial_figure"], f"The same filters at epoch {res['initial_epoch']} "
                                                     "(0 = initialization): training turns noise into edge and "
                                                     "colour detectors."))
    blocks.append(("kv", [("largest filter RMS", f"{res['rms_max']:.4f} (renormalization radius 0.1)"),
                          ("mean filter RMS", f"{res['rms_mean']:.4f}"),
                          ("dead filters", _fmt(res["dead_fraction"], True)),
                          ("high-frequency energy", _fmt(res["hf_energy"]))]))
    return blocks


def cmds_filters(ctx, cfg):
    return [f"zfscratch filters --weights {_q(ctx.cmd(ctx.weights))} --out "
            f"{_q(ctx.cmd(os.path.join(ctx.dir('filters'), 'conv1_final.png')))}"]


# ============================================================================================ stage: topk
def stage_topk(ctx, cfg):
    from zfscratch.experiments.topk import run_topk
    net, meta = ctx.model()
    split, ds = ctx.heldout()
    r = run_topk(net, meta, ds, ctx.dir("topk"), layers="1-5", maps=cfg["maps"], k=9,
                 images=min(cfg["images"], len(ds)), batch=64, progress=ctx.progress)
    layers = {name: {"figure": v["figure"], "maps": v["maps"], "rf": v["rf"], "dead_fraction": v["dead_fraction"],
                     "num_maps": v["num_maps"],
                     "top_value": [float(t[0]) if t else None for t in v["top_values"]]}
              for name, v in r["layers"].items()}
    return {"split": split, "images": r["images"], "search_s": r["search_s"], "project_s": r["project_s"],
            "images_per_s": r["images_per_s"], "layers": layers, "json": r["json"], "state": r["state"]}


def render_topk(res, ctx):
    blocks = [("table", ["layer", "maps", "receptive field (px)", "maps never active", "strongest activation"],
               [[n, v["num_maps"], v["rf"][0], _fmt(v["dead_fraction"], True),
                 _fmt(max([t for t in v["top_value"] if t is not None], default=None))]
                for n, v in res["layers"].items()]),
              ("kv", [("images scanned", f"{res['images']} ({res['split']} split)"),
                      ("search pass", f"{res['search_s']:.1f} s ({res['images_per_s']:.0f} images/s)"),
                      ("projection pass", f"{res['project_s']:.1f} s")])]
    for name, v in res["layers"].items():
        blocks.append(("fig", v["figure"], f"{name}: for each of the {len(v['maps'])} strongest maps, the top-9 "
                                          "projections (left) and the matching image patches (right)."))
    return blocks


def cmds_topk(ctx, cfg):
    split = ctx.split(("val", "test"))
    return [f"zfscratch visualize --weights {_q(ctx.cmd(ctx.weights))} --data {_q(ctx.spec)} --split {split} "
            f"--layers 1-5 --maps {cfg['maps']} --images {cfg['images']} --out {_q(ctx.cmd(ctx.dir('topk')))}"
            f"{_backend_opt(ctx)}"]


# ============================================================================================ stage: evolution
def stage_evolution(ctx, cfg):
    from zfscratch.experiments.evolution import run_evolution
    split, ds = ctx.heldout()
    r = run_evolution(ctx.dir("train"), dataset=ds, out=os.path.join(ctx.dir("evolution"), "evolution.png"),
                      layers="1-5", maps_per_layer=cfg["maps_per_layer"], images=min(cfg["images"], len(ds)),
                      max_epochs=8, backend=ctx.backend, batch=64, progress=ctx.progress)
    return {"figure": r["figure"], "epochs": r["epochs"], "images": r["images"], "split": split,
            "rows": [{"layer": row["layer"], "map": row["map"], "value": row["value"]} for row in r["rows"]]}


def render_evolution(res, ctx):
    head = ["layer", "map"] + [f"epoch {e}" for e in res["epochs"]]
    rows = [[r["layer"], r["map"]] + [_fmt(v) for v in r["value"]] for r in res["rows"]]
    return [("fig", res["figure"], "Rows: a map of layers 1-5; columns: saved epochs; each tile: the strongest "
                                   f"activation over {res['images']} fixed images, projected."),
            ("table", head, rows)]


def cmds_evolution(ctx, cfg):
    split = ctx.split(("val", "test"))
    return [f"zfscratch evolution --run {_q(ctx.cmd(ctx.dir('train')))} --data {_q(ctx.spec)} --split {split} "
            f"--maps-per-layer {cfg['maps_per_layer']} --images {cfg['images']} "
            f"--out {_q(ctx.cmd(os.path.join(ctx.dir('evolution'), 'evolution.png')))}{_backend_opt(ctx)}"]


# ============================================================================================ stage: reconstruct
def stage_reconstruct(ctx, cfg):
    from zfscratch.experiments.reconstruct import run_reconstruct
    net, meta = ctx.model()
    split, ds = ctx.heldout()
    r = run_reconstruct(net, meta, ds, os.path.join(ctx.dir("reconstruct"), "reconstruct.png"), layers="1-3",
                        images=min(cfg["images"], len(ds)), eval_images=min(cfg["eval_images"], len(ds)))
    return {"figure": r["figure"], "layers": r["layers"], "samples": r["samples"], "accuracy": r["accuracy"],
            "p_true": r["p_true"], "eval_images": r["eval_images"], "split": split}


def render_reconstruct(res, ctx):
    rows = [[bg, _fmt(res["accuracy"].get(bg), True), _fmt(res["p_true"].get(bg))] for bg in res["accuracy"]]
    blocks = [("fig", res["figure"], "Each row: one object; per background, the input (with the predicted label) "
                                     f"and the DeconvNet reconstructions of {', '.join(res['layers'])}.")]
    if rows:
        blocks.append(("table", ["background", f"accuracy ({res['eval_images']} objects)", "mean P(true class)"],
                       rows))
    return blocks


def cmds_reconstruct(ctx, cfg):
    split = ctx.split(("val", "test"))
    return [f"zfscratch reconstruct --weights {_q(ctx.cmd(ctx.weights))} --data {_q(ctx.spec)} --split {split} "
            f"--layers 1-3 --images {cfg['images']} --eval-images {cfg['eval_images']} "
            f"--out {_q(ctx.cmd(os.path.join(ctx.dir('reconstruct'), 'reconstruct.png')))}{_backend_opt(ctx)}"]


# ============================================================================================ stage: occlusion
def _occlusion_indices(ds, n):
    """The first image of each of the first ``n`` classes (different classes make a better figure)."""
    labels = np.asarray(ds.labels() if callable(getattr(ds, "labels", None)) else ds.labels)
    out = []
    for c in np.unique(labels):
        out.append(int(np.nonzero(labels == c)[0][0]))
        if len(out) == n:
            break
    return sorted(out) or [0]


def stage_occlusion(ctx, cfg):
    from zfscratch.experiments.occlusion import run_occlusion
    net, meta = ctx.model()
    split, ds = ctx.test()
    patch = int(cfg["patch"])
    out = ctx.dir("occlusion")
    items = []
    for i in _occlusion_indices(ds, cfg["images"]):
        r = run_occlusion(net, meta, out, dataset=ds, index=i, patch=patch, stride=cfg["stride"],
                          progress=ctx.progress, name=f"occlusion_{i}")
        items.append({k: r.get(k) for k in ("label_name", "base_label_name", "base_prob_true", "min_prob_true",
                                            "min_prob_position_xy", "bbox", "min_inside_bbox", "layer",
                                            "map_index", "positions", "positions_per_s", "seconds",
                                            "figure", "json", "top_label_names")} | {"index": i})
    inside = [it["min_inside_bbox"] for it in items if it.get("min_inside_bbox") is not None]
    return {"split": split, "patch": patch, "stride": cfg["stride"], "images": items,
            "min_inside_fraction": (float(np.mean(inside)) if inside else None)}


def render_occlusion(res, ctx):
    rows = [[it["index"], it["label_name"], it["base_label_name"], _fmt(it["base_prob_true"]),
             _fmt(it["min_prob_true"]), "n/a" if it.get("min_inside_bbox") is None else
             ("yes" if it["min_inside_bbox"] else "no"), f"{it['positions']} ({it['positions_per_s']:.0f}/s)"]
            for it in res["images"]]
    blocks = [("table", ["image", "true class", "predicted", "P(true)", "lowest P(true) occluded",
                         "lowest inside the object", "positions"], rows),
              ("kv", [("occluder", f"{res['patch']}x{res['patch']} px, stride {res['stride']} px, filled with "
                                   "the training mean")])]
    for it in res["images"]:
        blocks.append(("fig", it["figure"], f"Image {it['index']} ({it['label_name']}): input, (b) projection of "
                                            f"{it['layer']} map {it['map_index']}, (a) its total activation, (c) "
                                            "P(true class) and (d) the most probable label, per occluder position."))
    return blocks


def cmds_occlusion(ctx, cfg):
    split = ctx.split(("test", "val"))
    cmds = []
    try:
        _, ds = ctx.test()
        idx = _occlusion_indices(ds, cfg["images"])
    except Exception:  # noqa: BLE001 - commands are informative
        idx = [0]
    for i in idx:
        cmds.append(f"zfscratch occlude --weights {_q(ctx.cmd(ctx.weights))} --data {_q(ctx.spec)} --split {split} "
                    f"--index {i} --patch {cfg['patch']} --stride {cfg['stride']} --name occlusion_{i} "
                    f"--out {_q(ctx.cmd(ctx.dir('occlusion')))}{_backend_opt(ctx)}")
    return cmds


# ============================================================================================ stage: invariance
def stage_invariance(ctx, cfg):
    from zfscratch.experiments.invariance import invariance
    net, meta = ctx.model()
    split, ds = ctx.test()
    r = invariance(net, meta, ds, ctx.dir("invariance"), n_images=cfg["images"],
                   eval_images=cfg["eval_images"], batch=64, progress=ctx.progress)
    r = _jsonable(r)
    summ = {}
    for kind, s in r["summary"].items():
        vals = r["values"][kind]
        acc = s.get("accuracy") or []
        summ[kind] = {"values": vals, "accuracy": acc, "mean_prob_true": s.get("mean_prob_true"),
                      **{k: v for k, v in s.items() if k.startswith("mean_dist_")}}
    return {"figure": r["figure"], "json": r["json"], "split": split, "summary": summ,
            "rotation": r.get("rotation"), "layers": r.get("layers")}


def render_invariance(res, ctx):
    rows = []
    for kind, s in res["summary"].items():
        acc = [a for a in (s.get("accuracy") or []) if a is not None]
        dists = {k: v for k, v in s.items() if k.startswith("mean_dist_")}
        dcells = []
        for k, v in sorted(dists.items()):
            vv = [x for x in v if x is not None]
            dcells.append(f"{k[len('mean_dist_'):]}: max {max(vv):.2f}" if vv else "n/a")
        vals = s["values"]
        rows.append([kind, f"{vals[0]:g} .. {vals[-1]:g} ({len(vals)} values)",
                     f"{min(acc):.0%} .. {max(acc):.0%}" if acc else "n/a", "; ".join(dcells)])
    blocks = [("fig", res["figure"], "Top rows: normalized feature distance to the untransformed image at layer 1 "
                                     "and at the penultimate layer, and P(true class), per image; bottom: the "
                                     "rotation summary."),
              ("table", ["transformation", "range", "accuracy over the sweep", "feature distance"], rows)]
    rot = res.get("rotation")
    if isinstance(rot, dict):
        blocks.append(("kv", [(k.replace("_", " "), _fmt(v) if not isinstance(v, (list, dict)) else
                               json.dumps(_jsonable(v))[:120]) for k, v in rot.items()]))
    return blocks


def cmds_invariance(ctx, cfg):
    split = ctx.split(("test", "val"))
    return [f"zfscratch invariance --weights {_q(ctx.cmd(ctx.weights))} --data {_q(ctx.spec)} --split {split} "
            f"--images {cfg['images']} --eval-images {cfg['eval_images']} "
            f"--out {_q(ctx.cmd(ctx.dir('invariance')))}{_backend_opt(ctx)}"]


# ============================================================================================ stage: correspondence
def stage_correspondence(ctx, cfg):
    from zfscratch.experiments.correspondence import correspondence
    net, meta = ctx.model()
    split, ds = ctx.test()
    r = correspondence(net, meta, ds, ctx.dir("correspondence"), class_name=cfg["class"],
                       n_images=cfg["images"], groups=cfg["groups"], batch=64, progress=ctx.progress)
    rows = []
    for row in r["rows"]:
        rows.append({"part": row["part"], "random": row["random"],
                     **{k: {"mean": v["mean"], "std": v["std"]} for k, v in row.items()
                        if isinstance(v, dict) and "mean" in v}})
    return {"figure": r["figure"], "json": r["json"], "rows": rows, "summary": r.get("summary"),
            "table_markdown": r.get("table_markdown"), "split": split, "class": cfg["class"]}


def render_correspondence(res, ctx):
    layers = []
    for row in res["rows"]:
        for k in row:
            if k not in ("part", "random") and k not in layers:
                layers.append(k)
    rows = [[(f"random (as large as {r['part']})" if r["random"] and r["part"] != "random" else
              "random" if r["random"] else r["part"])] +
            [f"{r[l]['mean']:.4f} ± {r[l]['std']:.4f}" if l in r else "n/a" for l in layers] for r in res["rows"]]
    return [("table", ["occluded part"] + [f"Δ {l} (normalized)" for l in layers], rows),
            ("fig", res["figure"], f"The occluders on the {res['class']} images: each part, and random discs of "
                                   "the same size.")]


def cmds_correspondence(ctx, cfg):
    split = ctx.split(("test", "val"))
    return [f"zfscratch correspondence --weights {_q(ctx.cmd(ctx.weights))} --data {_q(ctx.spec)} --split {split} "
            f"--class {cfg['class']} --images {cfg['images']} --groups {cfg['groups']} "
            f"--out {_q(ctx.cmd(ctx.dir('correspondence')))}{_backend_opt(ctx)}"]


# ============================================================================================ stage: layerwise
def stage_layerwise(ctx, cfg):
    from zfscratch.experiments.layerwise import layerwise
    net, meta = ctx.model()
    split, test = ctx.test()
    train = ctx.dataset("train")
    r = layerwise(net, meta, train, test, ctx.dir("layerwise"), epochs=cfg["epochs"],
                  n_train=min(cfg["train_images"], len(train)), n_test=min(cfg["test_images"], len(test)),
                  batch=64, progress=ctx.progress)
    return {"figure": r["figure"], "json": r["json"], "rows": r["rows"], "net_accuracy": r["net_accuracy"],
            "split": split, "train_images": min(cfg["train_images"], len(train)),
            "test_images": min(cfg["test_images"], len(test))}


def render_layerwise(res, ctx):
    rows = [[r["layer"], r["dim"], _fmt(r["train_accuracy"], True), _fmt(r["test_accuracy"], True)]
            for r in res["rows"]]
    rows.append(["the network itself", "", "", _fmt(res["net_accuracy"], True)])
    return [("table", ["features of", "dimension", "train accuracy", f"{res['split']} accuracy"], rows),
            ("fig", res["figure"], f"Linear softmax classifiers trained on {res['train_images']} images, scored "
                                   f"on {res['test_images']} held-out images.")]


def cmds_layerwise(ctx, cfg):
    split = ctx.split(("test", "val"))
    return [f"zfscratch layerwise --weights {_q(ctx.cmd(ctx.weights))} --data {_q(ctx.spec)} --test-split {split} "
            f"--train-images {cfg['train_images']} --test-images {cfg['test_images']} --epochs {cfg['epochs']} "
            f"--out {_q(ctx.cmd(ctx.dir('layerwise')))}{_backend_opt(ctx)}"]


# ============================================================================================ stage: architecture
def stage_architecture(ctx, cfg):
    from zfscratch.experiments.architecture import compare
    from zfscratch.io import load_weights
    from zfscratch.train import train_model
    out = ctx.dir("architecture")
    tr = ctx.results["train"]
    r = train_model(ctx.spec, os.path.join(out, "alexnet_like"), model="alexnet_like", epochs=cfg["epochs"],
                    batch=cfg["batch"], lr=cfg["lr"], backend=ctx.backend.name, snapshots=(), seed=cfg["seed"],
                    quiet=not ctx.progress, overwrite=True, input_size=cfg["size"],
                    model_config={"dropout": cfg["dropout"]})
    net, meta = ctx.model()
    alex, ameta = load_weights(r["weights"], backend=ctx.backend)
    split, val = ctx.heldout()
    models = {"zfnet_small": (net, meta, tr.get("val_acc")), "alexnet_like": (alex, ameta, r.get("val_acc"))}
    c = compare(models, val, out, probe_images=min(cfg["probe"], len(val)), batch=64, progress=ctx.progress)
    return {"figure": c["figure"], "json": c["json"], "table_markdown": c["table_markdown"],
            "models": {k: {kk: v.get(kk) for kk in ("arch", "conv1", "dead_fraction", "never_active_fraction",
                                                     "hf_energy", "val_accuracy", "filter_figure")}
                       for k, v in c["models"].items()},
            "alexnet_weights": r["weights"], "alexnet_elapsed_s": r.get("elapsed_s"),
            "dead_definition": c.get("dead_definition"), "hf_definition": c.get("hf_definition")}


def render_architecture(res, ctx):
    rows = [[k, v["conv1"], _fmt(v["dead_fraction"], True), _fmt(v["never_active_fraction"], True),
             _fmt(v["hf_energy"]), _fmt(v["val_accuracy"], True)] for k, v in res["models"].items()]
    blocks = [("table", ["model", "conv1", "dead filters", "never-active maps", "HF energy", "val. accuracy"], rows),
              ("fig", res["figure"], "Per model: conv1 filters, layer-2 projections and the statistics.")]
    for k, v in res["models"].items():
        if v.get("filter_figure"):
            blocks.append(("fig", v["filter_figure"], f"{k}: conv1 filters ({v['conv1']})."))
    blocks.append(("kv", [("dead filter", res.get("dead_definition") or ""),
                          ("HF energy", res.get("hf_definition") or ""),
                          ("alexnet_like training", f"{_fmt(res.get('alexnet_elapsed_s'))} s, same data, epochs, "
                                                    "batch, learning rate and seed as the main model")]))
    return blocks


def cmds_architecture(ctx, cfg):
    out = ctx.cmd(ctx.dir("architecture"))
    split = ctx.split(("val", "test"))
    return [f"zfscratch train --data {_q(ctx.spec)} --out {out}/alexnet_like --model alexnet_like "
            f"--epochs {cfg['epochs']} --batch {cfg['batch']} --lr {cfg['lr']} --input-size {cfg['size']} "
            f"--seed {cfg['seed']} --dropout {cfg['dropout']} --snapshots ''{_backend_opt(ctx)} --overwrite",
            f"zfscratch architecture --weights {_q(ctx.cmd(ctx.weights))} {out}/alexnet_like/weights.npz "
            f"--data {_q(ctx.spec)} --out {out}{_backend_opt(ctx)}  # held-out split: {split}"]


# ============================================================================================ the job
def data_spec(data, profile):
    """The data spec of a run: ``--data`` as given (folder and synthetic images at the profile's input
    size unless the spec says otherwise), or the embedded synthetic data at the profile's size and counts."""
    p = PROFILES[profile]
    if not data:
        extra = "".join(f",{k}={p[k]}" for k in ("classes", "max_angle") if p.get(k) is not None)
        return f"synthetic:n={p['n_train']},n_val={p['n_val']},n_test={p['n_test']},size={p['size']}{extra}"
    from zfscratch.data import parse_spec
    kind, _, opts = parse_spec(data)
    if kind in ("folder", "synthetic") and "size" not in opts:
        sep = "," if ":" in data else ":"
        return f"{data}{sep}size={p['size']}"
    return data


def build_stages(profile="default"):
    """The stages of ``zfscratch run`` for a profile (see :data:`PROFILES`), in order."""
    p = PROFILES[profile]
    budget = dict(epochs=p["epochs"], batch=p["batch"], lr=p["lr"], size=p["size"], seed=0,
                  dropout=p.get("dropout", 0.5))
    S = Stage
    return [
        S("data", "Data", stage_data, (), {}, "section 3 (data)",
          "The images everything below is computed on. The embedded synthetic data renders ten object classes "
          "with parts at known positions, at random position, scale, rotation and colour.",
          cmds_data, render_data),
        S("train", "Training", stage_train, ("data",), dict(budget, snapshots=list(p["snapshots"])),
          "section 3 (training)",
          "zfnet_small (ZFNet's block structure: 7x7 stride-2 conv1, overlapping 3x3 stride-2 pools, LCN) trained "
          "with SGD, momentum 0.9, weight decay and filter renormalization. Look for a falling training "
          "loss and validation error; snapshots are kept for the evolution figure.",
          cmds_train, render_train),
        S("evaluate", "Evaluation", stage_evaluate, ("train",), {}, "Table 2 (error rates)",
          "Top-1 and top-5 error of the trained model on held-out images, per class, and the confusion matrix. "
          "Classes that share shapes are the ones to confuse.",
          cmds_evaluate, render_evaluate),
        S("filters", "First-layer filters", stage_filters, ("train",), {}, "Fig 5/6 (layer-1 filters)",
          "The conv1 filters, each normalized on its own (grey = 0). A trained first layer shows oriented edges "
          "and colour blobs; dead (flat) or noisy filters point at a too high learning rate.",
          cmds_filters, render_filters),
        S("topk", "Top-9 activations per map, projected (layers 1-5)", stage_topk, ("train",),
          dict(images=p["topk_images"], maps=p["topk_maps"]), "Fig 2",
          "For the strongest maps of each layer, the nine held-out images that excite the map most, their "
          "DeconvNet projections and image patches. Look for growing invariance and complexity from layer 1 "
          "(edges, colours) to layer 5 (object parts, whole objects).",
          cmds_topk, render_topk),
        S("evolution", "Feature evolution during training", stage_evolution, ("train",),
          dict(images=p["evolution_images"], maps_per_layer=p["evolution_maps"]), "Fig 4",
          "The strongest projection of a few maps at each saved epoch. Lower layers settle within a few epochs; "
          "upper layers keep changing until late in training.",
          cmds_evolution, render_evolution),
        S("reconstruct", "Reconstructions with and without a coloured background", stage_reconstruct, ("train",),
          dict(images=p["reconstruct_images"], eval_images=p["reconstruct_eval"]), "section 2.1 / seed",
          "The same objects rendered on a plain and on a coloured, cluttered background, and what layers 1-3 keep "
          "of them (all activations projected). Look at how much of the background survives each layer and at "
          "the accuracy drop on clutter.",
          cmds_reconstruct, render_reconstruct),
        S("occlusion", "Occlusion sensitivity", stage_occlusion, ("train",),
          dict(images=p["occlusion_images"], stride=p["occlusion_stride"], patch=max(2, round(p["size"] / 4))),
          "Fig 7",
          "A grey square slid over the image. If the model uses the object, P(true class) drops when the object "
          "(not the background) is covered, and the strongest layer-5 map's activation drops over its part.",
          cmds_occlusion, render_occlusion),
        S("invariance", "Invariance to translation, scale and rotation", stage_invariance, ("train",),
          dict(images=p["invariance_images"], eval_images=p["invariance_eval"]), "Fig 5",
          "Feature distance to the untransformed image at layer 1 and the penultimate layer, and P(true class), as "
          "the image is shifted, scaled and rotated. Layer 1 changes a lot, the penultimate layer much less; "
          "rotation beyond the training range hurts the classifier.",
          cmds_invariance, render_invariance),
        S("correspondence", "Correspondence of object parts", stage_correspondence, ("train",),
          dict(images=p["correspondence_images"], groups=p["correspondence_groups"], **{"class": "face"}),
          "Table 1",
          "Occluding the same part (e.g. the left eye) in several images of a class changes the layer-5 and "
          "layer-7 features in a more consistent way (lower Δ) than occluding random regions, if the net "
          "implicitly matches parts across images.",
          cmds_correspondence, render_correspondence, synthetic_only=True),
        S("layerwise", "Discriminative power of each layer", stage_layerwise, ("train",),
          dict(train_images=p["layerwise_train"], test_images=p["layerwise_test"], epochs=p["layerwise_epochs"]),
          "Table 7",
          "A linear softmax classifier trained on the frozen features of each layer. Accuracy should rise with "
          "depth: higher layers carry more class information.",
          cmds_layerwise, render_layerwise),
        S("architecture", "Architecture: 7x7 stride 2 vs 11x11 stride 4 first layer", stage_architecture,
          ("train",), dict(budget, probe=p["arch_probe"]), "Fig 6",
          "An AlexNet-like twin (11x11 stride-4 conv1) trained with the same budget. The paper's fix (smaller "
          "filters, smaller stride) gives fewer dead filters, less aliasing (high-frequency energy) and better "
          "accuracy.",
          cmds_architecture, render_architecture),
    ]


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
        if m.get("format") != MANIFEST_FORMAT or not isinstance(m.get("stages"), dict):
            raise ValueError("not a run manifest")
        return m
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


def run_pipeline(out="report", quick=False, backend=None, data=None, force=False, stages=None, progress=True,
                 log=None, command=None):
    """Run (or resume) the main job and write ``OUT/index.html``.

    Parameters
    ----------
    out : output directory (stage folders, ``manifest.json``, ``index.html``)
    quick : the ``quick`` profile (about a minute) instead of ``default``
    backend : backend name or Backend (default: ``$ZFSCRATCH_BACKEND`` or auto)
    data : data spec (default: the embedded synthetic data)
    force : recompute the stages named in ``stages`` (every stage when ``stages`` is None)
    stages : names of the stages to run (their inputs are added, and reused when finished); default all
    progress : progress bars of the stages
    log : callable for the per-stage progress lines (default: print to stdout)
    command : the command line shown in the report (default: reconstructed from the arguments)

    Returns
    -------
    the manifest dict (``stages``: name -> status, hash, seconds, result, ...), plus ``report`` (the
    HTML path) and ``failed`` (names of failed stages).
    """
    from zfscratch.backend import BackendError, get_backend
    from zfscratch.report import write_report
    log = log or (lambda msg: print(msg, flush=True))
    profile = "quick" if quick else "default"
    try:
        be = get_backend(backend)
    except BackendError as e:
        raise UserError(f"--backend: {e}") from None
    spec = data_spec(data, profile)
    out = os.path.abspath(os.fspath(out))
    from zfscratch.train import check_writable_dir
    check_writable_dir(out)
    all_stages = build_stages(profile)
    names = [s.name for s in all_stages]
    wanted = set(names)
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
    forced = set(names) if force and not stages else (set(stages) if force else set())
    ctx = Context(out, spec, be, profile, progress=progress, log=log)
    manifest = load_manifest(out)
    if command is None:
        command = "zfscratch run" + (f" --out {_q(os.path.relpath(out))}" if os.path.relpath(out) != "report" else "") \
            + (" --quick" if quick else "") + (f" --backend {be.name}" if backend else "") \
            + (f" --data {_q(data)}" if data else "") + (" --force" if force else "")
    manifest.update(format=MANIFEST_FORMAT, version=PIPELINE_VERSION, profile=profile, spec=spec,
                    command=command, machine=machine_info(be), budget=PROFILES[profile],
                    budget_note=BUDGET_NOTE if not data else None)
    manifest.setdefault("stages", {})
    last = manifest["last_run"] = {}
    tokens = {n: e.get("token") for n, e in manifest["stages"].items()}
    failed, t_all, c_all = [], time.perf_counter(), time.process_time()
    run_list = [s for s in all_stages if s.name in wanted]
    log(f"zfscratch run: {len(run_list)} stages, profile {profile}, data {spec}, backend {be.name}, output {out}")
    for k, st in enumerate(run_list, 1):
        head = f"[{k}/{len(run_list)}] {st.name:<15}"
        bad_inputs = [i for i in st.inputs if i in failed or (i not in wanted and
                                                               manifest["stages"].get(i, {}).get("status") != "done")]
        h = stage_hash(st, spec, tokens)
        entry = manifest["stages"].get(st.name)
        if bad_inputs:
            manifest["stages"][st.name] = {"hash": None, "status": "not run", "token": None,
                                           "error": f"needs {', '.join(bad_inputs)}, which did not finish"}
            failed.append(st.name)
            last[st.name] = "not run"
            log(f"{head} not run: needs {', '.join(bad_inputs)}")
            save_manifest(out, manifest)
            continue
        if st.name not in forced and _reusable(entry, h, ctx):
            ctx.results[st.name] = entry.get("result") or {}
            last[st.name] = "reused"
            log(f"{head} reused (computed {entry.get('finished', '?')} in {entry.get('seconds', 0):.1f} s)")
            continue
        if st.synthetic_only and not ctx.synthetic:
            res = {"skipped": f"needs part landmarks, which only the synthetic data has (data: {spec})"}
            entry = {"hash": h, "status": "skipped", "token": h, "result": res, "files": [], "seconds": 0.0,
                     "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
            manifest["stages"][st.name] = entry
            tokens[st.name] = entry["token"]
            ctx.results[st.name] = res
            last[st.name] = "skipped"
            log(f"{head} skipped: {res['skipped']}")
            save_manifest(out, manifest)
            continue
        log(f"{head} {st.title} ...")
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            res = st.func(ctx, dict(st.config))
        except KeyboardInterrupt:
            save_manifest(out, manifest)
            raise
        except Exception as e:  # noqa: BLE001 - recorded, the job goes on
            if st.name == "data" and isinstance(e, UserError):
                raise
            dt = time.perf_counter() - t0
            msg = f"{type(e).__name__}: {e}"
            manifest["stages"][st.name] = {"hash": None, "status": "failed", "token": None, "error": msg,
                                           "traceback": traceback.format_exc(limit=6), "seconds": dt,
                                           "started": started, "backend": be.name}
            tokens[st.name] = None
            failed.append(st.name)
            last[st.name] = "failed"
            log(f"{head} FAILED after {dt:.1f} s: {msg}")
            save_manifest(out, manifest)
            continue
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        files = []
        res = _relativize(_jsonable(res), ctx, files)
        entry = {"hash": h, "status": "done", "token": uuid.uuid4().hex[:12], "result": res,
                 "files": sorted(set(files)), "seconds": dt, "cpu_seconds": cpu, "started": started,
                 "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "backend": be.name,
                 "config": _jsonable(st.config)}
        manifest["stages"][st.name] = entry
        tokens[st.name] = entry["token"]
        ctx.results[st.name] = res
        last[st.name] = "computed"
        log(f"{head} done in {dt:.1f} s")
        save_manifest(out, manifest)
    manifest["total_seconds"] = time.perf_counter() - t_all
    manifest["total_cpu_seconds"] = time.process_time() - c_all
    manifest["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save_manifest(out, manifest)
    html = write_report(out, manifest, all_stages, ctx)
    log(f"report: {html}" + (f"  ({len(failed)} stage(s) failed: {', '.join(failed)})" if failed else ""))
    manifest["report"] = html
    manifest["failed"] = failed
    return manifest
