"""Every demo in demos/ also opens as a notebook: jupytext turns the percent-format .py into an .ipynb,
nbclient runs it on a python3 kernel (ipykernel) in a temporary folder, and it must produce what the
script produces (its checks and its PNG). Skipped, with the reason, without jupytext/nbclient/ipykernel.
"""
import os
import shutil
import sys
import time

import pytest

jupytext = pytest.importorskip("jupytext", reason="jupytext missing: pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="nbclient missing: pip install -e '.[test]'")
pytest.importorskip("ipykernel", reason="ipykernel missing (the python3 kernel): pip install -e '.[test]'")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMOS_DIR = os.path.join(ROOT, "demos")
DEMOS = sorted(f for f in os.listdir(DEMOS_DIR) if f[:2].isdigit() and f.endswith(".py")
               and "# %% [markdown]" in open(os.path.join(DEMOS_DIR, f)).read())  # converted to percent format
TIMEOUT = 240  # seconds per cell; a --fast demo takes a few


def _text(nb):
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o.get("text", ""))
    return "".join(out)


@pytest.mark.parametrize("demo", DEMOS)
def test_demo_notebook(demo, tmp_path, monkeypatch):
    for f in os.listdir(DEMOS_DIR):  # the notebook imports _common from its own folder, as in demos/
        if f.endswith(".py"):
            shutil.copy(os.path.join(DEMOS_DIR, f), tmp_path / f)
    nb = jupytext.read(os.path.join(DEMOS_DIR, demo))
    assert any(c.cell_type == "markdown" for c in nb.cells), f"{demo} has no markdown cells"
    out = tmp_path / "out"
    monkeypatch.setenv("ZFSCRATCH_DEMO_ARGS", f"--fast --out {out}")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("ZFSCRATCH_BACKEND", raising=False)
    from nbclient import NotebookClient
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME  # "python3": ipykernel's spec for sys.executable
    nb.metadata["kernelspec"] = {"name": NATIVE_KERNEL_NAME, "display_name": "Python 3", "language": "python"}
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=TIMEOUT, kernel_name=NATIVE_KERNEL_NAME,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = _text(nb)
    png = out / demo.replace(".py", ".png")
    assert png.is_file() and png.stat().st_size > 1000, f"{demo} notebook did not write {png}:\n{text[-2000:]}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "saved" in text
    if demo != "08_occlusion.py":
        assert "gradient check" in text and "-> pass" in text and "FAIL" not in text
    else:
        assert "batched sweep == one forward pass per position" in text
    print(f"{demo}: notebook ran in {time.perf_counter() - t0:.1f}s")
