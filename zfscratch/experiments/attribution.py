"""DeconvNet, guided backpropagation and the gradient side by side, and the Adebayo et al. (2018)
sanity checks that tell them apart.

* :func:`attribute` / :func:`run_attribute` (``zfscratch attribute``): the three rules of
  :func:`zfscratch.deconv.project_rules` for one unit or class of some images, and a figure with the
  image, the signed maps and their magnitudes.
* :func:`sanity_check` / :func:`run_sanity` (``zfscratch sanity``): randomize the weights from the top
  layer down (cascading: fc8, then fc8+fc7, ..., down to conv1) and one layer at a time (independent);
  after each step recompute every rule's map of the trained model's predicted class and compare its
  magnitude with the trained model's map: Spearman rank correlation (``scipy.stats.spearmanr``) and
  SSIM (``skimage.metrics.structural_similarity``), averaged over the images (Adebayo et al. Fig 2/4).
  A rule whose maps survive randomization of the weights does not explain the model.

Conventions. Every map is the projection of a unit seed (``value=1``) at the chosen unit (the class
logit, or the strongest activation of a map): for the gradient rule that is the derivative of the unit.
The magnitude of a map is ``|r|`` summed over colour channels, an (H, W) array. A randomized layer gets
weights and biases drawn from N(0, s^2) with ``s`` the standard deviation of the trained tensor
(Gaussian re-initialization at the trained scale); the same draw serves the cascading and the
independent step of that layer. The metrics need the optional ``[sanity]`` extra (scipy, scikit-image).
"""
from __future__ import annotations

import os
import time
import warnings

import numpy as np

from zfscratch import deconv
from zfscratch.errors import UserError
from zfscratch.experiments import _shared as S

RULES = deconv.RULES
TITLES = {"deconvnet": "DeconvNet", "guided": "guided backprop", "gradient": "gradient"}
COLOURS = {"deconvnet": "tab:blue", "guided": "tab:orange", "gradient": "tab:green"}
ABS_CAPTION = "|r| summed over colour channels, divided by its 99th percentile and clipped to [0, 1] (black = 0)"


def parse_rules(text):
    """``"deconvnet,guided"`` -> ("deconvnet", "guided"); UserError naming the rules otherwise."""
    items = [t.strip() for t in str(text).split(",") if t.strip()] if isinstance(text, str) else list(text)
    bad = [t for t in items if t not in RULES]
    if bad or not items:
        raise UserError(f"--rule {text!r}: expected one or more of {', '.join(RULES)} (comma-separated)")
    return tuple(dict.fromkeys(items))


def logits_layer(net):
    """Name of the class-logits layer (the last layer, a Linear); UserError otherwise."""
    last = net.layers[-1]
    if last.kind != "Linear":
        raise UserError(f"the network's last layer {last.name} ({last.kind}) is not a Linear layer of class logits")
    return last.name


def _metrics_lib():
    try:
        from scipy.stats import spearmanr
        from skimage.metrics import structural_similarity
    except ImportError:
        raise UserError("the sanity checks need scipy and scikit-image: pip install 'zfscratch[sanity]'") from None
    return spearmanr, structural_similarity


# ----------------------------------------------------------------------------- maps
def magnitude(r):
    """``|r|`` summed over the colour channels: (..., C, H, W) -> (..., H, W) float64."""
    return np.abs(np.asarray(r, dtype=np.float64)).sum(axis=-3)


def abs_display(m):
    """Magnitude maps (..., H, W) -> [0, 1]: each divided by its 99th percentile, clipped (black = 0)."""
    m = np.asarray(m, dtype=np.float64)
    q = np.percentile(m.reshape(m.shape[:-2] + (-1,)), 99, axis=-1)[..., None, None] if m.size else 1.0
    q = np.where(q > 0, q, np.where(m.max(axis=(-2, -1), keepdims=True) > 0, m.max(axis=(-2, -1), keepdims=True), 1))
    return np.clip(m / q, 0, 1)


