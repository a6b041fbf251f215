"""Normalization comparison: ZFNet with cross-channel LRN vs subtractive + divisive LCN vs none.

The paper's responses are "contrast normalized across feature maps". Most re-implementations use
AlexNet's local *response* normalization (:class:`~zfscratch.layers.LocalResponseNorm`); the line of
work the paper comes from (Jarrett et al. 2009) means a subtractive and a divisive step
(:class:`~zfscratch.layers.LocalContrastNorm`). This experiment trains the same architecture three
times with one budget (same data, epochs, batch, learning rate, seed; only the model config's
``norm`` differs: ``lrn``, ``lcn``, ``none``), each into ``OUT/<norm>/``, then per model reports the
validation accuracy, the conv1 filters (grid, dead fraction, high-frequency energy — the measures of
:mod:`zfscratch.experiments.architecture`) and the top-9 of the strongest layer-2 maps (paper Fig 2
layout, :func:`zfscratch.experiments.topk.run_topk`). The DeconvNet passes both norms through
unchanged (paper §2.1), so the projections differ only through what each model learned.
"""
from __future__ import annotations

import os

from zfscratch.errors import UserError
from zfscratch.experiments import _shared as S
from zfscratch.models import NORMS


def compare_norms(models, val, out_dir, topk_images=500, topk_maps=4, probe_images=64, batch=64, progress=True):
    """Compare trained models that differ in their normalization: :func:`~zfscratch.experiments.architecture.compare`
    (conv1 filters, dead/never-active fractions, HF energy, accuracy, ``normalization.png``) plus each
    model's layer-2 top-9 (``out_dir/<norm>/topk/topk_relu2.png``, Fig 2 layout).

    Parameters
    ----------
    models : dict norm -> (net, meta, val_accuracy or None)
    val : validation dataset (accuracy, probe images, top-9 scan of its first ``topk_images``)

    Returns
    -------
    ``compare``'s dict, with ``topk_figure`` and ``norm`` added to every model's entry.
    """
    from zfscratch.experiments.architecture import compare
    from zfscratch.experiments.topk import run_topk
    out = compare(models, val, out_dir, probe_images=min(probe_images, len(val)), batch=batch, progress=progress,
                  name="normalization", title="Normalization: LRN vs LCN vs none (same training budget)")
    for norm, (net, meta, _) in models.items():
        res = run_topk(net, meta, val, os.path.join(out_dir, norm, "topk"), layers=["relu2"], maps=topk_maps,
                       images=min(int(topk_images), len(val)), batch=batch, progress=progress)
        out["models"][norm].update(topk_figure=res["layers"]["relu2"]["figure"], norm=norm)
    return out


def normalization(data, out_dir, norms=NORMS, arch="zfnet_small", epochs=2, batch=64, lr=None, backend=None,
                  seed=0, input_size=None, topk_images=500, topk_maps=4, progress=True, overwrite=False,
                  train_options=None):
    """Train ``arch`` once per normalization in ``norms`` with one budget and compare them.

    Parameters
    ----------
    data : what :func:`zfscratch.train.train_model` accepts (spec string, dataset or (train, val))
    out_dir : runs go to ``out_dir/<norm>/``; ``normalization.png``, ``normalization.json`` and the
        per-model conv1 grids to ``out_dir``; layer-2 top-9 figures to ``out_dir/<norm>/topk/``
    norms : subset of ``("lrn", "lcn", "none")``
    epochs, batch, lr, seed, input_size : the common budget (``lr`` None = train_model's default)
    topk_images : validation images scanned for the layer-2 top-9; topk_maps : maps shown
    train_options : further train_model options, the same for every model (a ``model_config`` in
        it is merged with the ``norm`` choice)

    Returns
    -------
    dict (JSON-ready): :func:`~zfscratch.experiments.architecture.compare`'s result (``models`` keyed
    by norm, ``table_markdown`` with a top-9 column, ``figure``, ``json``) plus ``runs``, ``budget``
    and per model ``topk_figure``.
    """
    from zfscratch.io import load_weights
    from zfscratch.train import resolve_data, train_model
    norms = tuple(norms)
    bad = [n for n in norms if n not in NORMS]
    if bad or not norms or len(set(norms)) != len(norms):
        raise UserError(f"--norms {','.join(norms)}: expected distinct names among {', '.join(NORMS)}")
    train, val = resolve_data(data, seed=seed)
    opts = dict(train_options or {})
    if input_size:
        opts["input_size"] = int(input_size)
    base_mc = dict(opts.pop("model_config", None) or {})
    models, runs = {}, {}
    for norm in norms:
        run = os.path.join(out_dir, norm)
        r = train_model((train, val), run, model=arch, epochs=epochs, batch=batch, lr=lr, backend=backend,
                        seed=seed, quiet=not progress, overwrite=overwrite, snapshots=(),
                        model_config={**base_mc, "norm": norm}, **opts)
        net, meta = load_weights(r["weights"], backend=backend)
        models[norm] = (net, meta, r.get("val_acc"))
        runs[norm] = run
    n_top = min(int(topk_images), len(val))
    out = compare_norms(models, val, out_dir, topk_images=n_top, topk_maps=topk_maps, batch=batch, progress=progress)
    md = ["| norm | val. accuracy | conv1 HF energy | dead conv1 filters | never-active conv1 maps |",
          "|---|---|---|---|---|"]
    for norm, st in out["models"].items():
        md.append(f"| {norm} | {st['val_accuracy']:.2%} | {st['hf_energy']:.3f} | {st['dead_fraction']:.1%} | "
                  f"{st['never_active_fraction']:.1%} |")
    out.update(experiment="normalization", table_markdown="\n".join(md), runs=runs,
               budget={"arch": arch, "epochs": epochs, "batch": batch, "lr": lr, "seed": seed,
                       "n_train": len(train), "n_val": len(val), "topk_images": n_top, "train_options": opts})
    S.write_json(out["json"], out)
    return out
