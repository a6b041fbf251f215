"""Files written by zfscratch: atomic writes that honour the umask, safe names and joins, a folder lock.

Every file zfscratch writes goes through :func:`atomic_write_bytes` (or its text / npz twins): a
temporary file ``.tmp-<pid>-<random>-<name>`` in the destination folder, ``fsync``, then
``os.replace``. A crash leaves the old file or the new one, never half of one; the temporary file of a
killed process is removed by :func:`clean_stale_temps` at the next start in that folder. The new file
gets mode ``0o666 & ~umask`` (what ``open()`` would give) or keeps the mode of the file it replaces --
``mkstemp`` alone would make every file ``0600``.

Names that come from outside (layer names in a weights file, ``--name``, class folders, stage names
in a manifest) become file names only through :func:`safe_name`, and paths under an output folder
are built with :func:`safe_join`, which refuses anything that resolves outside it.
:class:`FolderLock` keeps two zfscratch processes from writing into one output folder.
"""
from __future__ import annotations

import errno
import io as _io
import os
import re
import stat
import tempfile
import threading

from zfscratch.errors import UserError

TEMP_PREFIX = ".tmp-"
LOCK_NAME = ".zfscratch.lock"
#: longest file-name component :func:`safe_name` returns (common file systems allow 255 bytes)
MAX_NAME = 100


# ---------------------------------------------------------------------------------------------
# umask and atomic writes
# ---------------------------------------------------------------------------------------------

