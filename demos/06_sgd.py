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
# # Stochastic gradient descent with momentum and filter renormalization
#
# Training updates every parameter `w` with its gradient `g` through a velocity `v`:
# `v = momentum*v - lr*(g + weight_decay*w)`, then `w += v` (no decay on biases). After each step,
# ZFNet rescales any conv filter whose RMS exceeds 0.1 back to 0.1 (paper section 3). Here a tiny conv
# net (conv 5x5 -> ReLU -> max-pool -> fc -> softmax) learns to tell horizontal, vertical and diagonal
# bars apart; the demo checks the update rule by hand, trains with and without the renormalization,
# and ends with float64 gradient checks of the net's layers.
#
# Script: `python demos/06_sgd.py --fast`; notebook: `jupytext --to notebook demos/06_sgd.py`.

# %%
"""SGD with momentum, weight decay and the paper's filter renormalization, on a toy problem.

A tiny conv net (conv 5x5 -> ReLU -> max-pool -> fc -> softmax) learns to tell horizontal, vertical
and diagonal bars apart. Shows: the update rule checked by hand for one step
(v = momentum*v - lr*(g + weight_decay*w); w += v), the training loss going down, and the filter
RMS renormalization (paper section 3: any conv filter whose RMS exceeds 0.1 is scaled back to 0.1),
compared with the same run without it. Ends with float64 gradient checks of the net's layers.
"""
import numpy as np

import _common as C
from zfscratch.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, SoftmaxCrossEntropy
from zfscratch.net import Sequential
from zfscratch.optim import SGD, renormalize_filters

# %% [markdown]
# ## Toy data and net
# Images `(N, 1, 12, 12)` with one bar (3 classes: horizontal, vertical, diagonal) at a random place,
# plus noise. The net: `Conv2d` 1 -> 6 maps, 5x5, pad 2 (`(N, 6, 12, 12)`), ReLU, a 3x3 stride-2
# max-pool (`(N, 6, 6, 6)`), `Flatten` (`(N, 216)`) and `Linear` 216 -> 3 logits.


# %%
def bars(rng, n, size=12):
    """n images (n, 1, size, size) of a bar in one of 3 orientations at a random place, plus noise."""
    x = rng.normal(0, 0.1, size=(n, 1, size, size)).astype(np.float32)
    y = rng.integers(0, 3, size=n)
    for i in range(n):
        p = rng.integers(2, size - 2)
        if y[i] == 0:
            x[i, 0, p, 1:-1] += 1.0
        elif y[i] == 1:
            x[i, 0, 1:-1, p] += 1.0
        else:
            d = np.arange(size)
            off = rng.integers(-3, 4)
            keep = (d + off >= 0) & (d + off < size)
            x[i, 0, d[keep], (d + off)[keep]] += 1.0
    return x, y


def toy_net(be, seed, init_std=0.05):
    rng = np.random.default_rng(seed)
    layers = [Conv2d(1, 6, 5, stride=1, pad=2, name="conv1", init_std=init_std, rng=rng), ReLU(name="relu1"),
              MaxPool2d(3, 2, True, name="pool1"), Flatten(name="flatten"),
              Linear(6 * 6 * 6, 3, name="fc", init_std=0.05, rng=rng)]
    return Sequential(layers, backend=be)


def conv_rms(net):
    w = net.backend.to_host(net.layer("conv1").params["w"])
    return np.sqrt((w.reshape(w.shape[0], -1) ** 2).mean(1))


# %% [markdown]
# ## One step by hand
# Forward a batch of 32, backward, then `opt.step()`; the fc weights it produces must equal
# `w + (0.9 * v - 0.1 * (g + 5e-4 * w))` computed by hand from the velocity and gradient before the
# step. Two steps, so the second one also checks the momentum term (`v` is 0 at the first).


