"""Every demo in demos/ runs in --fast mode, prints its checks and writes its PNG (so they never rot)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMOS_DIR = os.path.join(ROOT, "demos")
DEMOS = sorted(f for f in os.listdir(DEMOS_DIR) if f[:2].isdigit() and f.endswith(".py"))


def test_every_layer_has_a_demo():
    expected = ["01_conv.py", "02_relu.py", "03_maxpool.py", "04_lrn.py", "04_lcn.py", "05_fc_softmax.py", "06_sgd.py",
                "07_deconvnet.py", "08_occlusion.py"]
    assert [d for d in expected if d not in DEMOS] == []


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """Start every demo at once (they are single-threaded and mostly wait on imports), then collect."""
    out = tmp_path_factory.mktemp("demo_out")
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    env.pop("ZFSCRATCH_BACKEND", None)
    procs = {}
    for d in DEMOS:
        procs[d] = subprocess.Popen([sys.executable, os.path.join(DEMOS_DIR, d), "--fast", "--out", str(out)],
                                    cwd=str(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
    results = {}
    for d, p in procs.items():
        try:
            text, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            p.kill()
            text, _ = p.communicate()
            text += "\n[timed out]"
        results[d] = (p.returncode, text)
    return out, results


@pytest.mark.parametrize("demo", DEMOS)
def test_demo_runs(demo, demo_runs):
    out, results = demo_runs
    rc, text = results[demo]
    assert rc == 0, f"{demo} failed:\n{text[-3000:]}"
    png = os.path.join(out, demo.replace(".py", ".png"))
    assert os.path.isfile(png) and os.path.getsize(png) > 1000, f"{demo} did not write {png}"
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "saved" in text
    if demo != "08_occlusion.py":  # every layer demo ends with a float64 gradient check
        assert "gradient check" in text and "-> pass" in text and "FAIL" not in text
    else:
        assert "batched sweep == one forward pass per position" in text


def test_demo_help():
    r = subprocess.run([sys.executable, os.path.join(DEMOS_DIR, "01_conv.py"), "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "--fast" in r.stdout and "--out" in r.stdout
