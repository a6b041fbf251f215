"""Correspondence analysis (paper Table 1, section 5.1).

Does the network implicitly establish correspondence between object parts across images? For ``n``
images of one class we occlude the same part in every image and look at the change of the feature
vector at layer ``l``:

    eps_i^l = x_i^l - x~_i^l          (original minus occluded features of image i)
    Delta_l = sum_{i != j} H(sign(eps_i^l), sign(eps_j^l))

with ``H`` the Hamming distance. Lower ``Delta`` = the occlusion changes the representation in the
same way in every image = more consistent correspondence. The same is done with occluders of the
same size at random positions (one random position per image) as the baseline.

Conventions (exact)
-------------------
* ``sign`` takes three values, -1, 0 and +1; two signs differ whenever they are not equal (a 0 and a
  +1 differ). A change ``|eps| <= zero_tol * max|x_i^l|`` counts as 0 (default ``zero_tol = 1e-6``):
  features outside the occluder's reach are mathematically unchanged, and this keeps last-bit
  rounding noise of the convolutions from counting as a sign.
* The sum runs over ordered pairs ``i != j`` (each unordered pair counts twice, as the paper's
  formula does). It is computed per feature from the counts of the three signs:
  ``sum_{i != j} [s_i != s_j] = n^2 - n_-^2 - n_0^2 - n_+^2 = 2 (n_- n_0 + n_- n_+ + n_0 n_+)``
  (:func:`delta`; :func:`delta_loop` is the pairwise definition, used as the test oracle).
* Reported numbers: ``Delta`` itself and ``delta_norm = Delta / (n (n-1) D)``, the mean fraction of
  the ``D`` feature signs that differ between two images (comparable between layers of different
  size); the table shows ``delta_norm`` mean +/- std over the groups of ``n`` images.
* Layers: layer 5 = ``pool5`` (the pooled conv5 output fed to the classifier), layer 7 = ``relu7``.
* Part occluders: the disc of radius ``part_radii[part]`` (+ ``margin``) around the part's landmark
  (``dataset.part_mask(sample, part)``), filled with the training mean (0 after mean subtraction).
  Random occluders: a disc of the same radius at a uniformly random centre that keeps the disc inside
  the image, drawn independently for every image (seeded).
"""
from __future__ import annotations

import os

import numpy as np

from zfscratch.errors import UserError
from zfscratch.experiments import _shared as S
from zfscratch.util.files import safe_join, safe_name


# ----------------------------------------------------------------------------- Hamming sums
def signs(eps, zero_tol=0.0, scale=None):
    """Three-valued signs (int8) of ``eps (n, D)``; ``|eps| <= zero_tol * scale`` (per row) -> 0."""
    eps = np.asarray(eps)
    s = np.sign(eps).astype(np.int8)
    if zero_tol:
        sc = np.abs(eps).max(axis=1, keepdims=True) if scale is None else np.asarray(scale).reshape(-1, 1)
        s[np.abs(eps) <= zero_tol * sc] = 0
    return s


def delta(s):
    """``sum_{i != j} Hamming(s_i, s_j)`` over ordered pairs for sign rows ``s (n, D)`` in {-1, 0, 1}.

    Vectorized with per-feature sign counts: ``sum_f 2 (n_- n_0 + n_- n_+ + n_0 n_+)``. Returns an int.
    """
    s = np.asarray(s)
    n = s.shape[0]
    npos = (s > 0).sum(0).astype(np.int64)
    nneg = (s < 0).sum(0).astype(np.int64)
    nz = n - npos - nneg
    return int(2 * (nneg * nz + nneg * npos + nz * npos).sum())


def delta_loop(s):
    """The definition, pair by pair (test oracle for :func:`delta`)."""
    s = np.asarray(s)
    n = s.shape[0]
    return int(sum(int(np.count_nonzero(s[i] != s[j])) for i in range(n) for j in range(n) if i != j))


# ----------------------------------------------------------------------------- masks
def disc_mask(size, cx, cy, r):
    """Boolean (size, size) disc: pixels whose centre is within ``r`` of ``(cx, cy)``."""
    yy, xx = np.mgrid[0:size, 0:size]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r


