"""Memory figures of this process: page faults (``getrusage``) and peak resident memory of a call.

Shared by ``zfscratch bench`` and the PyTorch process it compares with (:mod:`zfscratch.bench_twin`),
so that both sides are measured the same way.
"""
from __future__ import annotations

import ctypes
import gc


def page_faults():
    """Page faults (minor + major) of this process so far (``getrusage``), or None where unknown."""
    try:
        import resource
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return int(ru.ru_minflt + ru.ru_majflt)
    except (ImportError, OSError):
        return None


def page_faults_per_step(step, sync, steps=3):
    """Mean page faults of one call of ``step`` over ``steps`` calls, after the caller warmed it up.

    A page fault is the kernel mapping a fresh page: a step that reuses its memory takes (almost) none;
    one that allocates large arrays afresh takes one per 4 KiB touched.
    """
    sync()
    f0 = page_faults()
    for _ in range(steps):
        step()
    sync()
    f1 = page_faults()
    return None if f0 is None or f1 is None else (f1 - f0) / steps


def _proc_status_kb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _malloc_trim():
    """Give free C-heap memory back to the OS (glibc), so that RSS shows what is in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_of(fn):
    """Run ``fn()`` once and return ``(peak RSS during it, RSS before it)`` in MiB.

    Resets the kernel's high-water mark first (``/proc/self/clear_refs``); where that is not possible
    the peak is the whole process's (``getrusage``), and the first value says so by being the larger.
    """
    gc.collect()
    _malloc_trim()  # memory freed earlier but still held by the C heap must not count as in use
    before = _proc_status_kb("VmRSS")
    reset = False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        pass
    fn()
    peak = _proc_status_kb("VmHWM") if reset else None
    if peak is None:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return peak / 1024.0, (before or 0) / 1024.0


def step_memory(step, sync, clear=None):
    """Peak RSS of one training step and what it adds to the RSS before it (MiB). ``clear`` frees
    scratch buffers kept between calls, so that they count in the step."""
    if clear is not None:
        clear()
    peak, before = peak_rss_of(lambda: (step(), sync()))
    return dict(step_peak_rss_mb=peak, step_rss_before_mb=before, step_rss_added_mb=max(peak - before, 0.0))
