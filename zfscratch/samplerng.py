"""Random numbers keyed by the sample, not by the batch: the same draws whatever the batch split.

Data-parallel training splits each global batch over K workers. If augmentation and dropout drew
from one generator per batch (or per layer), the draws a sample gets would depend on which worker
holds it and on its position in the local batch, so K-worker training would not reproduce
single-process training. :class:`SampleRNG` instead gives every sample its own counter-based stream
keyed by ``(seed, epoch, global sample index, stream)``: draw ``t`` of sample ``i`` is a pure
function of those numbers and ``t``, computed with SplitMix64 (Steele, Lea and Flood 2014) in
vectorized ``uint64`` NumPy arithmetic.

It duck-types the part of ``numpy.random.Generator`` the transforms use (``random(size)`` and
``integers(low, high, size)``, first dimension = the samples), so
:func:`zfscratch.data.transforms.random_crop`/``random_flip`` and ``Preprocess.augment`` take it
unchanged; :class:`zfscratch.layers.Dropout` uses :meth:`SampleRNG.stream` for its masks.
"""
from __future__ import annotations

import numpy as np

__all__ = ["SampleRNG"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11, _S32 = (np.uint64(s) for s in (30, 27, 31, 11, 32))
_INV53 = 1.0 / (1 << 53)


def _mix(z):
    """SplitMix64's output function on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _key(parts, indices):
    """One uint64 key per index from the integers ``parts`` and the index."""
    with np.errstate(over="ignore"):
        h = np.full(indices.shape, 0x6A09E667F3BCC908, np.uint64)
        for p in (*parts, None):
            c = indices.astype(np.uint64) if p is None else np.uint64(int(p) & 0xFFFFFFFFFFFFFFFF)
            h = _mix(h ^ (c + _GOLDEN))
        return h


class SampleRNG:
    """Per-sample random streams for a batch.

    Parameters
    ----------
    seed, epoch : int
    indices : int array (B,), the global dataset indices of the batch's samples, in batch order.
    stream : int, separates independent uses (augmentation, each dropout layer).

    Every call draws the next values of each sample's stream (a call counter), so a sequence of
    calls made in the same order gives the same values per sample whatever else is in the batch.
    """

    def __init__(self, seed, epoch, indices, stream=0):
        self.seed, self.epoch, self.stream_id = int(seed), int(epoch), int(stream)
        self.indices = np.asarray(indices, np.int64).reshape(-1)
        self._keys = _key((self.seed, self.epoch, self.stream_id), self.indices)
        self._calls = 0

    def __len__(self):
        return self.indices.size

    def stream(self, stream):
        """An independent :class:`SampleRNG` for the same samples (e.g. one per dropout layer)."""
        return SampleRNG(self.seed, self.epoch, self.indices, stream=(self.stream_id << 20) ^ int(stream))

    def _bits(self, size):
        shape = (size,) if np.isscalar(size) else tuple(int(s) for s in size)
        if not shape or shape[0] != self.indices.size:
            raise ValueError(f"SampleRNG: size {shape} must start with the number of samples "
                             f"({self.indices.size})")
        per = int(np.prod(shape[1:], dtype=np.int64))
        call = np.uint64(self._calls)
        self._calls += 1
        with np.errstate(over="ignore"):
            j = np.arange(1, per + 1, dtype=np.uint64) + (call << _S32)
            z = self._keys[:, None] + j[None, :] * _GOLDEN
            return _mix(z).reshape(shape)

    def random(self, size):
        """Uniform floats in [0, 1) (float64, 53 random bits), shape ``size`` = (samples, ...)."""
        return (self._bits(size) >> _S11).astype(np.float64) * _INV53

    def integers(self, low, high=None, size=None):
        """Integers in ``[low, high)`` (``[0, low)`` when ``high`` is None), shape ``size``."""
        if high is None:
            low, high = 0, low
        span = int(high) - int(low)
        if span < 1:
            raise ValueError(f"SampleRNG.integers: empty range [{low}, {high})")
        u = self.random(self.indices.size if size is None else size)
        return np.minimum((u * span).astype(np.int64), span - 1) + int(low)
