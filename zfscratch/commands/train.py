"""``zfscratch train`` and ``zfscratch evaluate``."""
from __future__ import annotations

ORDER = 10

DATA_HELP = ("dataset: synthetic[:key=value,...] (default data, e.g. synthetic:background=colored,n=20000), "
             "idx:PATH (MNIST-style IDX files), cifar:PATH (CIFAR-10 binary batches), folder:PATH "
             "(PATH/<class>/*.png|jpg)")


def _triple(s, opt):
    from zfscratch.errors import UserError
    try:
        v = [int(p) for p in s.replace("x", ",").split(",")]
    except ValueError:
        v = []
    if len(v) != 3:
        raise UserError(f"{opt} {s!r}: expected K,STRIDE,PAD (three integers, e.g. 5,1,2)")
    return v


def _ints(s, opt):
    from zfscratch.errors import UserError
    try:
        return [int(p) for p in s.split(",") if p]
    except ValueError:
        raise UserError(f"{opt} {s!r}: expected comma-separated integers") from None


def register(sub):
    _train_parser(sub)
    _evaluate_parser(sub)


def _train_parser(sub):
    from zfscratch.commands._args import add_backend_arg, add_distributed_arg
    from zfscratch.models import ARCHS
    from zfscratch.train import DEFAULTS as D

    p = sub.add_parser(
        "train", help="train a network (SGD, dropout, filter renorm, lr annealing, checkpoints, resume)",
        description="Train a ZFNet-family network with the paper's recipe and write a run directory: "
                    "weights.npz (self-describing), checkpoint.npz, snapshots/epoch_NNNN.npz, metrics.csv, "
                    "metrics.json, curve.png. Interrupted runs continue exactly with --resume.")
    p.add_argument("--data", default=None, help=DATA_HELP + " (default synthetic; with --resume: the checkpoint's)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in RUN_DIR")
    p.add_argument("--model", choices=ARCHS, default=None, help=f"architecture (default {D['model']})")
    p.add_argument("--epochs", type=int, default=None, help=f"number of epochs (default {D['epochs']})")
    p.add_argument("--batch", type=int, default=None, help=f"batch size (default {D['batch']})")
    p.add_argument("--lr", type=float, default=None, help=f"initial learning rate (default {D['lr']})")
    p.add_argument("--momentum", type=float, default=None, help=f"(default {D['momentum']})")
    p.add_argument("--weight-decay", type=float, default=None, help=f"(default {D['weight_decay']})")
    p.add_argument("--lr-schedule", choices=("plateau", "cosine"), default=None,
                   help="plateau: divide the lr by 1/--lr-factor when validation accuracy stops improving "
                        "(paper); cosine: decay to 0 over the run (best for short runs) (default "
                        f"{D['lr_schedule']})")
    p.add_argument("--lr-factor", type=float, default=None,
                   help=f"lr multiplier when validation accuracy plateaus (default {D['lr_factor']})")
    p.add_argument("--lr-patience", type=int, default=None,
                   help=f"epochs without improvement before annealing (default {D['lr_patience']})")
    p.add_argument("--warmup", type=float, default=None, metavar="EPOCHS",
                   help="linear learning-rate warm-up from 0 over this many epochs (fractions allowed; "
                        f"default {D['warmup']:g})")
    p.add_argument("--min-lr", type=float, default=None, help=f"(default {D['min_lr']})")
    add_backend_arg(p)
    p.add_argument("--seed", type=int, default=None, help="seed of init, data order, augmentation, dropout (default 0)")
    p.add_argument("--val-split", type=float, default=None,
                   help=f"fraction of the training data held out for validation when the data has no "
                        f"validation split (default {D['val_split']})")
    p.add_argument("--val-data", default=None, help="separate validation dataset (same syntax as --data)")
    p.add_argument("--snapshots", default=None, metavar="E1,E2,...",
                   help="epochs whose weights are kept in RUN_DIR/snapshots/, plus the last epoch (default "
                        f"{','.join(map(str, D['snapshots']))}; 0 = initial weights; 'none' for none)")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="K",
                   help="also checkpoint every K steps (default: after every epoch only)")
    p.add_argument("--input-size", type=int, default=None,
                   help="network input side S (default: the images' side if square, else the model's)")
    p.add_argument("--resize", type=int, default=None, metavar="R",
                   help="resize images to R x R (shorter side + centre crop) before S x S crops (default S)")
    p.add_argument("--pad", type=int, default=None, help="pad by P pixels (of the mean) before random training crops")
    p.add_argument("--augment", default=None, metavar="LIST",
                   help="training augmentation: comma-separated subset of flip,crop,erase (erase: a mean-grey "
                        "square on half the images, as the occlusion test's occluder), or none (default flip,crop)")
    p.add_argument("--scale", type=float, default=None, help="input scale after mean subtraction (default 1/64)")
    p.add_argument("--mean", choices=("pixel", "channel", "none"), default=None,
                   help="mean subtracted: per-pixel mean image (paper, default), per-channel, none")
    _architecture_overrides(p)
    p.add_argument("--eval-batch", type=int, default=None, help="batch size for validation")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_distributed_arg(p)
    p.set_defaults(func=cmd_train)


