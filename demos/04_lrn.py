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


def main(argv=None):
    args = C.parse_args(__doc__, argv)
    be, rng = args.be, args.rng
    C.title("Local response normalization (LRN) across channels")

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

    C.section("one value by hand, channel 2 (window = channels 0..4)")
    s = k + alpha / size * float((x[0, 0:5, 0, 0] ** 2).sum())
    print(f"  scale = {k} + {alpha}/{size} * (1+1+1+1+36) = {s:.3f};  y = 1 * scale^-{beta} = "
          f"{s ** -beta:.6f}  (kernel: {y[0, 2, 0, 0]:.6f})")
    assert abs(s ** -beta - y[0, 2, 0, 0]) < 1e-5

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

    C.section("gradients")
    g = LocalResponseNorm(5, 1e-4, 0.75, 2.0, name="norm").set_backend(be)
    C.gradcheck(g, be.to_device(rng.standard_normal((2, 7, 4, 3)), np.float64), rng, "LRN 5 (ZFNet)")
    g = LocalResponseNorm(3, 2.0, 0.75, 1.0, name="norm").set_backend(be)
    C.gradcheck(g, be.to_device(rng.standard_normal((2, 7, 4, 3)), np.float64), rng, "LRN 3, alpha 2")

    import matplotlib.pyplot as plt
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


if __name__ == "__main__":
    main()
