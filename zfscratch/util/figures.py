"""matplotlib figures on the Agg canvas (no display, no pyplot state) and their atomic PNG output.

Legibility rule (enforced here, the one place figures are rendered)
-------------------------------------------------------------------
Every visible text artist of a saved figure must be at least :data:`MIN_TEXT_PX` (12) pixels high
on screen, i.e. 9 pt at 100 % zoom on a 96-dpi display, for the PNG shown at the size the report
shows it:

    ``fontsize_pt * dpi / 72 * min(1, REPORT_MAX_PX / width_px) >= MIN_TEXT_PX``

``dpi`` is the dpi the PNG is saved at, ``width_px`` the figure's width in pixels at that dpi
(before tight cropping, which usually only makes it narrower) and
:data:`REPORT_MAX_PX` the widest an image is shown in the HTML report (its CSS gives
``figure img`` ``max-width: 100%`` of a 1180 px ``main`` with 28 px padding each side, so images
wider than 1124 px are scaled down there). "Text" is every ``matplotlib.text.Text``
that is visible and non-empty (titles, axis labels, tick labels, legends, annotations, suptitles).

In production :func:`png_bytes` fixes, it does not crash: text below the minimum is enlarged to it
(a figure with small text is still better written than lost at the end of a long run). With
``strict=True``, or the environment variable ``ZFSCRATCH_STRICT_FIGURES=1`` (for checking figure code), it
raises :class:`IllegibleFigure` naming each offending text instead, so figure code that relies on
the enlargement is caught.
"""
from __future__ import annotations

import io as _io
import os

MIN_TEXT_PX = 12.0
REPORT_MAX_PX = 1124


class IllegibleFigure(ValueError):
    """A saved figure has visible text smaller than :data:`MIN_TEXT_PX` on screen."""


def _visible_texts(fig):
    from matplotlib.text import Text
    out = []
    for t in fig.findobj(Text):
        if t.get_visible() and t.get_text().strip():
            ax = getattr(t, "axes", None)
            if ax is not None and not ax.get_visible():
                continue
            out.append(t)
    return out


def text_scale(fig, dpi=None):
    """Screen pixels per point for ``fig`` saved at ``dpi`` and shown in the report (see module doc)."""
    dpi = float(dpi or fig.dpi)
    width_px = fig.get_size_inches()[0] * dpi
    return dpi / 72.0 * min(1.0, REPORT_MAX_PX / max(width_px, 1.0))


def _small_artists(fig, dpi, min_px):
    """The visible texts of ``fig`` below ``min_px`` on screen, and the screen pixels per point."""
    k = text_scale(fig, dpi)
    return [t for t in _visible_texts(fig) if t.get_fontsize() * k < min_px - 1e-6], k


def small_texts(fig, dpi=None, min_px=MIN_TEXT_PX):
    """``[(text, px)]`` for each visible text of ``fig`` smaller than ``min_px`` on screen."""
    small, k = _small_artists(fig, dpi, min_px)
    return [(t.get_text(), t.get_fontsize() * k) for t in small]


def min_text_px(fig, dpi=None):
    """The smallest on-screen text height (px) of ``fig`` saved at ``dpi``; ``inf`` without text."""
    k = text_scale(fig, dpi)
    return min((t.get_fontsize() * k for t in _visible_texts(fig)), default=float("inf"))


def enforce_legible(fig, dpi=None, strict=None, min_px=MIN_TEXT_PX):
    """Apply the legibility rule to ``fig``: raise :class:`IllegibleFigure` (``strict``) or enlarge
    each too-small text to the minimum. ``strict=None`` reads ``ZFSCRATCH_STRICT_FIGURES``."""
    if strict is None:
        strict = os.environ.get("ZFSCRATCH_STRICT_FIGURES", "") not in ("", "0")
    small, k = _small_artists(fig, dpi, min_px)
    if small and strict:
        listing = "; ".join(f"{t.get_text()[:40]!r}: {t.get_fontsize() * k:.1f} px" for t in small[:8])
        raise IllegibleFigure(f"{len(small)} text(s) below {min_px:g} px on screen: {listing}")
    for t in small:  # one walk over the texts: the ones found too small are the ones enlarged
        t.set_fontsize(min_px / k)


def new_figure(width, height, dpi=100, layout=None):
    """A matplotlib Figure of ``width x height`` inches on the Agg canvas (no pyplot, no global state);
    ``layout`` is passed to ``Figure`` (e.g. ``"constrained"``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig, dpi=None, tight=True, strict=None):
    """``fig`` rendered as PNG bytes; ``tight`` crops to the drawn area (``bbox_inches="tight"``).
    The legibility rule is applied first (:func:`enforce_legible`, ``strict`` as there)."""
    import matplotlib
    from matplotlib.text import Text

    # labels come from outside (class folder names such as "$\\foo$"): never parse them as mathtext
    for t in fig.findobj(Text):
        t.set_parse_math(False)
    enforce_legible(fig, dpi=dpi, strict=strict)
    buf = _io.BytesIO()
    kw = dict(bbox_inches="tight", pad_inches=0.1) if tight else {}
    with matplotlib.rc_context({"text.parse_math": False}):
        fig.savefig(buf, format="png", dpi=dpi or fig.dpi, **kw)
    return buf.getvalue()


def save_png(fig, path, dpi=None, tight=True, strict=None):
    """Render ``fig`` to PNG in memory (:func:`png_bytes`, legibility rule included) and write it
    atomically; returns the path."""
    from zfscratch.util.files import atomic_write_bytes
    atomic_write_bytes(path, png_bytes(fig, dpi=dpi, tight=tight, strict=strict))
    return os.fspath(path)
