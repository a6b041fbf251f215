"""Report section "Occlusion sensitivity": its stage, report renderer and stand-alone commands."""
from __future__ import annotations

import numpy as np

from zfscratch.pipeline.runner import Stage
from zfscratch.pipeline.text import _backend_opt, _fmt, _q


def _occlusion_indices(ds, n, class_name=None):
    """The first ``n`` images of ``class_name`` when the data has that class (the paper's Fig 7 covers a
    dog's face), else the first image of each of the first ``n`` classes (a more varied figure)."""
    labels = np.asarray(ds.labels() if callable(getattr(ds, "labels", None)) else ds.labels)
    classes = [str(c) for c in (getattr(ds, "classes", None) or [])]
    if class_name and class_name in classes:
        idx = np.nonzero(labels == classes.index(class_name))[0][:n]
        if idx.size:
            return [int(i) for i in idx]
    out = []
    for c in np.unique(labels):
        out.append(int(np.nonzero(labels == c)[0][0]))
        if len(out) == n:
            break
    return sorted(out) or [0]


def _measure_indices(ds, n):
    """About ``n`` test images for the inside-the-object measurement: the first ``ceil(n / C)`` of each
    of the ``C`` classes (every class counts the same)."""
    labels = np.asarray(ds.labels)
    classes = np.unique(labels)
    per = -(-int(n) // max(1, classes.size))
    return [int(i) for c in classes for i in np.nonzero(labels == c)[0][:per]]


#: an occluder "matters" for an image when some position brings P(true) below this fraction of its
#: unoccluded value; where none does, the position of the minimum is noise and is not counted
DROP_FRACTION = 0.5


def _dropped(min_prob, base_prob):
    """Whether an occluder position brought P(true) below :data:`DROP_FRACTION` of its unoccluded value."""
    return float(min_prob) < DROP_FRACTION * float(base_prob)


def measure_inside(net, meta, ds, n, patch, stride, progress=False):
    """Where occluding hurts most, over many test images: is the lowest P(true class) inside the object?

    Parameters
    ----------
    net, meta : the model and its weights' metadata (for the preprocessing)
    ds : dataset whose samples carry the object's ``bbox`` (the synthetic data; others return None)
    n : about how many images (see :func:`_measure_indices`)
    patch, stride : occluder side and step in pixels, as for the figures

    Returns
    -------
    ``{"images", "dropped", "inside", "fraction", "per_class": {name: [inside, dropped, images]}}``:
    ``dropped`` counts the images where some occluder position brings P(true) below
    :data:`DROP_FRACTION` of its unoccluded value, ``inside`` those of them whose lowest P(true) has the
    occluder's centre in the object's box, ``fraction = inside / dropped``. None when the data has no object
    boxes or they do not match the model's input size (resized photos).
    """
    from zfscratch.experiments import _shared as S
    from zfscratch.experiments.occlusion import (dataset_sample, inside_bbox, min_position, occluder_fill,
                                                 occlusion_maps)
    from zfscratch.preprocess import Preprocess
    if n <= 0 or not hasattr(ds, "samples"):
        return None
    size = S.input_size(net)
    pre = Preprocess.from_meta(meta)
    fill = occluder_fill(pre, size, "mean", 3)
    names = [str(c) for c in (getattr(ds, "classes", None) or [])]
    per_class = {}
    indices = _measure_indices(ds, n)
    bar = S.progress_bar(len(indices), f"occlusion minimum inside the object, {len(indices)} images", progress,
                         unit="img")
    try:
        for i in indices:
            image, label, bbox = dataset_sample(ds, i, None, size)
            if bbox is None:
                return None
            r = occlusion_maps(net, pre(image[None])[0], label, patch=patch, stride=stride, fill=fill)
            name = names[label] if label < len(names) else str(label)
            tally = per_class.setdefault(name, [0, 0, 0])
            dropped = _dropped(r["prob_true"].min(), r["base_prob_true"])
            tally[0] += int(dropped and inside_bbox(min_position(r), bbox))
            tally[1] += int(dropped)
            tally[2] += 1
            bar.update(1)
    finally:
        bar.close()
    inside, dropped, total = (sum(v[k] for v in per_class.values()) for k in range(3))
    return {"images": total, "dropped": dropped, "inside": inside,
            "fraction": inside / dropped if dropped else None, "per_class": per_class}


def stage_occlusion(ctx, cfg):
    from zfscratch.experiments import _shared as S
    from zfscratch.experiments.occlusion import occluder_positions, run_occlusion
    net, meta = ctx.model()
    split, ds = ctx.test()
    patch = int(cfg["patch"])
    out = ctx.dir("occlusion")
    items = []
    indices = _occlusion_indices(ds, cfg["images"], cfg.get("class"))
    per = occluder_positions(S.input_size(net), patch, cfg["stride"]).size ** 2
    bar = S.progress_bar(per * len(indices), f"occlusion of {len(indices)} images", ctx.progress, unit="pos")
    try:  # incremental engine (the default): only what each occluder changes is recomputed
        for i in indices:
            r = run_occlusion(net, meta, out, dataset=ds, index=i, patch=patch, stride=cfg["stride"],
                              progress=False, bar=bar, name=f"occlusion_{i}")
            items.append({k: r.get(k) for k in ("label_name", "base_label_name", "base_prob_true", "min_prob_true",
                                                "min_prob_position_xy", "bbox", "min_inside_bbox", "layer",
                                                "map_index", "positions", "positions_per_s", "seconds",
                                                "figure", "json", "top_label_names", "incremental")} | {"index": i})
    finally:
        bar.close()
    inside = [it["min_inside_bbox"] for it in items if it.get("min_inside_bbox") is not None]
    measured = measure_inside(net, meta, ds, cfg.get("measure", 0), patch, cfg["stride"], ctx.progress)
    return {"split": split, "patch": patch, "stride": cfg["stride"], "images": items,
            "min_inside_fraction": (float(np.mean(inside)) if inside else None), "measured": measured}


def _inside_text(it):
    """The "lowest inside the object" cell of one image, by the rule of :func:`measure_inside`."""
    if it.get("min_inside_bbox") is None:
        return "n/a"
    if not _dropped(it["min_prob_true"], it["base_prob_true"]):
        return f"no drop (P(true) stays above {DROP_FRACTION:g} of its value)"
    return "yes" if it["min_inside_bbox"] else "no"


def render_occlusion(res, ctx):
    rows = [[it["index"], it["label_name"], it["base_label_name"], _fmt(it["base_prob_true"]),
             _fmt(it["min_prob_true"]), _inside_text(it), f"{it['positions']} ({it['positions_per_s']:.0f}/s)"]
            for it in res["images"]]
    blocks = [("table", ["image", "true class", "predicted", "P(true)", "lowest P(true) occluded",
                         "lowest inside the object", "positions"], rows),
              ("kv", [("occluder", f"{res['patch']}x{res['patch']} px, stride {res['stride']} px, filled with "
                                   "the training mean"),
                      ("computation", "incremental: per occluder position only the part of each conv / ReLU / "
                                      "pool / LRN output that the occluder can change is recomputed (same "
                                      "numbers as full forward passes, to float rounding)"
                       if all(it.get("incremental") for it in res["images"]) else "full forward passes")])]
    m = res.get("measured")
    if m and "dropped" in m:  # (a result recorded before the drop rule has no such count: not shown)
        frac = "" if m["fraction"] is None else f" ({m['fraction']:.0%})"
        blocks[1][1].insert(0, (
            "lowest P(true) inside the object",
            f"{m['inside']}/{m['dropped']}{frac} of the {m['dropped']} test images where some occluder position "
            f"brings P(true) below {DROP_FRACTION:g} of its unoccluded value (the occluder's centre inside the "
            f"object's box); {m['images'] - m['dropped']} of {m['images']} images showed no such drop. Per class "
            "(inside / with a drop / images): "
            + ", ".join(f"{k} {a}/{d}/{b}" for k, (a, d, b) in m["per_class"].items())))
    for it in res["images"]:
        blocks.append(("fig", it["figure"], f"Image {it['index']} ({it['label_name']}): (a) input with the occluder "
                                            f"where P(true) is lowest, (b) total activation of {it['layer']} map "
                                            f"{it['map_index']}, (c) its projection, (d) P(true class) and (e) the "
                                            "most probable label, per occluder position (paper Fig 7)."))
    return blocks


def cmds_occlusion(ctx, cfg):
    split = ctx.split(("test", "val"))
    cmds = []
    try:
        _, ds = ctx.test()
        idx = _occlusion_indices(ds, cfg["images"], cfg.get("class"))
    except Exception:  # noqa: BLE001 - commands are informative
        idx = [0]
    cmds.append(f"zfscratch occlude --weights {_q(ctx.cmd(ctx.weights))} --data {_q(ctx.spec)} --split {split} "
                f"--indices {','.join(str(i) for i in idx)} --patch {cfg['patch']} --stride {cfg['stride']} "
                f"--name occlusion --out {_q(ctx.cmd(ctx.dir('occlusion')))}{_backend_opt(ctx)}")
    return cmds


def section(p, budget):
    """This section's :class:`~zfscratch.pipeline.runner.Stage` for the profile settings ``p``
    (:data:`zfscratch.pipeline.profiles.PROFILES`) and the shared training ``budget``."""
    return Stage("occlusion", "Occlusion sensitivity", stage_occlusion, ("train",),
        dict(images=p["occlusion_images"], stride=p["occlusion_stride"],
             patch=max(2, round(p["size"] * p.get("occlusion_patch", 1 / 4))), measure=p.get("occlusion_measure", 0),
             **({"class": p["occlusion_class"]} if p.get("occlusion_class") else {})),
        "Fig 7",
        "A grey square slid over the image. If the model uses the object, P(true class) drops when the object "
        "(not the background) is covered, and the strongest layer-5 map's activation drops over its part.",
        cmds_occlusion, render_occlusion)
