"""The web side of ``zfscratch explore``: a Flask app over an :class:`~zfscratch.explore.engine.Engine`.

Routes (all ``GET`` unless noted; every ``/api`` answer is JSON or a PNG; errors are JSON
``{"error": "..."}`` with status 400/404/413, and the server keeps running):

==============================  ==============================================================
``/``                           the page (``static/index.html``; CSS and JS from ``/static``)
``/api/info``                   classes, layers, data, limits, top-9 progress
``/api/dataset``                ``cls``, ``offset``, ``limit``: dataset images of a class
``/api/thumb.png``              ``i``: thumbnail of dataset image ``i``
``/api/upload`` (POST)          multipart ``file``: an image; answers its key
``/api/image.png``              ``img``: the image as the network sees it
``/api/predict``                ``img``, ``label``: top-5 and P(true)
``/api/maps`` / ``maps.png``    ``img``, ``layer``: the layer's maps, strongest first / sprite
``/api/project`` / ``.png``     ``img``, ``layer``, ``map``, ``mode``, ``crop``: DeconvNet projection
``/api/topk`` / ``topk.png``    ``layer``, ``map``: top-9 over the data (progress until ready)
``/api/occlude``                ``img``, ``y``, ``x``, ``size``, ``layer``, ``map``, ``label``
``/api/sweep`` / ``sweep.png``  ``img``, ``size``, ``stride``, ...: the whole occlusion sweep
``/api/invariance``             ``img``, ``shift``, ``scale``, ``rotation``, ``label``
``/api/warp.png``               ``img``, ``shift``, ``scale``, ``rotation``: the transformed image
``/api/filters.png``            the first-layer filters
==============================  ==============================================================

Safety: requests whose ``Host`` header is not the bound address (or ``localhost`` when bound to a
loopback address) are refused (DNS rebinding); a POST from another origin is refused; request bodies
are capped at :data:`~zfscratch.explore.engine.MAX_UPLOAD_BYTES` (plus form overhead) before they are
read; uploads are decoded in memory by Pillow only; no parameter is ever used as a path.
"""
from __future__ import annotations

import ipaddress
import os
import threading

from zfscratch.errors import UserError
from zfscratch.explore.engine import MAX_UPLOAD_BYTES, ApiError

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


def allowed_hosts(host, port):
    """``Host`` header values accepted for a server bound to ``host:port`` (None: any IP literal,
    for a wildcard bind, since an IP literal cannot be a rebound DNS name)."""
    h = host.strip("[]")
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return {f"{host}:{port}".lower()}
    if ip.is_unspecified:
        return None
    names = {f"{h}:{port}" if ip.version == 4 else f"[{h}]:{port}"}
    if ip.is_loopback:
        names.add(f"localhost:{port}")
    return {n.lower() for n in names}


def _is_ip_literal(hostport):
    h = hostport.rsplit(":", 1)[0] if not hostport.startswith("[") else hostport[1:].split("]")[0]
    try:
        ipaddress.ip_address(h)
        return True
    except ValueError:
        return False


