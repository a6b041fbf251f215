"""`zfscratch run`: every section of the report is produced, offline, and finished stages are reused.

The full pipeline runs once per module on a *tiny* budget (the ``quick`` profile shrunk further by
monkeypatching :data:`zfscratch.pipeline.PROFILES`), so every stage really runs in well under a
minute of CPU; the real ``--quick`` command is exercised by the ``slow`` test at the end.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from zfscratch import pipeline
from zfscratch.cli import main

TINY = dict(
    size=48, n_train=80, n_val=40, n_test=60, classes="face+house+car+flower+star+tree", max_angle=30,
    epochs=1, batch=32, lr=0.02, dropout=0.0, snapshots=(0, 1),
    topk_images=32, topk_maps=2, evolution_images=16, evolution_maps=1,
    reconstruct_images=1, reconstruct_eval=16, occlusion_images=1, occlusion_stride=8, occlusion_patch=1 / 3,
    occlusion_measure=6,
    invariance_images=1, invariance_eval=2, correspondence_images=2, correspondence_groups=1,
    layerwise_train=40, layerwise_test=30, layerwise_epochs=1, arch_probe=8,
)
STAGES = [s.name for s in pipeline.build_stages("quick") if not s.optional]
OPTIONAL = [s.name for s in pipeline.build_stages("quick") if s.optional]


def _tiny(monkeypatch):
    monkeypatch.setitem(pipeline.PROFILES, "quick", dict(TINY))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    _tiny(mp)
    # every figure of the report must be legible as drawn (text >= 12 px on screen), not only after the
    # save-time enlargement: strict mode turns a too-small text into a failed stage
    mp.setenv("ZFSCRATCH_STRICT_FIGURES", "1")
    out = tmp_path_factory.mktemp("run") / "report"
    lines = []
    try:
        res = pipeline.run_pipeline(out, quick=True, backend="numpy", progress=False, log=lines.append)
    finally:
        mp.undo()
    return out, res, lines


def _html(out):
    return (out / "index.html").read_text(encoding="utf-8")


def _sections(html):
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', html, flags=re.S))


def _forbid_stage_calls(monkeypatch, allowed=()):
    """Make every stage function (except ``allowed``) fail if it is called; returns the call log."""
    calls = []
    real = pipeline.build_stages

    def build(profile="default", **kw):
        stages = real(profile, **kw)
        for st in stages:
            if st.name in allowed:
                f = st.func

                def wrapped(ctx, cfg, _f=f, _n=st.name):
                    calls.append(_n)
                    return _f(ctx, cfg)
                st.func = wrapped
            else:
                def boom(ctx, cfg, _n=st.name):
                    calls.append(_n)
                    raise AssertionError(f"stage {_n} was run again although it had finished")
                st.func = boom
        return stages
    monkeypatch.setattr(pipeline, "build_stages", build)
    return calls


def _copy(out, tmp_path):
    dst = tmp_path / "report"
    shutil.copytree(out, dst)
    return dst


# ----------------------------------------------------------------------------- the report
def test_every_stage_finished(tiny_run):
    out, res, lines = tiny_run
    assert res["failed"] == []
    st = res["stages"]
    assert set(STAGES) <= set(st)
    for name in STAGES:
        assert st[name]["status"] == "done", (name, st[name].get("error"))
        assert st[name]["seconds"] >= 0 and st[name]["hash"] and st[name]["token"]
    assert any("done in" in line for line in lines)
    m = json.loads((out / "manifest.json").read_text())
    assert m["stages"]["train"]["result"]["weights"] == "train/weights.npz"


def test_every_section_is_real(tiny_run):
    out, _, _ = tiny_run
    html = _html(out)
    secs = _sections(html)
    for name in STAGES:
        assert name in secs, f"no section for stage {name}"
        body = secs[name]
        assert '<p class="what">' in body
        assert "<img " in body, f"section {name} has no figure"
        assert "<table" in body, f"section {name} has no numbers"
        assert "To redo this section alone" in body, f"section {name} lacks its command"
        assert 'class="error"' not in body and "not been run" not in body
    # paper figures/tables named, backend and timings shown
    for ref in ("Fig 2", "Fig 4", "Fig 5", "Fig 6", "Fig 7", "Table 1", "Table 7"):
        assert ref in html
    assert "Backend and timings" in html and "numpy" in html


def test_occlusion_measures_where_the_minimum_falls(tiny_run):
    """The occlusion section counts, over several test images (one per class here), whether the lowest
    P(true class) falls inside the object's box, and says so per class in the report."""
    out, res, _ = tiny_run
    m = json.loads((out / "manifest.json").read_text())["stages"]["occlusion"]["result"]["measured"]
    assert m["images"] == 6 and sorted(m["per_class"]) == sorted(TINY["classes"].split("+"))
    assert all(b == 1 and 0 <= a <= d <= 1 for a, d, b in m["per_class"].values())
    assert m["inside"] == sum(v[0] for v in m["per_class"].values())
    assert m["dropped"] == sum(v[1] for v in m["per_class"].values())
    assert m["fraction"] == (m["inside"] / m["dropped"] if m["dropped"] else None)
    body = _sections(_html(out))["occlusion"]
    assert "lowest P(true) inside the object" in body and f"{m['inside']}/{m['dropped']}" in body
    assert f"{6 - m['dropped']} of 6 images showed no such drop" in body
    assert "16x16 px" in body  # a third of the 48-px input


