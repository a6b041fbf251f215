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
# # Local response normalization (LRN) across feature maps
#
# At every pixel, each channel is divided by a power of the energy of its `size` neighbouring
# channels: `scale = k + alpha/size * sum x^2` over the window, `y = x * scale^-beta`. This is what
# most ZFNet code uses for the paper's "contrast normalized across feature maps"
# (`demos/04_lcn.py` shows the subtractive + divisive LCN). The demo computes one value by hand,
# shows a strong channel suppressing its neighbours, the saturating input/output curve, that ZFNet's
# setting is almost the identity on small inputs, and ends with a float64 gradient check.
#
# Script: `python demos/04_lrn.py --fast`; notebook: `jupytext --to notebook demos/04_lrn.py`.

# %%
"""Local response normalization across feature maps (LRN: what most ZFNet code uses for the paper's
"contrast normalized across feature maps"; demos/04_lcn.py shows the subtractive + divisive LCN).

scale = k + alpha/size * sum of x^2 over `size` neighbouring channels; y = x * scale^-beta.
Shows: one value computed by hand against the kernel, how a strong neighbour suppresses a channel
(with exaggerated alpha, so it is visible; ZFNet's alpha=1e-4 acts only on large activations), the
saturating input/output curve, that ZFNet's setting is almost the identity on small inputs, and a
float64 gradient check of the layer.
"""
import numpy as np

import _common as C
from zfscratch.layers import LocalResponseNorm

# %% [markdown]
# ## A strong channel suppresses its neighbours
# Nine channels at a single pixel, shape `(N=1, C=9, H=1, W=1)`, all 1.0 except channel 4 = 6.0.
# The output `y` has the same shape. With an exaggerated `alpha = 1` the effect is visible: every
# channel whose 5-channel window contains the strong one is pushed down; the channels at the ends
# see fewer neighbours (the window is zero-padded).


# %%
def strong_neighbour(be):
    size, alpha, beta, k = 5, 1.0, 0.75, 1.0   # exaggerated alpha for the picture
    lrn = LocalResponseNorm(size, alpha, beta, k, name="norm").set_backend(be)
    c = 9
    x = np.full((1, c, 1, 1), 1.0, np.float32)
    x[0, 4, 0, 0] = 6.0     # one strong channel in the middle
    y = C.host(be, lrn.forward(be.to_device(x)))
    C.section(f"9 channels at one pixel, all 1.0 except channel 4 = 6.0 (size={size}, alpha={alpha}, "
              f"beta={beta}, k={k})")
    C.show("  x", x[0, :, 0, 0], "{:6.3f}")
    C.show("  y", y[0, :, 0, 0], "{:6.3f}")
    print("  channels 2..6 (the strong one is in their window) drop to 0.19; channels 0, 1, 7, 8 see only")
    print("  ordinary neighbours and stay near 0.7 (the edges see fewer channels: zero padding).")
    return lrn, x, y, (size, alpha, beta, k)


# %% [markdown]
# ## One value by hand
# Channel 2's window is channels 0..4, so its scale is `k + alpha/5 * (1 + 1 + 1 + 1 + 36)`; the two
# printed numbers (by hand and from the kernel) must agree.


# %%
def by_hand(x, y, params):
    size, alpha, beta, k = params
    C.section("one value by hand, channel 2 (window = channels 0..4)")
    s = k + alpha / size * float((x[0, 0:5, 0, 0] ** 2).sum())
    print(f"  scale = {k} + {alpha}/{size} * (1+1+1+1+36) = {s:.3f};  y = 1 * scale^-{beta} = "
          f"{s ** -beta:.6f}  (kernel: {y[0, 2, 0, 0]:.6f})")
    assert abs(s ** -beta - y[0, 2, 0, 0]) < 1e-5


# %% [markdown]
# ## ZFNet's setting
# With size 5, alpha 1e-4, beta 0.75, k 2 the sum term is tiny for ordinary activations, so
# `y ~ x * 2^-0.75`: a constant rescaling. Only inputs 100x larger get visibly damped.


