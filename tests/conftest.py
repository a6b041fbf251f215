"""Shared fixtures and backend parametrization for the test suite."""
import os

import numpy as np
import pytest

from zfscratch.backend import BackendError, get_backend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


def backend_or_skip(name):
    """The backend ``name``, or skip the test when it cannot run here (no numba / no GPU)."""
    try:
        return get_backend(name)
    except (BackendError, ImportError) as e:
        pytest.skip(f"backend {name} unavailable: {e}")


@pytest.fixture(params=["numpy", "numba", "cupy"])
def backend(request):
    """Every backend; skips those not available on this machine."""
    return backend_or_skip(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