# %%
def step_by_hand(be, x, y, seed):
    C.section("one step by hand: v = momentum*v - lr*(g + wd*w); w += v (momentum 0.9, lr 0.1, wd 5e-4)")
    net = toy_net(be, seed)
    opt = SGD(net, lr=0.1, momentum=0.9, weight_decay=5e-4, renorm_rms=None)
    loss_fn = SoftmaxCrossEntropy(be)
    for step in range(2):
        net.zero_grads()
        loss_fn.forward(net.forward(be.to_device(x[:32]), train=True), y[:32])
        net.backward(loss_fn.backward())
        w0 = be.to_host(net.layer("fc").params["w"]).copy()
        v0 = be.to_host(opt.velocity[2]).copy()       # params order: conv1.w, conv1.b, fc.w, fc.b
        g = be.to_host(net.layer("fc").grads["w"])
        opt.step()
        expect = w0 + (0.9 * v0 - 0.1 * (g + 5e-4 * w0))
        got = be.to_host(net.layer("fc").params["w"])
        print(f"  step {step + 1}: fc.w max |optimizer - by hand| = {np.abs(got - expect).max():.2e}")
        assert np.allclose(got, expect, atol=1e-6)


# %% [markdown]
# ## Filter renormalization
# Four 1x3x3 filters with RMS 0.05, 0.1, 0.3 and 1.0: the two above 0.1 are scaled down to exactly
# 0.1, the others are untouched.


# %%
def renorm_example():
    C.section("renormalize_filters: filters with RMS > 0.1 are scaled to RMS 0.1, the others untouched")
    wdemo = np.stack([np.full((1, 3, 3), v, np.float32) for v in (0.05, 0.1, 0.3, 1.0)])
    before = np.sqrt((wdemo.reshape(4, -1) ** 2).mean(1))
    renormalize_filters(wdemo, 0.1)
    after = np.sqrt((wdemo.reshape(4, -1) ** 2).mean(1))
    print("  RMS before: " + " ".join(f"{v:.3f}" for v in before))
    print("  RMS after : " + " ".join(f"{v:.3f}" for v in after))


# %% [markdown]
# ## Training, with and without renormalization
# The same net, data and batches, trained twice. Each step also records the largest filter RMS the
# plain momentum step would give and the one after the optimizer's step (with renormalization), so
# the figure can show the cap at work. Both runs learn; with renormalization the filter RMS never
# exceeds 0.1.


# %%
def train(be, x, y, steps, renorm, seed, lr=0.1, batch=32):
    net = toy_net(be, seed)
    opt = SGD(net, lr=lr, momentum=0.9, weight_decay=5e-4, renorm_rms=renorm)
    loss_fn = SoftmaxCrossEntropy(be)
    rng = np.random.default_rng(seed + 1)
    losses, rms_before, rms_after = [], [], []
    for _ in range(steps):
        idx = rng.choice(len(x), batch, replace=False)
        net.zero_grads()
        losses.append(loss_fn.forward(net.forward(be.to_device(x[idx]), train=True), y[idx]))
        net.backward(loss_fn.backward())
        # what the plain momentum step alone would give (for the plot), then the real step
        w = be.to_host(net.layer("conv1").params["w"]).copy()
        v = be.to_host(opt.velocity[0]) * opt.momentum - lr * (be.to_host(net.grads()[0]) + 5e-4 * w)
        rms_before.append(np.sqrt(((w + v).reshape(w.shape[0], -1) ** 2).mean(1)).max())
        opt.step()
        rms_after.append(conv_rms(net).max())
    return net, np.array(losses), np.array(rms_before), np.array(rms_after)


def accuracy(net, x, y):
    return float(np.mean(net.backend.to_host(net.forward(net.backend.to_device(x))).argmax(1) == y))


