"""matplotlib figures on the Agg canvas (no display, no pyplot state) and their atomic PNG output."""
from __future__ import annotations

import io as _io
import os


def new_figure(width, height, dpi=100, layout=None):
    """A matplotlib Figure of ``width x height`` inches on the Agg canvas (no pyplot, no global state);
    ``layout`` is passed to ``Figure`` (e.g. ``"constrained"``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig, dpi=None, tight=True):
    """``fig`` rendered as PNG bytes; ``tight`` crops to the drawn area (``bbox_inches="tight"``)."""
    import matplotlib
    from matplotlib.text import Text

    # labels come from outside (class folder names such as "$\\foo$"): never parse them as mathtext
    for t in fig.findobj(Text):
        t.set_parse_math(False)
    buf = _io.BytesIO()
    kw = dict(bbox_inches="tight", pad_inches=0.1) if tight else {}
    with matplotlib.rc_context({"text.parse_math": False}):
        fig.savefig(buf, format="png", dpi=dpi or fig.dpi, **kw)
    return buf.getvalue()


def save_png(fig, path, dpi=None, tight=True):
    """Render ``fig`` to PNG in memory (:func:`png_bytes`) and write it atomically; returns the path."""
    from zfscratch.util.files import atomic_write_bytes
    atomic_write_bytes(path, png_bytes(fig, dpi=dpi, tight=tight))
    return os.fspath(path)
