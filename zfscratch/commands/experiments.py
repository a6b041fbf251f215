"""``zfscratch occlude`` (Fig 7), ``invariance`` (Fig 5), ``correspondence`` (Table 1), ``layerwise``
(Table 7) and ``architecture`` (Fig 6): the paper's experiments on a trained model.

Each writes a PNG figure and a JSON file of its numbers into ``--out`` and prints a short summary.
"""
from __future__ import annotations

import os

from zfscratch.errors import UserError

ORDER = 40

DATA_HELP = ("dataset: synthetic[:key=value,...], idx:PATH, cifar:PATH, folder:PATH (default: the data the "
             "weights were trained on, as recorded in their metadata)")


# ----------------------------------------------------------------------------- helpers
def _common(p, out_default, batch=32):
    from zfscratch.commands._args import add_backend_arg
    p.add_argument("--out", default=None, metavar="DIR",
                   help=f"output folder (default: {out_default} beside the weights)")
    p.add_argument("--batch", type=int, default=batch,
                   help=f"images per forward pass; bounds memory (default {batch})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_backend_arg(p)


def _weights_arg(p):
    p.add_argument("--weights", required=True, help="weights file (.npz written by zfscratch train)")


def _check_positive(**kw):
    from zfscratch.errors import UserError
    for name, v in kw.items():
        if v is not None and v < 1:
            raise UserError(f"--{name.replace('_', '-')} {v}: expected a positive integer")


def _load(weights, backend):
    from zfscratch.backend import resolve_backend
    from zfscratch.io import load_weights
    return load_weights(weights, backend=resolve_backend(backend))


def _open_data(spec, meta, split):
    """The dataset ``spec`` (its ``split``; ``val`` falls back to ``test``), else the data the weights
    were trained on (``meta["train"]["data"]``)."""
    from zfscratch.data import open_for_model
    return open_for_model(spec, meta, split)


def _out_dir(args, weights, default):
    from zfscratch.train import check_writable_dir
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(weights)) if weights else ".", default)
    check_writable_dir(out)
    return out


def _world(args, net):
    """The MPI world for ``--distributed`` / an mpirun launch; ranks must hold the same model."""
    from zfscratch.commands._args import world_of
    world = world_of(args)
    if world.distributed:
        from zfscratch.distributed import array_digest
        world.check_same("the model", array_digest(net.state_dict()))
    return world


def _is_root():
    from zfscratch.distributed import current
    return current() is None or current().is_root


def _done(res):
    print(f"figure: {res['figure']}")
    print(f"numbers: {res['json']}")
    return 0


# ----------------------------------------------------------------------------- parsers
def register(sub):
    _occlude_parser(sub)
    _invariance_parser(sub)
    _correspondence_parser(sub)
    _layerwise_parser(sub)
    _architecture_parser(sub)


