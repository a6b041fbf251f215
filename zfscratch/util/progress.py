"""Progress bars: tqdm on stderr, or an object with the same few methods that does nothing."""
from __future__ import annotations

import sys


def tqdm_bar(**kw):
    """A tqdm bar with this project's defaults (stderr, dynamic width, redraw at most every 0.5 s);
    keyword arguments go to ``tqdm`` and override the defaults."""
    from tqdm import tqdm
    kw.setdefault("file", sys.stderr)
    kw.setdefault("dynamic_ncols", True)
    kw.setdefault("mininterval", 0.5)
    return tqdm(**kw)


def progress_bar(total, desc, enabled=True, unit="img"):
    """A transient tqdm bar (on stderr) of ``total`` steps, or a no-op :class:`NoBar` when disabled
    or tqdm is missing."""
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            pass
    return NoBar()


class NoBar:
    """Stands in for a tqdm bar: ``update``, ``set_postfix``, ``close``, context manager."""

    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kw):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def write(msg):
    """Print ``msg`` on stderr without breaking an active tqdm bar."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        print(msg, file=sys.stderr)
        return
    tqdm.write(msg, file=sys.stderr)
