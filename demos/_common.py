"""Shared plumbing of the demos: command line, printing, gradient checks, saving figures.

Every demo is a plain script::

    python demos/01_conv.py [--out FOLDER] [--fast] [--backend numpy|numba|cupy] [--seed N]

It prints what it demonstrates (shapes, numbers, a float64 gradient check of its layer) and saves a
PNG into ``--out`` (default ``demos/out/``). ``--fast`` shrinks the work for the test suite.
"""
from __future__ import annotations

import argparse
import io
import os

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def _in_notebook():
    """True inside a Jupyter kernel (``sys.argv`` then holds the kernel's own ``-f connection.json``)."""
    import sys
    return "ipykernel" in sys.modules and "-f" in sys.argv[1:]


def parse_args(doc, argv=None, extra=None):
    """Common options. ``extra(parser)`` may add demo-specific ones.

    Run as a notebook (``jupytext --to notebook demos/01_conv.py``), the options come from the
    environment variable ``ZFSCRATCH_DEMO_ARGS`` (e.g. ``"--fast --out /tmp/x"``; default: none).
    """
    if argv is None and _in_notebook():
        import shlex
        argv = shlex.split(os.environ.get("ZFSCRATCH_DEMO_ARGS", ""))
    title = (doc or "").strip().splitlines()[0] if doc else None
    p = argparse.ArgumentParser(description=title)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the PNG (default {DEFAULT_OUT})")
    p.add_argument("--fast", action="store_true", help="smaller sizes, for the test suite")
    p.add_argument("--backend", default="numpy", help="numpy (reference kernels, default), numba or cupy")
    p.add_argument("--seed", type=int, default=0)
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    from zfscratch.backend import BackendError, get_backend
    try:
        args.be = get_backend(args.backend)
    except BackendError as e:
        p.error(str(e))
    args.rng = np.random.default_rng(args.seed)
    return args


def title(text):
    print()
    print(text)
    print("=" * len(text))


def section(text):
    print()
    print(f"-- {text}")


def show(name, a, fmt="{: .3f}"):
    """Print a small 2-D array with a name."""
    a = np.asarray(a)
    print(f"{name} {a.shape}:")
    if a.ndim == 1:
        a = a[None]
    for row in a:
        print("   " + " ".join(fmt.format(v) if not np.issubdtype(a.dtype, np.integer) else f"{v:4d}"
                               for v in row))


def gradcheck(layer, x, rng, label=None, tol=1e-6):
    """Float64 centered-difference check of ``layer`` at input ``x`` via zfscratch.gradcheck.check_layer.

    Prints the relative error of every checked gradient; returns the worst one (and fails loudly if
    it exceeds ``tol``).
    """
    from zfscratch.gradcheck import check_layer
    errs = check_layer(layer, x, rng)
    worst = max(errs.values()) if errs else 0.0
    label = label or f"{layer.kind} {layer.name}"
    parts = ", ".join(f"d{k}: {v:.1e}" for k, v in errs.items())
    status = "pass" if worst < tol else "FAIL"
    print(f"gradient check ({label}, float64, centered differences): {parts} -> {status}")
    if worst >= tol:
        raise SystemExit(f"gradient check failed for {label}: {worst:.2e} >= {tol:g}")
    return worst


def host(be, a):
    return np.asarray(be.to_host(a))


def save(fig, args, name):
    """Save ``fig`` as ``<out>/<name>`` (atomic write) and print where it went."""
    from zfscratch.io import atomic_write_bytes
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90 if args.fast else 110, bbox_inches="tight")
    plt.close(fig)
    path = os.path.join(args.out, name)
    atomic_write_bytes(path, buf.getvalue())
    print(f"\nsaved {path}")
    return path


def imshow_map(ax, a, title=None, cmap="gray", sym=False, annotate=False, fmt="{:.1f}"):
    """Show a 2-D map; ``sym`` centres the colour scale on 0; ``annotate`` writes the values."""
    a = np.asarray(a)
    if sym:
        m = float(np.abs(a).max()) or 1.0
        im = ax.imshow(a, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
    else:
        im = ax.imshow(a, cmap=cmap, interpolation="nearest")
    if annotate:
        lo, hi = float(a.min()), float(a.max())
        for (i, j), v in np.ndenumerate(a):
            light = (v - lo) / ((hi - lo) or 1) < 0.5 if not sym else abs(v) > 0.6 * (max(abs(lo), abs(hi)) or 1)
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                    color="white" if light else "black")
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def to_rgb(img_chw):
    """(3, H, W) float -> (H, W, 3) in [0, 1] for display (min-max per image)."""
    a = np.asarray(img_chw, dtype=np.float64).transpose(1, 2, 0)
    lo, hi = a.min(), a.max()
    return (a - lo) / ((hi - lo) or 1.0)


