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
# # Local contrast normalization (LCN) across maps
#
# Jarrett et al. 2009: a subtractive step, then a divisive one, both over a Gaussian window in space
# and summed across all maps. `v = x - (Gaussian-weighted local mean)`, then
# `y = v / max(c, sigma)` with `sigma` the local standard deviation of `v` and `c` its mean over the
# image (so weak texture is not blown up). The demo shows each step on two textured maps, one value
# by hand, how LCN differs from the cross-channel LRN of `demos/04_lrn.py`, and a float64 gradient
# check.
#
# Script: `python demos/04_lcn.py --fast`; notebook: `jupytext --to notebook demos/04_lcn.py`.

# %%
"""Local contrast normalization (LCN, Jarrett et al. 2009): a subtractive and a divisive step across maps.

v = x - (Gaussian-weighted local mean over space, summed across all maps);
y = v / max(c, sigma), sigma = sqrt(Gaussian-weighted local mean of v^2), c = mean of sigma (per image).
Shows: the subtractive step removing a local mean shared by all maps, the divisive step equalizing a
low- and a high-contrast region, one value by hand against the kernel, how it differs from the
cross-channel LRN of demos/04_lrn.py, and a float64 gradient check through both max switches.
"""
import numpy as np

import _common as C
from zfscratch.kernels.reference import gaussian_window
from zfscratch.layers import LocalContrastNorm, LocalResponseNorm

# %% [markdown]
# ## Forward: subtract, then divide
# Two maps, `x` of shape `(N=1, C=2, n, n)`, share a brightness ramp (1 on the left to 4 on the right)
# plus random texture, weak (std 0.2) on the left half and strong (std 2.0) on the right. The layer
# (7x7 window, Gaussian sigma 2) returns `y` of the same shape and keeps `v` (after the subtractive
# step) and the local `sigma` (one `(N, n, n)` map shared by all channels) for its backward pass.
# The printed numbers show the ramp gone after the subtractive step and the strong texture divided
# by its own sigma, while the weak one, divided by the mean sigma `c`, stays weak.


# %%
def forward(be, rng, n):
    # two maps sharing a brightness ramp; the left half has weak texture, the right half strong
    yy, xx = np.mgrid[:n, :n] / n
    ramp = 3.0 * xx + 1.0
    tex = rng.standard_normal((2, n, n))
    gain = np.where(xx < 0.5, 0.2, 2.0)
    x = (ramp + gain * tex)[None].astype(np.float32)            # (1, 2, n, n)
    lcn = LocalContrastNorm(size=7, sigma=2.0, floor=1e-4, name="norm").set_backend(be)
    y = C.host(be, lcn.forward(be.to_device(x)))
    v, sig = (C.host(be, a) for a in lcn._cache[1:3])

    C.section(f"two {n}x{n} maps: a shared ramp (mean 1 -> 4) plus texture of std 0.2 (left) and 2.0 (right)")
    left, right = (slice(None), slice(3, n // 2 - 3)), (slice(None), slice(n // 2 + 3, n - 3))
    print(f"  input:       mean {x.mean():.3f}; texture std left {x[0][:, left[0], left[1]].std():.3f}, "
          f"right {x[0][:, right[0], right[1]].std():.3f}")
    print(f"  subtractive: mean of v {v.mean():+.3f} (the ramp is gone)")
    print(f"  divisive:    std of y left {y[0][:, left[0], left[1]].std():.3f}, right "
          f"{y[0][:, right[0], right[1]].std():.3f} (right is divided by its own sigma; left by the mean "
          f"sigma c = {float(sig.mean()):.3f}, so weak texture stays weak)")
    return x, y, v, sig


# %% [markdown]
# ## One value by hand
# At the centre pixel the local mean is the Gaussian-weighted sum of the 7x7 patch over both maps
# (the weights sum to 1 over the window and the 2 maps); `v = x - mean` by hand must match the kernel.


# %%
def by_hand(x, v, n):
    C.section("one value by hand at the centre pixel (window 7x7, Gaussian sigma 2, 2 maps)")
    g = np.outer(gaussian_window(7, 2.0), gaussian_window(7, 2.0))
    i = j = n // 2
    patch = x[0, :, i - 3:i + 4, j - 3:j + 4].astype(np.float64)
    m = float((g * patch.sum(axis=0)).sum()) / 2          # weights sum to 1 over the window and the 2 maps
    print(f"  local mean m = sum w * x = {m:.5f};  v[0] = x - m = {x[0, 0, i, j] - m:.5f} "
          f"(kernel: {v[0, 0, i, j]:.5f})")
    assert abs((x[0, 0, i, j] - m) - v[0, 0, i, j]) < 1e-4


# %% [markdown]
# ## LRN vs LCN
# On the same maps, LRN (across channels, per pixel) only rescales each value slightly and keeps the
# ramp; LCN removes it and equalizes the contrast.


# %%
def versus_lrn(be, x, y):
    C.section("LRN vs LCN on the same maps")
    lrn = LocalResponseNorm().set_backend(be)
    yr = C.host(be, lrn.forward(be.to_device(x)))
    print(f"  LRN (ZFNet's 5, 1e-4, 0.75, 2): y/x in [{(yr / x).min():.4f}, {(yr / x).max():.4f}] "
          "— a per-pixel rescaling across channels; the ramp stays")
    print(f"  LCN: output mean {y.mean():+.4f}, std {y.std():.3f} — the ramp is removed and contrast equalized")


# %% [markdown]
# ## Gradient check
# The backward pass goes through both steps and through the `max(c, sigma)` switch; random inputs keep
# sigma away from the kink. Float64 finite differences must agree (`-> pass`).


# %%
def gradients(be, rng):
    C.section("gradients (random inputs keep sigma away from the max kinks)")
    g64 = LocalContrastNorm(3, 1.0, 1e-4, name="norm").set_backend(be)
    C.gradcheck(g64, be.to_device(rng.standard_normal((2, 4, 6, 5)), np.float64), rng, "LCN 3, sigma 1")
    g64 = LocalContrastNorm(5, 1.5, 1e-4, name="norm").set_backend(be)
    C.gradcheck(g64, be.to_device(rng.standard_normal((1, 3, 7, 8)), np.float64), rng, "LCN 5, sigma 1.5")


# %% [markdown]
# ## Figure
# Map 0 at each stage: the input, after the subtractive step, the local sigma, the output.


# %%
def figure(args, x, v, sig, y):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
    panels = [(x[0, 0], "input map 0 (ramp + texture)"), (v[0, 0], "after the subtractive step"),
              (sig[0], "local sigma (divisor where > c)"), (y[0, 0], "output map 0")]
    for ax, (a, t) in zip(axes, panels):
        im = C.imshow_map(ax, a, t)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle("Local contrast normalization: subtract the local mean, divide by the local std "
                 "(floored at its mean)")
    C.save(fig, args, "04_lcn.png")


# %% [markdown]
# ## Run every step

# %%
def main(argv=None):
    args = C.parse_args(__doc__, argv)
    be, rng = args.be, args.rng
    C.title("Local contrast normalization (subtractive + divisive) across maps")
    n = 24 if args.fast else 40
    x, y, v, sig = forward(be, rng, n)
    by_hand(x, v, n)
    versus_lrn(be, x, y)
    gradients(be, rng)
    figure(args, x, v, sig, y)


if __name__ == "__main__":
    main()
