"""Compute kernels, one module per backend with the same function names (docs/design.md section 3).

``reference`` (plain NumPy, the oracle), ``cpu`` (Numba) and ``gpu`` (CuPy). Modules are imported
lazily, so importing this package never imports numba or cupy.
"""
from __future__ import annotations

import importlib

#: every kernel a backend module must define (signatures and semantics: docs/design.md section 3)
REQUIRED = (
    "conv2d_forward", "conv2d_backward", "conv2d_backward_data",
    "maxpool_forward", "maxpool_backward",
    "relu_forward", "relu_backward",
    "lrn_forward", "lrn_backward",
    "lcn_forward", "lcn_backward",
    "softmax_xent",
)
#: the same tuple under its older name
CONTRACT = REQUIRED

#: kernels a backend may define (faster paths); callers get them through :func:`optional` and fall back
#: to the NumPy formula (the reference's function of the same name) when a backend lacks one
OPTIONAL = {
    "matmul": "matmul(a, b) -> a @ b for 2-D arrays",
    "linear_forward": "linear_forward(x, w, b) -> x @ w.T + b (b may be None)",
    "linear_backward": "linear_backward(dy, x, w, gw, gb) -> dx; gw += dy.T @ x, gb += dy.sum(0) in place",
    "sgd_update": "sgd_update(p, g, v, lr, momentum, weight_decay): v = m*v - lr*(g + wd*p); p += v, in place",
    "clear_workspaces": "clear_workspaces(): free the calling thread's scratch buffers",
}


def optional(module, name):
    """The optional kernel ``name`` (a key of :data:`OPTIONAL`) of a kernel module, or None when it has none.

    Raises KeyError for a name that is not declared in :data:`OPTIONAL` (so a typo cannot silently
    disable a fast path)."""
    if name not in OPTIONAL:
        raise KeyError(f"{name!r} is not an optional kernel; declared: {', '.join(OPTIONAL)}")
    return getattr(module, name, None)


def missing(module):
    """The :data:`REQUIRED` kernels ``module`` does not define (empty for a complete backend)."""
    return [k for k in REQUIRED if not callable(getattr(module, k, None))]


KERNEL_MODULES = ("reference", "cpu", "gpu")


def get_kernels(name):
    """Import and return the kernel module ``name`` (one of :data:`KERNEL_MODULES`).

    Raises
    ------
    ValueError
        for an unknown name.
    ImportError
        when the module's dependency (numba, cupy) is missing.
    """
    if name not in KERNEL_MODULES:
        raise ValueError(f"unknown kernel module {name!r}; expected one of {', '.join(KERNEL_MODULES)}")
    return importlib.import_module(f"{__name__}.{name}")


def available():
    """Names of the kernel modules that import on this machine (cheap checks; cupy needs a GPU)."""
    names = ["reference"]
    try:
        get_kernels("cpu")
        names.append("cpu")
    except ImportError:
        pass
    try:
        mod = get_kernels("gpu")
        if mod.is_available():
            names.append("gpu")
    except ImportError:
        pass
    return names