def test_every_src_exists(tiny_run):
    out, _, _ = tiny_run
    html = _html(out)
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) >= len(STAGES)
    for r in refs:
        if r.startswith("#"):
            continue
        assert not os.path.isabs(r) and ".." not in r.split("/"), r
        assert (out / r).is_file(), f"{r} is referenced by index.html but missing"
    for s in srcs:
        with open(out / s, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_is_offline(tiny_run):
    out, _, _ = tiny_run
    html = _html(out)
    for attr in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert not attr.startswith(("http://", "https://", "//", "data:", "javascript:")), attr
    low = html.lower()
    assert "http://" not in low and "https://" not in low
    assert "<script" not in low and "<link" not in low and "@import" not in low and "url(" not in low
    assert "<style>" in low  # inline CSS


# ----------------------------------------------------------------------------- reuse
def test_rerun_reuses_every_stage(tiny_run, tmp_path, monkeypatch):
    out = _copy(tiny_run[0], tmp_path)
    before = json.loads((out / "manifest.json").read_text())
    _tiny(monkeypatch)
    calls = _forbid_stage_calls(monkeypatch)
    lines = []
    res = pipeline.run_pipeline(out, quick=True, backend="numpy", progress=False, log=lines.append)
    assert calls == []
    assert res["failed"] == []
    assert all(res["last_run"][n] == "reused" for n in STAGES)
    assert sum("reused" in line for line in lines) == len(STAGES)
    for n in STAGES:  # nothing recomputed: same tokens and finish times
        assert res["stages"][n]["token"] == before["stages"][n]["token"]
        assert res["stages"][n]["finished"] == before["stages"][n]["finished"]
    assert "reused" in _html(out)


def test_missing_output_recomputes_that_stage_only(tiny_run, tmp_path, monkeypatch):
    out = _copy(tiny_run[0], tmp_path)
    before = json.loads((out / "manifest.json").read_text())
    os.unlink(out / before["stages"]["filters"]["result"]["figure"])
    _tiny(monkeypatch)
    calls = _forbid_stage_calls(monkeypatch, allowed=("filters",))
    res = pipeline.run_pipeline(out, quick=True, backend="numpy", progress=False, log=lambda m: None)
    assert calls == ["filters"]
    assert res["last_run"]["filters"] == "computed"
    assert (out / res["stages"]["filters"]["result"]["figure"]).is_file()


def test_recomputed_input_invalidates_dependents(tiny_run, tmp_path, monkeypatch):
    """A changed stage configuration reruns the stage and everything that reads it."""
    out = _copy(tiny_run[0], tmp_path)
    tiny = dict(TINY, topk_maps=3)
    monkeypatch.setitem(pipeline.PROFILES, "quick", tiny)
    calls = _forbid_stage_calls(monkeypatch, allowed=("topk",))
    res = pipeline.run_pipeline(out, quick=True, backend="numpy", progress=False, log=lambda m: None)
    assert calls == ["topk"]
    assert res["failed"] == []
    # the stage hash covers the tokens of the inputs: a new train token changes every dependent's hash
    st = {s.name: s for s in pipeline.build_stages("quick")}
    tokens = {n: e["token"] for n, e in res["stages"].items()}
    h_eval = pipeline.stage_hash(st["evaluate"], res["spec"], tokens)
    assert h_eval == res["stages"]["evaluate"]["hash"]
    assert pipeline.stage_hash(st["evaluate"], res["spec"], dict(tokens, train="other")) != h_eval


def test_failed_stage_is_reported_and_retried(tiny_run, tmp_path, monkeypatch):
    out = _copy(tiny_run[0], tmp_path)
    _tiny(monkeypatch)
    real = pipeline.build_stages

    def build(profile="default", **kw):
        stages = real(profile, **kw)
        for st in stages:
            if st.name == "occlusion":
                st.func = lambda ctx, cfg: (_ for _ in ()).throw(RuntimeError("simulated failure"))
        return stages
    monkeypatch.setattr(pipeline, "build_stages", build)
    res = pipeline.run_pipeline(out, quick=True, backend="numpy", progress=False, log=lambda m: None,
                                force=False, stages=None)
    # nothing was stale, so the broken stage was not even called: force it
    assert res["failed"] == []
    res = pipeline.run_pipeline(out, quick=True, backend="numpy", progress=False, log=lambda m: None,
                                stages=["occlusion"], force=True)
    assert res["failed"] == ["occlusion"]
    assert res["stages"]["occlusion"]["status"] == "failed"
    assert "simulated failure" in res["stages"]["occlusion"]["error"]
    secs = _sections(_html(out))
    assert 'class="error"' in secs["occlusion"] and "simulated failure" in secs["occlusion"]
    assert "<img " in secs["topk"]  # the other sections are still there


# ----------------------------------------------------------------------------- other data, the CLI
def _folder(root, rng):
    from PIL import Image
    from zfscratch.data.synthetic import SyntheticDataset
    ds = SyntheticDataset(n=36, size=40, seed=3, classes=["face", "house", "star"])
    imgs, labels = ds.get_batch(np.arange(36))
    for split in ("train", "test"):
        for i, (img, lab) in enumerate(zip(imgs, labels)):
            if (split == "test") != (i % 4 == 0):
                continue
            d = root / split / ds.classes[lab]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"img{i:03d}.png")
    return root


