"""Fault injection for the reliability tests: a seam in the training loop, not code inside it.

The :class:`~zfscratch.train.trainer.Trainer` calls three hooks of the object it is given (default:
:meth:`FaultInjection.from_environment`): ``before_step(step)`` before each optimizer step's forward
pass, ``loss(step, loss) -> loss`` with the step's loss before it is checked, and ``after_step(step)``
once the step (and its checkpoint, if one is due) is done. Steps count from 1. The environment
variables, read once when training starts:

``ZFSCRATCH_TEST_KILL_AT_STEP=N``
    SIGKILL the process right after optimizer step N (after that step's checkpoint, if one is due);
``ZFSCRATCH_TEST_NAN_AT_STEP=N``
    replace the loss of step N with NaN;
``ZFSCRATCH_TEST_FAIL_RANK=R:N`` / ``ZFSCRATCH_TEST_HANG_RANK=R:N``
    make MPI rank R raise an error / hang (sleep) before step N, to test that one rank's failure stops
    every rank.
"""
from __future__ import annotations

import os
import signal
import time

KILL_ENV = "ZFSCRATCH_TEST_KILL_AT_STEP"
NAN_ENV = "ZFSCRATCH_TEST_NAN_AT_STEP"
RANK_FAIL_ENV = "ZFSCRATCH_TEST_FAIL_RANK"
RANK_HANG_ENV = "ZFSCRATCH_TEST_HANG_RANK"


class FaultInjection:
    """Faults to inject into a training run; 0 / empty = none.

    Parameters
    ----------
    kill_at : step after which the process is SIGKILLed
    nan_at : step whose loss becomes NaN
    rank_faults : ``[(step, "fail" | "hang"), ...]`` for this process's rank
    """

    def __init__(self, kill_at=0, nan_at=0, rank_faults=()):
        self.kill_at, self.nan_at = int(kill_at), int(nan_at)
        self.rank_faults = list(rank_faults)

    @classmethod
    def from_environment(cls, rank=0, environ=None):
        """The faults the test environment variables ask for (see the module docstring), for ``rank``."""
        env = os.environ if environ is None else environ
        rank_faults = []
        for var, act in ((RANK_FAIL_ENV, "fail"), (RANK_HANG_ENV, "hang")):
            v = env.get(var, "")
            if ":" in v:
                r, n = (int(p) for p in v.split(":", 1))
                if r == rank:
                    rank_faults.append((n, act))
        return cls(int(env.get(KILL_ENV, "0") or 0), int(env.get(NAN_ENV, "0") or 0), rank_faults)

    def before_step(self, step):
        """Called before optimizer step ``step``'s forward pass."""
        for n, act in self.rank_faults:
            if step == n and act == "fail":
                raise OSError(f"injected failure at step {step} (${RANK_FAIL_ENV})")
            if step == n and act == "hang":
                time.sleep(3600)

    def loss(self, step, loss):
        """The loss of optimizer step ``step`` as the loop should see it."""
        return float("nan") if self.nan_at and step == self.nan_at else loss

    def after_step(self, step):
        """Called when step ``step`` is complete (weights updated, checkpoint written if due)."""
        if self.kill_at and step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
