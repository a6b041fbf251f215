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


# ---------------------------------------------------------------- request arguments
# flask is imported inside these functions: it is an optional extra, and importing this module must
# not need it (``zfscratch explore`` says how to install it).

def _arg_int(name, default=None, lo=None, hi=None):
    """Query parameter ``name`` as an int in ``[lo, hi]`` (None: unbounded); ``default`` None: required.

    Raises
    ------
    ApiError
        missing (without a default), not an integer, or out of range.
    """
    from flask import request

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


def _arg_float(name, default):
    """Query parameter ``name`` as a finite float (``default`` when absent); ApiError otherwise."""
    from flask import request

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


def _img():
    """The ``img`` parameter: an image key (``d<index>`` or an upload's ``u<hex>``), never a path."""
    from flask import request

    return request.args.get("img", "")


def _label():
    """The ``label`` parameter: the true class, -1 (the default) when unknown."""
    return _arg_int("label", -1)


def _png(app, data):
    """A PNG response of the bytes ``data``."""
    return app.response_class(data, mimetype="image/png")


# ---------------------------------------------------------------- guards: hosts, errors, headers
def _install_host_check(app, hosts):
    """Refuse requests whose ``Host`` is not this server's (DNS rebinding) and cross-origin POSTs.

    ``hosts``: a set of accepted ``host:port`` values, None (any IP literal: a wildcard bind) or
    ``"any"`` (no check, for the test client).
    """
    from flask import jsonify, request

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


def _install_error_handlers(app):
    """Every error becomes JSON ``{"error": ...}``: 400 for bad input, the HTTP code, or 500 for a bug
    (logged; the server keeps serving)."""
    from flask import jsonify
    from werkzeug.exceptions import HTTPException

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


def _install_headers(app):
    """Security headers on every response: no MIME sniffing, no caching, same-origin content only."""
    @app.after_request
    def _headers(resp):
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' blob: data:; "
                                                   "style-src 'self'; script-src 'self'")
        return resp


# ---------------------------------------------------------------- routes, one group per panel of the page
def _add_data_routes(app, engine):
    """The page, the engine's info, the dataset browser, uploads and the input image."""
    from flask import jsonify, request, send_from_directory

    @app.get("/")
    def index():
        return send_from_directory(STATIC, "index.html")

    @app.get("/api/info")
    def info():
        return jsonify(engine.info())

    @app.get("/api/dataset")
    def dataset():
        return jsonify(engine.dataset_page(_arg_int("cls", -1), _arg_int("offset", 0), _arg_int("limit", 48)))

    @app.get("/api/thumb.png")
    def thumb():
        return _png(app, engine.thumbnail(_arg_int("i")))

    @app.post("/api/upload")
    def upload():
        f = request.files.get("file")
        if f is None:
            raise ApiError("no file in the upload (multipart field 'file')")
        data = f.stream.read(MAX_UPLOAD_BYTES + 1)  # never more than the cap, never to disk
        return jsonify(key=engine.add_upload(data))

    @app.get("/api/image.png")
    def image():
        return _png(app, engine.image_png(_img()))


def _add_feature_routes(app, engine):
    """Predictions, feature maps, DeconvNet projections, the top-9 over the data and the filters."""
    from flask import jsonify, request

    @app.get("/api/predict")
    def predict():
        return jsonify(engine.predict(_img(), _label()))

    @app.get("/api/maps")
    def maps():
        return jsonify(engine.maps(_img(), _arg_int("layer"))[0])

    @app.get("/api/maps.png")
    def maps_png():
        return _png(app, engine.maps(_img(), _arg_int("layer"))[1])

    def _project():
        return engine.project(_img(), _arg_int("layer"), _arg_int("map"), request.args.get("mode", "max"),
                              crop=_arg_int("crop", 0, 0, 1) == 1)

    @app.get("/api/project")
    def project():
        return jsonify(_project()[0])

    @app.get("/api/project.png")
    def project_png():
        return _png(app, _project()[1])

    @app.get("/api/topk")
    def topk():
        return jsonify(engine.topk_info(_arg_int("layer"), _arg_int("map")))

    @app.get("/api/topk.png")
    def topk_png():
        return _png(app, engine.topk_png(_arg_int("layer"), _arg_int("map")))

    @app.get("/api/filters.png")
    def filters_png():
        return _png(app, engine.filters_png())


def _add_occlusion_routes(app, engine):
    """One occluder position, and the whole sweep: its summary and its overlay PNG.

    The page asks for the summary, then the overlay with the same parameters: the last few overlays are
    kept (by parameters) so the PNG does not recompute the sweep.
    """
    from flask import jsonify

    sweeps = {}  # last sweep overlays by parameters (a few kept)
    sweeps_lock = threading.Lock()

    def sweep_args():
        return (_img(), _arg_int("size"), _arg_int("stride"), _arg_int("layer", len(engine.layer_names)),
                _arg_int("map", -1), _label())

    @app.get("/api/occlude")
    def occlude():
        return jsonify(engine.occlude(_img(), _arg_int("y"), _arg_int("x"), _arg_int("size"),
                                      _arg_int("layer", len(engine.layer_names)), _arg_int("map", -1), _label()))

    @app.get("/api/sweep")
    def sweep():
        args = sweep_args()
        summary, data = engine.sweep(*args)
        with sweeps_lock:
            sweeps[args] = data
            while len(sweeps) > 8:
                sweeps.pop(next(iter(sweeps)))
        return jsonify(summary)

    @app.get("/api/sweep.png")
    def sweep_png():
        args = sweep_args()
        with sweeps_lock:
            data = sweeps.get(args)
        if data is None:
            data = engine.sweep(*args)[1]
        return _png(app, data)


def _add_invariance_routes(app, engine):
    """The invariance curves under a shift, scale and rotation of the image, and the transformed image."""
    from flask import jsonify

    def _tf():
        return _arg_float("shift", 0.0), _arg_float("scale", 1.0), _arg_float("rotation", 0.0)

    @app.get("/api/invariance")
    def invariance():
        return jsonify(engine.invariance(_img(), *_tf(), label=_label()))

    @app.get("/api/warp.png")
    def warp_png():
        return _png(app, engine.warp_png(_img(), *_tf()))


def create_app(engine, host="127.0.0.1", port=None):
    """The Flask app serving ``engine``; ``host``/``port``: the bound address (Host header check;
    ``port=None`` skips the check, for tests that use the test client's own host)."""
    from flask import Flask

    app = Flask("zfscratch.explore", static_folder=STATIC, static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES + 64 * 1024  # multipart overhead
    _install_host_check(app, allowed_hosts(host, port) if port is not None else "any")
    _install_error_handlers(app)
    _install_headers(app)
    _add_data_routes(app, engine)
    _add_feature_routes(app, engine)
    _add_occlusion_routes(app, engine)
    _add_invariance_routes(app, engine)
    return app