def test_optional_stage_runs_only_when_named(tiny_run, tmp_path, monkeypatch):
    out, res, _ = tiny_run
    assert OPTIONAL == ["normalization"] and "normalization" not in res["stages"]
    body = _sections(_html(out))["normalization"]
    assert "Optional section, not computed" in body and "--stages normalization" in body
    assert 'class="error"' not in body
    out = _copy(out, tmp_path)
    _tiny(monkeypatch)
    calls = _forbid_stage_calls(monkeypatch, allowed=("normalization",))
    res = pipeline.run_pipeline(out, quick=True, backend="numpy", progress=False, log=lambda m: None,
                                stages=["normalization"])
    assert calls == ["normalization"] and res["failed"] == []
    r = res["stages"]["normalization"]["result"]
    assert list(r["models"]) == ["lrn", "lcn", "none"]
    assert r["lcn"]["size"] == 5          # norm2 sees 6x6 maps at 48 px: the default window fits
    for norm, st in r["models"].items():
        assert 0 <= st["val_accuracy"] <= 1 and (out / st["topk_figure"]).is_file()
    body = _sections(_html(out))["normalization"]
    assert "<table" in body and "<img " in body and "zfscratch normalization" in body
    # a plain rerun keeps the optional section's result and does not recompute it
    calls.clear()
    res = pipeline.run_pipeline(out, quick=True, backend="numpy", progress=False, log=lambda m: None)
    assert calls == [] and res["stages"]["normalization"]["status"] == "done"


