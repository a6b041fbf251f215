"""``zfscratch bench-distributed``: MPI training scaling, all-reduce bandwidth, sharded top-9."""
from __future__ import annotations

import sys

ORDER = 81


def register(sub):
    from zfscratch.models import ARCHS
    p = sub.add_parser(
        "bench-distributed", help="data-parallel training vs threads, all-reduce bandwidth, sharded top-9 (MPI)",
        description="Interleaved runs of: zfscratch train with 1 process x THREADS threads vs mpirun -n RANKS "
                    "with THREADS/RANKS threads each (same global batch; training images/s and all-reduce wait "
                    "per step); the all-reduce time and bus bandwidth for a few buffer sizes; zfscratch "
                    "visualize's top-9 search over N images with 1 rank vs RANKS ranks (1 thread each). "
                    "Needs the [distributed] extra.")
    p.add_argument("--ranks", type=int, default=2, help="MPI ranks (default 2)")
    p.add_argument("--threads", type=int, default=2, help="threads of the one-process training run (default 2)")
    p.add_argument("--model", choices=ARCHS, default="zfnet_small")
    p.add_argument("--train-images", type=int, default=640, help="training images per run (default 640)")
    p.add_argument("--batch", type=int, default=32, help="global batch (default 32)")
    p.add_argument("--top9-images", type=int, default=10000, help="images scanned by the top-9 runs (default 10000)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    p.add_argument("--backend", choices=("numpy", "numba"), default="numba")
    p.add_argument("--json", metavar="FILE", default=None, help="write every figure to FILE (JSON)")
    p.set_defaults(func=cmd_bench_distributed)


def cmd_bench_distributed(args):
    import json

    from zfscratch import bench_distributed as B
    from zfscratch.errors import UserError
    from zfscratch.io import atomic_write_text
    for name in ("ranks", "threads", "train_images", "batch", "top9_images", "repeats"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer")
    if args.ranks < 2 or args.batch % args.ranks:
        raise UserError(f"--ranks {args.ranks}: expected >= 2 and dividing --batch {args.batch}")
    res = B.run(ranks=args.ranks, threads=args.threads, model=args.model, train_images=args.train_images,
                batch=args.batch, top9_images=args.top9_images, repeats=args.repeats, backend=args.backend,
                progress=lambda m: print(f"[bench-distributed] {m}", file=sys.stderr, flush=True))
    print(B.format_report(res))
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=2, sort_keys=True) + "\n")
    return 0
