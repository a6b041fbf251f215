"""zfscratch: ZFNet and its DeconvNet (Zeiler & Fergus 2014) from scratch."""
import importlib.abc as _abc
import importlib.util as _util
import os as _os
import sys as _sys

__version__ = "0.1.0"


def _numba_cache_dir():
    """Numba's on-disk cache goes to a user cache folder, never into the installed package.

    A cache written beside a non-editable install survives ``pip uninstall`` (pip removes only the
    files it installed) and the leftover ``zfscratch/kernels/__pycache__`` folder used to shadow the
    package. ``NUMBA_CACHE_DIR`` set by the user wins.
    """
    if _os.environ.get("NUMBA_CACHE_DIR"):
        return
    base = _os.environ.get("XDG_CACHE_HOME") or _os.path.join(_os.path.expanduser("~"), ".cache")
    for d in (_os.path.join(base, "zfscratch", "numba"),
              _os.path.join(__import__("tempfile").gettempdir(), f"zfscratch-numba-{_os.getuid()}")):
        try:
            _os.makedirs(d, mode=0o700, exist_ok=True)
            if _os.access(d, _os.W_OK):
                _os.environ["NUMBA_CACHE_DIR"] = d
                if "numba" in _sys.modules:  # imported before us: tell its config too
                    try:
                        _sys.modules["numba"].config.CACHE_DIR = d
                    except AttributeError:
                        pass
                return
        except OSError:
            continue


_numba_cache_dir()


class _KernelsFinder(_abc.MetaPathFinder):
    """Resolve ``zfscratch.kernels`` to the folder that holds its ``__init__.py`` (installed copy, or
    the repository's ``kernels/`` beside this package), never to a namespace package made of leftover
    ``__pycache__`` folders elsewhere on the path."""

    NAME = __name__ + ".kernels"

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.NAME:
            return None
        here = _os.path.dirname(_os.path.abspath(__file__))
        for d in (_os.path.join(here, "kernels"), _os.path.join(_os.path.dirname(here), "kernels")):
            init = _os.path.join(d, "__init__.py")
            if _os.path.isfile(init):
                return _util.spec_from_file_location(fullname, init, submodule_search_locations=[d])
        return None  # let the normal machinery (e.g. an editable-install finder) decide


if not any(isinstance(f, _KernelsFinder) or type(f).__name__ == "_KernelsFinder" for f in _sys.meta_path):
    _sys.meta_path.insert(0, _KernelsFinder())
