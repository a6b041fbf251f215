"""``zfscratch visualize`` (top-9 + DeconvNet, Fig 2), ``filters``, ``evolution`` (Fig 4) and
``reconstruct`` (layer reconstructions with/without coloured background)."""
from __future__ import annotations

import json
import os

ORDER = 30

DATA_HELP = ("dataset: synthetic[:key=value,...], idx:PATH, cifar:PATH, folder:PATH (default: the data "
             "the weights were trained on, as recorded in their metadata)")
SCOPE_HELP = ("display normalization 0.5 + 0.5*r/max|r| (grey = 0): per projection (image, default), one max "
              "per grid of projections (grid: a map's top-k, an evolution row, a reconstruction row), or per "
              "colour channel of each projection (channel)")


def register(sub):
    _visualize_parser(sub)
    _filters_parser(sub)
    _evolution_parser(sub)
    _reconstruct_parser(sub)


def _visualize_parser(sub):
    from zfscratch.commands._args import add_backend_arg

    p = sub.add_parser("visualize", help="top-9 activations per map of layers 1-5 and their DeconvNet "
                       "projections (paper Fig 2)",
                       description="One streaming pass keeps the top-k activations of every map of the "
                       "chosen layers; each is then projected to pixel space with the DeconvNet and shown "
                       "beside the matching image patch. Writes DIR/topk_<layer>.png, DIR/topk.npz (the "
                       "mergeable top-k record) and DIR/topk.json.")
    p.add_argument("--weights", required=True, help="weights file (.npz from zfscratch train)")
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--split", default="val", choices=("train", "val", "test"),
                   help="split of the data to scan (default val, else the data's test split, else train; "
                   "synthetic:n=N has N training and n_val=N/5 validation images)")
    p.add_argument("--layers", default="1-5", help="layers: paper numbers (1-5 = relu1..relu5) and/or layer "
                   "names, e.g. 1-5, 2,4, conv5,pool2 (default 1-5)")
    p.add_argument("--maps", type=int, default=16, help="maps shown per layer, the strongest (default 16)")
    p.add_argument("--map-list", default=None, metavar="M1,M2,...",
                   help="show these maps (indices, for every layer) instead of the strongest --maps")
    p.add_argument("--by", choices=("max", "mean"), default="max",
                   help="strongest maps by their top activation (max, default) or top-k mean (mean)")
    p.add_argument("--k", type=int, default=9, help="activations kept per map (default 9)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--images", type=int, default=None, help="scan only the first N images (default all)")
    p.add_argument("--batch", type=int, default=128, help="images per forward pass (default 128)")
    p.add_argument("--scope", choices=("image", "grid", "channel"), default="image", help=SCOPE_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_backend_arg(p)
    from zfscratch.commands._args import add_distributed_arg
    add_distributed_arg(p)
    p.set_defaults(func=cmd_visualize)


def _filters_parser(sub):
    p = sub.add_parser("filters", help="grid of the first-layer filters (RGB)")
    p.add_argument("--weights", required=True, help="weights file")
    p.add_argument("--out", default=None, metavar="PNG", help="output PNG (default: filters.png beside the weights)")
    p.add_argument("--scope", choices=("filter", "all"), default="filter",
                   help="0.5 + 0.5*w/max|w| per filter (default) or with one max for all filters")
    p.set_defaults(func=cmd_filters)


def _evolution_parser(sub):
    from zfscratch.commands._args import add_backend_arg

    p = sub.add_parser("evolution", help="strongest projection per map at every saved epoch (paper Fig 4)")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="training run directory (with snapshots/)")
    p.add_argument("--out", default=None, metavar="PNG", help="output PNG (default RUN_DIR/evolution.png)")
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--split", default="val", choices=("train", "val", "test"),
                   help="split of the data (default val, else test, else train)")
    p.add_argument("--layers", default="1-5", help="layers (default 1-5)")
    p.add_argument("--maps-per-layer", type=int, default=2, help="maps per layer, strongest at the last "
                   "snapshot (default 2)")
    p.add_argument("--images", type=int, default=256, help="size of the fixed image set (default 256)")
    p.add_argument("--epochs", type=int, default=8, help="at most this many epochs (columns) (default 8)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--scope", choices=("image", "grid", "channel"), default="image", help=SCOPE_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_backend_arg(p)
    p.set_defaults(func=cmd_evolution)


def _reconstruct_parser(sub):
    from zfscratch.commands._args import add_backend_arg

    p = sub.add_parser("reconstruct", help="DeconvNet reconstructions of layers 1-3 with and without "
                       "coloured background, beside the input and the predicted label")
    p.add_argument("--weights", required=True, help="weights file")
    p.add_argument("--data", default=None, help=DATA_HELP + "; synthetic data gives both backgrounds")
    p.add_argument("--split", default="val", choices=("train", "val", "test"),
                   help="split of the data (default val, else test, else train)")
    p.add_argument("--layers", default="1-3", help="layers to reconstruct (default 1-3)")
    p.add_argument("--images", type=int, default=4, help="sample objects (rows) (default 4)")
    p.add_argument("--start", type=int, default=0, help="index of the first sample (default 0)")
    p.add_argument("--eval-images", type=int, default=200,
                   help="objects rendered on both backgrounds for the accuracy numbers (default 200; 0 = skip)")
    p.add_argument("--out", default=None, metavar="PNG", help="output PNG (default: reconstruct.png beside the weights)")
    p.add_argument("--scope", choices=("image", "grid", "channel"), default="image", help=SCOPE_HELP)
    add_backend_arg(p)
    p.set_defaults(func=cmd_reconstruct)


# ----------------------------------------------------------------------------- helpers
def _positive(name, v, allow_zero=False):
    from zfscratch.errors import UserError
    if v is not None and (v < 0 or (v == 0 and not allow_zero)):
        raise UserError(f"{name} {v}: expected a {'non-negative' if allow_zero else 'positive'} integer")


def _load(weights, backend):
    from zfscratch.backend import resolve_backend
    from zfscratch.io import load_weights
    be = resolve_backend(backend)
    return load_weights(weights, backend=be)


def _open_data(spec, meta, split):
    """The dataset named by ``spec``, else the one the weights were trained on (``split`` if it has it)."""
    from zfscratch.data import open_for_model
    return open_for_model(spec, meta, split)


def _layers(net, text):
    from zfscratch import deconv
    from zfscratch.errors import UserError
    try:
        return deconv.parse_layers(net, text)
    except ValueError as e:
        raise UserError(f"--layers {text!r}: {e}") from None


def _print_json(d):
    print(json.dumps(d, indent=2, default=str))


# ----------------------------------------------------------------------------- commands
def cmd_visualize(args):
    from zfscratch.experiments.topk import run_topk
    for n, v in (("--maps", args.maps), ("--k", args.k), ("--batch", args.batch), ("--images", args.images)):
        _positive(n, v)
    net, meta = _load(args.weights, args.backend)
    layers = _layers(net, args.layers)
    maps = args.maps
    if args.map_list:
        from zfscratch.errors import UserError
        try:
            maps = [int(m) for m in args.map_list.split(",") if m.strip()]
        except ValueError:
            raise UserError(f"--map-list {args.map_list!r}: expected comma-separated map indices") from None
        from zfscratch.models import input_shape
        shapes = dict(net.output_shapes((1,) + tuple(input_shape(net))))
        for name in layers:
            c = shapes[name][1]
            if not maps or min(maps) < 0 or max(maps) >= c:
                raise UserError(f"--map-list {args.map_list!r}: layer {name} has maps 0..{c - 1}")
    ds = _open_data(args.data, meta, args.split)
    from zfscratch.commands._args import world_of
    world = world_of(args)
    if world.distributed:
        from zfscratch.distributed import array_digest
        world.check_same("the model", array_digest(net.state_dict()))
        world.check_same("the data", [len(ds), type(ds).__name__])
    res = run_topk(net, meta, ds, args.out, layers=layers, maps=maps, k=args.k, images=args.images,
                   batch=args.batch, scope=args.scope, by=args.by, progress=not args.quiet, world=world)
    if not world.is_root:
        return 0
    print(f"scanned {res['images']} images in {res['search_s']:.1f} s ({res['images_per_s']:.0f} img/s"
          f"{', ' + str(res['ranks']) + ' ranks' if res['ranks'] > 1 else ''}), "
          f"projections {res['project_s']:.1f} s, backend {net.backend.name}")
    for name, r in res["layers"].items():
        print(f"  {name:<8} rf {r['rf'][0]:>3} px  maps with no positive activation "
              f"{100 * r['dead_fraction']:.0f}%  -> {r['figure']}")
    print(f"top-k record: {res['state']}; numbers: {res['json']}")
    return 0


def cmd_filters(args):
    from zfscratch import viz
    from zfscratch.errors import UserError
    from zfscratch.io import load_weights
    net, meta = load_weights(args.weights)
    convs = [l for l in net.layers if l.kind == "Conv2d"]
    if not convs:
        raise UserError(f"weights file {args.weights} has no convolution layer")
    w = net.backend.to_host(convs[0].params["w"])
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.weights)), "filters.png")
    viz.plot_filters(w, out, title=f"{convs[0].name} filters ({os.path.basename(args.weights)})", scope=args.scope)
    print(f"{w.shape[0]} filters {w.shape[1]}x{w.shape[2]}x{w.shape[3]} -> {out}")
    return 0