def attribute(net, x, layer=None, units=None, rules=RULES, budget=deconv.ROW_BUDGET):
    """The rules' maps for one unit per image.

    Parameters
    ----------
    net : Sequential
    x : (N, C, H, W) preprocessed images
    layer : None or the logits layer (class attribution), or any layer :func:`deconv.project` starts from
    units : int, (N,) ints, or None: the class (logits) or map of ``layer`` per image; None = the
        predicted class (logits) or the map with the strongest activation (other layers)
    rules : rules to run

    Returns
    -------
    maps : dict rule -> (N, C, H, W) float array, signed, unit seed at the kept unit
    info : dict ``layer``, ``units`` (N,), ``values`` (N,) the unit's forward activation
    """
    logit = logits_layer(net)
    name = logit if layer is None else deconv.start_layer_name(net, layer)
    n = int(x.shape[0])
    c = dict(net.output_shapes((1,) + tuple(x.shape[1:])))[name][1]
    if units is None:  # a forward pass only to choose the units
        act = S.forward_layers(net, x, [name], logits=False)[name]
        strength = act if act.ndim == 2 else act.reshape(n, c, -1).max(axis=2)
        units = np.argmax(strength, axis=1)
    units = np.broadcast_to(np.asarray(units, dtype=np.int64), (n,)).copy()
    if units.min() < 0 or units.max() >= c:
        what = "class" if name == logit else f"map of {name}"
        raise UserError(f"{what} {int(units.max() if units.max() >= c else units.min())} out of range 0..{c - 1}")
    maps = {r: np.zeros(x.shape, dtype=np.dtype(net.dtype)) for r in rules}
    values = np.zeros(n)
    for u in np.unique(units):
        idx = np.nonzero(units == u)[0]
        got, info = deconv.project_rules(net, x[idx], name, maps=[int(u)], mode="max", rules=rules, value=1.0,
                                         budget=budget, return_info=True)
        for r in rules:
            maps[r][idx] = got[r][:, 0]
        values[idx] = info["value"][:, 0]
    return maps, {"layer": name, "units": units, "values": values, "is_class": name == logit}


