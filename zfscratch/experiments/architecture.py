"""Architecture comparison (paper Fig 6, section 4.1): 7x7 stride-2 vs 11x11 stride-4 first layer.

``zfnet_small`` and ``alexnet_like`` (identical except conv1: 7x7/2 vs 11x11/4, see
:mod:`zfscratch.models`) are trained with the same budget (same data, epochs, batch, learning rate,
seed) by :func:`zfscratch.train.train_model`, each into its own run directory ``OUT/<arch>/``. Then
per model:

* the first-layer filters (grid, each filter normalized on its own: ``viz.filter_grid``) and
  DeconvNet projections of the strongest activation of 16 layer-2 maps (``relu2``) over a few
  validation images (the paper's Fig 6 d/e);
* ``dead_fraction``: fraction of conv1 filters whose RMS is below ``dead_threshold`` (default 0.05)
  times the largest conv1 filter RMS of that model -- filters that training left (near) empty;
  ``never_active_fraction``: fraction of conv1 maps whose rectified output is 0 on every validation
  image looked at (a second, activation-based notion of "dead");
* ``hf_energy``: high-frequency energy of the conv1 filters -- each filter channel has its mean
  removed, is zero-padded to ``fft_size`` x ``fft_size`` (default 64) and Fourier transformed; the
  power summed over channels is split at half the Nyquist frequency (radial frequency > 0.25
  cycles/pixel); reported is the mean over filters of (power above) / (total power). Fig 6's
  aliasing shows up as a larger value;
* validation accuracy (the run's final ``val_acc``; or :func:`zfscratch.train.evaluate` on the given
  validation set when comparing existing weights files).
"""
from __future__ import annotations

import os

import numpy as np

from zfscratch.errors import UserError
from zfscratch.experiments import _shared as S
from zfscratch.util.files import safe_join, safe_name

ARCHS = ("zfnet_small", "alexnet_like")


# ----------------------------------------------------------------------------- filter statistics
def filter_rms(w):
    """RMS of each filter of ``w (F, C, k, k)``."""
    w = np.asarray(w, np.float64)
    return np.sqrt((w.reshape(w.shape[0], -1) ** 2).mean(1))


def dead_fraction(w, threshold=0.05):
    """Fraction of filters with RMS < ``threshold`` * (largest filter RMS of the layer)."""
    r = filter_rms(w)
    if r.max() <= 0:
        return 1.0
    return float((r < threshold * r.max()).mean())


def hf_energy(w, fft_size=64, cutoff=0.25):
    """Per-filter fraction of spectral power above ``cutoff`` cycles/pixel (default: half Nyquist).

    Each (filter, channel) has its mean removed and is zero-padded to ``fft_size`` squared before the
    2-D FFT; the power is summed over channels. Returns an array (F,) (NaN for an all-constant filter).
    """
    w = np.asarray(w, np.float64)
    f, c, kh, kw = w.shape
    n = max(int(fft_size), kh, kw)
    w = w - w.mean(axis=(2, 3), keepdims=True)
    pw = (np.abs(np.fft.fft2(w, s=(n, n))) ** 2).sum(1)  # (F, n, n)
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.fftfreq(n)[None, :]
    high = np.sqrt(fy ** 2 + fx ** 2) > cutoff
    tot = pw.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, (pw * high).sum((1, 2)) / tot, np.nan)


def filter_stats(w, dead_threshold=0.05, fft_size=64):
    """Summary numbers of a first-layer filter bank ``w (F, C, k, k)``."""
    r = filter_rms(w)
    hf = hf_energy(w, fft_size)
    return {"filters": int(w.shape[0]), "kernel": int(w.shape[2]), "rms_max": float(r.max()),
            "rms_median": float(np.median(r)), "dead_threshold": dead_threshold,
            "dead_fraction": dead_fraction(w, dead_threshold), "hf_energy": float(np.nanmean(hf)),
            "hf_energy_median": float(np.nanmedian(hf))}