def _architecture_overrides(p):
    """``train``'s architecture overrides (an argument group of its own in ``--help``)."""
    from zfscratch.models import INIT_SCHEMES
    g = p.add_argument_group("architecture overrides (zfnet_small/alexnet_like)")
    g.add_argument("--conv1", default=None, metavar="K,S,P", help="first conv kernel, stride, pad (e.g. 5,1,2)")
    g.add_argument("--conv2", default=None, metavar="K,S,P")
    g.add_argument("--widths", default=None, metavar="W1,...,W5", help="conv1..conv5 widths")
    g.add_argument("--fc", type=int, default=None, help="width of fc6/fc7")
    g.add_argument("--init", choices=INIT_SCHEMES, default=None,
                   help="weight initialization: paper = N(0, 0.01^2) (the zfnet preset; starves deep nets "
                        "trained from scratch at small budgets), he = N(0, 2/fan_in) with fc8 N(0, 0.01^2) "
                        "(zfnet_small/alexnet_like default), mixed = he with conv1 N(0, 0.01^2) (conv1 filters learn "
                        "structure instead of keeping init noise; the default run's recipe); recorded in the "
                        "weights' config")
    g.add_argument("--dropout", type=float, default=None, help="dropout probability on fc6/fc7 (default 0.5)")
    g.add_argument("--norm", choices=("lrn", "lcn", "none"), default=None,
                   help="normalization after pool1/pool2: lrn = cross-channel local response normalization "
                        "(default), lcn = subtractive + divisive local contrast normalization, none")


def _evaluate_parser(sub):
    from zfscratch.commands._args import add_backend_arg, add_distributed_arg

    p = sub.add_parser("evaluate", help="top-1/top-5 error, per-class accuracy and confusion matrix of a weights file",
                       description="Evaluate a weights file on a dataset split; writes evaluation_SPLIT.json and "
                                   "confusion_SPLIT.png (default: next to the weights).")
    p.add_argument("--weights", required=True, help="weights file (e.g. RUN_DIR/weights.npz)")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--split", default="test", help="split to evaluate: test (default), val, train")
    p.add_argument("--ten-crop", action="store_true", help="average over the paper's 10 crops (corners, centre, mirrored)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", default=None, metavar="DIR", help="where to write the JSON and PNG (default: the weights' folder)")
    add_backend_arg(p)
    p.add_argument("--quiet", action="store_true")
    add_distributed_arg(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_train(args):
    from zfscratch.train import train_model
    mc = {}
    if args.conv1:
        mc["conv1"] = _triple(args.conv1, "--conv1")
    if args.conv2:
        mc["conv2"] = _triple(args.conv2, "--conv2")
    if args.widths:
        mc["widths"] = _ints(args.widths, "--widths")
        if len(mc["widths"]) != 5:
            from zfscratch.errors import UserError
            raise UserError(f"--widths {args.widths}: expected five integers")
    if args.fc is not None:
        mc["fc"] = args.fc
    if args.dropout is not None:
        mc["dropout"] = args.dropout
    if args.norm is not None:
        mc["norm"] = args.norm
    if args.init is not None:
        mc["init"] = args.init
    data = args.data if (args.data or args.resume) else "synthetic"
    res = train_model(
        data, args.out, model=args.model, epochs=args.epochs, batch=args.batch, lr=args.lr, backend=args.backend,
        snapshots=args.snapshots, seed=args.seed, quiet=args.quiet, resume=args.resume, overwrite=args.overwrite,
        model_config=mc or None, input_size=args.input_size, resize=args.resize, pad=args.pad,
        momentum=args.momentum, weight_decay=args.weight_decay, lr_schedule=args.lr_schedule, lr_factor=args.lr_factor,
        lr_patience=args.lr_patience, min_lr=args.min_lr, val_split=args.val_split, val_data=args.val_data,
        checkpoint_every=args.checkpoint_every, augment=args.augment, scale=args.scale, mean=args.mean,
        eval_batch=args.eval_batch, warmup=args.warmup, distributed=True if args.distributed else None)
    from zfscratch.distributed import current
    if current() is not None and not current().is_root:
        return 0
    print(f"validation accuracy {res['val_acc']:.2%} (best {res['best_val_acc']:.2%}) after {res['epochs']} "
          f"epochs, {res['elapsed_s'] / 60:.1f} min; weights: {res['weights']}")
    return 0


def cmd_evaluate(args):
    from zfscratch.errors import UserError
    from zfscratch.train import evaluate_weights
    if args.batch < 1:
        raise UserError(f"--batch {args.batch}: expected an integer >= 1")
    from zfscratch.backend import resolve_backend
    from zfscratch.commands._args import world_of
    world = world_of(args)
    be = resolve_backend(args.backend)
    res = evaluate_weights(args.weights, args.data, split=args.split, ten_crop=args.ten_crop, batch=args.batch,
                           backend=be, out_dir=args.out, quiet=args.quiet, world=world)
    if not world.is_root:
        return 0
    print(f"{res['n']} images ({args.split}{', 10 crops' if args.ten_crop else ''}): top-1 error "
          f"{res['top1_error']:.2%}, top-{res['topk']} error {res['top5_error']:.2%}, loss {res['loss']:.4f}")
    width = max(len(c) for c in res["per_class"]) if res["per_class"] else 5
    for c, a in res["per_class"].items():
        print(f"  {c:<{width}}  {'-' if a is None else format(a, '.2%')}")
    print(f"wrote {res['json']} and {res['png']}")
    return 0
