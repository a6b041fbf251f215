"""``zfscratch attribute`` (DeconvNet, guided backprop and gradient side by side) and ``zfscratch sanity``
(Adebayo et al. 2018 weight-randomization checks)."""
from __future__ import annotations

import os

from zfscratch.errors import UserError

ORDER = 45

DATA_HELP = ("dataset: synthetic[:key=value,...], idx:PATH, cifar:PATH, folder:PATH (default: the data the "
             "weights were trained on, as recorded in their metadata)")
RULE_HELP = "rules, comma-separated, of deconvnet, guided, gradient (default all three)"


def register(sub):
    from zfscratch.commands._args import add_backend_arg
    p = sub.add_parser("attribute", help="DeconvNet, guided backprop and gradient of one class or unit, side by side",
                       description="Project one class logit (default: the predicted class) or the strongest "
                       "activation of one map of a layer back to pixels with each rule, and write DIR/NAME.png "
                       "(the image, the signed maps and their magnitudes; the display normalization is in the "
                       "caption) and DIR/NAME.json.")
    p.add_argument("--weights", required=True, help="weights file (.npz written by zfscratch train)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", default=None, help="an image file of your own (PNG, JPEG, ...)")
    src.add_argument("--data", default=None, help=DATA_HELP.split(" (default")[0] + " (with --index)")
    p.add_argument("--split", default="test", help="split of --data (default test)")
    p.add_argument("--index", type=int, default=0, help="sample of --data (default 0)")
    p.add_argument("--layer", default=None, help="layer to start from: a name (relu5, pool2, fc7, fc8, ...) or "
                   "a paper layer number (default: the class logits)")
    p.add_argument("--class", dest="cls", default=None, help="class (number or name) on the logits (default: "
                   "the predicted class)")
    p.add_argument("--map", type=int, default=None, help="map (unit of an fc layer) of --layer (default: the map "
                   "with the strongest activation)")
    p.add_argument("--rule", default="deconvnet,guided,gradient", help=RULE_HELP)
    p.add_argument("--name", default="attribute", help="file name stem (default attribute)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: attribute beside the weights)")
    add_backend_arg(p)
    p.set_defaults(func=cmd_attribute)

    p = sub.add_parser("sanity", help="sanity checks of the rules: cascading and independent weight "
                       "randomization (Adebayo et al. 2018)",
                       description="Randomize the weights from the top layer down (cascading) and one layer at a "
                       "time (independent); for each rule compare the map of the trained model's predicted class "
                       "with the trained model's: Spearman rank correlation and SSIM of |map|, mean over N images. "
                       "Writes DIR/sanity_cascade.png, sanity_independent.png (maps), sanity_metrics.png (curves), "
                       "sanity_table.md and sanity.json. Needs the [sanity] extra (scipy, scikit-image).")
    p.add_argument("--weights", required=True, help="weights file")
    p.add_argument("--data", required=True, help=DATA_HELP.split(" (default")[0])
    p.add_argument("--split", default="test", help="split of --data (default test; val if there is none)")
    p.add_argument("--n", type=int, default=50, help="images (the first N of the split; default 50)")
    p.add_argument("--rule", default="deconvnet,guided,gradient", help=RULE_HELP)
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: sanity beside the weights)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_backend_arg(p)
    p.set_defaults(func=cmd_sanity)


def _load(weights, backend):
    from zfscratch.backend import resolve_backend
    from zfscratch.io import load_weights
    return load_weights(weights, backend=resolve_backend(backend))


def _out(args, default):
    from zfscratch.train import check_writable_dir
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.weights)), default)
    check_writable_dir(out)
    return out


def cmd_attribute(args):
    from zfscratch import deconv
    from zfscratch.experiments import _shared as S
    from zfscratch.experiments.attribution import logits_layer, parse_rules, run_attribute
    rules = parse_rules(args.rule)
    net, meta = _load(args.weights, args.backend)
    logit = logits_layer(net)
    layer = None
    if args.layer is not None:
        try:
            layer = deconv.start_layer_name(net, args.layer)
        except ValueError as e:
            raise UserError(f"--layer: {e}") from None
    unit = None
    if args.cls is not None:
        if layer not in (None, logit):
            raise UserError(f"--class: picks a class logit; with --layer {layer} use --map")
        names = S.class_names(meta, S.num_classes(net))
        if args.cls in names:
            unit = names.index(args.cls)
        else:
            try:
                unit = int(args.cls)
            except ValueError:
                raise UserError(f"--class {args.cls!r}: not a class of this model ({', '.join(names)})") from None
            if not 0 <= unit < len(names):
                raise UserError(f"--class {unit}: out of range 0..{len(names) - 1}")
        layer = logit
    if args.map is not None:
        if args.cls is not None:
            raise UserError("--map and --class: give one")
        if layer is None:
            raise UserError("--map: needs --layer")
        from zfscratch.models import input_shape
        c = dict(net.output_shapes((1,) + tuple(input_shape(net))))[layer][1]
        if not 0 <= args.map < c:
            raise UserError(f"--map {args.map}: layer {layer} has maps 0..{c - 1}")
        unit = args.map
    image = dataset = None
    if args.image:
        from zfscratch.preprocess import load_image
        image = load_image(args.image)
    else:
        from zfscratch.data import open_for_model
        dataset = open_for_model(args.data, meta, args.split)
    from zfscratch.util.files import safe_name
    res = run_attribute(net, meta, _out(args, "attribute"), image=image, dataset=dataset, index=args.index,
                        layer=layer, unit=unit, rules=rules, name=safe_name(args.name, "--name"))
    what = f"class {res['unit_name']}" if res["is_class"] else f"{res['layer']} map {res['unit']}"
    print(f"{', '.join(rules)} of {what} (predicted {res['predicted_name']}) in {res['seconds']:.2f} s on "
          f"{net.backend.name}")
    print(f"figure: {res['figure']}\nnumbers: {res['json']}")
    return 0


def cmd_sanity(args):
    from zfscratch.experiments.attribution import parse_rules, run_sanity
    rules = parse_rules(args.rule)
    if args.n < 1:
        raise UserError(f"--n {args.n}: expected a positive integer")
    net, meta = _load(args.weights, args.backend)
    from zfscratch.data import open_for_model
    ds = open_for_model(args.data, meta, args.split)
    res = run_sanity(net, meta, ds, _out(args, "sanity"), n=args.n, rules=rules, seed=args.seed,
                     progress=not args.quiet)
    print(f"sanity checks: {res['images']} images, {len(res['layers'])} layers x 2 randomizations, "
          f"{len(rules)} rules in {res['seconds']:.1f} s on {net.backend.name}")
    head, rows = res["table_head"], res["table_rows"]
    w = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    for r in [head] + rows:
        print("  " + "  ".join(str(v).ljust(w[i]) for i, v in enumerate(r)))
    for k, v in res["figures"].items():
        print(f"figure ({k}): {v}")
    print(f"table: {res['table']}\nnumbers: {res['json']}")
    return 0