def plot_attribution(images, maps, row_labels, path, title=None, rules=RULES):
    """Figure: per row an image (H, W, 3 in [0, 1]), each rule's signed map and each rule's magnitude."""
    n = len(images)
    cols = 1 + 2 * len(rules)
    height = 1.55 * n + 1.1
    fig = S.figure(1.45 * cols, height)
    gs = fig.add_gridspec(n, cols, left=0.02, right=0.98, top=1 - 0.78 / height, bottom=0.05 / height,
                          wspace=0.05, hspace=0.25)
    from zfscratch.viz import to_display
    for i in range(n):
        ax = fig.add_subplot(gs[i, 0])
        ax.imshow(np.clip(images[i], 0, 1), interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(row_labels[i], fontsize=9)
        if i == 0:
            ax.set_title("input", fontsize=9)
        for j, r in enumerate(rules):
            ax = fig.add_subplot(gs[i, 1 + j])
            ax.imshow(to_display(maps[r][i]) if maps[r].shape[1] == 3 else to_display(maps[r][i])[..., 0],
                      cmap=None if maps[r].shape[1] == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(f"{TITLES[r]}\nsigned", fontsize=9)
            ax = fig.add_subplot(gs[i, 1 + len(rules) + j])
            ax.imshow(abs_display(magnitude(maps[r][i])), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(f"{TITLES[r]}\n|r|", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.08 / height)
    fig.text(0.01, 0.0, "signed: 0.5 + 0.5*r/max|r| per map (grey = 0, RGB, sign kept); |r|: " + ABS_CAPTION
             + ". Unit seed (value 1) at the chosen unit.", fontsize=9, va="top", ha="left", wrap=True)
    return S.save_figure(fig, path, dpi=110)


def run_attribute(net, meta, out_dir, image=None, dataset=None, index=0, layer=None, unit=None, rules=RULES,
                  name="attribute"):
    """``zfscratch attribute``: one image (a file's pixels or a dataset sample), figure + JSON."""
    pre = S.get_preprocess(meta)
    names = S.class_names(meta, S.num_classes(net))
    label = None
    if image is None:
        if dataset is None:
            raise UserError("attribute: give --image FILE or --data SPEC with --index")
        if not 0 <= int(index) < len(dataset):
            raise UserError(f"--index {index}: out of range 0..{len(dataset) - 1}")
        imgs, labs = dataset.get_batch([int(index)])
        image, label = imgs[0], int(labs[0])
    x = np.asarray(pre(np.asarray(image)[None]), np.float32)
    t0 = time.perf_counter()
    logits = S.forward_layers(net, x, [], logits=True)["logits"][0]
    maps, info = attribute(net, x, layer=layer, units=unit, rules=rules)
    seconds = time.perf_counter() - t0
    u = int(info["units"][0])
    pred = int(np.argmax(logits))
    what = (f"class {names[u]} (logit {logits[u]:.3g})" if info["is_class"]
            else f"{info['layer']} map {u} (strongest activation {info['values'][0]:.3g})")
    row = f"pred {names[pred]}" + ("" if label is None else f"\ntrue {names[label]}")
    os.makedirs(out_dir, exist_ok=True)
    fig = plot_attribution([S.display_image(x[0], pre)], maps, [row], os.path.join(out_dir, f"{name}.png"),
                           title=f"{', '.join(TITLES[r] for r in rules)} of {what}", rules=rules)
    out = {"experiment": "attribute", "layer": info["layer"], "unit": u, "is_class": info["is_class"],
           "unit_name": names[u] if info["is_class"] else str(u), "activation": float(info["values"][0]),
           "predicted": pred, "predicted_name": names[pred], "label": label,
           "rules": list(rules), "seconds": seconds, "figure": fig, "json": os.path.join(out_dir, f"{name}.json"),
           "max_abs": {r: float(np.abs(maps[r]).max()) for r in rules}}
    S.write_json(out["json"], out)
    return out


# ----------------------------------------------------------------------------- sanity checks
def param_layers(net):
    """Layers with weights, from the top down (fc8, fc7, ..., conv1): the cascading order."""
    return [l.name for l in reversed(net.layers) if "w" in l.params]


def _random_params(net, name, seed):
    """Gaussian weights and biases at the trained tensors' scale (host arrays), one draw per layer."""
    rng = np.random.default_rng([int(seed), net.index(name)])
    out = {}
    for k, v in net.layer(name).params.items():
        h = np.asarray(net.backend.to_host(v), dtype=np.float64)
        out[k] = rng.normal(0.0, float(h.std()), size=h.shape)
    return out


def _set_params(net, name, params):
    l = net.layer(name)
    for k, v in params.items():
        l.params[k][...] = net.backend.to_device(np.asarray(v), l.params[k].dtype)


def _compare(ref, got, spearmanr, ssim):
    """Per image Spearman rank correlation and SSIM of two magnitude maps (N, H, W); NaN where a
    map is constant (no ranking)."""
    rho, ss = np.full(len(ref), np.nan), np.full(len(ref), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(len(ref)):
            a, b = ref[i].reshape(-1), got[i].reshape(-1)
            if a.max() > a.min() and b.max() > b.min():
                rho[i] = spearmanr(a, b)[0]
            na = ref[i] / ref[i].max() if ref[i].max() > 0 else ref[i]
            nb = got[i] / got[i].max() if got[i].max() > 0 else got[i]
            ss[i] = ssim(na, nb, data_range=1.0, win_size=min(7, *[d - (1 - d % 2) for d in na.shape]))
    return rho, ss


def _summary(v):
    ok = v[np.isfinite(v)]
    return {"mean": float(ok.mean()) if ok.size else None, "std": float(ok.std()) if ok.size else None,
            "n": int(ok.size)}


def sanity_check(net, x, rules=RULES, seed=0, examples=2, progress=True):
    """Cascading and independent weight randomization (Adebayo et al. 2018) for the class logits.

    Parameters
    ----------
    net : Sequential (its weights are restored before returning, also on errors)
    x : (N, C, H, W) preprocessed images
    rules : rules to compare
    seed : seed of the random weights
    examples : images whose magnitude maps are kept for the figures

    Returns
    -------
    dict ``layers`` (cascading order), ``classes`` (N,) the trained model's predictions (the class
    projected at every step), ``cascade`` / ``independent``: per rule lists (one entry per step) of
    ``{"spearman": {mean, std, n}, "ssim": {...}}``, ``examples``: {"trained": {rule: (E, H, W)},
    "cascade": [{rule: (E, H, W)}, ...], "independent": [...]}, ``seconds``.
    """
    spearmanr, ssim = _metrics_lib()
    t0 = time.perf_counter()
    order = param_layers(net)
    logit = logits_layer(net)
    classes = np.argmax(S.forward_layers(net, x, [], logits=True)["logits"], axis=1)
    saved = net.state_dict()
    draws = {name: _random_params(net, name, seed) for name in order}
    steps = 1 + 2 * len(order)
    bar = S.progress_bar(steps, "sanity checks", progress, unit="step")
    ex = slice(0, min(int(examples), len(x)))

    def maps_now():
        m, _ = attribute(net, x, layer=logit, units=classes, rules=rules)
        bar.update(1)
        return {r: magnitude(m[r]) for r in rules}

    out = {"layers": order, "classes": classes, "cascade": {r: [] for r in rules},
           "independent": {r: [] for r in rules},
           "examples": {"trained": None, "cascade": [], "independent": []}}
    try:
        ref = maps_now()
        out["examples"]["trained"] = {r: ref[r][ex] for r in rules}
        for mode in ("cascade", "independent"):
            net.load_state_dict(saved)
            for name in order:
                if mode == "independent":
                    net.load_state_dict(saved)
                _set_params(net, name, draws[name])
                now = maps_now()
                out["examples"][mode].append({r: now[r][ex] for r in rules})
                for r in rules:
                    rho, ss = _compare(ref[r], now[r], spearmanr, ssim)
                    out[mode][r].append({"spearman": _summary(rho), "ssim": _summary(ss)})
    finally:
        net.load_state_dict(saved)
        bar.close()
    out["seconds"] = time.perf_counter() - t0
    return out


def plot_sanity_maps(res, images, path, mode="cascade", rules=RULES, title=None):
    """Adebayo et al. Fig 2 layout: per example image and rule a row: input, trained map, the map after
    each randomization step (``mode`` cascade or independent)."""
    steps = res["layers"]
    e = len(images)
    rows, cols = e * len(rules), 2 + len(steps)
    fig = S.figure(0.95 * cols + 0.6, 0.98 * rows + 1.0)
    gs = fig.add_gridspec(rows, cols, left=0.07, right=0.995, top=1 - 0.55 / (0.98 * rows + 1.0),
                          bottom=0.45 / (0.98 * rows + 1.0), wspace=0.04, hspace=0.06)
    heads = ["input", "trained"] + [("+" if mode == "cascade" and k else "") + s for k, s in enumerate(steps)]
    for i in range(e):
        for j, r in enumerate(rules):
            row = i * len(rules) + j
            tiles = [None, res["examples"]["trained"][r][i]] + [st[r][i] for st in res["examples"][mode]]
            for k in range(cols):
                ax = fig.add_subplot(gs[row, k])
                if k == 0:
                    ax.imshow(np.clip(images[i], 0, 1), interpolation="nearest")
                    ax.set_xticks([]), ax.set_yticks([])
                    ax.set_ylabel(TITLES[r], fontsize=9)
                else:
                    ax.imshow(abs_display(tiles[k]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                    ax.set_axis_off()
                if row == 0:
                    ax.set_title(heads[k], fontsize=9)
    what = ("cascading randomization from the top: each column randomizes one more layer (fc8 first)"
            if mode == "cascade" else "independent randomization: each column randomizes only that layer")
    fig.suptitle(title or f"Sanity check, {what}", fontsize=9)
    fig.text(0.01, 0.005, f"Maps of the trained model's predicted class; {ABS_CAPTION}.", fontsize=9,
             va="bottom", ha="left")
    return S.save_figure(fig, path, dpi=110)


def plot_sanity_metrics(res, path, rules=RULES, n_images=None):
    """Adebayo et al. Fig 4 layout: Spearman rank correlation and SSIM (mean +- std over the images) of
    each rule's map with the trained model's, after each cascading / independent step."""
    steps = res["layers"]
    fig = S.figure(10.0, 6.0)
    axes = fig.subplots(2, 2, sharey="row")
    for col, mode in enumerate(("cascade", "independent")):
        xs = np.arange(len(steps) + (1 if mode == "cascade" else 0))
        labels = (["trained"] + steps) if mode == "cascade" else steps
        for row, metric in enumerate(("spearman", "ssim")):
            ax = axes[row, col]
            for r in rules:
                mean = np.array([np.nan if s[metric]["mean"] is None else s[metric]["mean"] for s in res[mode][r]])
                std = np.array([np.nan if s[metric]["std"] is None else s[metric]["std"] for s in res[mode][r]])
                if mode == "cascade":
                    mean, std = np.r_[1.0, mean], np.r_[0.0, std]
                ax.plot(xs, mean, "o-", color=COLOURS[r], label=TITLES[r], ms=3)
                ax.fill_between(xs, mean - std, mean + std, color=COLOURS[r], alpha=0.15)
            ax.axhline(0, color="grey", lw=0.6)
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, rotation=45, fontsize=9)
            ax.set_ylim(-0.3 if metric == "spearman" else -0.05, 1.05)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("Spearman rank correlation\nof |map| with trained" if metric == "spearman"
                              else "SSIM of |map|\nwith trained", fontsize=9)
            if row == 0:
                ax.set_title("cascading randomization (top layer first)" if mode == "cascade"
                             else "independent randomization (one layer)", fontsize=9)
    axes[0, 0].legend(fontsize=9)
    n = n_images or len(res["classes"])
    fig.suptitle(f"Sanity checks over {n} images: mean +- std (band); a rule that explains the model should fall "
                 "towards 0 as its weights are randomized", fontsize=9)
    fig.subplots_adjust(hspace=0.45, left=0.1, right=0.98, bottom=0.12)
    return S.save_figure(fig, path, dpi=100)


def sanity_table(res, rules=RULES):
    """Header and rows (one per step) of mean Spearman / SSIM per rule."""
    head = ["randomization", "layer"] + [f"{TITLES[r]} {m}" for r in rules for m in ("Spearman", "SSIM")]
    rows = []
    for mode in ("cascade", "independent"):
        for k, name in enumerate(res["layers"]):
            row = ["cascading" if mode == "cascade" else "independent",
                   (f"{res['layers'][0]}..{name}" if mode == "cascade" and k else name)]
            for r in rules:
                for m in ("spearman", "ssim"):
                    v = res[mode][r][k][m]["mean"]
                    row.append("n/a" if v is None else f"{v:.3f}")
            rows.append(row)
    return head, rows


def run_sanity(net, meta, dataset, out_dir, n=50, rules=RULES, seed=0, progress=True, name="sanity"):
    """``zfscratch sanity``: the first ``n`` images of ``dataset``; figures, table and JSON in ``out_dir``."""
    _metrics_lib()
    pre = S.get_preprocess(meta)
    n = min(int(n), len(dataset))
    if n < 1:
        raise UserError("sanity: the data has no images")
    imgs, _ = dataset.get_batch(list(range(n)))
    x = np.asarray(S.preprocess_batched(pre, imgs), np.float32)
    res = sanity_check(net, x, rules=rules, seed=seed, progress=progress)
    os.makedirs(out_dir, exist_ok=True)
    disp = [S.display_image(x[i], pre) for i in range(len(res["examples"]["trained"][rules[0]]))]
    figs = {"cascade_maps": plot_sanity_maps(res, disp, os.path.join(out_dir, f"{name}_cascade.png"), "cascade",
                                             rules),
            "independent_maps": plot_sanity_maps(res, disp, os.path.join(out_dir, f"{name}_independent.png"),
                                                 "independent", rules),
            "metrics": plot_sanity_metrics(res, os.path.join(out_dir, f"{name}_metrics.png"), rules, n)}
    head, rows = sanity_table(res, rules)
    md = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n" + "".join(
        "| " + " | ".join(r) + " |\n" for r in rows)
    from zfscratch.util.files import atomic_write_text
    atomic_write_text(os.path.join(out_dir, f"{name}_table.md"), md)
    out = {"experiment": "sanity", "images": n, "rules": list(rules), "seed": seed, "layers": res["layers"],
           "seconds": res["seconds"], "cascade": res["cascade"], "independent": res["independent"],
           "classes": res["classes"], "figures": figs, "table": os.path.join(out_dir, f"{name}_table.md"),
           "json": os.path.join(out_dir, f"{name}.json"), "table_head": head, "table_rows": rows}
    S.write_json(out["json"], out)
    return out