def test_stage_without_its_optional_library_is_skipped_then_computed(tiny_run, tmp_path, monkeypatch):
    """A stage whose pip extra is missing is skipped with a note (not a failure), and the next run that
    finds the library computes it."""
    out = _copy(tiny_run[0], tmp_path)
    _tiny(monkeypatch)
    real = pipeline.build_stages

    def build(profile="default", **kw):
        stages = real(profile, **kw)
        for st in stages:
            if st.name == "sanity":
                st.requires = (("zfscratch_no_such_module",), "sanity")
        return stages
    monkeypatch.setattr(pipeline, "build_stages", build)
    res = pipeline.run_pipeline(out, quick=True, backend="numpy", progress=False, log=lambda m: None,
                                stages=["sanity"], force=True)
    e = res["stages"]["sanity"]
    assert res["failed"] == [] and e["status"] == "skipped"
    assert "zfscratch_no_such_module" in e["result"]["skipped"] and "zfscratch[sanity]" in e["result"]["skipped"]
    assert "Skipped: needs zfscratch_no_such_module" in _sections(_html(out))["sanity"]
    monkeypatch.setattr(pipeline, "build_stages", real)
    calls = _forbid_stage_calls(monkeypatch, allowed=("sanity",))
    res = pipeline.run_pipeline(out, quick=True, backend="numpy", progress=False, log=lambda m: None)
    assert calls == ["sanity"] and res["stages"]["sanity"]["status"] == "done"


def test_lcn_window_shrinks_to_fit_small_maps():
    from zfscratch.models import build_model
    from zfscratch.pipeline.sections.normalization import _lcn_size
    assert _lcn_size(build_model(dict(arch="zfnet_small", input_size=48))) == 5
    assert _lcn_size(build_model(dict(arch="zfnet_small", input_size=32))) == 3
    assert _lcn_size(build_model(dict(arch="zfnet_small", input_size=24))) == 3   # norm2 input 3x3
    assert _lcn_size(build_model(dict(arch="zfnet_small", input_size=16))) == 1   # 2x2


def test_own_images_skip_synthetic_only_sections(tmp_path, monkeypatch):
    _tiny(monkeypatch)
    root = _folder(tmp_path / "images", np.random.default_rng(0))
    out = tmp_path / "report"
    res = pipeline.run_pipeline(out, quick=True, backend="numpy", progress=False, log=lambda m: None,
                                data=f"folder:{root}", stages=["evaluate", "correspondence", "filters"])
    assert res["failed"] == []
    assert res["spec"] == f"folder:{root},size=48"  # resized to the profile's input size
    assert res["stages"]["correspondence"]["status"] == "skipped"
    assert res["stages"]["evaluate"]["result"]["split"] == "test"
    secs = _sections(_html(out))
    assert "Skipped" in secs["correspondence"] and "synthetic" in secs["correspondence"]
    assert "<img " in secs["evaluate"] and "<img " in secs["data"]
    # stages not asked for are listed as not run, never as fake content
    assert "not been run" in secs["occlusion"]


def test_ten_crop_evaluation_beside_the_centre_view(tmp_path, monkeypatch):
    import json
    _tiny(monkeypatch)
    root = _folder(tmp_path / "images", np.random.default_rng(0))
    out = tmp_path / "report"
    res = pipeline.run_pipeline(out, quick=True, backend="numpy", progress=False, log=lambda m: None,
                                data=f"folder:{root}", stages=["evaluate"], overrides=dict(ten_crop=True))
    assert res["failed"] == []
    r = res["stages"]["evaluate"]["result"]
    tc = r["ten_crop"]
    assert 0 <= tc["accuracy"] <= 1 and abs(tc["accuracy"] + tc["top1_error"] - 1) < 1e-12
    single = json.loads((out / "evaluate" / "evaluation_test.json").read_text())
    ten = json.loads((out / "evaluate" / "ten_crop" / "evaluation_test.json").read_text())
    assert single["ten_crop"] is False and ten["ten_crop"] is True
    assert single["accuracy"] == r["accuracy"] and ten["accuracy"] == tc["accuracy"]
    sec = _sections(_html(out))["evaluate"]
    assert "10 crops" in sec and "--ten-crop" in sec
    # the option is part of the stage's hash: without it the stage is recomputed, with no 10-crop rows
    res2 = pipeline.run_pipeline(out, quick=True, backend="numpy", progress=False, log=lambda m: None,
                                 data=f"folder:{root}", stages=["evaluate"])
    assert res2["stages"]["evaluate"]["hash"] != res["stages"]["evaluate"]["hash"]
    assert "ten_crop" not in res2["stages"]["evaluate"]["result"]
    assert "10 crops" not in _sections(_html(out))["evaluate"]


