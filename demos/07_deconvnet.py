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
# # The DeconvNet: projecting a feature activation back to the pixels
#
# Paper section 2.1. To see what made one feature map fire, run the net forward to layer L,
# recording the max-pool switches; keep the strongest activation of that map and zero everything
# else; then walk back down: *unpool* with the switches, *rectify* (ReLU of the reconstruction),
# *filter* with the transposed weights (`conv2d_backward_data`); normalization layers pass the
# signal through. The result is image-shaped, `(3, H, W)`.
#
# The demo writes the walk out by hand with the kernels and compares it with
# `zfscratch.deconv.project`, projects the strongest map of layers 1-5 inside its receptive field,
# checks that the transposed filtering is the exact adjoint of the convolution, and ends with a
# float64 gradient check of `Conv2d` (whose input gradient is that same transposed convolution).
#
# It uses the main job's trained model when `zfscratch run` made one (or `--weights`), else trains a
# small one in a few seconds; with `--fast` the same architecture is left untrained.
#
# Script: `python demos/07_deconvnet.py --fast`;
# notebook: `jupytext --to notebook demos/07_deconvnet.py`.

# %%
"""The DeconvNet on one image (paper section 2.1): what made a feature map fire, in pixel space.

Run the net forward to layer L, recording the max-pool switches; keep the strongest activation of
one map and zero everything else; then walk down: unpool with the switches, rectify (ReLU of the
reconstruction), filter with the transposed weights (conv2d_backward_data); LCN passes through.
Shows: the walk written out by hand with the kernels, equal to zfscratch.deconv.project; the
strongest map of layers 1-5 projected and its receptive field; checks that "filter with transposed
weights" is the exact adjoint of the convolution (<conv(x), y> = <x, conv^T(y)>) and a float64
gradient check of Conv2d (whose input gradient is that same transposed convolution).
"""
import numpy as np

import _common as C
from zfscratch import deconv
from zfscratch.layers import Conv2d
from zfscratch.preprocess import Preprocess
from zfscratch.viz import to_display

# %% [markdown]
# ## Model and image
# One validation image, preprocessed (resized, mean subtracted) into a batch of one, `(1, 3, H, W)`.
# The printed shapes `(C, H, W)` are those of the layers the DeconvNet can project (the conv part).


# %%
def model_and_image(args):
    net, meta, ds = C.demo_model(args)
    pre = Preprocess.from_meta(meta)
    size = int(net.config["input_size"])
    if ds is not None:
        imgs, labels = ds.get_batch(np.arange(8))
        i = 0
        img, label = imgs[i], (meta.get("classes") or [])[int(labels[i])] if meta.get("classes") else labels[i]
    else:
        img, label = C.toy_image(size, args.seed), "?"
    x = np.asarray(pre(img[None]), np.float32)
    print(f"image: class {label}, input {x.shape}")
    return net, pre, x, label


def forward_shapes(net, x):
    C.section("forward shapes (C, H, W) of the projectable layers")
    line = []
    for name, shape in net.output_shapes(x.shape):
        if name not in deconv.projectable_layers(net):
            break
        line.append(f"{name} {shape[1:]}")
        if net.layer(name).kind in ("LocalResponseNorm", "LocalContrastNorm", "MaxPool2d") and not name.startswith("pool1") \
                and not name.startswith("pool2"):
            print("  " + "  ".join(line))
            line = []
    if line:
        print("  " + "  ".join(line))


# %% [markdown]
# ## The walk down, by hand
# `by_hand` runs the forward pass layer by layer, keeping each pool's switches, keeps the single
# strongest activation of one map, and walks back down with the three kernel calls. The printed
# steps give the reconstruction's shape after each layer; the result must equal
# `deconv.project(..., mode="max")`.


