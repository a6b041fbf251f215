"""Mini-batch iterator: shuffling, deterministic sharding over workers, exact resume.

Sharding (docs/design.md section 9): every epoch has one permutation of ``0..N-1`` drawn from
``(seed, epoch)`` -- the same on every worker. The epoch is consumed in global steps of
``batch_size * world_size`` indices; worker ``rank`` takes every ``world_size``-th index of each
step, starting at ``rank``. So across the workers every index appears exactly once per epoch, and
the state -- ``(epoch, position)``, ``position`` = indices of the permutation consumed so far in the
epoch -- is global: a checkpoint written by one worker resumes on any number of workers.

With ``drop_last=False`` the last step may be short, and ranks may then get batches that differ by
one image (a rank whose share is empty skips that step); multi-worker training should use
``drop_last=True`` so that every worker runs the same number of equal steps.

Augmentation is reproducible: the transform gets a ``numpy.random.Generator`` seeded from
``(seed, epoch, position, rank)``, or, with ``sample_keys=True``, a
:class:`zfscratch.samplerng.SampleRNG` keyed by ``(seed, epoch, global index)`` of each sample, so
that a sample's crop and flip do not depend on the number of workers (data-parallel training).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import UserError
from .transforms import ToFloat

__all__ = ["BatchIterator"]


class BatchIterator:
    """Iterate over ``dataset`` in batches of float32 NCHW images and int64 labels.

    Parameters
    ----------
    dataset : any dataset of :mod:`zfscratch.data` (``get_batch(indices)``, ``len``).
    batch_size : images per batch *per worker*.
    shuffle : a new permutation each epoch (else the natural order).
    seed : seeds the permutations and the augmentation.
    rank, world_size : this worker and the number of workers.
    transform : ``t(uint8 (B,H,W,3), rng) -> float32 (B,C,h,w)`` (e.g.
        :func:`zfscratch.data.transforms.train_transform`), or a ``zfscratch.preprocess.Preprocess``
        (then ``augment`` picks ``Preprocess.augment`` (random crops/flips) or its centre view), or
        None: ``ToFloat()``, i.e. ``x / 64`` without mean subtraction.
    drop_last : drop the last, short global step of each epoch.
    augment : only for a ``Preprocess`` transform, see above.
    return_indices : also yield the dataset indices of the batch (``(x, y, idx)``).
    sample_keys : augmentation drawn per sample (see the module docstring).
    yield_empty : yield ``(None, empty labels[, empty indices])`` for a global step in which this
        worker's share is empty instead of skipping it (so that every worker runs every step's
        collectives). After each batch, ``last_step`` is ``(epoch, start position, global step size)``.

    Use ``for x, y in it`` to run the rest of the current epoch (then the epoch counter advances);
    ``state_dict()`` after any batch, ``load_state_dict()`` on a fresh iterator resumes at the next
    batch with identical data and augmentation.
    """

    def __init__(self, dataset, batch_size, shuffle=True, seed=0, rank=0, world_size=1,
                 transform=None, drop_last=False, augment=False, return_indices=False, sample_keys=False,
                 yield_empty=False):
        batch_size, rank, world_size = int(batch_size), int(rank), int(world_size)
        if batch_size < 1:
            raise UserError(f"batch size {batch_size}: expected at least 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank {rank} / world size {world_size}: expected 0 <= rank < world_size")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.transform = ToFloat() if transform is None else transform
        self.drop_last = bool(drop_last)
        self.augment = bool(augment)
        self.return_indices = bool(return_indices)
        self.sample_keys = bool(sample_keys)
        self.yield_empty = bool(yield_empty)
        self.last_step = None
        self.epoch = 0
        self.position = 0
        self._perm_cache = (None, None)

    # -- geometry ------------------------------------------------------------------------------
    @property
    def n(self):
        return len(self.dataset)

    @property
    def global_batch(self):
        return self.batch_size * self.world_size

    def steps_per_epoch(self):
        """Global steps per epoch (this worker yields at most this many batches)."""
        if self.drop_last:
            return self.n // self.global_batch
        return math.ceil(self.n / self.global_batch)

    def __len__(self):
        return self.steps_per_epoch()

    def permutation(self, epoch):
        """The epoch's order of dataset indices (identical on every worker)."""
        if self._perm_cache[0] == epoch:
            return self._perm_cache[1]
        if self.shuffle:
            perm = np.random.default_rng([self.seed, int(epoch), 0x5EED]).permutation(self.n)
        else:
            perm = np.arange(self.n)
        self._perm_cache = (epoch, perm)
        return perm

    def shard_indices(self, epoch=None):
        """All indices this worker sees in ``epoch`` (default: the current one), in order."""
        epoch = self.epoch if epoch is None else epoch
        perm = self.permutation(epoch)
        out = []
        for s in range(self.steps_per_epoch()):
            out.append(perm[s * self.global_batch:(s + 1) * self.global_batch][self.rank::self.world_size])
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    # -- iteration -------------------------------------------------------------------------------
    def _apply(self, images, rng):
        t = self.transform
        if hasattr(t, "augment") and hasattr(t, "prepare"):  # zfscratch.preprocess.Preprocess
            return t.augment(t.prepare(images), rng) if self.augment else t(images)
        return t(images, rng)

    def __iter__(self):
        n, gb = self.n, self.global_batch
        steps = self.steps_per_epoch()
        while self.position < steps * gb and self.position < n:
            start, ep = self.position, self.epoch
            chunk = self.permutation(ep)[start:start + gb]
            mine = chunk[self.rank::self.world_size]
            self.position = start + len(chunk)
            if self.position >= min(n, steps * gb):
                self.epoch += 1
                self.position = 0
                epoch_done = True
            else:
                epoch_done = False
            self.last_step = (ep, start, len(chunk))
            if mine.size == 0:
                if self.yield_empty:
                    empty = np.zeros(0, np.int64)
                    yield (None, empty, mine) if self.return_indices else (None, empty)
                if epoch_done:
                    return
                continue
            images, labels = self.dataset.get_batch(mine)
            if self.sample_keys:
                from ..samplerng import SampleRNG
                rng = SampleRNG(self.seed, ep, mine, stream=0xA06)
            else:
                rng = np.random.default_rng([self.seed, ep, start, self.rank, 0xA06])
            x = self._apply(images, rng)
            if self.return_indices:
                yield x, labels, mine
            else:
                yield x, labels
            if epoch_done:
                return
        # an epoch with nothing left (e.g. drop_last and fewer images than one global step)
        if self.position != 0 or steps == 0:
            self.epoch += 1
            self.position = 0

    def epochs(self, count):
        """Iterate ``count`` epochs from the current state."""
        for _ in range(count):
            yield from self

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self):
        """Everything needed to resume exactly (JSON-able)."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "shuffle": self.shuffle, "n": self.n, "batch_size": self.batch_size,
                "world_size": self.world_size, "drop_last": self.drop_last}

    def load_state_dict(self, state):
        """Resume from :meth:`state_dict`. The dataset size, seed and shuffle flag must match;
        batch size and world size may differ (the position is global)."""
        if int(state["n"]) != self.n:
            raise UserError(f"iterator state is for a dataset of {state['n']} images, this one has {self.n}")
        if int(state["seed"]) != self.seed or bool(state["shuffle"]) != self.shuffle:
            raise UserError("iterator state has a different seed or shuffle setting")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        if not 0 <= self.position <= self.n:
            raise UserError(f"iterator state position {self.position} out of range 0..{self.n}")
