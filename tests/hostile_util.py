"""Helpers for tests/test_hostile_*.py: run the CLI under a memory cap and check the refusal contract."""
import os
import subprocess
import sys

#: address-space cap for a hostile run: a regression (reading a bomb) fails fast instead of eating the machine
MEM_CAP = 3 << 30

_RUNNER = (
    "import resource, sys\n"
    "cap = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_AS, (cap, cap))\n"
    "from zfscratch.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def tree(root):
    """{relative path: (size, mtime_ns, mode)} of everything under ``root`` (links not followed)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


def run_cli(args, cwd, timeout=120, cap=MEM_CAP, stdin=None):
    env = dict(os.environ, ZFSCRATCH_BACKEND="numpy", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-c", _RUNNER, str(cap), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=stdin)


def assert_refused(args, root, names, out=None, timeout=120):
    """Run ``zfscratch ARGS`` in ``root``: exit 2, one stderr line naming each of ``names``, no traceback,
    and nothing under ``root`` outside ``out`` created, changed or removed. Returns the stderr line."""
    before = tree(root)
    r = run_cli(args, cwd=root, timeout=timeout)
    after = tree(root)
    if out is not None:
        rel = os.path.relpath(out, root)
        keep = lambda t: {k: v for k, v in t.items() if k != rel and not k.startswith(rel + os.sep)}  # noqa: E731
        before, after = keep(before), keep(after)
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    for n in names:
        assert str(n) in lines[0], (n, lines[0])
    assert before == after, set(before) ^ set(after) or "a file changed"
    return lines[0]
