"""Small numerical helpers shared by evaluation and the experiments."""
from __future__ import annotations

import numpy as np


def softmax(logits):
    """Row-wise softmax of host logits, in float64 for accuracy.

    logits : (N, K) array-like -> (N, K) float64, rows summing to 1 (max subtracted first).
    """
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
