"""Counter-based random numbers (splitmix64): ``u(key, index, k)`` is the same on every machine."""
from __future__ import annotations

import numpy as np
from numba import njit

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


@njit(cache=True)
def _mix(z):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True)
def _uniform(key, idx, k):
    z = _mix(key ^ _mix(np.uint64(idx) * _GOLD + np.uint64(k)))
    return float(z >> _S11) * (1.0 / 9007199254740992.0)


def _key(*parts):
    """A 64-bit stream key from ints/strings (pure Python, same on every platform)."""
    z = 0x243F6A8885A308D3
    mask = (1 << 64) - 1
    for p in parts:
        if isinstance(p, str):
            p = int.from_bytes(p.encode(), "little") % (1 << 61)
        z = (z ^ (int(p) & mask)) & mask
        z = (z + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
    return np.uint64(z)
