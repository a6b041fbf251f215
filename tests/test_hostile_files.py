"""zfscratch.util.files: umask-honouring atomic writes, safe names and joins, the folder lock, temp cleanup."""
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from zfscratch.errors import UserError
from zfscratch.util import files as zf


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_honours_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        zf.atomic_write_bytes(tmp_path / "a.bin", b"x")
        zf.atomic_write_text(tmp_path / "b.txt", "y")
        zf.atomic_write_npz(tmp_path / "c.npz", {"a": np.zeros(3)})
    finally:
        os.umask(old)
    for n in ("a.bin", "b.txt", "c.npz"):
        assert _mode(tmp_path / n) == 0o666 & ~umask, n
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_atomic_write_keeps_mode_of_replaced_file(tmp_path):
    p = tmp_path / "w.npz"
    p.write_bytes(b"old")
    os.chmod(p, 0o644)
    old = os.umask(0o077)
    try:
        zf.atomic_write_bytes(p, b"new")
    finally:
        os.umask(old)
    assert p.read_bytes() == b"new" and _mode(p) == 0o644


def test_io_reexports_the_helpers():
    from zfscratch import io as zio
    assert zio.atomic_write_bytes is zf.atomic_write_bytes
    assert zio.atomic_write_text is zf.atomic_write_text


def test_atomic_write_enospc_is_one_line(tmp_path, monkeypatch):
    import errno

    def full(fd, mode):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fchmod", full)
    with pytest.raises(UserError, match="no space left on device"):
        zf.atomic_write_bytes(tmp_path / "x", b"1")
    assert os.listdir(tmp_path) == []


def test_atomic_write_npz_refuses_objects(tmp_path):
    with pytest.raises(ValueError, match="object"):
        zf.atomic_write_npz(tmp_path / "o.npz", {"a": np.array([{}], dtype=object)})


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "..", ".", "", "a/b", "a\\b", "$\\foo$", "a\0b",
                                  ".hidden", "-rf", "x" * 300, "é", "a b"])
def test_safe_name_never_a_path(name):
    s = zf.safe_name(name)
    assert s and s not in (".", "..") and "/" not in s and "\\" not in s and "\0" not in s
    assert not s.startswith((".", "-")) and len(s) <= zf.MAX_NAME
    assert zf.is_safe_name(s)
    with pytest.raises(UserError, match="--name"):
        zf.safe_name(name, what="--name")


@pytest.mark.parametrize("name", ["conv1", "fc6", "topk_conv5", "a.b-c+d", "0"])
def test_safe_name_keeps_safe_names(name):
    assert zf.safe_name(name) == name == zf.safe_name(name, what="x")


def test_safe_join(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert zf.safe_join(root, "a", "b.png") == os.path.join(root, "a", "b.png")
    for bad in (("..", "x"), ("/etc/x",), ("a/../../x",)):
        with pytest.raises(UserError, match="outside the output folder"):
            zf.safe_join(root, *bad)
    os.symlink(tmp_path, root / "link")
    with pytest.raises(UserError, match="outside"):
        zf.safe_join(root, "link", "x.png")


_HOLD = textwrap.dedent("""
    import sys, time
    from zfscratch.util.files import FolderLock
    with FolderLock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(30)
""")


def test_folder_lock_second_process_refused(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"in use by another zfscratch process \(pid {p.pid}\)"):
            zf.FolderLock(out, what="--out").acquire()
    finally:
        p.kill()
        p.wait()
    # the holder is gone (kill -9): the lock goes with it
    with zf.FolderLock(out) as lk:
        with zf.FolderLock(out):  # re-entrant in one process
            pass
        assert (out / zf.LOCK_NAME).exists()
        assert lk._key is not None
    assert not (out / zf.LOCK_NAME).exists()


def test_stale_temps_removed_at_lock(tmp_path):
    out = tmp_path / "run"
    (out / "snapshots").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = out / f".tmp-{dead}-abc-checkpoint.npz"
    stale2 = out / "snapshots" / f".tmp-{dead}-x-epoch_0001.npz"
    live = out / f".tmp-{os.getpid()}-abc-weights.npz"
    other = out / ".tmpfoo"  # not our naming
    for f in (stale, stale2, live, other):
        f.write_bytes(b"x" * 10)
    target = tmp_path / "precious"
    target.write_text("keep")
    os.symlink(target, out / f".tmp-{dead}-link")
    with zf.FolderLock(out):
        pass
    assert not stale.exists() and not stale2.exists()
    assert live.exists() and other.exists() and target.read_text() == "keep"


def test_planted_manifest_cannot_make_links_or_crash(tmp_path):
    import json

    from zfscratch.pipeline.runner import load_manifest
    from zfscratch.report import render_block, safe_href
    for bad in ("javascript:alert(1)", " JavaScript:x", "data:text/html,x", "http://evil/x.png", "/etc/passwd",
                "../x.png", "a/../../x.png", "java\nscript:x"):
        assert safe_href(bad) == ""
        assert "href" not in render_block(("fig", bad, "c"))
    assert safe_href("filters/conv1.png") == "filters/conv1.png"
    for text, words in (("[1, 2]", "JSON list"), ("[" * 100000 + "]" * 100000, "manifest"),
                        (json.dumps({"format": "zfscratch-run-manifest", "stages": {"../x": {}}}), "safe name")):
        (tmp_path / "manifest.json").write_text(text)
        with pytest.raises(UserError, match=words):
            load_manifest(tmp_path)