def random_disc(size, r, rng):
    """A disc of radius ``r`` at a uniformly random centre keeping it inside the image."""
    lo, hi = min(r, size / 2.0), max(size - r, size / 2.0)
    cx, cy = rng.uniform(lo, hi), rng.uniform(lo, hi)
    return disc_mask(size, cx, cy, r), (float(cx), float(cy))


def _default_class(dataset):
    classes = list(getattr(dataset, "classes", []))
    if "face" in classes:
        return "face"
    for c in classes:
        if len(dataset.parts(c)) >= 3:
            return c
    raise UserError("correspondence: no class with at least 3 parts in this dataset")


def class_indices(dataset, label, count):
    """The first ``count`` dataset indices whose label is ``label``."""
    labels = np.asarray(dataset.labels) if hasattr(dataset, "labels") else None
    if labels is None:
        labels = np.concatenate([dataset.get_batch(range(s, e))[1] for s, e in S.batched(len(dataset), 512)])
    idx = np.nonzero(labels == label)[0][:count]
    return idx


def _check_dataset(net, meta, dataset):
    """Raise UserError unless ``dataset`` has part landmarks and images at the model's input size.

    Returns ``(pre, size)``: the model's preprocessing and its input side.
    """
    for attr in ("parts", "part_mask", "samples"):
        if not hasattr(dataset, attr):
            raise UserError("correspondence needs a dataset with part landmarks (the synthetic dataset)")
    pre = S.get_preprocess(meta)
    size = S.input_size(net)
    # the occluder masks are drawn in dataset pixels and applied to the network input: they must agree
    if int(getattr(dataset, "size", size)) != size or pre.resize != size:
        raise UserError(f"correspondence: images must be {size}x{size} (the model's input size); the "
                        f"dataset has {getattr(dataset, 'size', '?')}")
    return pre, size


def _class_and_parts(dataset, class_name, parts):
    """Validated ``(class_name, label, parts)``: the class (default :func:`_default_class`), its label
    index and the part names to occlude (default: every part of the class)."""
    class_name = class_name or _default_class(dataset)
    classes = list(dataset.classes)
    if class_name not in classes:
        raise UserError(f"--class {class_name!r}: not a class of the dataset ({', '.join(classes)})")
    label = classes.index(class_name)
    all_parts = list(dataset.parts(class_name))
    parts = list(parts or all_parts)
    bad = [p for p in parts if p not in all_parts]
    if bad:
        raise UserError(f"--parts: {', '.join(bad)} not parts of {class_name} ({', '.join(all_parts)})")
    return class_name, label, parts


def _group_indices(dataset, label, class_name, n_images, groups):
    """The ``n_images * groups`` dataset indices of class ``label`` (group ``g`` is the ``g``-th run
    of ``n_images``), as an int array; UserError when there are too few."""
    if n_images < 2 or groups < 1:
        raise UserError("correspondence: need --images >= 2 and --groups >= 1")
    idx = class_indices(dataset, label, n_images * groups)
    if len(idx) < n_images * groups:
        raise UserError(f"correspondence: the dataset has only {len(idx)} images of {class_name}; "
                        f"need {n_images * groups} (--images x --groups)")
    return idx


def _occluder_variants(dataset, samples, parts, size, margin, rng):
    """For each part, its occluder in every image and a random disc of the same radius.

    Returns
    -------
    list of ``(part, is_random, masks)`` with ``masks`` bool (N, size, size), N = ``len(samples)``;
    per part the part entry comes first, then the random one. ``rng`` is drawn part by part, image
    by image (the order fixes the random positions for a seed).
    """
    variants = []
    for p in parts:
        pm, rm = [], []
        for s in samples:
            pm.append(dataset.part_mask(s, p, margin=margin))
            rm.append(random_disc(size, s.part_radii[p] + margin, rng)[0])
        variants.append((p, False, np.stack(pm)))
        variants.append((p, True, np.stack(rm)))
    return variants


def _flat_features(net, xs, layers, batch, bar):
    """Flattened outputs of ``layers`` for network inputs ``xs (N, C, H, W)``: {layer: (N, D)}.

    Runs in batches of ``batch`` images and advances ``bar`` by the images done.
    """
    out = {l: [] for l in layers}
    for s_, e_ in S.batched(len(xs), batch):
        o = S.forward_layers(net, xs[s_:e_], layers, logits=False)
        for l in layers:
            out[l].append(o[l].reshape(e_ - s_, -1))
        bar.update(e_ - s_)
    return {l: np.concatenate(v) for l, v in out.items()}


