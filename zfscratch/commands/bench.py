"""``zfscratch bench``: per-layer and whole-network speed, optionally against PyTorch."""
from __future__ import annotations

import sys

ORDER = 80


def register(sub):
    from zfscratch.models import ARCHS
    p = sub.add_parser(
        "bench", help="per-layer and whole-network speed (optionally against PyTorch)",
        description="Time every layer (forward, backward, GFLOP/s, share of the machine's sgemm speed) and "
                    "the whole network (inference and training-step images/s, peak memory of a step). "
                    "Medians of --repeats runs after one warm-up run; the JIT cost is reported apart. "
                    "Threads: --threads, or NUMBA_NUM_THREADS / OPENBLAS_NUM_THREADS in the environment.")
    p.add_argument("--model", choices=ARCHS, default="zfnet", help="architecture (default zfnet)")
    p.add_argument("--batch", type=int, default=None,
                   help="images per batch (default 16; --occlusion: 32 per full pass, as zfscratch occlude)")
    p.add_argument("--size", type=int, default=None, help="input side in pixels (default: 224 for zfnet, "
                                                          "else the model's own input size)")
    p.add_argument("--backend", choices=("auto", "numpy", "numba", "cupy"), default="numba",
                   help="compute backend (default numba)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per measurement (default 5; --occlusion: 2 interleaved rounds of whole sweeps)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for Numba's loops and the BLAS (and PyTorch); default: the libraries' own")
    p.add_argument("--compare", choices=("torch", "captum"), default=None,
                   help="also time the same network in PyTorch, check that the outputs agree, print ratios; "
                        "with --occlusion: 'captum' (or 'torch') runs Captum's Occlusion on the PyTorch twin")
    p.add_argument("--occlusion", action="store_true",
                   help="benchmark an occlusion sweep instead: positions/s of full recompute vs the incremental "
                        "engine (and Captum with --compare captum), per-layer multiply-add saving predicted vs "
                        "time saving measured, peak memory; runs interleaved, load average reported")
    p.add_argument("--patch", type=int, default=48, help="--occlusion: occluder side in pixels (default 48)")
    p.add_argument("--stride", type=int, default=8, help="--occlusion: occluder step in pixels (default 8)")
    p.add_argument("--widths", default=None, metavar="W1,..,W5",
                   help="the 5 conv widths, as zfscratch train --widths (default: the model's)")
    p.add_argument("--fc", type=int, default=None, help="width of fc6/fc7 (default: the model's)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the last layer (default: the model's)")
    p.add_argument("--json", metavar="FILE", default=None, help="write every figure to FILE (JSON)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the input (default 0)")
    p.set_defaults(func=cmd_bench)


def _positive(name, v):
    from zfscratch.errors import UserError
    if v is not None and v < 1:
        raise UserError(f"--{name} must be a positive integer, got {v}")


def cmd_bench(args):
    import json

    from zfscratch import bench
    from zfscratch.bench_twin import TwinError
    from zfscratch.errors import UserError
    from zfscratch.io import atomic_write_text
    from zfscratch.models import PRESETS

    for name in ("batch", "size", "repeats", "threads", "patch", "stride", "fc", "num_classes"):
        _positive(name.replace("_", "-"), getattr(args, name))
    widths = None
    if args.widths is not None:
        try:
            widths = [int(v) for v in args.widths.split(",")]
        except ValueError:
            widths = []
        if len(widths) != 5 or min(widths) < 1:
            raise UserError(f"--widths {args.widths}: expected 5 positive integers separated by commas")
    size = args.size or (224 if args.model == "zfnet" else PRESETS[args.model]["input_size"])
    if args.occlusion:
        return _cmd_occlusion(args, size)
    if args.compare == "captum":
        raise UserError("--compare captum: only with --occlusion (the layer benchmark compares with torch)")
    if args.threads is not None:
        try:
            import numba
            limit = numba.config.NUMBA_NUM_THREADS
        except ImportError:
            limit = None
        if limit is not None and args.threads > limit:
            raise UserError(f"--threads {args.threads}: numba was started with at most {limit} threads "
                            f"(set NUMBA_NUM_THREADS={args.threads} in the environment to allow more)")
    if args.compare == "torch" and not bench.torch_installed():  # before any timing (PyTorch runs in a child)
        raise UserError("--compare torch needs PyTorch, which is not installed "
                        "(pip install torch, or pip install 'zfscratch[bench]')")
    from zfscratch.backend import resolve_backend
    resolve_backend(args.backend)  # one-line error when it cannot run here

    def progress(msg):
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    try:
        res = bench.run_bench(model=args.model, batch=args.batch or 16, size=size, backend=args.backend,
                              repeats=args.repeats or 5, threads=args.threads, compare=args.compare, seed=args.seed,
                              progress=progress, widths=widths, fc=args.fc, num_classes=args.num_classes)
    except ImportError as e:
        raise UserError(str(e)) from None
    except TwinError as e:
        raise UserError(f"--compare torch: {e}") from None
    except ValueError as e:
        raise UserError(f"--model {args.model} --size {size}: {e}") from None
    print(bench.format_report(res))
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=2, sort_keys=True) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _cmd_occlusion(args, size):
    import json

    from zfscratch.bench_occlusion import format_occlusion, run_occlusion_bench
    from zfscratch.bench_twin import TwinError
    from zfscratch.errors import UserError
    from zfscratch.io import atomic_write_text

    if args.patch > size:
        raise UserError(f"--patch {args.patch}: larger than the input side {size}")
    captum = args.compare in ("captum", "torch")
    if captum:
        from zfscratch.bench_occlusion import _check_captum
        try:  # before any timing (PyTorch and Captum run in a child process)
            _check_captum()
        except ImportError as e:
            raise UserError(str(e)) from None
    from zfscratch.backend import resolve_backend
    resolve_backend(args.backend)

    def progress(msg):
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    repeats = args.repeats or 2  # whole sweeps are long
    from zfscratch.experiments.occlusion import INCREMENTAL_BATCH_FACTOR
    batch = args.batch or 32  # zfscratch occlude's default
    try:
        res = run_occlusion_bench(model=args.model, size=size, patch=args.patch, stride=args.stride,
                                  backend=args.backend, batch=batch, inc_batch=INCREMENTAL_BATCH_FACTOR * batch,
                                  repeats=repeats, threads=args.threads, captum=captum, seed=args.seed,
                                  progress=progress)
    except ImportError as e:
        raise UserError(str(e)) from None
    except TwinError as e:
        raise UserError(f"--compare {args.compare}: {e}") from None
    except ValueError as e:
        raise UserError(f"--model {args.model} --size {size}: {e}") from None
    print(format_occlusion(res))
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=2, sort_keys=True) + "\n")
        print(f"\nwrote {args.json}")
    return 0
