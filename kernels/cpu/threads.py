"""Thread plumbing of the split GEMMs: NumPy's BLAS thread count and the worker pool."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from zfscratch.util import threads as _threads

# OpenBLAS's own threads busy-wait (sched_yield loops) for their next job. On 2 cores, and even more
# on a machine shared with other jobs, they then fight the threads that have work: measured under
# load, a 2-thread OpenBLAS sgemm ran 1.2-4x slower than two single-threaded sgemms on the two halves
# of the product in two threads. So the convolutions split each GEMM by columns over Numba's thread
# count themselves (NUMBA_NUM_THREADS / numba.set_num_threads), every part running single-threaded
# BLAS; nothing spins while another kernel runs. Elsewhere NumPy's BLAS keeps its own setting.
class _BlasThreads:
    """``get()``/``set(n)`` of the thread count of NumPy's BLAS (:mod:`zfscratch.util.threads`, i.e.
    threadpoolctl); both ``None`` when no BLAS could be found, and then no GEMM is split."""

    def __init__(self):
        ctl = _threads.blas_controllers()
        self.get = self.set = None
        if ctl:
            self.get = _threads.get_blas_threads
            self.set = _threads.set_blas_threads


_BLAS = _BlasThreads()
_BLAS_LOCK = threading.Lock()
_BLAS_USERS = [0, None]  # [kernels inside a split GEMM, thread count to restore]
_GEMM_POOL = [None, 0]  # [ThreadPoolExecutor, its size]
#: products smaller than this (multiply-adds) are not split



def _blas_single(enter):
    """Make NumPy's BLAS single-threaded while any split GEMM runs (nesting-safe), then restore it."""
    with _BLAS_LOCK:
        if enter:
            if _BLAS_USERS[0] == 0:
                _BLAS_USERS[1] = _BLAS.get()
                _BLAS.set(1)
            _BLAS_USERS[0] += 1
        else:
            _BLAS_USERS[0] -= 1
            if _BLAS_USERS[0] == 0:
                _BLAS.set(_BLAS_USERS[1])


def _gemm_pool(nt):
    """The worker threads (``nt - 1`` of them; the caller is the other) of the split GEMMs."""
    with _BLAS_LOCK:
        if _GEMM_POOL[1] < nt - 1:  # grows only: a pool another thread is using is never shut down
            _GEMM_POOL[0] = ThreadPoolExecutor(nt - 1, thread_name_prefix="zfscratch-gemm")
            _GEMM_POOL[1] = nt - 1
        return _GEMM_POOL[0]


def _run_blocks(nt, nblocks, work):
    """Call ``work(i)`` for ``i < nblocks`` on ``nt`` threads (the caller and ``nt - 1`` pool workers),
    each thread taking the next block when it is done (dynamic: a thread slowed down by another job
    on its core takes fewer blocks). BLAS is single-threaded meanwhile."""
    blocks = iter(range(nblocks))
    lock = threading.Lock()

    def loop():
        while True:
            with lock:
                i = next(blocks, None)
            if i is None:
                return
            work(i)

    pool = _gemm_pool(nt)
    _blas_single(True)
    try:
        futs = [pool.submit(loop) for _ in range(nt - 1)]
        loop()
        for f in futs:
            f.result()
    finally:
        _blas_single(False)