def _occlude_parser(sub):
    p = sub.add_parser("occlude", help="occlusion sensitivity maps of one image (paper Fig 7)",
                       description="Slide a square occluder (default: the training mean = 0 after mean "
                       "subtraction) over an image; for every position record the total activation of the "
                       "strongest last-conv map of the unoccluded image, P(correct class) and the most "
                       "probable label; plus the DeconvNet projection of that map. Writes "
                       "DIR/occlusion.png and DIR/occlusion.json.")
    _weights_arg(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", default=None, help="an image file of your own (PNG, JPEG, ...)")
    src.add_argument("--data", default=None, help=DATA_HELP.replace(" (default: the data the weights were "
                     "trained on, as recorded in their metadata)", "") + " (with --index)")
    p.add_argument("--split", default="test", help="split of --data (default test)")
    p.add_argument("--index", type=int, default=0, help="sample of --data (default 0)")
    p.add_argument("--indices", default=None, metavar="LIST",
                   help="several samples of --data, e.g. 0,3,7 or 0-4 (overrides --index): one figure and JSON "
                        "per image (NAME_INDEX.png/.json), one progress bar for all")
    p.add_argument("--no-incremental", dest="incremental", action="store_false",
                   help="one full forward pass per occluder position (default: recompute only the part of each "
                        "layer the occluder can change; same numbers to float rounding, several times faster)")
    p.add_argument("--patch", type=int, default=None,
                   help="occluder side in pixels of the model input (default: input size / 5)")
    p.add_argument("--stride", type=int, default=None,
                   help="step between occluder positions (default: input size / 28, at least 1)")
    p.add_argument("--margin", type=int, default=0,
                   help="pixels the occluder may hang over the image edge (default 0)")
    p.add_argument("--value", default="mean",
                   help="occluder: 'mean' (training mean, default) or a grey level 0-255")
    p.add_argument("--label", default=None,
                   help="true class (name or number); default: the data's label, else the model's top class")
    p.add_argument("--project-mode", choices=("max", "map"), default="max",
                   help="DeconvNet projection of the map: its strongest activation (default) or the whole map")
    p.add_argument("--name", default="occlusion", help="file name stem of the outputs (default occlusion)")
    _common(p, "occlusion", batch=32)
    from zfscratch.commands._args import add_distributed_arg
    add_distributed_arg(p)
    p.set_defaults(func=cmd_occlude)


def _invariance_parser(sub):
    p = sub.add_parser("invariance", help="translation / scale / rotation sweeps: feature distances and "
                       "P(true class) (paper Fig 5)",
                       description="For a few images, sweep vertical translation, scale and rotation; plot the "
                       "normalized distance ||f(Tx)-f(x)||/||f(x)|| at layer 1 (relu1) and the penultimate "
                       "layer (relu7), and P(true class); summarize accuracy vs angle over --eval-images. "
                       "Synthetic objects are re-rendered at each pose; other images are warped. Writes "
                       "DIR/invariance.png and DIR/invariance.json.")
    _weights_arg(p)
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--split", default="test", help="split of the data (default test)")
    p.add_argument("--images", type=int, default=5, help="images drawn as curves (default 5)")
    p.add_argument("--eval-images", type=int, default=40,
                   help="images for accuracy / mean P(true) per transformation value (default 40)")
    p.add_argument("--translation", default=None, metavar="LO:HI:STEP",
                   help="vertical shifts as fractions of the image side (default -0.3:0.3:0.05; write "
                   "--translation=-0.2:0.2:0.1 when the list starts with a minus sign)")
    p.add_argument("--scale", default=None, metavar="LO:HI:STEP", help="scale factors (default 0.6:1.4:0.1)")
    p.add_argument("--rotation", default=None, metavar="LO:HI:STEP",
                   help="angles in degrees (default 0:360:10)")
    p.add_argument("--seed", type=int, default=0, help="background seed of rendered objects (default 0)")
    _common(p, "invariance", batch=64)
    p.set_defaults(func=cmd_invariance)


def _correspondence_parser(sub):
    p = sub.add_parser("correspondence", help="part-occlusion consistency Delta at layers 5 and 7 vs random "
                       "occlusion (paper Table 1)",
                       description="Occlude the same part (from the synthetic landmarks) in groups of images of "
                       "one class; Delta_l = sum_{i!=j} Hamming(sign eps_i, sign eps_j) with eps = x - "
                       "x_occluded at pool5 and relu7, normalized by n(n-1)D; the same for random occluders of "
                       "the same size. Writes DIR/correspondence.png and DIR/correspondence.json.")
    _weights_arg(p)
    p.add_argument("--data", default=None, help=DATA_HELP + "; needs part landmarks (synthetic)")
    p.add_argument("--split", default="test", help="split of the data (default test)")
    p.add_argument("--class", dest="cls", default=None, help="class whose images are used (default face)")
    p.add_argument("--parts", default=None, help="comma-separated parts (default: every part of the class)")
    p.add_argument("--images", type=int, default=5, help="images per group (default 5, as in the paper)")
    p.add_argument("--groups", type=int, default=4, help="groups of images; mean and std over groups (default 4)")
    p.add_argument("--layers", default="pool5,relu7", help="layer 5 and layer 7 outputs (default pool5,relu7)")
    p.add_argument("--margin", type=float, default=0.0, help="pixels added to each part's radius (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random occluder positions (default 0)")
    _common(p, "correspondence", batch=64)
    p.set_defaults(func=cmd_correspondence)


def _layerwise_parser(sub):
    p = sub.add_parser("layerwise", help="linear softmax classifier on each layer's features (paper Table 7)",
                       description="Features of every layer (conv layers pooled to a GRIDxGRID grid, fc layers as "
                       "they are) are computed once; a linear softmax classifier (engine Linear + softmax + "
                       "SGD) is trained per layer and scored on a held-out split. Writes DIR/layerwise.png and "
                       "DIR/layerwise.json.")
    _weights_arg(p)
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--train-split", default="train", help="split the classifiers train on (default train)")
    p.add_argument("--test-split", default="test", help="held-out split (default test)")
    p.add_argument("--train-images", type=int, default=2000, help="training images used (default 2000)")
    p.add_argument("--test-images", type=int, default=1000, help="held-out images used (default 1000)")
    p.add_argument("--layers", default=None, help="comma-separated layer names (default relu1..relu7, fc8)")
    p.add_argument("--grid", type=int, default=4, help="conv features pooled to GRIDxGRID cells (default 4)")
    p.add_argument("--pool", choices=("max", "avg"), default="max", help="pooling of conv features (default max)")
    p.add_argument("--epochs", type=int, default=10, help="classifier epochs (default 10)")
    p.add_argument("--lr", type=float, default=0.05, help="classifier learning rate (default 0.05)")
    p.add_argument("--seed", type=int, default=0)
    _common(p, "layerwise", batch=64)
    from zfscratch.commands._args import add_distributed_arg
    add_distributed_arg(p)
    p.set_defaults(func=cmd_layerwise)


def _architecture_parser(sub):
    p = sub.add_parser("architecture", help="train zfnet_small and alexnet_like with one budget; compare "
                       "first-layer filters, dead filters, high-frequency energy, accuracy (paper Fig 6)",
                       description="Trains each architecture into DIR/<arch>/ with the same data, epochs, batch, "
                       "lr and seed (or compares existing --weights files), then writes DIR/architecture.png, "
                       "DIR/architecture.json and per-model conv1 filter grids.")
    p.add_argument("--data", default=None, help="training data spec (default synthetic; with --weights: the "
                   "data the first weights were trained on, for validation)")
    p.add_argument("--val-data", default=None, help="validation data (default: the data's val split or a "
                   "held-out 10%%)")
    p.add_argument("--weights", nargs="+", default=None, metavar="W",
                   help="compare these weights files instead of training")
    p.add_argument("--archs", default="zfnet_small,alexnet_like",
                   help="architectures to train (default zfnet_small,alexnet_like)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of each model (default 2)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: train's default)")
    p.add_argument("--input-size", type=int, default=None, help="input side (default: the architecture's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dropout", type=float, default=None, help="dropout of fc6/fc7 (default: train's, 0.5)")
    p.add_argument("--augment", default=None, help="training augmentation: flip,crop or none (default: train's)")
    p.add_argument("--lr-patience", type=int, default=None,
                   help="epochs without improvement before the lr is annealed (default: train's)")
    p.add_argument("--dead-threshold", type=float, default=0.05,
                   help="dead filter: RMS below this fraction of the layer's largest filter RMS (default 0.05)")
    p.add_argument("--overwrite", action="store_true", help="replace runs already in DIR/<arch>/")
    _common(p, "architecture", batch=64)
    p.set_defaults(func=cmd_architecture)


# ----------------------------------------------------------------------------- handlers
def _parse_indices(text):
    """``"0,3,5-7"`` -> [0, 3, 5, 6, 7] (UserError naming --indices otherwise)."""
    out = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if b < a:
                    raise ValueError
                out.extend(range(a, b + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise UserError(f"--indices {text!r}: expected sample numbers like 0,3,7 or 0-4") from None
    if not out or min(out) < 0:
        raise UserError(f"--indices {text!r}: expected one or more non-negative sample numbers")
    return list(dict.fromkeys(out))


def cmd_occlude(args):
    from zfscratch.experiments.occlusion import run_occlusion
    _check_positive(batch=args.batch, patch=args.patch, stride=args.stride)
    if args.indices is not None and not args.data:
        raise UserError("--indices: needs --data (samples of a dataset)")
    indices = _parse_indices(args.indices) if args.indices is not None else None
    net, meta = _load(args.weights, args.backend)
    out = _out_dir(args, args.weights, "occlusion")
    image = dataset = None
    if args.image:
        from zfscratch.preprocess import load_image
        image = load_image(args.image)
    else:
        dataset = _open_data(args.data, meta, args.split)
    common = dict(label=args.label, patch=args.patch, stride=args.stride, margin=args.margin, value=args.value,
                  batch=args.batch, project_mode=args.project_mode, world=_world(args, net),
                  incremental=args.incremental)
    if indices is not None:
        return _occlude_samples(args, net, meta, out, dataset, indices, common)
    res = run_occlusion(net, meta, out, image=image, dataset=dataset, index=args.index,
                        progress=not args.quiet, name=args.name, **common)
    if not _is_root():
        return 0
    print(f"occlusion: {res['positions']} positions (patch {res['patch']}, stride {res['stride']}) in "
          f"{res['seconds']:.2f} s = {res['positions_per_s']:.1f} positions/s on {net.backend.name}")
    print(f"true class {res['label_name']}: P = {res['base_prob_true']:.3f} unoccluded, minimum "
          f"{res['min_prob_true']:.3f} with the occluder centred at (x, y) = "
          f"({res['min_prob_position_xy'][0]:.0f}, {res['min_prob_position_xy'][1]:.0f})"
          + ("" if res["min_inside_bbox"] is None else
             f" ({'inside' if res['min_inside_bbox'] else 'outside'} the object's box)"))
    print(f"strongest last-conv map: {res['layer']} #{res['map_index']}; labels seen: "
          f"{', '.join(res['top_label_names'])}")
    return _done(res)


def _occlude_samples(args, net, meta, out, dataset, indices, common):
    """``occlude --indices``: one figure and JSON per sample, one progress bar over every position."""
    from zfscratch.experiments import _shared as S
    from zfscratch.experiments.occlusion import occluder_positions, run_occlusion
    bad = [i for i in indices if i >= len(dataset)]
    if bad:
        raise UserError(f"--indices: {bad[0]} out of range 0..{len(dataset) - 1}")
    size = S.input_size(net)
    patch = args.patch or max(1, round(size / 5))
    stride = args.stride or max(1, round(size / 28))
    per = occluder_positions(size, patch, stride, args.margin).size ** 2
    bar = S.progress_bar(per * len(indices), f"occlusion of {len(indices)} images",
                         not args.quiet and _is_root(), unit="pos")
    results = []
    try:
        for i in indices:
            results.append(run_occlusion(net, meta, out, dataset=dataset, index=i, progress=False, bar=bar,
                                         name=f"{args.name}_{i}", **common))
    finally:
        bar.close()
    if not _is_root():
        return 0
    secs = sum(r["seconds"] for r in results)
    npos = sum(r["positions"] for r in results)
    print(f"occlusion: {len(results)} images x {results[0]['positions']} positions (patch "
          f"{results[0]['patch']}, stride {results[0]['stride']}) in {secs:.2f} s = {npos / secs:.1f} "
          f"positions/s on {net.backend.name}{'' if args.incremental else ' (full recompute)'}")
    for i, r in zip(indices, results):
        print(f"  #{i} {r['label_name']}: P(true) {r['base_prob_true']:.3f} unoccluded, minimum "
              f"{r['min_prob_true']:.3f} at (x, y) = ({r['min_prob_position_xy'][0]:.0f}, "
              f"{r['min_prob_position_xy'][1]:.0f}); figure {r['figure']}")
    return 0


def cmd_invariance(args):
    from zfscratch.experiments.invariance import invariance, parse_range
    _check_positive(batch=args.batch, images=args.images, eval_images=args.eval_images)
    net, meta = _load(args.weights, args.backend)
    ds = _open_data(args.data, meta, args.split)
    sweeps = {}
    for kind, text in (("translation", args.translation), ("scale", args.scale), ("rotation", args.rotation)):
        if text:
            sweeps[kind] = parse_range(text, kind)
    out = _out_dir(args, args.weights, "invariance")
    res = invariance(net, meta, ds, out, n_images=args.images, eval_images=args.eval_images, sweeps=sweeps,
                     batch=args.batch, seed=args.seed, progress=not args.quiet)
    r = res["rotation"]
    print(f"rotation ({res['eval_images']} images): accuracy upright {r['accuracy_upright']:.2%}, worst "
          f"{r['worst_accuracy']:.2%} at {r['worst_angle']:g} deg, mean over angles "
          f"{r['mean_accuracy_all_angles']:.2%}")
    if r.get("accuracy_inside_training_range") is not None:
        print(f"  inside the training range (±{r['training_max_angle']:g} deg): "
              f"{r['accuracy_inside_training_range']:.2%}; outside: {r['accuracy_outside_training_range']:.2%}")
    for k in ("translation", "scale"):
        acc = res["summary"][k]["accuracy"]
        print(f"{k}: accuracy from {min(acc):.2%} to {max(acc):.2%} over the sweep")
    return _done(res)


def cmd_correspondence(args):
    from zfscratch.experiments.correspondence import correspondence
    _check_positive(batch=args.batch, images=args.images, groups=args.groups)
    net, meta = _load(args.weights, args.backend)
    ds = _open_data(args.data, meta, args.split)
    parts = [p for p in (args.parts or "").split(",") if p] or None
    layers = tuple(l for l in args.layers.split(",") if l)
    out = _out_dir(args, args.weights, "correspondence")
    res = correspondence(net, meta, ds, out, class_name=args.cls, parts=parts, n_images=args.images,
                         groups=args.groups, layers=layers, margin=args.margin, batch=args.batch,
                         seed=args.seed, progress=not args.quiet)
    print(f"class {res['class']}: {res['groups']} groups of {res['n_images']} images; "
          "Delta / (n(n-1)D), mean ± std over groups (lower = more consistent)")
    print(res["table_markdown"])
    return _done(res)


def cmd_layerwise(args):
    from zfscratch.experiments.layerwise import layerwise
    _check_positive(batch=args.batch, train_images=args.train_images, test_images=args.test_images,
                    grid=args.grid, epochs=args.epochs)
    net, meta = _load(args.weights, args.backend)
    tr = _open_data(args.data, meta, args.train_split)
    te = _open_data(args.data, meta, args.test_split)
    layers = [l for l in (args.layers or "").split(",") if l] or None
    out = _out_dir(args, args.weights, "layerwise")
    res = layerwise(net, meta, tr, te, out, layers=layers, grid=args.grid, pool=args.pool, epochs=args.epochs,
                    lr=args.lr, n_train=args.train_images, n_test=args.test_images, batch=args.batch,
                    seed=args.seed, progress=not args.quiet, world=_world(args, net))
    if not _is_root():
        return 0
    print(res["table_markdown"])
    return _done(res)


def cmd_architecture(args):
    from zfscratch.experiments import architecture as A
    _check_positive(batch=args.batch, epochs=args.epochs)
    out = args.out or "architecture"
    from zfscratch.train import check_writable_dir
    check_writable_dir(out)
    if args.weights:
        from zfscratch.backend import resolve_backend
        from zfscratch.io import load_weights
        models = {}
        for w in args.weights:
            net, meta = load_weights(w, backend=resolve_backend(args.backend))
            label = os.path.splitext(os.path.basename(w))[0]
            if label in models or label == "weights":
                label = os.path.basename(os.path.dirname(os.path.abspath(w))) or label
            models[label] = (net, meta)
        ds_meta = next(iter(models.values()))[1]
        val = _open_data(args.val_data or args.data, ds_meta, "val")
        res = A.compare(models, val, out, dead_threshold=args.dead_threshold, batch=args.batch,
                        progress=not args.quiet)
    else:
        archs = tuple(a for a in args.archs.split(",") if a)
        spec = args.data or "synthetic"
        data = spec if args.val_data is None else (spec, args.val_data)
        opts = {}
        if args.dropout is not None:
            opts["model_config"] = {"dropout": args.dropout}
        if args.augment is not None:
            opts["augment"] = args.augment
        if args.lr_patience is not None:
            opts["lr_patience"] = args.lr_patience
        res = A.architecture(data, out, archs=archs, epochs=args.epochs, batch=args.batch, lr=args.lr,
                             backend=args.backend, seed=args.seed, input_size=args.input_size,
                             dead_threshold=args.dead_threshold, progress=not args.quiet,
                             overwrite=args.overwrite, train_options=opts)
    print(res["table_markdown"])
    return _done(res)