def test_data_spec():
    d = pipeline.data_spec(None, "quick")
    assert d.startswith("synthetic:") and "size=48" in d and "n=600" in d
    assert pipeline.data_spec("synthetic", "quick") == "synthetic:size=48"
    assert pipeline.data_spec("synthetic:n=50", "quick") == "synthetic:n=50,size=48"
    assert pipeline.data_spec("synthetic:n=50,size=40", "quick") == "synthetic:n=50,size=40"
    assert pipeline.data_spec("folder:/x", "default") == "folder:/x,size=48"
    assert pipeline.data_spec("cifar:/x", "default") == "cifar:/x"


def test_cli_bad_data_is_one_line_error(tmp_path, capsys):
    rc = main(["run", "--quick", "--out", str(tmp_path / "r"), "--data", f"folder:{tmp_path}/missing"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("zfscratch: error:") and err.count("\n") == 1


def test_cli_unknown_stage(tmp_path, capsys):
    rc = main(["run", "--quick", "--out", str(tmp_path / "r"), "--stages", "nope"])
    assert rc == 2 and "unknown stage" in capsys.readouterr().err


def test_cli_help_lists_run_first(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "run" in text and text.index(" run ") < text.index(" train ")


@pytest.mark.slow
def test_cli_quick_run_and_rerun(tmp_path):
    """The real `zfscratch run --quick` (about a minute on 2 idle cores), then a rerun that reuses all."""
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "zfscratch", "run", "--quick", "--out", str(out), "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    html = _html(out)
    secs = _sections(html)
    assert all(n in secs and "<img " in secs[n] for n in STAGES)
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0
    assert r2.stdout.count("reused") == len(STAGES)


# ----------------------------------------------------------------------------- real-photo-like folders
def _photo_folder(root):
    """A tiny folder as users keep real photos: train/ and val/ with WordNet-id class folders, a
    classes.txt (index wnid name), a greyscale image and upper-case .JPEG files."""
    from PIL import Image
    from zfscratch.data.synthetic import SyntheticDataset
    ds = SyntheticDataset(n=30, size=56, seed=5, classes=["face", "house", "star"])
    imgs, labels = ds.get_batch(np.arange(30))
    wnids = {"face": "n02102040", "house": "n03028079", "star": "n01440764"}
    names = {"n01440764": "tench", "n02102040": "English springer", "n03028079": "church"}
    for i, (img, lab) in enumerate(zip(imgs, labels)):
        split = "val" if i % 3 == 0 else "train"
        d = root / split / wnids[ds.classes[lab]]
        d.mkdir(parents=True, exist_ok=True)
        if i == 1:
            Image.fromarray(img).convert("L").save(d / f"grey{i:03d}.jpg")
        else:
            Image.fromarray(img).save(d / f"img{i:03d}.JPEG", quality=95)
    (root / "classes.txt").write_text("".join(f"{k} {w} {names[w]}\n" for k, w in enumerate(sorted(names))))
    return root


@pytest.mark.slow
def test_photo_folder_through_run_quick_and_run_weights(tmp_path, monkeypatch, capsys):
    _tiny(monkeypatch)
    root = _photo_folder(tmp_path / "photos")
    out = tmp_path / "trained"
    rc = main(["run", "--quick", "--backend", "numpy", "--quiet", "--out", str(out), "--data", f"folder:{root}",
               "--epochs", "2", "--lr", "0.01"])
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["profile"] == "quick" and m["overrides"] == {"epochs": 2, "lr": 0.01}
    assert m["stages"]["train"]["config"]["epochs"] == 2 and m["stages"]["train"]["result"]["epochs"] == 2
    html = _html(out)
    assert "English springer" in html and "church" in html and "tench" in html   # display names, not wnids
    assert "profile values" in html and "epochs = 2" in html
    weights = out / "train" / "weights.npz"
    # the report on those weights: no training, evolution says why, architecture not run
    out2 = tmp_path / "on_weights"
    rc = main(["run", "--backend", "numpy", "--quiet", "--out", str(out2), "--weights", str(weights),
               "--data", f"folder:{root}"])
    assert rc == 0
    m2 = json.loads((out2 / "manifest.json").read_text())
    st = m2["stages"]
    assert st["train"]["status"] == "done" and st["train"]["result"]["source"] == str(weights)
    assert st["evolution"]["status"] == "skipped" and "training history" in st["evolution"]["result"]["skipped"]
    assert "architecture" not in st and st["occlusion"]["status"] == "done" and st["topk"]["status"] == "done"
    assert m2["spec"] == f"folder:{root},size=48"                    # the weights' own image size
    assert "Model (existing weights)" in _html(out2)
    capsys.readouterr()
    # bad input: one line, exit 2, nothing overwritten
    before = (out2 / "manifest.json").read_bytes()
    for args in (["--weights", str(root / "classes.txt")], ["--weights", str(weights), "--epochs", "3"],
                 ["--weights", str(weights), "--data", "synthetic"], ["--profile", "imagenet"],
                 ["--quick", "--profile", "imagenette"], ["--weights", str(weights), "--data", f"folder:{root},size=20"]):
        rc = main(["run", "--out", str(out2), "--data", f"folder:{root}", *args])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("zfscratch: error:") and err.count("\n") == 1, (args, err)
    assert (out2 / "manifest.json").read_bytes() == before


def test_profiles_list_their_values_and_reject_unknown_options():
    from zfscratch.errors import UserError
    from zfscratch.pipeline.profiles import PROFILE_NAMES, profile_values
    assert set(PROFILE_NAMES) >= {"default", "quick", "imagenette"}
    v = profile_values("imagenette", {"epochs": 3})
    assert v["epochs"] == 3 and v["model"] == "zfnet" and v["init"] == "mixed" and v["occlusion_class"] == "English springer"
    assert pipeline.data_spec("folder:/x", v) == "folder:/x,size=128"   # resized to 128, 112 crops
    with pytest.raises(UserError, match="--n-train"):
        profile_values("default", {"n_train": 5})
    with pytest.raises(UserError, match="--profile"):
        profile_values("huge")
    a = {s.name: s for s in pipeline.build_stages(profile_values("imagenette", {"lr": 0.05}))}
    b = {s.name: s for s in pipeline.build_stages("imagenette")}
    assert pipeline.stage_hash(a["train"], "x", {}) != pipeline.stage_hash(b["train"], "x", {})
    assert a["train"].config["init"] == "mixed" and a["architecture"].optional


IMAGENETTE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "shared", "data", "imagenette2-224.tar.gz")


@pytest.mark.slow
def test_real_imagenette_sample_loads_with_names(tmp_path):
    """A few real Imagenette photos (greyscale ones included) through the folder loader, with names."""
    import tarfile
    if not os.path.isfile(IMAGENETTE):
        pytest.skip(f"{IMAGENETTE} is not available")
    from zfscratch.data import open_dataset
    root = tmp_path / "imagenette2-224"
    counts = {}
    with tarfile.open(IMAGENETTE, "r:gz") as tar:
        for mem in tar:
            parts = mem.name.split("/")
            if mem.isfile() and len(parts) == 2 and parts[1] == "classes.txt":
                tar.extract(mem, tmp_path, filter="data")
            elif mem.isfile() and len(parts) == 4 and parts[1] in ("train", "val"):
                key = (parts[1], parts[2])
                if counts.get(key, 0) < 2:
                    counts[key] = counts.get(key, 0) + 1
                    tar.extract(mem, tmp_path, filter="data")
            if len(counts) == 20 and all(v == 2 for v in counts.values()) and (root / "classes.txt").exists():
                break
    ds = open_dataset(f"folder:{root},size=64", "val")
    assert "English springer" in ds.classes and len(ds.classes) == 10 and ds.folders[1] == "n02102040"
    x, _ = ds.get_batch(range(len(ds)))
    assert x.shape[1:] == (64, 64, 3) and x.dtype == np.uint8
