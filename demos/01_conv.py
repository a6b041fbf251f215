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
# # Convolution (Conv2d)
#
# A `Conv2d` layer slides F filters of size C x k x k over the image and, at every position, takes the
# sum of the elementwise product of the filter with the patch under it, plus a bias
# (a cross-correlation). This demo shows the output-size arithmetic, one output value computed by hand,
# hand-made filters on a toy image, the effect of the stride, and a float64 gradient check.
#
# Run it as a script (`python demos/01_conv.py --fast`) or as a notebook
# (`jupytext --to notebook demos/01_conv.py`; options then come from `ZFSCRATCH_DEMO_ARGS`).

# %%
"""Convolution: a Conv2d layer slides F filters of size C x k x k over the image (cross-correlation).

Shows: output-size arithmetic (ZFNet conv1: 224 -> 110 with 7x7 stride 2 pad 1), one output value
computed by hand against the kernel, hand-made edge/colour filters on a toy image, the effect of
stride, and a float64 gradient check of the layer (dx, dw, db).
"""
import numpy as np

import _common as C
from zfscratch.kernels.reference import conv_output_size
from zfscratch.layers import Conv2d

# %% [markdown]
# ## Output size
# Along each spatial axis an input of H pixels, padded by `pad` on both sides, holds
# `(H + 2*pad - k) // stride + 1` filter positions. The printed table gives ZFNet's layers.


# %%
def output_sizes():
    C.section("output size: (H + 2*pad - k) // stride + 1")
    for h, k, s, p, what in ((224, 7, 2, 1, "ZFNet conv1"), (55, 5, 2, 0, "ZFNet conv2"),
                             (13, 3, 1, 1, "ZFNet conv3-5"), (224, 11, 4, 2, "AlexNet-style conv1")):
        print(f"  {what:<20} H={h:<4} k={k:<3} stride={s} pad={p} -> {conv_output_size(h, k, s, p)}")


# %% [markdown]
# ## Input and filters
# The toy RGB image is scaled to [0, 1] and its mean colour subtracted (as the nets see images), then
# laid out as a batch of one, `(N=1, C=3, H, W)`. Four hand-made 3x3 filters over the three colour
# channels, shape `(F=4, C=3, 3, 3)`: a Sobel vertical-edge and horizontal-edge filter, a "redness"
# detector (red minus the mean of green and blue at the centre pixel) and a blur.


# %%
def make_input(size, seed):
    img = C.toy_image(size, seed).astype(np.float32) / 255.0
    x = (img - img.mean(axis=(0, 1))).transpose(2, 0, 1)[None].copy()   # (N=1, C=3, H, W)
    return img, x


def make_filters():
    sobel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32) / 4
    w = np.zeros((4, 3, 3, 3), np.float32)
    w[0, :] = sobel / 3                     # vertical edges (intensity changes left -> right)
    w[1, :] = sobel.T / 3                   # horizontal edges
    w[2, 0, 1, 1], w[2, 1, 1, 1], w[2, 2, 1, 1] = 1.0, -0.5, -0.5   # "redness" detector
    w[3, :] = 1.0 / 27                      # blur (mean of the 3x3x3 neighbourhood)
    names = ["vertical edge", "horizontal edge", "red - (green+blue)/2", "blur"]
    return w, names


# %% [markdown]
# ## Forward pass, and one value by hand
# With stride 1 and pad 1 a 3x3 filter keeps the image size: the output `y` is `(N, F, H, W)`, one map
# per filter. One output is then recomputed by hand from the padded input; the two printed numbers
# must agree (to float32 rounding). Last, each filter's strongest response shows what it detects.


