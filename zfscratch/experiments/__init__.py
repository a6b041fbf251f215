"""The paper's experiments, one module per figure/table (docs/design.md section 7).

Each module exposes a function taking ``(net, meta, dataset, out_dir, ...)`` that returns a dict of
numbers and figure paths, plus the pieces it is built from:

* :mod:`.topk` -- top-9 activations per map and their DeconvNet projections (Fig 2);
* :mod:`.evolution` -- strongest projections across training epochs (Fig 4);
* :mod:`.reconstruct` -- layer reconstructions with/without coloured background;
* occlusion, invariance, correspondence, layerwise, architecture (Figs 5-7, Tables 1 and 7).

Importing this package imports none of them (each pulls in what it needs).
"""