def current_umask():
    """The process umask, read without changing it where the OS allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it; keep the window short
        m = os.umask(0o022)
        os.umask(m)
    return m


_UMASK_LOCK = threading.Lock()


def _write_error(path, e):
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return UserError(f"cannot write {path}: no space left on device")
    return UserError(f"cannot write {path}: {getattr(e, 'strerror', None) or e}")


def atomic_write_bytes(path, data, mode=None):
    """Write ``data`` (bytes) to ``path`` atomically, honouring the umask.

    Parameters
    ----------
    path : str or PathLike; its folder is created if needed.
    data : bytes-like
    mode : int, optional. Permission bits of the new file; default: those of the file being replaced,
        else ``0o666 & ~umask``.

    Raises
    ------
    UserError
        the folder cannot be created or written (including a full disk: ENOSPC), one line naming ``path``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if mode is None:
        try:
            st = os.stat(path)
            mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None
        except OSError:
            mode = None
        if mode is None:
            mode = 0o666 & ~current_umask()
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-",
                                   suffix="-" + os.path.basename(path)[:80], dir=folder)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise _write_error(path, e) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def atomic_write_text(path, text, mode=None):
    """Atomic write of a UTF-8 text file (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_npz(path, arrays, mode=None):
    """Write ``arrays`` (name -> array) as an uncompressed ``.npz`` atomically; object arrays are refused."""
    import numpy as np

    payload = {}
    for k, v in arrays.items():
        a = np.asarray(v)
        if a.dtype.hasobject:
            raise ValueError(f"array {k!r} has dtype object; refusing to pickle it")
        payload[k] = a
    buf = _io.BytesIO()
    np.savez(buf, **payload)
    atomic_write_bytes(path, buf.getbuffer(), mode=mode)


def _pid_alive(pid):
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


_TEMP_RE = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)-")


def clean_stale_temps(folder, depth=2):
    """Remove temporary files of our own naming (``.tmp-<pid>-...``) left by dead processes.

    Only regular files whose name starts with ``.tmp-`` are touched, never through a symbolic link,
    and only when the writing process (the pid in the name) is gone; ``.tmp-`` files of the older
    naming without a pid are removed when older than an hour. Looks ``depth`` folder levels deep.

    Returns
    -------
    list of removed paths
    """
    import time

    removed = []
    folder = os.fspath(folder)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False):
                if depth > 0 and not e.name.startswith("."):
                    removed += clean_stale_temps(e.path, depth - 1)
                continue
            if not e.name.startswith(TEMP_PREFIX) or not e.is_file(follow_symlinks=False):
                continue
            m = _TEMP_RE.match(e.name)
            if m:
                if _pid_alive(int(m.group(1))):
                    continue
            elif time.time() - e.stat(follow_symlinks=False).st_mtime < 3600:
                continue
            os.unlink(e.path)
            removed.append(e.path)
        except OSError:
            continue
    return removed


# ---------------------------------------------------------------------------------------------
# names and paths
# ---------------------------------------------------------------------------------------------

_SAFE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*\Z")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.+-]")


def is_safe_name(s):
    """True when ``s`` is usable as one file-name component as it is (see :func:`safe_name`)."""
    return isinstance(s, str) and 0 < len(s) <= MAX_NAME and bool(_SAFE_RE.match(s))


def safe_name(s, what=None):
    """A file-name component made from an outside name (layer, class, stage, ``--name``).

    Parameters
    ----------
    s : the name.
    what : str, optional. When given, a name that is not already safe is refused with a
        :class:`UserError` naming ``what`` instead of being rewritten.

    Returns
    -------
    str
        ``s`` itself when it is safe (letters, digits, ``_ . + -``, not starting with ``.`` or ``-``,
        at most :data:`MAX_NAME` characters); otherwise ``s`` with every other character replaced by
        ``_`` (``/``, ``\\``, ``..``, NUL, ``$``, spaces, ...), a leading ``_`` added when it started
        with ``.`` or ``-``, cut to :data:`MAX_NAME`. Never empty, never ``.`` or ``..``, never a path.
    """
    s = "" if s is None else str(s)
    if is_safe_name(s):
        return s
    if what is not None:
        shown = s if len(s) <= 60 else s[:57] + "..."
        raise UserError(f"{what}: {shown!r} is not a safe name (expected letters, digits, '_', '.', '+', '-', "
                        f"not starting with '.' or '-', at most {MAX_NAME} characters)")
    t = _UNSAFE_CHARS.sub("_", s)
    if not t or t[0] in ".-+":
        t = "_" + t
    return t[:MAX_NAME]


def safe_join(root, *parts):
    """``os.path.join(root, *parts)``, refused (UserError) when it would resolve outside ``root``.

    Symbolic links already on disk are resolved on both sides, so a part like ``../x``, an absolute
    part, or a link inside ``root`` pointing elsewhere cannot escape.
    """
    root = os.fspath(root)
    path = os.path.join(root, *[os.fspath(p) for p in parts])
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise UserError(f"refusing to write {path}: it resolves outside the output folder {root}")
    return path


# ---------------------------------------------------------------------------------------------
# output-folder lock
# ---------------------------------------------------------------------------------------------

_HELD = {}  # realpath -> [fd, count]; the lock is re-entrant within one process
_HELD_LOCK = threading.Lock()


class FolderLock:
    """Exclusive lock on an output folder (``FOLDER/.zfscratch.lock`` with ``flock``), re-entrant.

    A second process asking for the same folder gets a :class:`UserError` naming the holder's pid;
    nothing waits. The lock goes away with the process (``flock``), so a killed run never leaves a
    folder locked. On entry, stale temporary files of dead processes are removed
    (:func:`clean_stale_temps`).

    Examples
    --------
    >>> with FolderLock(out, what="--out"):   # doctest: +SKIP
    ...     train(...)
    """

    def __init__(self, folder, what="output folder"):
        self.folder = os.fspath(folder)
        self.what = what
        self._key = None

    def acquire(self):
        import fcntl

        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as e:
            raise _write_error(self.folder, e) from None
        key = os.path.realpath(self.folder)
        with _HELD_LOCK:
            if key in _HELD:
                _HELD[key][1] += 1
                self._key = key
                return self
            path = os.path.join(key, LOCK_NAME)
            for _ in range(5):
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o666 & ~current_umask())
                except OSError as e:
                    raise _write_error(path, e) from None
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    try:
                        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
                    except OSError:
                        holder = "unknown"
                    os.close(fd)
                    raise UserError(f"{self.what} {self.folder} is in use by another zfscratch process "
                                    f"(pid {holder}); wait for it to finish or choose another folder") from None
                try:  # the file we locked may have been unlinked by a holder releasing it: retry then
                    same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
                except OSError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode("ascii"))
                _HELD[key] = [fd, 1]
                self._key = key
                break
            else:
                raise UserError(f"{self.what} {self.folder}: cannot take the lock {path}")
        clean_stale_temps(key)
        return self

    def release(self):
        if self._key is None:
            return
        with _HELD_LOCK:
            ent = _HELD.get(self._key)
            if ent is not None:
                ent[1] -= 1
                if ent[1] == 0:
                    del _HELD[self._key]
                    try:
                        os.unlink(os.path.join(self._key, LOCK_NAME))
                    except OSError:
                        pass
                    os.close(ent[0])
        self._key = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


# ---------------------------------------------------------------------------------------------
# reading outside files
# ---------------------------------------------------------------------------------------------

def open_regular(path, what="file", max_bytes=None):
    """Open ``path`` for reading in binary mode, only if it is a regular file (at most ``max_bytes``).

    The file is opened non-blocking first, so a FIFO, socket or device named like a data file is
    refused at once instead of hanging; the check is made on the opened descriptor (no race with a
    swap after a ``stat``).

    Raises
    ------
    UserError
        missing, not a regular file, unreadable, or larger than ``max_bytes``; one line naming ``path``.
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise UserError(f"{what} {path} cannot be read: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (FIFO, socket or device)"
            raise UserError(f"{what} {path} is {kind}, expected a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise UserError(f"{what} {path} is {st.st_size} bytes, more than the {max_bytes} allowed")
        if hasattr(os, "O_NONBLOCK"):
            import fcntl
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
