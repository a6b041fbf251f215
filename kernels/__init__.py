"""Compute kernels, one module per backend with the same function names (DESIGN §3).

``reference`` (plain NumPy, the oracle), ``cpu`` (Numba) and ``gpu`` (CuPy). Modules are imported
lazily, so importing this package never imports numba or cupy.
"""
from __future__ import annotations

import importlib

#: every kernel of the contract; a backend module must define all of them
CONTRACT = (
    "conv2d_forward", "conv2d_backward", "conv2d_backward_data",
    "maxpool_forward", "maxpool_backward",
    "relu_forward", "relu_backward",
    "lrn_forward", "lrn_backward",
    "lcn_forward", "lcn_backward",
    "softmax_xent",
)

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
