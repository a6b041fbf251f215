"""Backends: which array module (numpy or cupy) and which kernel module a network runs on.

Layers call ``self.backend.kernels.<kernel>(...)`` and ``self.backend.xp`` and never import numba
or cupy themselves, so a new backend joins the registry below without touching the layers.

===========  =============  ==========================================
name         array module   kernels
===========  =============  ==========================================
``numpy``    numpy          ``zfscratch.kernels.reference`` (the oracle)
``numba``    numpy          ``zfscratch.kernels.cpu`` (CPU default)
``cupy``     cupy           ``zfscratch.kernels.gpu``
===========  =============  ==========================================

``auto`` (the default, overridable with the ``ZFSCRATCH_BACKEND`` environment variable) picks cupy
when a GPU is usable, else numba, else numpy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from zfscratch import kernels as _kernels

#: backend name -> kernel module name
REGISTRY = {"numpy": "reference", "numba": "cpu", "cupy": "gpu"}
AUTO_ORDER = ("cupy", "numba", "numpy")


class BackendError(ValueError):
    """A backend was asked for that does not exist or cannot run here."""


@dataclass
class Backend:
    """A compute backend.

    Attributes
    ----------
    name : str
        ``numpy``, ``numba`` or ``cupy``.
    xp : module
        numpy or cupy: the array module of every array the layers hold.
    kernels : module
        The kernel module (docs/design.md section 3 contract).
    """

    name: str
    xp: object = field(repr=False)
    kernels: object = field(repr=False)

    def to_device(self, a, dtype=None):
        """Host (numpy) or device array -> an array of this backend (contiguous)."""
        if self.xp is np:
            if hasattr(a, "get"):  # a cupy array coming back to the host
                a = a.get()
            return np.ascontiguousarray(a, dtype=dtype)
        return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))

    def to_host(self, a):
        """An array of any backend -> numpy array."""
        if hasattr(a, "get"):
            return a.get()
        return np.asarray(a)

    def synchronize(self):
        """Wait for queued device work (no-op on the CPU); used by benchmarks."""
        if self.xp is not np:
            self.xp.cuda.Device().synchronize()


_CACHE: dict = {}


def _make(name):
    mod = _kernels.get_kernels(REGISTRY[name])
    if name == "cupy":
        if not mod.is_available():
            raise BackendError("backend 'cupy' needs CuPy and a usable CUDA GPU; none found")
        import cupy as xp  # only reached when the cupy backend is asked for
    else:
        xp = np
    return Backend(name, xp, mod)


def available_backends():
    """Names of the backends that work on this machine, fastest first."""
    out = []
    for name in AUTO_ORDER:
        try:
            get_backend(name)
            out.append(name)
        except (BackendError, ImportError):
            pass
    return out


def get_backend(name=None):
    """Return the :class:`Backend` called ``name``.

    Parameters
    ----------
    name : str or Backend or None
        ``numpy``, ``numba``, ``cupy``, ``auto``; None reads ``ZFSCRATCH_BACKEND`` (default auto).

    Raises
    ------
    BackendError
        unknown name, or the backend's dependency is missing.
    """
    if isinstance(name, Backend):
        return name
    if name is None:
        name = os.environ.get("ZFSCRATCH_BACKEND", "auto") or "auto"
    name = name.lower()
    if name == "auto":
        for cand in AUTO_ORDER:
            try:
                return get_backend(cand)
            except (BackendError, ImportError):
                continue
        raise BackendError("no backend available")  # pragma: no cover - numpy always works
    if name not in REGISTRY:
        raise BackendError(f"unknown backend {name!r}; expected one of auto, {', '.join(REGISTRY)}")
    if name not in _CACHE:
        try:
            _CACHE[name] = _make(name)
        except ImportError as e:
            raise BackendError(f"backend {name!r} is not available: {e}") from None
    return _CACHE[name]


def resolve_backend(name, option="--backend"):
    """:func:`get_backend` for a user-given name (a CLI ``--backend`` value, a ``backend=`` argument):
    a one-line :class:`~zfscratch.errors.UserError` naming ``option`` when it cannot run here."""
    from zfscratch.errors import UserError
    try:
        return get_backend(name)
    except BackendError as e:
        raise UserError(f"{option}: {e}") from None
