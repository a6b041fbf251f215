"""The main job, ``zfscratch run``: data -> training -> every paper experiment -> an offline HTML report.

Layout: :mod:`.runner` (:class:`Stage`, :class:`Context`, the manifest and :func:`run_pipeline`),
:mod:`.profiles` (budgets), :mod:`.sections` (one module per report section and the registry list),
:mod:`.text` (formatting and shell quoting). See :mod:`zfscratch.pipeline.runner` for reuse, failures
and budgets.

Python API::

    from zfscratch.pipeline import run_pipeline
    summary = run_pipeline("report", quick=True)            # returns the manifest dict
    print(summary["stages"]["evaluate"]["result"]["accuracy"])
"""
from __future__ import annotations

import functools

from zfscratch.pipeline import runner as _runner
from zfscratch.pipeline.profiles import BUDGET_NOTE, PROFILES, data_spec
from zfscratch.pipeline.runner import (MANIFEST, MANIFEST_FORMAT, PIPELINE_VERSION, Context, Stage, load_manifest,
                                       machine_info, save_manifest, stage_hash)
from zfscratch.pipeline.sections import SECTIONS, build_stages

__all__ = ["BUDGET_NOTE", "PROFILES", "data_spec", "MANIFEST", "MANIFEST_FORMAT", "PIPELINE_VERSION", "Context",
           "Stage", "load_manifest", "machine_info", "run_pipeline", "save_manifest", "stage_hash", "SECTIONS",
           "build_stages"]


@functools.wraps(_runner.run_pipeline)
def run_pipeline(*args, **kw):
    # build_stages is looked up here, at call time, so that a caller (the tests) may replace it
    kw.setdefault("build", build_stages)
    return _runner.run_pipeline(*args, **kw)
