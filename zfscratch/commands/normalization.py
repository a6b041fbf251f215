"""``zfscratch normalization``: ZFNet with LRN vs LCN vs no normalization, trained with one budget."""
from __future__ import annotations

from zfscratch.commands.experiments import _check_positive, _common, _done

ORDER = 41


def register(sub):
    p = sub.add_parser("normalization", help="train one architecture with LRN, LCN and no normalization on one "
                       "budget; compare accuracy, conv1 filters and layer-2 top-9",
                       description="Trains the architecture three times (only the model's norm differs: the "
                       "cross-channel local response normalization 'lrn', the subtractive + divisive local "
                       "contrast normalization 'lcn' of Jarrett et al. 2009, or 'none') into DIR/<norm>/, then "
                       "writes DIR/normalization.png, DIR/normalization.json, per-model conv1 filter grids "
                       "and DIR/<norm>/topk/topk_relu2.png (paper Fig 2 layout).")
    p.add_argument("--data", default=None, help="training data spec (default synthetic)")
    p.add_argument("--val-data", default=None, help="validation data (default: the data's val split or a "
                   "held-out 10%%)")
    p.add_argument("--norms", default="lrn,lcn,none", help="normalizations to train (default lrn,lcn,none)")
    p.add_argument("--model", choices=("zfnet", "zfnet_small", "alexnet_like"), default="zfnet_small",
                   help="architecture (default zfnet_small)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of each model (default 2)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: train's default)")
    p.add_argument("--input-size", type=int, default=None, help="input side (default: the architecture's)")
    p.add_argument("--lcn-size", type=int, default=None, help="LCN window side, odd (default 5)")
    p.add_argument("--lcn-sigma", type=float, default=None, help="LCN Gaussian sigma in pixels (default 1)")
    p.add_argument("--topk-images", type=int, default=500,
                   help="validation images scanned for the layer-2 top-9 (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace runs already in DIR/<norm>/")
    _common(p, "normalization", batch=64)
    p.set_defaults(func=cmd_normalization)


def cmd_normalization(args):
    from zfscratch.experiments.normalization import normalization
    from zfscratch.models import _LCN
    from zfscratch.train import check_writable_dir
    _check_positive(batch=args.batch, epochs=args.epochs, topk_images=args.topk_images)
    out = args.out or "normalization"
    check_writable_dir(out)
    opts = {}
    if args.lcn_size is not None or args.lcn_sigma is not None:
        lcn = dict(_LCN)
        if args.lcn_size is not None:
            lcn["size"] = args.lcn_size
        if args.lcn_sigma is not None:
            lcn["sigma"] = args.lcn_sigma
        opts["model_config"] = {"lcn": lcn}
    spec = args.data or "synthetic"
    data = spec if args.val_data is None else (spec, args.val_data)
    res = normalization(data, out, norms=tuple(n for n in args.norms.split(",") if n), arch=args.model,
                        epochs=args.epochs, batch=args.batch, lr=args.lr, backend=args.backend, seed=args.seed,
                        input_size=args.input_size, topk_images=args.topk_images, progress=not args.quiet,
                        overwrite=args.overwrite, train_options=opts)
    print(res["table_markdown"])
    return _done(res)
