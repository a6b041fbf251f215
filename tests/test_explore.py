"""``zfscratch explore``: the engine and the Flask API (test client), bad input, the command line, and one
end-to-end run in a real headless Chromium (skipped when Chromium, its driver or Selenium is missing)."""
from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

flask = pytest.importorskip("flask", reason="zfscratch explore needs Flask: pip install 'zfscratch[explore]'")

from zfscratch.data import open_dataset  # noqa: E402
from zfscratch.io import load_weights, save_weights  # noqa: E402
from zfscratch.models import build_model  # noqa: E402
from zfscratch.preprocess import Preprocess  # noqa: E402

DATA = "synthetic:n=100,size=32"


def _png(arr):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random zfnet_small weights for 32x32 synthetic images, with classes and preprocessing."""
    d = tmp_path_factory.mktemp("explore")
    ds = open_dataset(DATA, "val")
    pre = Preprocess(32)
    pre.fit_mean([ds.get_batch(np.arange(len(ds)))[0]])
    net = build_model({"arch": "zfnet_small", "input_size": 32, "num_classes": 10})
    path = str(d / "w.npz")
    save_weights(path, net, meta={"classes": ds.classes, "preprocessing": pre.to_meta(),
                                  "train": {"data": DATA}}, extra={"mean": pre.mean})
    return path


@pytest.fixture(scope="module")
def engine(weights, tmp_path_factory):
    from zfscratch.explore.engine import Engine
    net, meta = load_weights(weights)
    e = Engine(net, meta, open_dataset(DATA, "val"), weights_path=weights, data_desc=DATA,
               cache_root=str(tmp_path_factory.mktemp("cache")))
    e.start().join(120)
    assert e.topk_status["state"] == "ready", e.topk_status
    return e


@pytest.fixture(scope="module")
def client(engine):
    from zfscratch.explore.app import create_app
    return create_app(engine).test_client()


def _json(r, status=200):
    assert r.status_code == status, r.get_data(as_text=True)
    return r.get_json()


def _is_png(r):
    assert r.status_code == 200, r.get_data(as_text=True)[:300]
    assert r.mimetype == "image/png" and r.data[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    return Image.open(io.BytesIO(r.data)).size


def test_page_and_static(client):
    r = client.get("/")
    assert r.status_code == 200 and b"zfscratch explore" in r.data
    assert b"http" not in re.sub(rb"<!doctype[^>]*>", b"", r.data).lower().replace(b"http-equiv", b"")
    for f in ("explore.js", "style.css"):
        r = client.get(f"/static/{f}")
        assert r.status_code == 200 and len(r.data) > 500
        assert b"https://" not in r.data and b"http://" not in r.data  # nothing from a CDN
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]


def test_info_predict_maps_project(client, engine):
    info = _json(client.get("/api/info"))
    assert [l["number"] for l in info["layers"]] == [1, 2, 3, 4, 5]
    assert info["classes"][0] == "face" and info["size"] == 32
    p = _json(client.get("/api/predict?img=d3"))
    probs = [t["p"] for t in p["top"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and p["label"] == int(engine.labels[3])
    # the same numbers as a plain forward pass
    x, _ = engine.image("d3")
    logits = np.asarray(engine.net.forward(x[None]))[0]
    ref = np.exp(logits - logits.max())
    ref /= ref.sum()
    assert abs(p["p_true"] - ref[p["true"]]) < 1e-6
    for layer in (1, 3, 5):
        m = _json(client.get(f"/api/maps?img=d3&layer={layer}"))
        c = info["layers"][layer - 1]["shape"][0]
        assert sorted(m["order"]) == list(range(c)) and m["max"] == sorted(m["max"], reverse=True)
        w, h = _is_png(client.get(f"/api/maps.png?img=d3&layer={layer}"))
        assert w == m["ncols"] * (m["tile"] + m["gap"])
    m = _json(client.get("/api/maps?img=d3&layer=2"))
    best = m["order"][0]
    pj = _json(client.get(f"/api/project?img=d3&layer=2&map={best}"))
    assert pj["value"] == pytest.approx(m["max"][0], rel=1e-6)
    assert _is_png(client.get(f"/api/project.png?img=d3&layer=2&map={best}&mode=map")) == (32, 32)
    w, h = _is_png(client.get(f"/api/project.png?img=d3&layer=1&map=0&crop=1"))
    assert h >= 120 and w == 2 * h + 6  # projection | patch, the 7-px receptive field enlarged


def test_projection_matches_deconv_project(engine):
    """The kept forward pass + walk down equals deconv.project run from scratch."""
    from zfscratch import deconv
    from zfscratch.viz import to_display
    from PIL import Image
    x, _ = engine.image("d5")
    for layer, name in ((1, "relu1"), (4, "relu4")):
        _, data = engine.project("d5", layer, 3)
        ref = deconv.project(engine.net, x[None], name, 3, mode="max")[0]
        want = np.clip(np.rint(to_display(ref) * 255), 0, 255).astype(np.uint8)
        got = np.asarray(Image.open(io.BytesIO(data)))
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_occlusion_and_sweep(client, engine):
    base = _json(client.get("/api/predict?img=d2"))
    o = _json(client.get("/api/occlude?img=d2&y=8&x=8&size=16&layer=5&map=-1"))
    assert o["base_p_true"] == pytest.approx(base["p_true"])
    # one position equals a plain forward pass of the occluded image
    from zfscratch.experiments import _shared as S
    from zfscratch.experiments.occlusion import occlude_batch, occlusion_maps
    x, _ = engine.image("d2")
    xo = occlude_batch(x, np.zeros_like(x), [8], [8], 16)
    out = S.forward_layers(engine.net, xo, ["relu5"])
    assert o["p_true"] == pytest.approx(S.softmax(out["logits"])[0, o["true"]], rel=1e-6)
    assert o["activity"] == pytest.approx(float(out["relu5"][0, o["map"]].sum()), rel=1e-5)
    for way in ("incremental", "full"):  # both ways of computing it give those numbers
        engine.occlusion_mode = way
        try:
            w = engine.occlude("d2", 8, 8, 16, 5, o["map"])
        finally:
            engine.occlusion_mode = "auto"
        assert w["way"] == way and w["p_true"] == pytest.approx(o["p_true"], rel=1e-5)
        assert w["activity"] == pytest.approx(o["activity"], rel=1e-5)
    # the sweep is the library's sweep
    s = _json(client.get("/api/sweep?img=d2&size=8&stride=4&layer=5"))
    ref = occlusion_maps(engine.net, x, s["true"], patch=8, stride=4, layer="relu5")
    assert s["positions"] == 49
    assert s["min_p_true"] == pytest.approx(ref["prob_true"].min()) and s["max_p_true"] == pytest.approx(ref["prob_true"].max())
    assert _is_png(client.get("/api/sweep.png?img=d2&size=8&stride=4&layer=5")) == (32, 32)


def test_invariance_and_filters(client):
    r0 = _json(client.get("/api/invariance?img=d1"))
    assert r0["dist_first"] == 0 and r0["dist_penultimate"] == 0
    r = _json(client.get("/api/invariance?img=d1&shift=0.2&scale=1.2&rotation=30"))
    assert r["dist_first"] > 0 and r["dist_penultimate"] > 0
    assert _is_png(client.get("/api/warp.png?img=d1&rotation=45")) == (32, 32)
    w, h = _is_png(client.get("/api/filters.png"))
    assert w > 32 and h > 32


def test_topk_cached_and_consistent(client, engine):
    from zfscratch.experiments.topk import ImageSource, brute_force_topk
    t = _json(client.get("/api/topk?layer=3&map=7"))
    assert t["status"]["state"] == "ready" and len(t["entries"]) == 9
    src = ImageSource(engine.ds, engine.pre)
    x, _ = src.load(np.arange(len(engine.ds)))
    ref = brute_force_topk(engine.net, x, [engine.layer_names[2]])
    assert [e["index"] for e in t["entries"]] == [int(i) for i in ref.index[engine.layer_names[2]][:, 7]]
    _is_png(client.get("/api/topk.png?layer=3&map=7"))
    assert os.path.isfile(os.path.join(engine.cache_dir, "topk.npz"))
    assert os.path.isfile(os.path.join(engine.cache_dir, "proj", "relu3_7.png"))


def test_dataset_browser(client, engine):
    d = _json(client.get("/api/dataset?cls=2&limit=5"))
    assert d["items"] and all(it["label"] == 2 for it in d["items"])
    assert d["total"] == int((engine.labels == 2).sum())
    assert _is_png(client.get(f"/api/thumb.png?i={d['items'][0]['index']}")) == (64, 64)


def test_upload_photo(client):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    k = _json(client.post("/api/upload", data={"file": (io.BytesIO(_png(photo)), "me.png")}))["key"]
    assert re.fullmatch(r"u[0-9a-f]{16}", k)
    p = _json(client.get(f"/api/predict?img={k}"))
    assert p["label"] is None and p["true"] == p["top"][0]["class"]
    assert _is_png(client.get(f"/api/image.png?img={k}")) == (32, 32)
    _json(client.get(f"/api/maps?img={k}&layer=1"))


@pytest.mark.parametrize("url, status, words", [
    ("/api/maps?img=d3&layer=0", 400, "layer 0 out of range"),
    ("/api/maps?img=d3&layer=6", 400, "layer 6 out of range"),
    ("/api/project?img=d3&layer=1&map=32", 400, "map 32 out of range"),
    ("/api/project?img=d3&layer=1&map=-1", 400, "map -1 out of range"),
    ("/api/topk?layer=2&map=9999", 400, "map 9999 out of range"),
    ("/api/predict?img=d100000", 400, "image index 100000 out of range"),
    ("/api/predict?img=../../etc/passwd", 400, "expected d<index>"),
    ("/api/predict?img=u0123456789abcdef", 400, "no longer held"),
    ("/api/maps?img=d1&layer=x", 400, "expected an integer"),
    ("/api/occlude?img=d1&y=900&x=0&size=8", 400, "outside"),
    ("/api/sweep?img=d1&size=8&stride=0", 400, "stride 0"),
    ("/api/invariance?img=d1&scale=nan", 400, "finite"),
    ("/api/invariance?img=d1&scale=100", 400, "scale 100"),
    ("/api/thumb.png?i=-1", 400, "out of range"),
    ("/api/nothing", 404, "404"),
])
def test_bad_requests_answer_json(client, url, status, words):
    r = client.get(url)
    assert r.status_code == status and words in r.get_json()["error"]
    assert client.get("/api/info").status_code == 200  # still serving


def test_bad_uploads(client):
    r = client.post("/api/upload", data={"file": (io.BytesIO(b"not an image at all" * 10), "x.png")})
    assert r.status_code == 400 and "not an image" in r.get_json()["error"]
    r = client.post("/api/upload", data={"file": (io.BytesIO(_png(np.zeros((4, 4, 3), np.uint8))[:40]), "t.png")})
    assert r.status_code == 400 and ("truncated" in r.get_json()["error"] or "not an image" in r.get_json()["error"])
    from zfscratch.explore.engine import MAX_UPLOAD_BYTES
    r = client.post("/api/upload", data={"file": (io.BytesIO(b"\0" * (MAX_UPLOAD_BYTES + 100_000)), "big.png")})
    assert r.status_code == 413 and "limit is 8 MiB" in r.get_json()["error"]
    r = client.post("/api/upload", data={})
    assert r.status_code == 400 and "no file" in r.get_json()["error"]
    assert client.get("/api/info").status_code == 200


def test_pixel_bomb_refused_before_decoding():
    from zfscratch.explore.engine import ApiError, decode_upload
    import struct
    import zlib
    # a PNG header claiming 20000 x 20000 pixels with almost no data
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    with pytest.raises(ApiError, match="megapixels"):
        decode_upload(data)


def test_host_header_and_origin_checked(engine):
    from zfscratch.explore.app import allowed_hosts, create_app
    c = create_app(engine, host="127.0.0.1", port=8765).test_client()
    assert c.get("/api/info", headers={"Host": "127.0.0.1:8765"}).status_code == 200
    assert c.get("/api/info", headers={"Host": "localhost:8765"}).status_code == 200
    r = c.get("/api/info", headers={"Host": "attacker.example:8765"})
    assert r.status_code == 403 and "DNS rebinding" in r.get_json()["error"]
    assert c.get("/", headers={"Host": "127.0.0.1:9999"}).status_code == 403
    r = c.post("/api/upload", headers={"Host": "127.0.0.1:8765", "Origin": "http://attacker.example"},
               data={"file": (io.BytesIO(b"x"), "x.png")})
    assert r.status_code == 403
    assert allowed_hosts("0.0.0.0", 80) is None
    w = create_app(engine, host="0.0.0.0", port=8765).test_client()
    assert w.get("/api/info", headers={"Host": "10.1.2.3:8765"}).status_code == 200
    assert w.get("/api/info", headers={"Host": "rebound.example:8765"}).status_code == 403


def test_engine_lock_serializes_two_tabs(engine):
    """Two threads hammering different images and layers get the answers one thread would."""
    import threading
    want = {k: engine.project(k, 3, 5)[1] for k in ("d1", "d2")}
    errors = []

    def tab(k):
        for _ in range(10):
            if engine.project(k, 3, 5)[1] != want[k]:
                errors.append(k)
            engine.maps(k, 1)
            engine.occlude(k, 4, 4, 8, 2, 0)

    ts = [threading.Thread(target=tab, args=(k,)) for k in ("d1", "d2")]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


# ----------------------------------------------------------------------------- the command
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args):
    return [sys.executable, "-m", "zfscratch", "explore", *args]


def _start(weights, tmp_path, extra=()):
    port = _free_port()
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    p = subprocess.Popen(_cli("--weights", weights, "--data", DATA, "--port", str(port), "--no-browser", *extra),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    return p, port, line


def test_cli_serves_and_errors(weights, tmp_path):
    p, port, line = _start(weights, tmp_path)
    try:
        assert line.strip() == f"serving on http://127.0.0.1:{port}/"
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=10) as r:
            assert r.status == 200
        # the same port again: one line on stderr, exit 2
        q = subprocess.run(_cli("--weights", weights, "--data", DATA, "--port", str(port), "--no-browser"),
                           capture_output=True, text=True, timeout=120)
        assert q.returncode == 2 and q.stdout == ""
        assert q.stderr.strip().count("\n") == 0 and "cannot listen" in q.stderr
    finally:
        p.terminate()
        p.wait(10)
    q = subprocess.run(_cli("--weights", weights, "--data", "synthetic:n=50,size=32,classes=face+house",
                            "--port", "0", "--no-browser"), capture_output=True, text=True, timeout=120)
    assert q.returncode == 2 and q.stderr.strip().count("\n") == 0
    assert "predict 10 classes" in q.stderr and "has 2" in q.stderr
    q = subprocess.run(_cli("--weights", str(tmp_path / "missing.npz"), "--no-browser"),
                       capture_output=True, text=True, timeout=120)
    assert q.returncode == 2 and "does not exist" in q.stderr


# ----------------------------------------------------------------------------- a real browser
def _chrome():
    """(chromium, chromedriver) paths, or a reason to skip."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, "Selenium is not installed (pip install 'zfscratch[explore]')"
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        return None, ("headless Chromium and its driver are not installed "
                      "(apt-get install chromium chromium-driver)")
    return (browser, driver), None


