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
# # Fully connected layer + softmax cross-entropy
#
# A `Linear` layer computes `y = x @ w.T + b`: one score (logit) per class. Softmax turns the scores
# into probabilities `p_k = exp(y_k) / sum_j exp(y_j)`; the loss is `-log p(true class)` averaged over
# the batch, and its gradient with respect to the logits is simply `(p - onehot) / N`. The demo prints
# these numbers for three points, shows why softmax subtracts the maximum, trains a linear classifier
# of 2-D points with this gradient, and checks both layers' gradients in float64.
#
# Script: `python demos/05_fc_softmax.py --fast`;
# notebook: `jupytext --to notebook demos/05_fc_softmax.py`.

# %%
"""Fully connected layer + softmax cross-entropy: from features to class probabilities.

y = x @ w.T + b gives one score (logit) per class; softmax turns scores into probabilities
p_k = exp(y_k) / sum_j exp(y_j); the loss is -log p(true class), averaged over the batch; its gradient
with respect to the logits is (p - onehot) / N. Shows the numbers for a few points, the max-subtraction
that keeps softmax finite, a linear classifier of 2-D points trained with this gradient (decision
regions), and float64 gradient checks of Linear and of the softmax loss.
"""
import numpy as np

import _common as C
from zfscratch.layers import Linear, SoftmaxCrossEntropy

# %% [markdown]
# ## Data and shapes
# Three Gaussian blobs of 2-D points, one per class: `x` is `(N, 2)` (N points, 2 features), the
# labels `(N,)`. The layer's weights are `(out, in) = (3, 2)`, its bias `(3,)`, so the logits are
# `(N, 3)`.


# %%
def blobs(rng, n_per, centers, spread=0.7):
    x = np.concatenate([rng.normal(c, spread, size=(n_per, 2)) for c in centers]).astype(np.float32)
    y = np.repeat(np.arange(len(centers)), n_per)
    return x, y


def shapes(fc, x):
    C.section("shapes")
    print(f"  x {x.shape} (N, in_features)  w {tuple(fc.params['w'].shape)} (out, in)  "
          f"b {tuple(fc.params['b'].shape)}  -> logits (N, 3)")


# %% [markdown]
# ## Forward and backward on three points
# Before training the logits are small, so every probability is near 1/3 and the loss near
# `log 3`. Each row of probabilities sums to 1. The backward pass of the loss returns
# `(p - onehot) / N`: negative at the true class, positive elsewhere.