# %%
def by_hand(net, x, layer, map_index):
    """The DeconvNet for the strongest activation of one map, written out with the kernel calls."""
    be, kern = net.backend, net.backend.kernels
    stop = net.index(layer)
    shapes, switches, a = [], [], be.to_device(x)
    for l in net.layers[:stop + 1]:                         # 1. forward, recording the switches
        shapes.append(tuple(a.shape))
        a = l.forward(a, train=False)
        switches.append(l.switches if l.kind == "MaxPool2d" else None)
    a = C.host(be, a)
    flat = int(np.argmax(a[0, map_index]))                  # 2. keep the strongest activation only
    top = np.zeros_like(a)
    top.flat[np.ravel_multi_index((0, map_index) + np.unravel_index(flat, a.shape[2:]), a.shape)] = \
        a[0, map_index].flat[flat]
    r = be.to_device(top)
    steps = []
    for l, shape, sw in zip(reversed(net.layers[:stop + 1]), reversed(shapes), reversed(switches)):
        if l.kind == "MaxPool2d":                            # 3a. unpool with the switches
            r = l.unpool(r, sw, shape)
        elif l.kind == "ReLU":                               # 3b. rectify the reconstruction
            r = kern.relu_forward(r)
        elif l.kind == "Conv2d":                             # 3c. filter with the transposed weights
            r = kern.conv2d_backward_data(r, l.params["w"], shape, l.stride, l.pad)
        steps.append(f"{l.name}:{l.kind}->{tuple(r.shape[1:])}")   # LCN / dropout: unchanged
    return C.host(be, r)[0], steps


def compare_with_library(net, x):
    C.section("the walk down written out with the kernels vs zfscratch.deconv.project (layer relu2)")
    a2 = deconv.activations(net, x, ["relu2"])["relu2"][0]
    m2 = int(np.argmax(a2.reshape(a2.shape[0], -1).max(1)))
    mine, steps = by_hand(net, x, "relu2", m2)
    lib, info = deconv.project(net, x, "relu2", maps=m2, mode="max", return_info=True)
    print("  " + "  ".join(steps))
    print(f"  strongest map {m2}: activation {info['value'][0]:.3f} at (y={info['y'][0]}, x={info['x'][0]})")
    print(f"  max |by hand - deconv.project| = {np.abs(mine - lib[0]).max():.2e}")
    assert np.allclose(mine, lib[0], atol=1e-5 * max(1.0, np.abs(lib).max()))


# %% [markdown]
# ## The strongest map of each layer
# For layers 1-5, the map with the largest activation is projected from that single activation. A
# unit sees only its receptive field (`deconv.receptive_field`, the box `deconv.unit_box` gives in
# pixels), so every non-zero pixel of its projection must lie inside that box (`True` below).


# %%
def strongest_per_layer(net, x):
    C.section("strongest map of each layer, projected (mode 'max': only its largest activation kept)")
    layers = deconv.parse_layers(net, "1-5")
    projs, boxes, rows = [], [], []
    acts = deconv.activations(net, x, layers)
    for nm in layers:
        a = acts[nm][0]
        m = int(np.argmax(a.reshape(a.shape[0], -1).max(1)))
        r, inf = deconv.project(net, x, nm, maps=m, mode="max", return_info=True)
        y0, y1, x0, x1 = deconv.unit_box(net, nm, inf["y"][0], inf["x"][0])
        rf = deconv.receptive_field(net, nm)
        nz = np.abs(r[0]).sum(0) > 0
        ys, xs = np.nonzero(nz)
        inside = bool(nz.sum() == 0 or (ys.min() >= y0 and ys.max() < y1 and xs.min() >= x0 and xs.max() < x1))
        print(f"  {nm:<6} map {m:3d}: value {inf['value'][0]:8.3f} at ({inf['y'][0]},{inf['x'][0]}); receptive "
              f"field {rf[0]}x{rf[0]} px -> box rows {y0}-{y1 - 1}, cols {x0}-{x1 - 1}; projection inside it: {inside}")
        assert inside
        projs.append(r[0])
        boxes.append((y0, y1, x0, x1))
        rows.append((nm, m, inf["value"][0]))
    return layers, acts, projs, boxes, rows


# %% [markdown]
# ## Properties
# With the switches fixed, the walk down is linear in the kept activation for positive values
# (`ReLU(2r) = 2 ReLU(r)`), so doubling it doubles the projection. And filtering with the
# transposed weights is the adjoint of the convolution: `<conv1(x), y> = <x, conv1^T(y)>` for any
# `x`, `y` (float64, the two printed numbers agree).


