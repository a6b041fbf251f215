# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Occlusion sensitivity (paper Fig 7)
#
# Is the classifier really looking at the object, or at its surroundings? Slide a grey square (the
# training mean, 0 after mean subtraction) over the image and, for each position, run the net once
# and record the total activation of the strongest last-conv map of the unoccluded image, the
# probability of the true class and the most probable label. If the net uses the object, P(true)
# drops when the square covers the object, not when it covers the background. The sweep is batched
# (many occluded copies per forward pass); the demo checks it against one plain forward pass per
# position.
#
# It uses the main job's trained model when `zfscratch run` made one (or `--weights`), else trains a
# small one in a few seconds; with `--fast` the same architecture is left untrained, so the maps show
# the mechanics rather than a meaningful result.
#
# Script: `python demos/08_occlusion.py --fast`;
# notebook: `jupytext --to notebook demos/08_occlusion.py`.

# %%
"""Occlusion sensitivity on one image (paper Fig 7), with zfscratch.experiments.occlusion.

A grey square (the training mean: 0 after mean subtraction) is slid over the image; for each
position the net is run once and we record (a) the total activation of the strongest last-conv map
of the unoccluded image, (c) P(true class), (d) the most probable label; (b) is the DeconvNet
projection of that map. If the classifier really looks at the object, P(true) drops when the square
covers the object -- not when it covers the background. Checks the batched sweep against the
position-by-position oracle (one plain forward pass per position).
"""
import os

import numpy as np

import _common as C
from zfscratch.experiments import occlusion
from zfscratch.preprocess import Preprocess


def extra(p):
    C.add_weights_arg(p)
    p.add_argument("--index", type=int, default=0, help="validation image to occlude (default 0)")


# %% [markdown]
# ## The sweep
# The occluder is a quarter of the image side; it moves by `stride` pixels, so an `H x W` image gives
# a grid of positions, one value per position in each map. `occlusion.run_occlusion` runs the sweep
# on validation image `--index` and writes the figure and a JSON file of the numbers. The figure's
# panels follow Fig 7: the input with the occluder where P(true) is lowest, the activation of the
# strongest last-conv map per occluder position, that map's DeconvNet projection, P(true class) and
# the most probable label per position. The printout gives the lowest P(true) and whether it falls
# inside the object's box.


# %%
def sweep(args, net, meta, ds, size):
    patch = max(2, round(size / 4))
    stride = max(1, round(size / (8 if args.fast else 16)))
    print(f"occluder {patch}x{patch} px, stride {stride} px, filled with the training mean")
    if ds is None:
        raise SystemExit("this demo needs the synthetic data (the model was trained on other data)")
    res = occlusion.run_occlusion(net, meta, args.out, dataset=ds, index=args.index, patch=patch, stride=stride,
                                  progress=False, name="08_occlusion")
    C.section("results (see the PNG)")
    print(f"  image {args.index}: true class {res['label_name']}; unoccluded: predicted {res['base_label_name']}, "
          f"P(true) = {res['base_prob_true']:.3f}")
    print(f"  {res['positions']} positions in {res['seconds']:.2f} s ({res['positions_per_s']:.0f} positions/s)")
    print(f"  lowest P(true) = {res['min_prob_true']:.3f} with the occluder centred at "
          f"(x={res['min_prob_position_xy'][0]:.1f}, y={res['min_prob_position_xy'][1]:.1f}); object box "
          f"{res['bbox']} (x0, y0, x1, y1)")
    for k in ("min_inside_bbox", "inside_bbox"):
        if k in res:
            print(f"  that position is inside the object's box: {res[k]}")
    print(f"  strongest last-conv map: {res['layer']} map {res['map_index']} (total activation "
          f"{res['base_activation']:.3g} unoccluded)")
    return res, patch, stride


# %% [markdown]
# ## Check: batched sweep == one forward pass per position
# On a coarser grid, `occlusion_maps` (batches of 7 occluded copies) and `occlusion_reference` (one
# plain forward pass per position) must give the same activation map, P(true) map and top labels.


# %%
def check_batched(args, net, meta, ds, size, patch, stride):
    C.section("check: batched sweep == one forward pass per position")
    pre = Preprocess.from_meta(meta)
    img, lab = ds.get_batch([args.index])
    x = np.asarray(pre(img), np.float32)[0]
    coarse = max(stride, size // 4)
    fast = occlusion.occlusion_maps(net, x, label=int(lab[0]), patch=patch, stride=coarse, batch=7)
    ref = occlusion.occlusion_reference(net, x, int(lab[0]), patch, coarse, map_index=fast["map_index"])
    da = np.abs(fast["activation"] - ref["activation"]).max() / max(np.abs(ref["activation"]).max(), 1e-12)
    dp = np.abs(fast["prob_true"] - ref["prob_true"]).max()
    print(f"  {fast['positions']} positions: activation max rel. difference {da:.1e}, P(true) max difference "
          f"{dp:.1e}, labels equal: {np.array_equal(fast['top_label'], ref['top_label'])}")
    assert da < 1e-4 and dp < 1e-4


# %% [markdown]
# ## Run every step
# The figure was written by the sweep (`<out>/08_occlusion.png`).

# %%
def main(argv=None):
    args = C.parse_args(__doc__, argv, extra=extra)
    C.title("Occlusion sensitivity")
    net, meta, ds = C.demo_model(args)
    size = int(net.config["input_size"])
    res, patch, stride = sweep(args, net, meta, ds, size)
    check_batched(args, net, meta, ds, size, patch, stride)
    print(f"\nsaved {res['figure']} (and {os.path.basename(res['json'])})")


if __name__ == "__main__":
    main()