# %%
def three_points(be, fc, loss_fn, x, labels):
    C.section("three points, before training")
    xi = be.to_device(x[[0, len(x) // 3, -1]])
    logits = fc.forward(xi)
    loss = loss_fn.forward(logits, labels[[0, len(x) // 3, -1]])
    p = C.host(be, loss_fn.probs)
    C.show("  logits", C.host(be, logits))
    C.show("  probs ", p)
    print(f"  each row sums to 1: {np.allclose(p.sum(1), 1)}; loss (mean -log p_true) = {loss:.4f}"
          f" (chance = log 3 = {np.log(3):.4f})")
    d = C.host(be, loss_fn.backward())
    C.show("  dloss/dlogits = (p - onehot)/N", d)


# %% [markdown]
# ## Numerical stability
# `exp(1000)` overflows float32, but softmax is unchanged by subtracting a constant from every logit,
# so the kernel subtracts the row maximum first and gets finite probabilities.


# %%
def stability(be):
    C.section("numerical stability: softmax(z) == softmax(z - max z)")
    big = np.array([[1000.0, 1001.0, 1002.0]], np.float32)
    _, pb = be.kernels.softmax_xent(be.to_device(big), be.to_device(np.array([2])))
    print(f"  logits {big[0]} -> probs {np.round(C.host(be, pb)[0], 4)} (naive exp(1000) overflows)")


# %% [markdown]
# ## Training
# Full-batch gradient descent: forward, loss, backward (the layer accumulates `dw`, `db` into its
# `grads`), then `w -= lr * dw`. The loss falls from `log 3` and the accuracy rises.


# %%
def training(be, fc, loss_fn, x, labels, steps, lr=0.5):
    C.section("training the classifier: w -= lr * dL/dw (full batch)")
    xd, hist = be.to_device(x), []
    for it in range(steps):
        fc.zero_grads()
        loss = loss_fn.forward(fc.forward(xd), labels)
        fc.backward(loss_fn.backward())
        for k in fc.params:
            fc.params[k] -= lr * fc.grads[k]
        hist.append(loss)
        if it in (0, 9, steps - 1):
            acc = float(np.mean(C.host(be, loss_fn.probs).argmax(1) == labels))
            print(f"  step {it + 1:4d}: loss {loss:.4f}  training accuracy {acc:.1%}")
    return hist


# %% [markdown]
# ## Gradient checks
# Float64 finite differences of `Linear` (dx, dw, db) and of the softmax loss (d logits) against the
# analytic backward passes (`-> pass`).


# %%
def gradients(be, rng, seed):
    C.section("gradients")
    g = Linear(7, 5, name="fc", init_std=0.5, rng=rng, dtype=np.float64).set_backend(be)
    C.gradcheck(g, be.to_device(rng.standard_normal((3, 7)), np.float64), rng, "Linear 7->5")
    from zfscratch.gradcheck import cases
    errs = dict(cases(be, seed))["SoftmaxCrossEntropy"]()
    print(f"gradient check (SoftmaxCrossEntropy, float64): dlogits: {errs['x']:.1e} -> "
          f"{'pass' if errs['x'] < 1e-6 else 'FAIL'}")
    assert errs["x"] < 1e-6


# %% [markdown]
# ## Figure
# Left: the decision regions of the trained classifier (argmax of the logits; the boundaries are
# straight lines). Middle: its confidence, the largest softmax probability. Right: the loss.


# %%
def figure(args, be, fc, x, labels, hist):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    gx, gy = np.meshgrid(np.linspace(-5, 5, 120), np.linspace(-4, 5, 110))
    grid = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)
    pg = C.host(be, fc.forward(be.to_device(grid)))
    ax = axes[0]
    ax.contourf(gx, gy, pg.argmax(1).reshape(gx.shape), levels=[-0.5, 0.5, 1.5, 2.5], cmap="Pastel1", alpha=0.8)
    ax.scatter(x[:, 0], x[:, 1], c=labels, cmap="Set1", s=8, vmin=0, vmax=8)
    ax.set_title("decision regions (argmax of the logits)", fontsize=9)
    ax = axes[1]
    z = pg - pg.max(1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    im = ax.imshow(prob.max(1).reshape(gx.shape), origin="lower", extent=(-5, 5, -4, 5), cmap="magma")
    fig.colorbar(im, ax=ax)
    ax.set_title("confidence: max softmax probability", fontsize=9)
    ax = axes[2]
    ax.plot(hist)
    ax.axhline(np.log(3), ls="--", color="grey", label="chance (log 3)")
    ax.set_xlabel("step")
    ax.set_ylabel("mean cross-entropy")
    ax.legend(fontsize=8)
    ax.set_title("loss while training", fontsize=9)
    fig.suptitle("Linear layer + softmax: scores -> probabilities -> cross-entropy")
    C.save(fig, args, "05_fc_softmax.png")


# %% [markdown]
# ## Run every step

# %%
def main(argv=None):
    args = C.parse_args(__doc__, argv)
    be, rng = args.be, args.rng
    C.title("Fully connected layer + softmax cross-entropy")
    centers = [(-2, -1), (2, -1), (0, 2)]
    x, labels = blobs(rng, 30 if args.fast else 100, centers)
    fc = Linear(2, 3, name="fc", init_std=0.1, rng=rng).set_backend(be)
    loss_fn = SoftmaxCrossEntropy(be)
    shapes(fc, x)
    three_points(be, fc, loss_fn, x, labels)
    stability(be)
    hist = training(be, fc, loss_fn, x, labels, 60 if args.fast else 200)
    gradients(be, rng, args.seed)
    figure(args, be, fc, x, labels, hist)


if __name__ == "__main__":
    main()