def compare_runs(be, x, y, xt, yt, steps, seed):
    C.section(f"training {steps} steps of batch 32, with and without renormalization")
    net_r, loss_r, rb_r, ra_r = train(be, x, y, steps, 0.1, seed)
    net_n, loss_n, rb_n, ra_n = train(be, x, y, steps, None, seed)
    k = max(1, steps // 10)
    for name, loss, ra, n in (("renorm 0.1", loss_r, ra_r, net_r), ("no renorm", loss_n, ra_n, net_n)):
        print(f"  {name:<11} loss first {k}: {loss[:k].mean():.3f} -> last {k}: {loss[-k:].mean():.3f}; "
              f"max filter RMS at the end {ra[-1]:.3f}; test accuracy {accuracy(n, xt, yt):.1%}")
    clipped = int(np.sum(rb_r > 0.1 + 1e-6))
    print(f"  with renorm the step pushed some filter past RMS 0.1 in {clipped} of {steps} steps and it "
          f"was scaled back (max after: {ra_r.max():.4f})")
    assert loss_r[-k:].mean() < loss_r[:k].mean()
    assert ra_r.max() <= 0.1 + 1e-5
    return net_r, loss_r, rb_r, ra_r, loss_n, ra_n, k


# %% [markdown]
# ## Gradient checks
# Float64 finite differences of the net's parametrized layers, `Conv2d` 5x5 pad 2 and `Linear`
# (`-> pass`).


# %%
def gradients(be, rng):
    C.section("gradients of the toy net's layers")
    g = Conv2d(1, 3, 5, stride=1, pad=2, name="conv1", init_std=0.5, rng=rng, dtype=np.float64).set_backend(be)
    C.gradcheck(g, be.to_device(rng.standard_normal((2, 1, 6, 6)), np.float64), rng, "Conv2d 5x5 p2")
    g = Linear(12, 3, name="fc", init_std=0.5, rng=rng, dtype=np.float64).set_backend(be)
    C.gradcheck(g, be.to_device(rng.standard_normal((4, 12)), np.float64), rng, "Linear 12->3")


# %% [markdown]
# ## Figure
# Left: the training loss of both runs (running mean). Middle: the largest conv-filter RMS per step.
# Right: the six learned 5x5 filters (red > 0, blue < 0) and one example image per class.


# %%
def figure(args, be, x, y, net_r, loss_r, rb_r, ra_r, loss_n, ra_n, k):
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(13, 4.2))
    ax = fig.add_subplot(1, 3, 1)
    sm = lambda a: np.convolve(a, np.ones(k) / k, mode="valid")
    ax.plot(sm(loss_r), label="renorm 0.1")
    ax.plot(sm(loss_n), label="no renorm")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (mean of {k})")
    ax.legend(fontsize=8)
    ax.set_title("loss goes down", fontsize=9)
    ax = fig.add_subplot(1, 3, 2)
    ax.plot(ra_n, label="no renorm")
    ax.plot(rb_r, ":", label="renorm: after the momentum step")
    ax.plot(ra_r, label="renorm: after renormalization")
    ax.axhline(0.1, ls="--", color="grey")
    ax.set_xlabel("step")
    ax.set_ylabel("largest conv-filter RMS")
    ax.legend(fontsize=8)
    ax.set_title("filter RMS capped at 0.1", fontsize=9)
    w = be.to_host(net_r.layer("conv1").params["w"])
    for i in range(6):
        a = fig.add_subplot(2, 9, 7 + (i // 3) * 9 + i % 3)
        C.imshow_map(a, w[i, 0], f"filter {i}", sym=True)
    ex = fig.add_axes([0.905, 0.15, 0.09, 0.3])
    ex.imshow(np.concatenate([x[np.argmax(y == c), 0] for c in range(3)], 1), cmap="gray")
    ex.set_title("classes", fontsize=8)
    ex.axis("off")
    fig.suptitle("SGD with momentum on a toy problem; learned 5x5 filters (right)")
    C.save(fig, args, "06_sgd.png")


# %% [markdown]
# ## Run every step

# %%
def main(argv=None):
    args = C.parse_args(__doc__, argv)
    be, rng = args.be, args.rng
    C.title("Stochastic gradient descent with momentum and filter renormalization")
    x, y = bars(rng, 300 if args.fast else 900)
    xt, yt = bars(np.random.default_rng(args.seed + 99), 300)
    print(f"toy data: {x.shape} images of bars, 3 classes (horizontal, vertical, diagonal)")
    step_by_hand(be, x, y, args.seed)
    renorm_example()
    steps = 80 if args.fast else 300
    net_r, loss_r, rb_r, ra_r, loss_n, ra_n, k = compare_runs(be, x, y, xt, yt, steps, args.seed)
    gradients(be, rng)
    figure(args, be, x, y, net_r, loss_r, rb_r, ra_r, loss_n, ra_n, k)


if __name__ == "__main__":
    main()