def layer2_projections(net, pre, images, maps=16, layer=None):
    """DeconvNet projections of the strongest activation of the first ``maps`` layer-2 maps, each from
    the image (among ``images``) where that map is strongest. Returns (maps, C, H, W) or None."""
    try:
        from zfscratch.deconv import project
    except ImportError:  # pragma: no cover
        return None
    convs = [i for i, l in enumerate(net.layers) if l.kind == "Conv2d"]
    if len(convs) < 2:
        return None
    if layer is None:
        i = convs[1]
        layer = net.layers[i + 1].name if net.layers[i + 1].kind == "ReLU" else net.layers[i].name
    x = np.asarray(pre(images), np.float32)
    act = S.forward_layers(net, x, [layer], logits=False)[layer]
    m = min(maps, act.shape[1])
    peak = act[:, :m].reshape(len(x), m, -1).max(2)  # (N, m)
    best = peak.argmax(0)
    out = []
    for j in range(m):
        r = project(net, x[best[j]:best[j] + 1], layer, [j], mode="max")
        out.append(np.asarray(r).reshape(r.shape[-3:]))
    return np.stack(out), layer


def never_active_fraction(net, pre, images):
    """Fraction of conv1 maps whose rectified output is zero on every image of ``images``."""
    i = next(i for i, l in enumerate(net.layers) if l.kind == "Conv2d")
    name = net.layers[i + 1].name if net.layers[i + 1].kind == "ReLU" else net.layers[i].name
    a = S.forward_layers(net, np.asarray(pre(images), np.float32), [name], logits=False)[name]
    return float((a.max(axis=(0, 2, 3)) <= 0).mean())


# ----------------------------------------------------------------------------- experiment
def compare(models, val_set, out_dir, dead_threshold=0.05, fft_size=64, probe_images=64, batch=64,
            progress=True, name="architecture", title="Fig 6: first-layer comparison (same training budget)"):
    """Compare trained models (Python API; :func:`architecture` trains them first).

    Parameters
    ----------
    models : dict label -> (net, meta) or label -> (net, meta, val_accuracy or None)
    val_set : validation dataset: accuracy (when not given) and the probe images for layer 2 /
        never-active maps (its first ``probe_images``)
    name : file stem of the figure, JSON and filter grids; title : the summary panel's title

    Returns
    -------
    dict (JSON-ready): ``models`` {label: {arch, conv1, stride, dead_fraction, never_active_fraction,
    hf_energy, val_accuracy, ...}}, ``table_markdown``, ``figure``, ``json``, ``filter_figures``.
    """
    from zfscratch.train import evaluate
    from zfscratch.viz import filter_grid, image_grid, plot_filters, to_display
    os.makedirs(out_dir, exist_ok=True)
    res, grids = {}, {}
    n_probe = min(int(probe_images), len(val_set))
    probe, _ = val_set.get_batch(np.arange(n_probe))
    for label, entry in models.items():
        net, meta = entry[0], entry[1]
        acc = entry[2] if len(entry) > 2 else None
        pre = S.get_preprocess(meta)
        conv1 = next(l for l in net.layers if l.kind == "Conv2d")
        w = np.asarray(net.backend.to_host(conv1.params["w"]))
        st = filter_stats(w, dead_threshold, fft_size)
        st.update(arch=net.config.get("arch"), conv1=f"{conv1.k}x{conv1.k} stride {conv1.stride}",
                  stride=conv1.stride, never_active_fraction=never_active_fraction(net, pre, probe))
        if acc is None:
            acc = evaluate(net, val_set, pre, batch=batch, quiet=not progress)["accuracy"]
        st["val_accuracy"] = float(acc)
        fpath = safe_join(out_dir, safe_name(f"{name}_{label}_conv1") + ".png")
        plot_filters(w, fpath, title=f"{label}: conv1 filters ({st['conv1']})")
        st["filter_figure"] = fpath
        l2 = layer2_projections(net, pre, probe)
        grids[label] = (filter_grid(w), None if l2 is None else image_grid(to_display(l2[0])))
        st["layer2"] = None if l2 is None else l2[1]
        res[label] = st
    md = ["| model | conv1 | dead filters | never-active maps | HF energy | val. accuracy |",
          "|---|---|---|---|---|---|"]
    for label, st in res.items():
        md.append(f"| {label} | {st['conv1']} | {st['dead_fraction']:.1%} | {st['never_active_fraction']:.1%} | "
                  f"{st['hf_energy']:.3f} | {st['val_accuracy']:.2%} |")
    out = {"experiment": "architecture", "models": res, "dead_threshold": dead_threshold, "fft_size": fft_size,
           "hf_definition": "mean over filters of spectral power above 0.25 cycles/pixel (half Nyquist) / "
                            "total, per-channel mean removed, zero-padded FFT",
           "dead_definition": f"filter RMS < {dead_threshold} x the largest conv1 filter RMS",
           "table_markdown": "\n".join(md)}
    fig_path = safe_join(out_dir, safe_name(name, what="--name") + ".png")
    json_path = safe_join(out_dir, safe_name(name, what="--name") + ".json")
    plot_architecture(out, grids, fig_path, title)
    out["figure"], out["json"] = fig_path, json_path
    S.write_json(json_path, out)
    return out