def create_app(engine, host="127.0.0.1", port=None):
    """The Flask app serving ``engine``; ``host``/``port``: the bound address (Host header check;
    ``port=None`` skips the check, for tests that use the test client's own host)."""
    from flask import Flask, jsonify, request, send_from_directory
    from werkzeug.exceptions import HTTPException

    app = Flask("zfscratch.explore", static_folder=STATIC, static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES + 64 * 1024  # multipart overhead
    hosts = allowed_hosts(host, port) if port is not None else "any"
    sweeps = {}  # last sweep overlays by parameters (a few kept)
    sweeps_lock = threading.Lock()

    @app.before_request
    def _check_host():
        if hosts == "any":
            return None
        got = (request.headers.get("Host") or "").lower()
        if (hosts is None and not _is_ip_literal(got)) or (hosts is not None and got not in hosts):
            return jsonify(error=f"refused: Host {got[:80]!r} is not this server's address "
                                 f"(DNS rebinding protection)"), 403
        if request.method == "POST":
            origin = request.headers.get("Origin")
            if origin and origin.split("://", 1)[-1].lower() != got:
                return jsonify(error="refused: a POST from another origin"), 403
        return None

    @app.errorhandler(UserError)  # ApiError and the library's own one-line errors
    def _api_error(e):
        return jsonify(error=str(e)), 400

    @app.errorhandler(HTTPException)
    def _http_error(e):
        if e.code == 413:
            return jsonify(error=f"the upload is too large: the limit is {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB"), 413
        return jsonify(error=f"{e.code} {e.name}"), e.code

    @app.errorhandler(Exception)
    def _internal(e):  # a bug: say so on the page, log it, keep serving
        app.logger.exception("explore: internal error")
        return jsonify(error=f"internal error: {type(e).__name__}: {e}"), 500

    @app.after_request
    def _headers(resp):
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' blob: data:; "
                                                   "style-src 'self'; script-src 'self'")
        return resp

    def arg_int(name, default=None, lo=None, hi=None):
        v = request.args.get(name)
        if v is None or v == "":
            if default is None:
                raise ApiError(f"missing parameter {name!r}")
            return default
        try:
            n = int(v)
        except ValueError:
            raise ApiError(f"parameter {name}={v[:20]!r}: expected an integer") from None
        if (lo is not None and n < lo) or (hi is not None and n > hi):
            raise ApiError(f"parameter {name}={n}: expected {lo}..{hi}")
        return n

    def arg_float(name, default):
        v = request.args.get(name)
        if v is None or v == "":
            return default
        try:
            f = float(v)
        except ValueError:
            raise ApiError(f"parameter {name}={v[:20]!r}: expected a number") from None
        if f != f or f in (float("inf"), float("-inf")):
            raise ApiError(f"parameter {name}: expected a finite number")
        return f

    def img():
        return request.args.get("img", "")

    def png(data):
        return app.response_class(data, mimetype="image/png")

    def label():
        return arg_int("label", -1)

    @app.get("/")
    def index():
        return send_from_directory(STATIC, "index.html")

    @app.get("/api/info")
    def info():
        return jsonify(engine.info())

    @app.get("/api/dataset")
    def dataset():
        return jsonify(engine.dataset_page(arg_int("cls", -1), arg_int("offset", 0), arg_int("limit", 48)))

    @app.get("/api/thumb.png")
    def thumb():
        return png(engine.thumbnail(arg_int("i")))

    @app.post("/api/upload")
    def upload():
        f = request.files.get("file")
        if f is None:
            raise ApiError("no file in the upload (multipart field 'file')")
        data = f.stream.read(MAX_UPLOAD_BYTES + 1)  # never more than the cap, never to disk
        return jsonify(key=engine.add_upload(data))

    @app.get("/api/image.png")
    def image():
        return png(engine.image_png(img()))

    @app.get("/api/predict")
    def predict():
        return jsonify(engine.predict(img(), label()))

    @app.get("/api/maps")
    def maps():
        return jsonify(engine.maps(img(), arg_int("layer"))[0])

    @app.get("/api/maps.png")
    def maps_png():
        return png(engine.maps(img(), arg_int("layer"))[1])

    def _project():
        return engine.project(img(), arg_int("layer"), arg_int("map"), request.args.get("mode", "max"),
                              crop=arg_int("crop", 0, 0, 1) == 1)

    @app.get("/api/project")
    def project():
        return jsonify(_project()[0])

    @app.get("/api/project.png")
    def project_png():
        return png(_project()[1])

    @app.get("/api/topk")
    def topk():
        return jsonify(engine.topk_info(arg_int("layer"), arg_int("map")))

    @app.get("/api/topk.png")
    def topk_png():
        return png(engine.topk_png(arg_int("layer"), arg_int("map")))

    @app.get("/api/occlude")
    def occlude():
        return jsonify(engine.occlude(img(), arg_int("y"), arg_int("x"), arg_int("size"),
                                      arg_int("layer", len(engine.layer_names)), arg_int("map", -1), label()))

    @app.get("/api/sweep")
    def sweep():
        args = (img(), arg_int("size"), arg_int("stride"), arg_int("layer", len(engine.layer_names)),
                arg_int("map", -1), label())
        summary, data = engine.sweep(*args)
        with sweeps_lock:
            sweeps[args] = data
            while len(sweeps) > 8:
                sweeps.pop(next(iter(sweeps)))
        return jsonify(summary)

    @app.get("/api/sweep.png")
    def sweep_png():
        args = (img(), arg_int("size"), arg_int("stride"), arg_int("layer", len(engine.layer_names)),
                arg_int("map", -1), label())
        with sweeps_lock:
            data = sweeps.get(args)
        if data is None:
            data = engine.sweep(*args)[1]
        return png(data)

    def _tf():
        return arg_float("shift", 0.0), arg_float("scale", 1.0), arg_float("rotation", 0.0)

    @app.get("/api/invariance")
    def invariance():
        return jsonify(engine.invariance(img(), *_tf(), label=label()))

    @app.get("/api/warp.png")
    def warp_png():
        return png(engine.warp_png(img(), *_tf()))

    @app.get("/api/filters.png")
    def filters_png():
        return png(engine.filters_png())

    return app
