"""Write tests/data/deconvnet_ref.npz: today's DeconvNet outputs on two tiny float64 nets.

Run once with the DeconvNet code of commit 44be6a4 (before guided backprop and the gradient were added
beside it), so tests/test_rules.py can check that ``rule="deconvnet"`` is unchanged. Weights, images
and architectures are stored in the file, so the check does not depend on weight initialisation.

    python tests/data/make_deconvnet_ref.py
"""
import json
import os

import numpy as np

from zfscratch import deconv
from zfscratch.net import build_from_specs


def tiny_specs(norm):
    s = [dict(kind="Conv2d", name="conv1", config=dict(in_ch=3, out_ch=4, k=3, stride=2, pad=1)),
         dict(kind="ReLU", name="relu1", config={}),
         dict(kind="MaxPool2d", name="pool1", config=dict(k=3, stride=2, ceil_mode=True))]
    if norm == "lrn":
        s.append(dict(kind="LocalResponseNorm", name="norm1", config=dict(size=3, alpha=0.5, beta=0.75, k=1.0)))
    else:
        s.append(dict(kind="LocalContrastNorm", name="norm1", config=dict(size=3, sigma=1.0, floor=1e-4)))
    s += [dict(kind="Conv2d", name="conv2", config=dict(in_ch=4, out_ch=5, k=3, stride=1, pad=1)),
          dict(kind="ReLU", name="relu2", config={}),
          dict(kind="MaxPool2d", name="pool2", config=dict(k=2, stride=2, ceil_mode=True))]
    return s


LAYERS = ["conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2"]


def main():
    out = {}
    rng = np.random.default_rng(1234)
    for norm in ("lrn", "lcn"):
        specs = tiny_specs(norm)
        net = build_from_specs(specs, seed=7, dtype=np.float64)
        for l in net.layers:
            if l.kind == "Conv2d":
                l.params["w"][...] = rng.normal(0, 0.5, l.params["w"].shape)
                l.params["b"][...] = rng.normal(0, 0.3, l.params["b"].shape)
        x = rng.normal(size=(2, 3, 15, 13))
        out[f"{norm}/specs"] = np.array(json.dumps(specs))
        out[f"{norm}/images"] = x
        for k, v in net.state_dict().items():
            out[f"{norm}/param/{k}"] = v
        for layer in LAYERS:
            out[f"{norm}/{layer}/max"] = deconv.project(net, x, layer, maps=[0, 2, 3], mode="max")
            if layer in ("relu1", "norm1", "pool2"):
                out[f"{norm}/{layer}/map"] = deconv.project(net, x, layer, maps=[1, 3], mode="map")
                out[f"{norm}/{layer}/reconstruct"] = deconv.reconstruct(net, x, layer)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deconvnet_ref.npz")
    np.savez_compressed(path, **out)
    print(path, sum(v.size for v in out.values()), "values")


if __name__ == "__main__":
    main()
