"""Text helpers of the report and its commands: number formatting and shell quoting."""
from __future__ import annotations


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