# %%
def properties(be, rng, net, x, acts, rows):
    C.section("properties")
    nm, m, v = rows[2]
    a3 = acts[nm][0, m]
    yy, xx = np.unravel_index(int(np.argmax(a3)), a3.shape)
    p1, _ = deconv.project_activation(net, x, nm, [(0, m, yy, xx)], values=1.0)
    p2, _ = deconv.project_activation(net, x, nm, [(0, m, yy, xx)], values=2.0)
    print(f"  the projection scales with the kept activation (switches fixed, ReLU(2r) = 2 ReLU(r)): "
          f"max |p(2) - 2 p(1)| / max|p| = {np.abs(p2 - 2 * p1).max() / max(np.abs(p1).max(), 1e-12):.1e}")
    conv1 = net.layer("conv1")
    w = C.host(be, conv1.params["w"]).astype(np.float64)
    xs_ = rng.standard_normal((1,) + x.shape[1:])
    y = be.kernels.conv2d_forward(be.to_device(xs_), be.to_device(w), None, conv1.stride, conv1.pad)
    ys_ = rng.standard_normal(y.shape)
    xt = be.kernels.conv2d_backward_data(be.to_device(ys_), be.to_device(w), xs_.shape, conv1.stride, conv1.pad)
    lhs, rhs = float((C.host(be, y) * ys_).sum()), float((xs_ * C.host(be, xt)).sum())
    print(f"  adjoint: <conv1(x), y> = {lhs:.10f}, <x, conv1^T(y)> = {rhs:.10f}  (float64)")
    assert abs(lhs - rhs) < 1e-8 * max(1.0, abs(lhs))


# %% [markdown]
# ## Gradient check
# The input gradient of `Conv2d` is the same transposed convolution the DeconvNet uses; float64
# finite differences check it (and dw, db) on a 7x7 stride-2 layer like ZFNet's conv1 (`-> pass`).


# %%
def gradients(be, rng):
    C.section("gradients")
    g = Conv2d(3, 4, 7, stride=2, pad=1, name="conv1", init_std=0.3, rng=rng, dtype=np.float64).set_backend(be)
    C.gradcheck(g, be.to_device(rng.standard_normal((2, 3, 11, 11)), np.float64), rng, "Conv2d 7x7 s2 p1 (dx = transposed conv)")


# %% [markdown]
# ## Figure
# Top: the input, then each layer's projection (grey = 0, display `0.5 + 0.5 r / max|r|`) with its
# receptive field in yellow. Bottom: all of layer 1 projected at once, then where each projection
# falls on the image.


# %%
def figure(args, net, pre, x, label, layers, projs, boxes, rows):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    disp = np.asarray(pre.deprocess(x))[0]
    fig, axes = plt.subplots(2, len(layers) + 1, figsize=(2.3 * (len(layers) + 1), 5))
    axes[0, 0].imshow(disp, interpolation="nearest")
    axes[0, 0].set_title(f"input ({label})", fontsize=9)
    rec = deconv.reconstruct(net, x, "relu1")
    axes[1, 0].imshow(to_display(rec[0]), interpolation="nearest")
    axes[1, 0].set_title("all of layer 1,\nprojected", fontsize=9)
    for j, ((nm, m, v), p, (y0, y1, x0, x1)) in enumerate(zip(rows, projs, boxes)):
        axes[0, j + 1].imshow(to_display(p), interpolation="nearest")
        axes[0, j + 1].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1))
        axes[0, j + 1].set_title(f"{nm} map {m}\n(receptive field)", fontsize=9)
        axes[1, j + 1].imshow(disp, interpolation="nearest")
        axes[1, j + 1].imshow(np.abs(p).sum(0), cmap="magma", alpha=0.6, interpolation="nearest")
        axes[1, j + 1].set_title(f"where, on the image", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("DeconvNet: the strongest activation of one map per layer, projected to pixels "
                 "(grey = 0, display 0.5 + 0.5 r / max|r|)")
    C.save(fig, args, "07_deconvnet.png")


# %% [markdown]
# ## Run every step

# %%
def main(argv=None):
    args = C.parse_args(__doc__, argv, extra=C.add_weights_arg)
    be, rng = args.be, args.rng
    C.title("DeconvNet: projecting a feature activation back to the pixels")
    net, pre, x, label = model_and_image(args)
    forward_shapes(net, x)
    compare_with_library(net, x)
    layers, acts, projs, boxes, rows = strongest_per_layer(net, x)
    properties(be, rng, net, x, acts, rows)
    gradients(be, rng)
    figure(args, net, pre, x, label, layers, projs, boxes, rows)


if __name__ == "__main__":
    main()
