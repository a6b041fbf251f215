"""``zfscratch run``: the one-command main job (data, training, every experiment, offline HTML report)."""
from __future__ import annotations

import os
import sys

ORDER = 5


def register(sub):
    from zfscratch.commands._args import add_backend_arg
    p = sub.add_parser(
        "run", help="the main job: train on the embedded synthetic data, run every paper experiment, write an "
                    "offline HTML report",
        description="Generate the data, train zfnet_small (with snapshots), evaluate it and run every experiment "
                    "(top-9 per layer, filters, evolution, background reconstructions, occlusion, invariance, "
                    "correspondence, per-layer features, architecture comparison); write OUT/index.html. "
                    "Finished stages are reused when the command is run again (OUT/manifest.json); --force "
                    "recomputes them. Default budget: a few minutes on 2 CPU cores; --quick: about a minute.")
    p.add_argument("--out", default="report", metavar="DIR", help="output folder (default: report)")
    p.add_argument("--quick", action="store_true", help="smaller data and fewer epochs (about a minute; smoke test)")
    add_backend_arg(p)
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="dataset (default: the embedded synthetic data), e.g. folder:PATH "
                        "(root/<class>/*.png|jpg; train/ and test/ subfolders are used as splits), cifar:PATH, "
                        "idx:PATH, synthetic:n=...,size=...")
    p.add_argument("--force", action="store_true", help="recompute finished stages too (with --stages: only those named)")
    p.add_argument("--stages", default=None, metavar="LIST",
                   help="comma-separated stages to run (their inputs are added); default: all. Stages: data, train, "
                        "evaluate, filters, topk, evolution, reconstruct, occlusion, invariance, correspondence, "
                        "layerwise, architecture, normalization (optional: runs only when named)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (stage lines are still printed)")
    p.set_defaults(func=cmd_run)


def cmd_run(args):
    from zfscratch.pipeline import run_pipeline
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    command = "zfscratch " + " ".join(sys.argv[1:]) if os.path.basename(sys.argv[0]).startswith("zfscratch") \
        else None
    res = run_pipeline(args.out, quick=args.quick, backend=args.backend, data=args.data, force=args.force,
                       stages=stages, progress=not args.quiet, command=command)
    print(f"open {res['report']} in a browser (it works offline)")
    return 1 if res["failed"] else 0