def plot_architecture(out, grids, path, title="Fig 6: first-layer comparison (same training budget)"):
    labels = list(out["models"])
    n = len(labels)
    fig = S.figure(11.2, 3.6 * n)  # the report's width at 100 dpi: shown at natural size
    gs = fig.add_gridspec(n, 3, width_ratios=[1, 1, 1.1], wspace=0.25, hspace=0.3)
    for r, label in enumerate(labels):
        st = out["models"][label]
        fg, l2 = grids[label]
        ax = fig.add_subplot(gs[r, 0])
        ax.imshow(fg, interpolation="nearest")
        ax.set_title(f"{label}: conv1 {st['conv1']}\ndead {st['dead_fraction']:.0%}, HF energy {st['hf_energy']:.3f}",
                     fontsize=9)
        ax.set_axis_off()
        ax = fig.add_subplot(gs[r, 1])
        if l2 is not None:
            ax.imshow(l2, interpolation="nearest")
        ax.set_title(f"{label}: layer-2 ({st['layer2']}) projections,\nstrongest activation of 16 maps",
                     fontsize=9)
        ax.set_axis_off()
    ax = fig.add_subplot(gs[:, 2])
    keys = [("dead_fraction", "dead\nfilters"), ("never_active_fraction", "never-active\nmaps"),
            ("hf_energy", "HF\nenergy"), ("val_accuracy", "val.\naccuracy")]
    xs = np.arange(len(keys))
    wd = 0.8 / max(1, n)
    for i, label in enumerate(labels):
        vals = [out["models"][label][k] for k, _ in keys]
        bars = ax.bar(xs + (i - (n - 1) / 2) * wd, vals, wd, label=label)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01, f"{v:.2f}", ha="center", fontsize=9)
    ax.set_xticks(xs)
    ax.set_xticklabels([t for _, t in keys], fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return S.save_figure(fig, path)


def architecture(data, out_dir, archs=ARCHS, epochs=2, batch=64, lr=None, backend=None, seed=0,
                 input_size=None, dead_threshold=0.05, fft_size=64, probe_images=64, progress=True,
                 overwrite=False, train_options=None, name="architecture"):
    """Train every architecture in ``archs`` with the same budget, then :func:`compare` them
    (Python API of ``zfscratch architecture``).

    Parameters
    ----------
    data : what :func:`zfscratch.train.train_model` accepts (spec string, dataset or (train, val))
    out_dir : the runs go to ``out_dir/<arch>/``; figure and JSON to ``out_dir``
    epochs, batch, lr, seed, input_size : the common budget (``lr`` None = train_model's default)
    train_options : further train_model options (e.g. ``{"augment": "flip"}``), the same for all

    Returns
    -------
    :func:`compare`'s dict plus ``runs`` {arch: run directory} and ``budget``.
    """
    from zfscratch.io import load_weights
    from zfscratch.train import resolve_data, train_model
    bad = [a for a in archs if a not in ("zfnet", "zfnet_small", "alexnet_like")]
    if bad:
        raise UserError(f"--archs: unknown architecture(s) {', '.join(bad)}")
    train, val = resolve_data(data, seed=seed)
    opts = dict(train_options or {})
    if input_size:
        opts["input_size"] = int(input_size)
    models, runs = {}, {}
    for arch in archs:
        run = os.path.join(out_dir, arch)
        r = train_model((train, val), run, model=arch, epochs=epochs, batch=batch, lr=lr, backend=backend,
                        seed=seed, quiet=not progress, overwrite=overwrite, snapshots=(), **opts)
        net, meta = load_weights(r["weights"], backend=backend)
        models[arch] = (net, meta, r.get("val_acc"))
        runs[arch] = run
    out = compare(models, val, out_dir, dead_threshold, fft_size, probe_images, batch, progress, name)
    out["runs"] = runs
    out["budget"] = {"epochs": epochs, "batch": batch, "lr": lr, "seed": seed, "n_train": len(train),
                     "n_val": len(val), "train_options": opts}
    S.write_json(out["json"], out)
    return out