def toy_image(size=32, seed=0):
    """A small RGB test image (uint8, H x W x 3): a red square, a blue disc and a green bar on dark grey."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 60, dtype=np.float64)
    img += rng.normal(0, 4, img.shape)
    s = size
    img[s // 8: s // 8 + s // 3, s // 8: s // 8 + s // 3] = (220, 40, 40)
    yy, xx = np.mgrid[:s, :s]
    disc = (yy - 0.68 * s) ** 2 + (xx - 0.65 * s) ** 2 < (0.17 * s) ** 2
    img[disc] = (40, 60, 220)
    img[int(0.75 * s): int(0.75 * s) + max(2, s // 12), s // 10: int(0.45 * s)] = (40, 200, 60)
    return np.clip(img, 0, 255).astype(np.uint8)



# ----------------------------------------------------------------------------- a small trained model
#: the main job's trained model (``zfscratch run`` writes it here by default)
RUN_WEIGHTS = os.path.join("report", "train", "weights.npz")
DEMO_CLASSES = ("face", "house", "star", "car")
DEMO_ARCH = dict(widths=[16, 32, 48, 48, 32], fc=64)


def add_weights_arg(p):
    p.add_argument("--weights", default=None,
                   help=f"a weights file (default: {RUN_WEIGHTS} if `zfscratch run` made one, else a small "
                        "model trained here in a few seconds and cached in --out)")


def demo_model(args):
    """(net, meta, dataset) for the DeconvNet and occlusion demos.

    ``--weights`` or the main job's model when present; otherwise a narrow ``zfnet_small`` (32x32,
    4 synthetic classes) trained by :func:`zfscratch.train.train_model` for a few epochs and cached
    in ``<out>/demo_model/``; with ``--fast`` (tests), the same architecture untrained.
    The dataset is the synthetic validation split at the model's input size (or None for weights
    trained on other data).
    """
    from zfscratch.data.synthetic import SyntheticDataset
    from zfscratch.io import load_weights
    path = args.weights or (RUN_WEIGHTS if os.path.isfile(RUN_WEIGHTS) and not args.fast else None)
    if path:
        net, meta = load_weights(path, backend=args.be)
        print(f"model: {path} ({net.config.get('arch')}, input {net.config.get('input_size')}px, "
              f"classes {', '.join(meta.get('classes') or [])})")
        return net, meta, _dataset_like(meta, net)
    val = SyntheticDataset(n=200, size=32, seed=args.seed, split="val", classes=list(DEMO_CLASSES), max_angle=30)
    if args.fast:
        return _untrained(args, val)
    run = os.path.join(args.out, "demo_model")
    wpath = os.path.join(run, "weights.npz")
    if not os.path.isfile(wpath):
        from zfscratch.train import train_model
        train = SyntheticDataset(n=800, size=32, seed=args.seed, split="train", classes=list(DEMO_CLASSES),
                                 max_angle=30)
        print(f"training a small model for the demo (cached in {run}; pass --weights to use yours) ...")
        r = train_model((train, val), run, model="zfnet_small", epochs=5, batch=32, lr=0.02,
                        backend=args.be.name, snapshots=(), quiet=True, overwrite=True,
                        model_config=dict(DEMO_ARCH, dropout=0.0), augment="flip")
        print(f"  done in {r['elapsed_s']:.1f} s, validation accuracy {r['val_acc']:.1%}")
    net, meta = load_weights(wpath, backend=args.be)
    print(f"model: {wpath} (narrow zfnet_small, 32x32 input, classes {', '.join(meta['classes'])}, "
          f"validation accuracy {meta.get('train', {}).get('val_acc') or float('nan'):.1%})")
    return net, meta, val


def _untrained(args, val):
    from zfscratch.models import build_model
    from zfscratch.preprocess import Preprocess
    net = build_model(dict(arch="zfnet_small", input_size=32, num_classes=len(DEMO_CLASSES), **DEMO_ARCH),
                      backend=args.be, seed=args.seed)
    pre = Preprocess(32)
    imgs, _ = val.get_batch(np.arange(64))
    pre.fit_mean([imgs])
    meta = {"config": net.config, "classes": list(DEMO_CLASSES), "preprocessing": pre.to_meta(),
            "extra": {"mean": pre.mean}}
    print("model: narrow zfnet_small, 32x32 input, UNTRAINED (--fast: random weights; the mechanics are the "
          "same, the pictures are less telling)")
    return net, meta, val


def _dataset_like(meta, net):
    """The validation split of the data a model was trained on (synthetic at the model's size), or None."""
    from zfscratch.data.synthetic import SyntheticDataset
    from zfscratch.errors import UserError
    data = (meta.get("train") or {}).get("data")
    size = int(net.config.get("input_size"))
    if isinstance(data, dict) and data.get("kind") == "synthetic":
        return SyntheticDataset(n=200, size=size, seed=int(data.get("seed", 0)), split="val",
                                classes=data.get("classes"), background=data.get("background", "plain"))
    try:
        from zfscratch.experiments.evolution import dataset_from_meta
        return dataset_from_meta(meta, split="val")
    except (UserError, ImportError):
        return None