def _group_deltas(base, occ, n_images, groups, zero_tol):
    """``Delta`` of one layer for each group of ``n_images`` consecutive images.

    Parameters
    ----------
    base, occ : (n_images * groups, D) features of the original and the occluded images
    zero_tol : changes ``|eps| <= zero_tol * max|x_i|`` count as sign 0 (module docstring)

    Returns
    -------
    (normalized, raw): lists of ``groups`` floats ``Delta / (n (n-1) D)`` and ints ``Delta``.
    """
    vals, raw = [], []
    for g in range(groups):
        sl = slice(g * n_images, (g + 1) * n_images)
        scale = np.abs(base[sl]).max(axis=1)
        # eps in float64: a small change of a large feature is not rounded away (or to zero)
        sg = signs(base[sl].astype(np.float64) - occ[sl].astype(np.float64), zero_tol, scale)
        d = delta(sg)
        raw.append(d)
        vals.append(d / (n_images * (n_images - 1) * sg.shape[1]))
    return vals, raw


def _variant_row(part, is_random, masks, base, occ, layers, n_images, groups, zero_tol):
    """One row of results: the occluder's ``Delta`` statistics per layer (``base``, ``occ``: {layer:
    (N, D)} features of the original and occluded images; ``masks`` bool (N, H, W))."""
    row = {"part": part, "random": is_random, "occluded_fraction": float(masks.mean())}
    for l in layers:
        vals, raw = _group_deltas(base[l], occ[l], n_images, groups, zero_tol)
        row[l] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "values": vals,
                  "delta_raw": raw}
    return row


def _sweep_variants(net, x, variants, layers, n_images, groups, zero_tol, batch, progress):
    """Features of the originals ``x (N, C, H, W)`` and of every occluded variant, reduced to one
    :func:`_variant_row` per variant (in the order of ``variants``)."""
    bar = S.progress_bar(len(x) * (1 + len(variants)), "correspondence", progress)
    try:
        base = _flat_features(net, x, layers, batch, bar)
        results = []
        for p, is_rand, masks in variants:
            xo = x.copy()
            # 0 = the training mean after mean subtraction: the occluder's fill
            xo[np.broadcast_to(masks[:, None], xo.shape)] = 0.0
            occ = _flat_features(net, xo, layers, batch, bar)
            results.append(_variant_row(p, is_rand, masks, base, occ, layers, n_images, groups, zero_tol))
    finally:
        bar.close()
    return results


def _summarize(results, layers):
    """``(summary, table)``: per layer the mean over the part rows vs the random rows, and the table
    rows -- every part row, then one ``random`` row pooling the groups of all random occluders."""
    summary = {}
    for l in layers:
        part_m = [r[l]["mean"] for r in results if not r["random"]]
        rand_m = [r[l]["mean"] for r in results if r["random"]]
        summary[l] = {"parts_mean": float(np.mean(part_m)), "random_mean": float(np.mean(rand_m)),
                      "random_minus_parts": float(np.mean(rand_m) - np.mean(part_m))}
    rand_rows = [r for r in results if r["random"]]
    random_row = {"part": "random", "random": True}
    for l in layers:
        allv = [v for r in rand_rows for v in r[l]["values"]]
        random_row[l] = {"mean": float(np.mean(allv)), "std": float(np.std(allv)), "values": allv}
    table = [r for r in results if not r["random"]] + [random_row]
    return summary, table


def _table_markdown(table, layers):
    """The table as Markdown: one row per occluder, ``mean ± std`` of the normalized Delta per layer."""
    md = [f"| occlusion | {' | '.join(f'Delta {l} (normalized)' for l in layers)} |",
          "|---|" + "---|" * len(layers)]
    for r in table:
        md.append(f"| {r['part']} | " + " | ".join(f"{r[l]['mean']:.4f} ± {r[l]['std']:.4f}" for l in layers) + " |")
    return "\n".join(md)