# %%
def forward_and_check(be, x, w, names, size):
    conv = Conv2d(3, 4, 3, stride=1, pad=1, name="conv").set_backend(be)
    conv.params["w"][...] = be.to_device(w)
    conv.params["b"][...] = 0
    y = C.host(be, conv.forward(be.to_device(x)))
    C.section("shapes")
    print(f"  input x {x.shape} (N, C, H, W), weights w {w.shape} (F, C, k, k), bias b {(4,)}")
    print(f"  output y {y.shape}: one map per filter (stride 1, pad 1 keeps {size}x{size})")

    C.section("one output value by hand: y[n, f, i, j] = sum(x_pad[n, :, i:i+k, j:j+k] * w[f]) + b[f]")
    f, i, j = 0, size // 8 + 1, size // 8 + size // 3 - 1
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    by_hand = float((xpad[0, :, i:i + 3, j:j + 3] * w[f]).sum())
    print(f"  y[0, {f}, {i}, {j}] kernel = {y[0, f, i, j]: .6f}   by hand = {by_hand: .6f}")
    assert abs(by_hand - y[0, f, i, j]) < 1e-5

    C.section("what each filter responds to (max |response| and where)")
    for f, name in enumerate(names):
        m = np.abs(y[0, f])
        ii, jj = np.unravel_index(np.argmax(m), m.shape)
        print(f"  filter {f} {name:<22} max |y| = {m.max():.3f} at (row {ii}, col {jj})")
    return y


# %% [markdown]
# ## Stride
# Stride 2 evaluates the same filters at every second position, so the output is half the size and
# equals the stride-1 output subsampled (`True` below).


# %%
def strided(be, x, w, y):
    C.section("stride 2: same filters, every second position")
    conv2 = Conv2d(3, 4, 3, stride=2, pad=1, name="conv_s2").set_backend(be)
    conv2.params["w"][...] = be.to_device(w)
    y2 = C.host(be, conv2.forward(be.to_device(x)))
    print(f"  output {y2.shape}; equals the stride-1 output subsampled: "
          f"{np.allclose(y2, y[:, :, ::2, ::2], atol=1e-6)}")
    return y2


# %% [markdown]
# ## Gradient check
# In float64 the layer's `backward` (dx, dw, db) is compared with finite differences of the forward
# pass; the printed relative errors must be tiny (`-> pass`).


# %%
def gradients(be, rng):
    C.section("gradients")
    g = Conv2d(3, 4, 3, stride=2, pad=1, name="conv", init_std=0.5, rng=rng, dtype=np.float64).set_backend(be)
    g.params["b"][...] = be.to_device(rng.standard_normal(4))
    C.gradcheck(g, be.to_device(rng.standard_normal((2, 3, 7, 8)), np.float64), rng, "Conv2d 3x3 s2 p1")


# %% [markdown]
# ## Figure
# Row 1: the filters (red channel, with values); row 2: their output maps (red > 0, blue < 0);
# row 3: the stride-2 maps.


# %%
def figure(args, img, w, names, y, y2, size):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(3, 5, figsize=(11, 7))
    axes[0, 0].imshow(img)
    axes[0, 0].set_title("input image (3 x %d x %d)" % (size, size), fontsize=9)
    axes[0, 0].axis("off")
    for ax in (axes[1, 0], axes[2, 0]):
        ax.axis("off")
    axes[1, 0].text(0, 0.5, "row 1: filters\n(red channel,\nvalues)\n\nrow 2: output maps\n"
                    "(red > 0, blue < 0)", fontsize=9, va="center")
    for f, name in enumerate(names):
        C.imshow_map(axes[0, f + 1], w[f, 0], name, sym=True, annotate=True, fmt="{:.2f}")
        C.imshow_map(axes[1, f + 1], y[0, f], f"map {f}: {y.shape[2]}x{y.shape[3]}", sym=True)
        C.imshow_map(axes[2, f + 1], y2[0, f], f"stride 2: {y2.shape[2]}x{y2.shape[3]}", sym=True)
    axes[2, 0].text(0, 0.5, "row 3: stride 2\n(half the size)", fontsize=9, va="center")
    fig.suptitle("Convolution: filters slide over the image; each output map = one filter's response")
    C.save(fig, args, "01_conv.png")


# %% [markdown]
# ## Run every step

# %%
def main(argv=None):
    args = C.parse_args(__doc__, argv)
    be, rng = args.be, args.rng
    size = 32 if args.fast else 64
    C.title("Convolution (Conv2d)")
    output_sizes()
    img, x = make_input(size, args.seed)
    w, names = make_filters()
    y = forward_and_check(be, x, w, names, size)
    y2 = strided(be, x, w, y)
    gradients(be, rng)
    figure(args, img, w, names, y, y2, size)


if __name__ == "__main__":
    main()
