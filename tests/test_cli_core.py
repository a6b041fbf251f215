"""CLI basics: help, info, gradcheck, backend errors."""
import subprocess
import sys

from zfscratch.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "gradcheck" in out and "info" in out


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backends" in out and "numpy" in out


def test_gradcheck_numpy_passes(capsys):
    assert main(["gradcheck", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "all passed" in out and "Conv2d" in out and "LocalContrastNorm" in out


def test_gradcheck_impossible_tolerance_fails(capsys):
    assert main(["gradcheck", "--backend", "numpy", "--tol", "1e-30"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_bad_argument_is_one_line_exit_2():
    r = subprocess.run([sys.executable, "-m", "zfscratch", "gradcheck", "--backend", "tpu"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "--backend" in r.stderr
