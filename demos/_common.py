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


def parse_args(doc, argv=None, extra=None):
    """Common options. ``extra(parser)`` may add demo-specific ones."""
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

