"""``zfscratch info`` and ``zfscratch gradcheck``."""
from __future__ import annotations

import os
import platform

ORDER = 90


def register(sub):
    from zfscratch.commands._args import add_backend_arg
    p = sub.add_parser("info", help="version, available backends, BLAS and threads")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("gradcheck", help="float64 gradient check of every layer and a small net")
    add_backend_arg(p)
    p.add_argument("--tol", type=float, default=1e-6, help="maximum relative error that passes (default 1e-6)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_gradcheck)


def cmd_info(args):
    import numpy as np

    from zfscratch import __version__
    from zfscratch.backend import available_backends, get_backend
    from zfscratch.util.threads import blas_info
    print(f"zfscratch {__version__}")
    print(f"python    {platform.python_version()} ({platform.machine()})")
    print(f"numpy     {np.__version__}; BLAS: {blas_info()}")
    try:
        import numba
        print(f"numba     {numba.__version__}; threads {numba.config.NUMBA_NUM_THREADS}")
    except ImportError:
        print("numba     not installed")
    backends = available_backends()
    print(f"backends  {', '.join(backends)} (auto -> {get_backend('auto').name}; "
          f"ZFSCRATCH_BACKEND={os.environ.get('ZFSCRATCH_BACKEND', '')!s})")
    print(f"cpus      {os.cpu_count()}")
    return 0


def cmd_gradcheck(args):
    from zfscratch import gradcheck
    from zfscratch.backend import resolve_backend
    be = resolve_backend(args.backend)
    print(f"float64 centered-difference gradient check, backend {be.name}, tolerance {args.tol:g}")
    print(f"{'layer':<38} {'max rel. error':>14}  result")
    ok = True
    for name, err, passed in gradcheck.run_all(be, tol=args.tol, seed=args.seed):
        ok &= passed
        print(f"{name:<38} {err:>14.2e}  {'pass' if passed else 'FAIL'}")
    print("all passed" if ok else "some checks FAILED")
    return 0 if ok else 1