# %%
def zfnet_setting(be, rng):
    C.section("ZFNet's setting (size 5, alpha 1e-4, beta 0.75, k 2): y ~ x / 2^0.75 for ordinary inputs")
    z = LocalResponseNorm().set_backend(be)
    xs = rng.standard_normal((1, 16, 4, 4)).astype(np.float32)
    ys = C.host(be, z.forward(be.to_device(xs)))
    ratio = ys / xs
    print(f"  y/x ranges over [{ratio.min():.5f}, {ratio.max():.5f}]; 2^-0.75 = {2 ** -0.75:.5f}")
    big = xs * 100
    yb = C.host(be, z.forward(be.to_device(big)))
    rb = yb / big
    print(f"  with inputs 100x larger: y/x in [{rb.min():.5f}, {rb.max():.5f}] (large responses get damped)")


# %% [markdown]
# ## Gradient check
# The layer's `backward` (dx, through the scale of every window a channel belongs to) against float64
# finite differences, for ZFNet's setting and for a strong one (`-> pass`).


# %%
def gradients(be, rng):
    C.section("gradients")
    g = LocalResponseNorm(5, 1e-4, 0.75, 2.0, name="norm").set_backend(be)
    C.gradcheck(g, be.to_device(rng.standard_normal((2, 7, 4, 3)), np.float64), rng, "LRN 5 (ZFNet)")
    g = LocalResponseNorm(3, 2.0, 0.75, 1.0, name="norm").set_backend(be)
    C.gradcheck(g, be.to_device(rng.standard_normal((2, 7, 4, 3)), np.float64), rng, "LRN 3, alpha 2")


# %% [markdown]
# ## Figure
# Left: the nine channels before and after. Middle: the output of a single active channel as its
# input grows, for three values of alpha (the curve saturates). Right: six random maps with a strong
# square in map 2, across the channels at one pixel.


# %%
def figure(args, be, rng, lrn, x, y):
    import matplotlib.pyplot as plt
    c = x.shape[1]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ax = axes[0]
    idx = np.arange(c)
    ax.bar(idx - 0.2, x[0, :, 0, 0], 0.4, label="x")
    ax.bar(idx + 0.2, y[0, :, 0, 0], 0.4, label="y")
    ax.set_xlabel("channel")
    ax.set_title("a strong channel suppresses its neighbours", fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[1]
    t = np.linspace(0, 20 if not args.fast else 10, 200).astype(np.float32)
    for a in (1e-4, 1e-2, 1.0):
        m = LocalResponseNorm(5, a, 0.75, 2.0).set_backend(be)
        inp = np.zeros((1, 5, 1, t.size), np.float32)
        inp[0, 2, 0] = t
        ax.plot(t, C.host(be, m.forward(be.to_device(inp)))[0, 2, 0], label=f"alpha={a:g}")
    ax.set_xlabel("x (single active channel)")
    ax.set_ylabel("y")
    ax.set_title("input/output curve (size 5, beta 0.75, k 2)", fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[2]
    maps = rng.gamma(1.0, 1.0, size=(1, 6, 12, 12)).astype(np.float32)
    maps[0, 2, 3:9, 3:9] += 6
    yy = C.host(be, lrn.forward(be.to_device(maps)))
    ax.plot(maps[0, :, 6, 6], "o-", label="x at pixel (6,6)")
    ax.plot(yy[0, :, 6, 6], "s-", label="y at pixel (6,6)")
    ax.set_xlabel("channel")
    ax.set_title("per pixel, across 6 maps (alpha=1)", fontsize=9)
    ax.legend(fontsize=8)
    fig.suptitle("Local response normalization (LRN) across feature maps")
    C.save(fig, args, "04_lrn.png")


# %% [markdown]
# ## Run every step

# %%
def main(argv=None):
    args = C.parse_args(__doc__, argv)
    be, rng = args.be, args.rng
    C.title("Local response normalization (LRN) across channels")
    lrn, x, y, params = strong_neighbour(be)
    by_hand(x, y, params)
    zfnet_setting(be, rng)
    gradients(be, rng)
    figure(args, be, rng, lrn, x, y)


if __name__ == "__main__":
    main()
