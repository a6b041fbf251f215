"""Item 8 of issue 13: following the README's two commands in one venv must leave a working install.

``pip install . && zfscratch run`` then ``pip install -e '.[test]' && pytest``: Numba must not write its
cache into the installed package (it used to, the leftover ``site-packages/zfscratch/kernels/__pycache__``
survived ``pip uninstall`` and shadowed ``zfscratch.kernels`` when a demo ran from ``demos/``).
"""
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_numba_cache_dir_is_outside_the_package(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("NUMBA_CACHE_DIR", None)
    code = "import os, zfscratch; print(os.environ['NUMBA_CACHE_DIR'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "cache" / "zfscratch" / "numba")
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "mine")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "mine")


def test_kernels_not_shadowed_by_leftover_namespace(tmp_path):
    """A stray ``zfscratch/kernels/__pycache__`` folder on the package's path cannot replace the real package.

    (Leftovers of a non-editable install sit in ``site-packages/zfscratch``; the editable finder maps
    ``zfscratch.kernels`` to ``kernels/``, but the path finder runs first and would pick the leftover
    folder as a namespace package.)"""
    stray = tmp_path / "site" / "zfscratch" / "kernels" / "__pycache__"
    stray.mkdir(parents=True)
    (stray / "junk.nbi").write_bytes(b"x")
    code = ("import sys, zfscratch; zfscratch.__path__.insert(0, sys.argv[1] + '/zfscratch'); "
            "import zfscratch.kernels as k; "
            "from zfscratch.kernels import get_kernels; print(k.__file__); get_kernels('reference')")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], cwd=tmp_path, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(os.path.join("kernels", "__init__.py"))


@pytest.mark.slow
def test_readme_two_commands_in_one_venv(tmp_path):
    """Replays README set-up exactly (needs the package registry for the build; several minutes)."""
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if os.path.isfile(os.path.join(REPO, f)):
            os.makedirs(src / os.path.dirname(f), exist_ok=True)
            shutil.copy2(os.path.join(REPO, f), src / f)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", VIRTUAL_ENV=str(venv),
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("PYTHONPATH", None)
    sh = lambda cmd: subprocess.run(cmd, shell=True, cwd=src, env=env, capture_output=True, text=True)  # noqa: E731
    r = sh("pip install -q . && zfscratch run --quick --out report")
    assert r.returncode == 0, r.stderr[-3000:]
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    caches = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(site, "zfscratch")) for f in fs
              if f.endswith((".nbi", ".nbc"))]
    assert not caches, caches[:5]
    r = sh("pip install -q -e '.[test]' && pytest -q -x tests/test_demos.py")
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
