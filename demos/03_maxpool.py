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
# # Max-pooling with switches, and unpooling
#
# A 3x3 stride-2 max-pool in ceil mode (ZFNet's pools: 110 -> 55) keeps the maximum of each
# overlapping window and remembers where it was (the *switches*, the flat index `h*W + w` of each
# window's maximum). Unpooling puts each pooled value back at its switch position, zeros elsewhere:
# that is how the DeconvNet inverts a pool approximately, and it is also the pool's backward pass.
#
# Script: `python demos/03_maxpool.py --fast`; notebook: `jupytext --to notebook demos/03_maxpool.py`.

# %%
"""Max-pooling with switches, and unpooling: how the DeconvNet inverts a pool approximately.

Shows: 3x3 stride-2 overlapping pooling in ceil mode (ZFNet's pools; 7x7 -> 3x3 here, 110 -> 55 in
ZFNet), the switches (flat h*W + w index of each window's maximum), unpooling = putting each pooled
value back at its switch position (everything else zero; overlapping windows that share a winner
add up), and a float64 gradient check (the pool's backward IS the unpooling).
"""
import numpy as np

import _common as C
from zfscratch.kernels.reference import pool_output_size
from zfscratch.layers import MaxPool2d

# %% [markdown]
# ## Output size
# In ceil mode a window may hang over the edge: `ceil((H - k) / stride) + 1` windows per axis, one
# more than floor mode when `(H - k)` is odd.


# %%
def output_sizes():
    C.section("output size (ceil mode): ceil((H - k) / stride) + 1")
    for h in (7, 8, 110, 26, 13):
        print(f"  H={h:<4} k=3 stride=2 -> {pool_output_size(h, 3, 2, True)} (floor mode: "
              f"{pool_output_size(h, 3, 2, False)})")


# %% [markdown]
# ## Forward and switches
# A 7x7 map pools to 3x3. The switches are printed as flat indices and as (row, col); the check
# asserts the input at each switch is the pooled value.


# %%
def forward(be, rng, h):
    x = np.round(rng.uniform(0, 9, size=(1, 1, h, h)), 1).astype(np.float32)
    pool = MaxPool2d(3, 2, ceil_mode=True, name="pool").set_backend(be)
    y = C.host(be, pool.forward(be.to_device(x)))
    sw = C.host(be, pool.switches)
    C.section("forward")
    C.show("  input map x", x[0, 0], "{:4.1f}")
    C.show("  pooled map y (max of each 3x3 window, windows start every 2 pixels)", y[0, 0], "{:4.1f}")
    C.show("  switches (flat index h*W + w of each maximum in the input plane)", sw[0, 0])
    rows, cols = np.divmod(sw[0, 0], h)
    print("  as (row, col): " + "  ".join(f"({r},{c})" for r, c in zip(rows.ravel(), cols.ravel())))
    assert np.allclose(x[0, 0].ravel()[sw[0, 0]], y[0, 0])
    return pool, x, y, sw, rows, cols


# %% [markdown]
# ## Unpooling
# `maxpool_backward` with the switches puts every pooled value back where it came from; all other
# positions are 0 (the DeconvNet cannot know what was there). A position that won several
# overlapping windows receives their sum.


# %%
def unpool(be, pool, y, rows, cols):
    C.section("unpooling with the switches (maxpool_backward): values back where they came from")
    up = C.host(be, pool.backward(be.to_device(y)))
    C.show("  unpooled map", up[0, 0], "{:4.1f}")
    shared = [(r, c) for r, c in {(int(a), int(b)) for a, b in zip(rows.ravel(), cols.ravel())}
              if np.sum((rows == r) & (cols == c)) > 1]
    print(f"  non-zeros: {np.count_nonzero(up)} of {up.size}; every other position is 0 "
          "(the DeconvNet cannot know what was there)")
    if shared:
        print(f"  positions that won several overlapping windows (values added): {sorted(shared)}")
    return up


# %% [markdown]
# ## Gradient check
# With distinct input values (so no maximum flips under the finite-difference step) the float64
# backward matches finite differences (`-> pass`).


# %%
def gradients(be, rng):
    C.section("gradients")
    from zfscratch.gradcheck import _distinct  # distinct values so the max never flips under +-h
    C.gradcheck(MaxPool2d(3, 2, True, name="pool").set_backend(be),
                be.to_device(_distinct(rng, (2, 3, 8, 7)), np.float64), rng, "MaxPool2d 3 s2 ceil")


# %% [markdown]
# ## Figure
# Top: the 7x7 example, its windows and winners, the unpooled map. Bottom: the same on a larger
# random-smooth map.


# %%
def smooth_example(be, rng, n):
    big = rng.standard_normal((n + 4, n + 4))
    k = np.ones((5, 5)) / 25
    sm = np.array([[np.sum(big[i:i + 5, j:j + 5] * k) for j in range(n)] for i in range(n)], np.float32)
    pb = MaxPool2d(3, 2, True).set_backend(be)
    yb = C.host(be, pb.forward(be.to_device(sm[None, None])))
    ub = C.host(be, pb.backward(be.to_device(yb)))
    return sm, yb, ub


def figure(args, h, x, y, sw, up, n, sm, yb, ub):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.4))
    C.imshow_map(axes[0, 0], x[0, 0], f"input {h}x{h}", cmap="viridis", annotate=True)
    C.imshow_map(axes[0, 1], y[0, 0], f"pooled {y.shape[2]}x{y.shape[3]}", cmap="viridis", annotate=True)
    ax = axes[0, 2]
    C.imshow_map(ax, x[0, 0], "switches: winner of each window", cmap="Greys", annotate=False)
    for (i, j), s in np.ndenumerate(sw[0, 0]):
        r, c = divmod(int(s), h)
        ax.add_patch(plt.Rectangle((2 * j - 0.5, 2 * i - 0.5), min(3, h - 2 * j), min(3, h - 2 * i),
                                   fill=False, ec=plt.cm.tab10(3 * i + j), lw=1.2))
        ax.plot(c, r, "o", color=plt.cm.tab10(3 * i + j), ms=7)
    C.imshow_map(axes[0, 3], up[0, 0], "unpooled (zeros elsewhere)", cmap="viridis", annotate=True)
    C.imshow_map(axes[1, 0], sm, f"smooth map {n}x{n}", cmap="viridis")
    C.imshow_map(axes[1, 1], yb[0, 0], f"pooled {yb.shape[2]}x{yb.shape[3]}", cmap="viridis")
    C.imshow_map(axes[1, 2], (ub[0, 0] != 0).astype(float), "switch positions", cmap="Greys")
    C.imshow_map(axes[1, 3], ub[0, 0], "unpooled", cmap="viridis")
    fig.suptitle("Max-pool 3x3 stride 2 (ceil): the switches remember where each maximum was; "
                 "unpooling puts it back")
    C.save(fig, args, "03_maxpool.png")


# %% [markdown]
# ## Run every step

# %%
def main(argv=None):
    args = C.parse_args(__doc__, argv)
    be, rng = args.be, args.rng
    C.title("Max-pooling with switches, and unpooling")
    output_sizes()
    h = 7
    pool, x, y, sw, rows, cols = forward(be, rng, h)
    up = unpool(be, pool, y, rows, cols)
    gradients(be, rng)
    n = 16 if args.fast else 32  # a picture on a larger random-smooth map
    sm, yb, ub = smooth_example(be, rng, n)
    figure(args, h, x, y, sw, up, n, sm, yb, ub)


if __name__ == "__main__":
    main()
