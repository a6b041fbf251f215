"""The report's sections, in order: one module per section (its stage, renderer and commands).

Adding a section: write ``sections/<name>.py`` with ``stage_<name>(ctx, cfg)``, ``render_<name>(res, ctx)``,
``cmds_<name>(ctx, cfg)`` and ``section(p, budget) -> Stage`` (see any module here), then add the module to
:data:`SECTIONS` below (one line). Its settings go in :data:`zfscratch.pipeline.profiles.PROFILES`.
"""
from __future__ import annotations

from zfscratch.pipeline.profiles import PROFILES
from zfscratch.pipeline.sections import (architecture, attribution, correspondence, data, evaluate, evolution,
                                         filters, invariance, layerwise, normalization, occlusion, reconstruct,
                                         sanity, topk, train)

#: the sections of the report, in the order they run and appear
SECTIONS = [
    data,
    train,
    evaluate,
    filters,
    topk,
    evolution,
    reconstruct,
    occlusion,
    attribution,
    sanity,
    invariance,
    correspondence,
    layerwise,
    architecture,
    normalization,  # optional: --stages normalization
]


def build_stages(profile="default", weights=None):
    """The stages of ``zfscratch run`` for a profile (a name of :data:`PROFILES`, or a values dict from
    :func:`zfscratch.pipeline.profiles.profile_values`), in order. With ``weights`` (a weights file) the
    training stage takes that model as it is, and the sections that need training history say so."""
    p = PROFILES[profile] if isinstance(profile, str) else profile
    budget = dict(epochs=p["epochs"], batch=p["batch"], lr=p["lr"], size=p["size"], seed=0,
                  dropout=p.get("dropout", 0.5))
    stages = []
    for mod in SECTIONS:
        st = mod.section(p, budget, weights=weights) if mod is train else mod.section(p, budget)
        if mod is architecture:
            st.optional = not p.get("architecture", True)
        stages.append(st)
    return stages
