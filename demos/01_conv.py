"""Convolution: a Conv2d layer slides F filters of size C x k x k over the image (cross-correlation).

Shows: output-size arithmetic (ZFNet conv1: 224 -> 110 with 7x7 stride 2 pad 1), one output value
computed by hand against the kernel, hand-made edge/colour filters on a toy image, the effect of
stride, and a float64 gradient check of the layer (dx, dw, db).
"""
import numpy as np

import _common as C
from zfscratch.kernels.reference import conv_output_size
from zfscratch.layers import Conv2d


def main(argv=None):
    args = C.parse_args(__doc__, argv)
    be, rng = args.be, args.rng
    size = 32 if args.fast else 64
    C.title("Convolution (Conv2d)")

    C.section("output size: (H + 2*pad - k) // stride + 1")
    for h, k, s, p, what in ((224, 7, 2, 1, "ZFNet conv1"), (55, 5, 2, 0, "ZFNet conv2"),
                             (13, 3, 1, 1, "ZFNet conv3-5"), (224, 11, 4, 2, "AlexNet-style conv1")):
        print(f"  {what:<20} H={h:<4} k={k:<3} stride={s} pad={p} -> {conv_output_size(h, k, s, p)}")

    # a toy RGB image scaled to [0, 1] minus its mean colour (as the nets see images), batch of one
    img = C.toy_image(size, args.seed).astype(np.float32) / 255.0
    x = (img - img.mean(axis=(0, 1))).transpose(2, 0, 1)[None].copy()   # (N=1, C=3, H, W)

    # four hand-made 3x3 filters over the three colour channels: (F=4, C=3, 3, 3)
    sobel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32) / 4
    w = np.zeros((4, 3, 3, 3), np.float32)
    w[0, :] = sobel / 3                     # vertical edges (intensity changes left -> right)
    w[1, :] = sobel.T / 3                   # horizontal edges
    w[2, 0, 1, 1], w[2, 1, 1, 1], w[2, 2, 1, 1] = 1.0, -0.5, -0.5   # "redness" detector
    w[3, :] = 1.0 / 27                      # blur (mean of the 3x3x3 neighbourhood)
    names = ["vertical edge", "horizontal edge", "red - (green+blue)/2", "blur"]
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

    C.section("stride 2: same filters, every second position")
    conv2 = Conv2d(3, 4, 3, stride=2, pad=1, name="conv_s2").set_backend(be)
    conv2.params["w"][...] = be.to_device(w)
    y2 = C.host(be, conv2.forward(be.to_device(x)))
    print(f"  output {y2.shape}; equals the stride-1 output subsampled: "
          f"{np.allclose(y2, y[:, :, ::2, ::2], atol=1e-6)}")

    C.section("gradients")
    g = Conv2d(3, 4, 3, stride=2, pad=1, name="conv", init_std=0.5, rng=rng, dtype=np.float64).set_backend(be)
    g.params["b"][...] = be.to_device(rng.standard_normal(4))
    C.gradcheck(g, be.to_device(rng.standard_normal((2, 3, 7, 8)), np.float64), rng, "Conv2d 3x3 s2 p1")

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


if __name__ == "__main__":
    main()
