"""``zfscratch run``: the one-command main job (data, training, every experiment, offline HTML report)."""
from __future__ import annotations

import os
import sys

ORDER = 5


def register(sub):
    from zfscratch.commands._args import add_backend_arg
    from zfscratch.models import INIT_SCHEMES
    p = sub.add_parser(
        "run", help="the main job: train on the embedded synthetic data, run every paper experiment, write an "
                    "offline HTML report",
        description="Generate the data, train zfnet_small (with snapshots), evaluate it and run every experiment "
                    "(top-9 per layer, filters, evolution, background reconstructions, occlusion, invariance, "
                    "correspondence, per-layer features, architecture comparison); write OUT/index.html. "
                    "Finished stages are reused when the command is run again (OUT/manifest.json); --force "
                    "recomputes them. Default budget: a few minutes on 2 CPU cores; --quick: about a minute.")
    p.add_argument("--out", default="report", metavar="DIR", help="output folder (default: report)")
    p.add_argument("--profile", default=None, metavar="NAME",
                   help="named budget: default (synthetic data, a few minutes on 2 cores), quick (about a minute; "
                        "smoke test), imagenette (real photos at 112 px, zfnet with scaled widths, 30 epochs; use "
                        "with --data folder:PATH); the report's top lists every value the profile set")
    p.add_argument("--quick", action="store_true", help="alias of --profile quick")
    add_backend_arg(p)
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="dataset (default: the embedded synthetic data), e.g. folder:PATH "
                        "(root/<class>/*.png|jpg|JPEG; train/ with val/ or test/ subfolders are used as splits; "
                        "class names from a classes.txt / synsets.txt beside them), cifar:PATH, "
                        "idx:PATH, synthetic:n=...,size=...")
    p.add_argument("--weights", default=None, metavar="W.npz",
                   help="build the report on this model (from zfscratch train or import-onnx) instead of training "
                        "one: no training stage; the evolution section needs training history and says so; the "
                        "architecture comparison runs only with --architecture")
    g = p.add_argument_group("training options (override the profile's; part of the stage hashes)")
    g.add_argument("--model", default=None, help="architecture: zfnet_small, zfnet, alexnet_like")
    g.add_argument("--input-size", type=int, default=None, help="network input side in pixels")
    g.add_argument("--resize", type=int, default=None, help="images resized to this side before input-size crops")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--batch", type=int, default=None)
    g.add_argument("--lr", type=float, default=None, help="initial learning rate")
    g.add_argument("--lr-schedule", default=None, choices=("plateau", "cosine"))
    g.add_argument("--warmup", type=float, default=None, metavar="EPOCHS", help="linear lr warm-up")
    g.add_argument("--init", default=None, choices=INIT_SCHEMES,
                   help="weight initialization (mixed: He, conv1 N(0, 0.01^2))")
    g.add_argument("--dropout", type=float, default=None, help="dropout probability on fc6/fc7")
    g.add_argument("--augment", default=None, metavar="LIST", help="comma-separated subset of flip,crop,erase, or none")
    p.add_argument("--ten-crop", action="store_true", default=None,
                   help="the evaluation also averages the paper's 10 views (4 corners + centre, and their mirrors); "
                        "the imagenette profile does")
    p.add_argument("--architecture", action="store_true", default=None,
                   help="also run the architecture comparison (trains an AlexNet-like twin) where the profile "
                        "or --weights leaves it out")
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
    from zfscratch.errors import UserError
    if args.model is not None:
        from zfscratch.models import ARCHS
        if args.model not in ARCHS:
            raise UserError(f"--model {args.model!r}: expected one of {', '.join(ARCHS)}")
    for opt in ("input_size", "resize", "epochs", "batch"):
        v = getattr(args, opt)
        if v is not None and v < 1:
            raise UserError(f"--{opt.replace('_', '-')} {v}: expected a positive integer")
    overrides = dict(model=args.model, size=args.input_size, resize=args.resize, epochs=args.epochs,
                     batch=args.batch, lr=args.lr, lr_schedule=args.lr_schedule, warmup=args.warmup,
                     init=args.init, dropout=args.dropout, augment=args.augment, ten_crop=args.ten_crop)
    res = run_pipeline(args.out, quick=args.quick, backend=args.backend, data=args.data, force=args.force,
                       stages=stages, progress=not args.quiet, command=command, profile=args.profile,
                       weights=args.weights, overrides=overrides, architecture=args.architecture)
    print(f"open {res['report']} in a browser (it works offline)")
    return 1 if res["failed"] else 0
