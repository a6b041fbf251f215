"""The shared helpers in zfscratch.util: JSON of results, softmax, progress, figures, threads."""
import json
import math

import numpy as np
import pytest

from zfscratch.util import figures, jsonio, numerics, progress, threads


def test_jsonable_nonfinite_become_null_and_json_is_strict():
    obj = {"a": float("nan"), 3: np.float32(np.inf), "b": [np.int64(2), np.bool_(True), (1.5, -math.inf)],
           "c": np.array([[1.0, np.nan]])}
    got = jsonio.jsonable(obj)
    assert got == {"a": None, "3": None, "b": [2, True, [1.5, None]], "c": [[1.0, None]]}
    text = jsonio.dumps(obj)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == got


def test_write_json_atomic(tmp_path):
    p = jsonio.write_json(tmp_path / "r.json", {"loss": np.float64("nan"), "n": np.int32(4)})
    assert json.loads(open(p).read()) == {"loss": None, "n": 4}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r.json"]  # no temp file left


def test_softmax_rows_sum_to_one_and_is_shift_invariant():
    z = np.random.default_rng(0).normal(size=(5, 7)) * 30
    p = numerics.softmax(z)
    assert p.dtype == np.float64
    np.testing.assert_allclose(p.sum(1), 1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(numerics.softmax(z + 1000), p, rtol=1e-12, atol=1e-15)


def test_progress_disabled_is_a_noop():
    bar = progress.progress_bar(10, "x", enabled=False)
    with bar:
        bar.update(3)
        bar.set_postfix(a=1)
    bar.close()


def test_figure_png(tmp_path):
    fig = figures.new_figure(2, 1, dpi=50)
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    p = figures.save_png(fig, tmp_path / "f.png")
    assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_blas_threads_set_and_restore():
    pytest.importorskip("threadpoolctl")
    before = threads.get_blas_threads()
    if before is None:
        pytest.skip("no BLAS found by threadpoolctl")
    try:
        assert threads.set_blas_threads(1)
        assert threads.get_blas_threads() == 1
        assert "threads" in threads.blas_info()
    finally:
        threads.set_blas_threads(before)
    assert threads.get_blas_threads() == before
    info = threads.thread_info()
    assert info["blas"] == before and info["cpus"] >= 1
