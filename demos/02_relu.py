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
# # Rectified linear unit (ReLU)
#
# `y = max(x, 0)`, elementwise: positive responses pass, the rest become zero; its gradient is a mask.
# The demo rectifies real convolution responses, shows the backward pass letting the gradient through
# only where `x > 0`, and the DeconvNet's "rectify" step, which applies ReLU to the *reconstruction*
# signal itself. It ends with a float64 gradient check.
#
# Script: `python demos/02_relu.py --fast`; notebook: `jupytext --to notebook demos/02_relu.py`.

# %%
"""ReLU: y = max(x, 0). It keeps positive responses and zeroes the rest; its gradient is a mask.

Shows: the rectification of real convolution responses (how many units go to zero), the backward
pass passing the gradient only where x > 0, and that the DeconvNet's "rectify" step applies the same
ReLU to the *reconstruction* (not gated by the forward pass). Ends with a float64 gradient check.
"""
import numpy as np

import _common as C
from zfscratch.layers import Conv2d, ReLU

# %% [markdown]
# ## Forward
# Eight random 5x5 filters (stride 1, pad 2) over the toy image give an `(1, 8, H, W)` block of
# responses, about half of them negative. ReLU keeps the shape; the printed fraction of exact zeros
# is the fraction that was negative.


# %%
def forward(args, be, rng, size):
    img = C.toy_image(size, args.seed).astype(np.float32) / 255.0
    x_img = (img - img.mean(axis=(0, 1))).transpose(2, 0, 1)[None].copy()
    conv = Conv2d(3, 8, 5, stride=1, pad=2, name="conv", init_std=0.3, rng=rng).set_backend(be)
    pre = conv.forward(be.to_device(x_img))
    relu = ReLU(name="relu").set_backend(be)
    post = relu.forward(pre)
    pre_h, post_h = C.host(be, pre), C.host(be, post)

    C.section("forward on 8 random 5x5 filters' responses")
    print(f"  input {pre_h.shape}, output {post_h.shape} (same shape; elementwise)")
    print(f"  before: min {pre_h.min(): .3f}, max {pre_h.max(): .3f}, {np.mean(pre_h < 0):.0%} negative")
    print(f"  after : min {post_h.min(): .3f}, max {post_h.max(): .3f}, {np.mean(post_h == 0):.0%} exactly zero")
    assert np.array_equal(post_h, np.maximum(pre_h, 0))
    return pre_h, post_h


# %% [markdown]
# ## Backward, and the DeconvNet's rectification
# Backprop multiplies the incoming gradient by the mask `x > 0` of the *forward* input. The DeconvNet
# instead passes the signal going down through ReLU again (`relu(signal)`), whatever the forward
# input was: compare the last two printed rows.


# %%
def backward_and_rectify(be):
    C.section("backward: dx = dy where x > 0, else 0")
    xs = np.array([[-2.0, -0.5, 0.5, 2.0]], np.float32)
    r = ReLU().set_backend(be)
    r.forward(be.to_device(xs))
    dx = C.host(be, r.backward(be.to_device(np.ones_like(xs))))
    C.show("  x ", xs)
    C.show("  dy", np.ones_like(xs))
    C.show("  dx", dx)

    C.section("DeconvNet rectification: ReLU of the reconstruction signal itself")
    recon = np.array([[1.5, -1.0, 0.7, -0.2]], np.float32)
    gated = C.host(be, r.backward(be.to_device(recon)))   # backprop would gate by the forward x
    rect = C.host(be, be.kernels.relu_forward(be.to_device(recon)))
    C.show("  signal going down      ", recon)
    C.show("  backprop (gated by x>0)", gated)
    C.show("  DeconvNet (relu(signal))", rect)


# %% [markdown]
# ## Gradient check
# Finite differences in float64, with inputs kept 0.1 away from the kink at 0 (where ReLU has no
# derivative); the relative errors must be tiny (`-> pass`).


# %%
def gradients(be, rng):
    C.section("gradients")
    from zfscratch.gradcheck import _away_from_zero  # inputs kept 0.1 away from the kink at 0
    C.gradcheck(ReLU(name="relu").set_backend(be),
                be.to_device(_away_from_zero(rng, (2, 3, 5, 5)), np.float64), rng, "ReLU")


# %% [markdown]
# ## Figure
# ReLU and its derivative, the histogram of responses before and after, three maps before and after.


# %%
def figure(args, pre_h, post_h):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 4, figsize=(11, 5.5))
    ax = axes[0, 0]
    t = np.linspace(-2, 2, 201)
    ax.plot(t, np.maximum(t, 0), label="y = max(x, 0)")
    ax.plot(t, (t > 0).astype(float), "--", label="dy/dx")
    ax.legend(fontsize=8)
    ax.set_title("ReLU and its derivative", fontsize=9)
    ax = axes[1, 0]
    ax.hist(pre_h.ravel(), bins=60, alpha=0.6, label="before")
    ax.hist(post_h.ravel(), bins=60, alpha=0.6, label="after")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("histogram of responses", fontsize=9)
    for k in range(3):
        C.imshow_map(axes[0, k + 1], pre_h[0, k], f"filter {k}: before (red>0, blue<0)", sym=True)
        C.imshow_map(axes[1, k + 1], post_h[0, k], f"after ReLU ({np.mean(post_h[0, k] == 0):.0%} zero)",
                     sym=True)
    fig.suptitle("ReLU keeps positive responses and zeroes negative ones")
    C.save(fig, args, "02_relu.png")


# %% [markdown]
# ## Run every step

# %%
def main(argv=None):
    args = C.parse_args(__doc__, argv)
    be, rng = args.be, args.rng
    size = 32 if args.fast else 64
    C.title("Rectified linear unit (ReLU)")
    pre_h, post_h = forward(args, be, rng, size)
    backward_and_rectify(be)
    gradients(be, rng)
    figure(args, pre_h, post_h)


if __name__ == "__main__":
    main()