def correspondence(net, meta, dataset, out_dir, class_name=None, parts=None, n_images=5, groups=4,
                   layers=("pool5", "relu7"), margin=0.0, zero_tol=1e-6, batch=32, seed=0,
                   progress=True, name="correspondence"):
    """Correspondence experiment (Python API of ``zfscratch correspondence``).

    Parameters
    ----------
    net, meta : from :func:`zfscratch.io.load_weights`
    dataset : a dataset with part landmarks (the synthetic dataset: ``parts``, ``part_mask``,
        ``samples``), images at the model's input size
    class_name : the class whose images are used (default: ``face``)
    parts : part names (default: every part of the class)
    n_images : images per group (the paper used 5); groups : number of disjoint groups (mean and
        std over groups)
    layers : (layer 5, layer 7) outputs
    margin : pixels added to each part's radius; zero_tol : see the module docstring

    Returns
    -------
    dict (JSON-ready): ``rows`` [{"part", "random": bool, "<layer>": {"mean", "std", "values",
    "delta_raw"}}], ``table_markdown``, ``summary`` (mean over parts vs random per layer),
    ``figure``, ``json``.
    """
    pre, size = _check_dataset(net, meta, dataset)
    layers = tuple(S.resolve_layer(net, l) for l in layers)
    class_name, label, parts = _class_and_parts(dataset, class_name, parts)
    n_images, groups = int(n_images), int(groups)
    idx = _group_indices(dataset, label, class_name, n_images, groups)
    samples = dataset.samples(idx)
    x = S.preprocess_batched(pre, np.stack([s.image for s in samples]))
    variants = _occluder_variants(dataset, samples, parts, size, margin, np.random.default_rng(seed))
    results = _sweep_variants(net, x, variants, layers, n_images, groups, zero_tol, batch, progress)
    summary, table = _summarize(results, layers)
    out = {"experiment": "correspondence", "class": class_name, "parts": parts, "layers": list(layers),
           "n_images": n_images, "groups": groups, "indices": idx, "zero_tol": zero_tol, "margin": margin,
           "normalization": "Delta / (n (n-1) D): mean fraction of differing feature signs per ordered pair",
           "rows": results, "table": table, "table_markdown": _table_markdown(table, layers),
           "summary": summary}
    os.makedirs(out_dir, exist_ok=True)
    fig_path = safe_join(out_dir, safe_name(name, what="--name") + ".png")
    json_path = safe_join(out_dir, safe_name(name, what="--name") + ".json")
    plot_correspondence(out, x[0], pre, [m[0] for _, r, m in variants if not r],
                        [m[0] for _, r, m in variants if r], fig_path)
    out["figure"], out["json"] = fig_path, json_path
    S.write_json(json_path, out)
    return out


def plot_correspondence(out, x0, pre, part_masks, rand_masks, path):
    """Examples of the occluders on the first image, and the table as grouped bars with std."""
    layers, parts = out["layers"], out["parts"]
    img = S.display_image(x0, pre)
    k = len(parts)
    fig = S.figure(max(10, 2.0 * (k + 1)), 7.5)
    gs = fig.add_gridspec(2, k + 1, height_ratios=[1, 1.6], hspace=0.35)
    grey = np.array([0.5, 0.5, 0.5])
    for j, p in enumerate(parts):
        ax = fig.add_subplot(gs[0, j])
        show = img.copy()
        show[part_masks[j]] = grey
        m = rand_masks[j]
        inner = np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
        edge = m & ~inner
        show[edge] = [1.0, 0.1, 0.1]
        ax.imshow(show, interpolation="nearest")
        ax.set_title(f"{p}\n(red: a random occluder)", fontsize=9)
        ax.set_axis_off()
    ax = fig.add_subplot(gs[0, k])
    ax.set_axis_off()
    ax.text(0, 0.5, f"class: {out['class']}\n{out['groups']} groups of {out['n_images']} images\n"
            "lower Δ = more consistent", fontsize=9, va="center")
    ax = fig.add_subplot(gs[1, :])
    rows = out["table"]
    xs = np.arange(len(rows))
    w = 0.8 / len(layers)
    for i, l in enumerate(layers):
        ax.bar(xs + (i - (len(layers) - 1) / 2) * w, [r[l]["mean"] for r in rows], w,
               yerr=[r[l]["std"] for r in rows], capsize=3, label=l)
    ax.set_xticks(xs)
    ax.set_xticklabels([r["part"] for r in rows])
    ax.set_ylabel("Δ / (n(n-1)D)")
    ax.set_title("Correspondence (Table 1): sign disagreement of feature changes; lower = more consistent",
                 fontsize=10)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return S.save_figure(fig, path)