def browser_session(browser, driver_path, width=1500, height=1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}", "--disable-extensions", "--no-first-run"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver_path), options=opts)


def test_browser_end_to_end(weights, tmp_path):
    paths, reason = _chrome()
    if paths is None:
        pytest.skip(reason)
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    p, port, line = _start(weights, tmp_path)
    drv = None
    try:
        assert line.startswith("serving on ")
        drv = browser_session(*paths)
        wait = WebDriverWait(drv, 60)
        drv.get(f"http://127.0.0.1:{port}/")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#preds li")) >= 5)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#maps .tile")) > 0)
        # pick layer 2, then a map
        drv.find_element(By.CSS_SELECTOR, "#layers button[data-layer='2']").click()
        wait.until(lambda d: d.find_element(By.ID, "map-title").text.startswith("Layer 2 ("))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#maps .tile")) == 64)
        tiles = drv.find_elements(By.CSS_SELECTOR, "#maps .tile")
        tiles[3].click()
        want = tiles[3].get_attribute("data-map")
        wait.until(lambda d: d.find_element(By.ID, "map-title").text.endswith(f"map {want}"))
        wait.until(lambda d: d.execute_script("return document.getElementById('topk').naturalWidth") > 0)
        # drag the occluder across the image: P(true) is reported and changes
        stage = drv.find_element(By.ID, "stage")
        seen = set()
        for dx in (-120, -40, 40, 120):
            ActionChains(drv).move_to_element_with_offset(stage, dx, dx // 2).click_and_hold().move_by_offset(
                5, 5).release().perform()
            wait.until(lambda d: "P(" in d.find_element(By.ID, "occ-out").text)
            time.sleep(0.4)
            seen.add(drv.find_element(By.ID, "occ-out").get_attribute("data-p"))
        assert len(seen) > 1, seen
        # every image on the page loaded (naturalWidth > 0)
        for el in ("img", "proj", "proj-crop", "filters", "topk", "warp"):
            assert drv.execute_script(f"return document.getElementById('{el}').naturalWidth") > 0, el
        assert drv.find_element(By.ID, "msg").get_attribute("class").count("hidden") == 1
        # a non-image upload: a clear message on the page, and the page keeps working
        drv.execute_script("upload(new File([new Uint8Array(64)], 'notes.png', {type: 'image/png'}))")
        wait.until(lambda d: "not an image" in d.find_element(By.ID, "msg").text)
        drv.find_element(By.CSS_SELECTOR, "#layers button[data-layer='1']").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#maps .tile")) == 32)
        shot = tmp_path / "explore.png"
        drv.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        if drv is not None:
            drv.quit()
        p.terminate()
        p.wait(10)


def test_topk_subset_spread_over_the_data(weights, tmp_path):
    from zfscratch.explore.engine import Engine
    net, meta = load_weights(weights)
    e = Engine(net, meta, open_dataset(DATA, "val"), weights_path=weights, data_desc=DATA,
               cache_root=str(tmp_path), images=5)
    e.start().join(120)
    assert e.topk_status["state"] == "ready" and e.topk.count == 5
    seen = {int(i) for i in e.topk.index[e.layer_names[0]].ravel() if i >= 0}
    assert seen == {0, 5, 10, 14, 19}  # linspace(0, 19, 5), not the first five