def cmd_evolution(args):
    from zfscratch.backend import resolve_backend
    from zfscratch.experiments.evolution import list_snapshots, run_evolution
    from zfscratch.io import load_weights
    for n, v in (("--maps-per-layer", args.maps_per_layer), ("--images", args.images),
                 ("--epochs", args.epochs), ("--batch", args.batch)):
        _positive(n, v)
    be = resolve_backend(args.backend)
    snaps = list_snapshots(args.run)
    net, meta = load_weights(snaps[-1][1])
    _layers(net, args.layers)
    ds = _open_data(args.data, meta, args.split)
    res = run_evolution(args.run, ds, out=args.out, layers=args.layers, maps_per_layer=args.maps_per_layer,
                        images=args.images, max_epochs=args.epochs, backend=be, batch=args.batch,
                        scope=args.scope, progress=not args.quiet)
    print(f"epochs {', '.join(map(str, res['epochs']))}; {len(res['rows'])} maps over {res['images']} images "
          f"in {res['seconds']:.1f} s -> {res['figure']}")
    return 0


def cmd_reconstruct(args):
    from zfscratch.experiments.reconstruct import run_reconstruct
    _positive("--images", args.images)
    _positive("--start", args.start, allow_zero=True)
    _positive("--eval-images", args.eval_images, allow_zero=True)
    net, meta = _load(args.weights, args.backend)
    layers = _layers(net, args.layers)
    ds = _open_data(args.data, meta, args.split)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.weights)), "reconstruct.png")
    res = run_reconstruct(net, meta, ds, out, layers=layers, images=args.images, start=args.start,
                          eval_images=args.eval_images, scope=args.scope)
    if res["accuracy"]:
        acc = ", ".join(f"{bg} {100 * a:.1f}%" for bg, a in res["accuracy"].items())
        print(f"accuracy over {res['eval_images']} objects: {acc}")
    print(f"reconstructions of {', '.join(res['layers'])} -> {res['figure']}")
    return 0
