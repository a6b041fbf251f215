"""Thread control: NumPy's BLAS (through ``threadpoolctl``), Numba's parallel loops, PyTorch when loaded.

``threadpoolctl`` finds the BLAS libraries loaded in the process (OpenBLAS, MKL, BLIS, whatever NumPy
was built with) and calls their own thread functions; it replaces the ``/proc/self/maps`` + ctypes
look-ups this project used to carry twice. When it is not installed every function here degrades to
"cannot tell" (``None`` / ``False``), and the CPU kernels then do not split their GEMMs.
"""
from __future__ import annotations

import os
import sys
import threading

_LOCK = threading.Lock()
_CONTROLLERS = [None]  # the BLAS LibControllers, found once (the libraries stay loaded)


def blas_controllers(refresh=False):
    """threadpoolctl's controllers of the BLAS libraries loaded now (``[]`` without threadpoolctl).

    Found once and cached: scanning the loaded libraries costs about a millisecond, and the CPU
    kernels switch the BLAS to one thread around every split GEMM. ``refresh`` scans again (after a
    library with its own BLAS, e.g. torch, was imported).
    """
    with _LOCK:
        if _CONTROLLERS[0] is None or refresh:
            try:
                import numpy  # noqa: F401  (loads NumPy's BLAS first)
                from threadpoolctl import ThreadpoolController
                _CONTROLLERS[0] = list(ThreadpoolController().select(user_api="blas").lib_controllers)
            except ImportError:
                _CONTROLLERS[0] = []
        return _CONTROLLERS[0]


def get_blas_threads():
    """Thread count of NumPy's BLAS (the first BLAS loaded), or None when it cannot be asked."""
    ctl = blas_controllers()
    return int(ctl[0].get_num_threads()) if ctl else None


def set_blas_threads(n):
    """Set the thread count of every loaded BLAS at run time; True when some BLAS accepted it."""
    ctl = blas_controllers()
    for c in ctl:
        c.set_num_threads(int(n))
    return bool(ctl)


def blas_info():
    """Short description of the BLAS NumPy uses (name, version, threads per library) when NumPy can tell."""
    import numpy as np
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        desc = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older numpy: no dict mode
        desc = "unknown"
    threads = [f"{c.internal_api}:{c.get_num_threads()}" for c in blas_controllers()]
    if threads:
        desc += f" (threads {', '.join(threads)})"
    return desc


def set_threads(n):
    """Use ``n`` threads in Numba's parallel loops and in the BLAS (and in PyTorch when imported).

    Returns a dict of what was set. Numba cannot go above the ``NUMBA_NUM_THREADS`` it started with.
    """
    n = int(n)
    out = {"requested": n}
    try:
        import numba
        limit = numba.config.NUMBA_NUM_THREADS
        numba.set_num_threads(min(n, limit))
        out["numba"] = min(n, limit)
    except ImportError:
        pass
    out["blas"] = n if set_blas_threads(n) else None
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
        out["torch"] = n
    return out


def thread_info():
    """Current thread counts: CPUs, numba (and its threading layer), BLAS, torch (when imported)."""
    info = {"cpus": os.cpu_count()}
    try:
        import numba
        info["numba"] = int(numba.get_num_threads())
        try:
            info["numba_layer"] = numba.threading_layer()
        except ValueError:  # no parallel region has run yet
            info["numba_layer"] = None
    except ImportError:
        info["numba"] = None
    info["blas"] = get_blas_threads()
    if "torch" in sys.modules:
        info["torch"] = int(sys.modules["torch"].get_num_threads())
    return info
