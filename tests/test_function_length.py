"""No function of the package over ~60 lines without a stated reason (docs/design.md, "Code layout").

Long functions hide the steps a newcomer has to follow; a function that must stay long (a declarative
table, a kernel whose loops read best in one piece) goes into :data:`ALLOWED` with its reason."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_LINES = 60
#: ``"path:function"`` -> why it may be longer than :data:`MAX_LINES`
ALLOWED: dict[str, str] = {}


def _functions():
    for base in ("zfscratch", "kernels"):
        for path in sorted((REPO / base).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    # decorators do not count; the docstring does (it is part of what a reader reads)
                    yield f"{path.relative_to(REPO).as_posix()}:{node.name}", node.end_lineno - node.lineno + 1


def test_no_function_over_the_limit_without_a_reason():
    found = list(_functions())
    assert len(found) > 500  # the walk really saw the package
    long = {name: n for name, n in found if n > MAX_LINES and name not in ALLOWED}
    assert not long, ("functions over %d lines (split them, or add them to ALLOWED with a reason): %s"
                      % (MAX_LINES, ", ".join(f"{k} ({v})" for k, v in sorted(long.items()))))


def test_allow_list_entries_are_real_and_still_needed():
    lengths = dict(_functions())
    for name, reason in ALLOWED.items():
        assert name in lengths, f"ALLOWED names {name}, which no longer exists"
        assert lengths[name] > MAX_LINES, f"{name} is {lengths[name]} lines now: drop it from ALLOWED"
        assert len(reason) > 20, f"ALLOWED[{name!r}] needs a real reason"
