"""``zfscratch explore``: serve a local web page to look inside a network live."""
from __future__ import annotations

import sys

ORDER = 35


def register(sub):
    from zfscratch.commands._args import add_backend_arg
    from zfscratch.commands.visualize import DATA_HELP
    p = sub.add_parser(
        "explore", help="a local web page to look inside a network live: maps, top-9, projections, occlusion",
        description="Start a local web server (Flask; pip install 'zfscratch[explore]') and open its page: "
                    "browse the data or upload a photo, see the top-5 predictions, pick a layer and a map, see "
                    "the map's top-9 over the data with DeconvNet projections (computed once in the background "
                    "and cached), this image's projection, drag an occluder, sweep it, transform the image, "
                    "look at the first-layer filters. The first stdout line is 'serving on http://HOST:PORT/'.")
    p.add_argument("--weights", required=True, help="weights file (.npz from zfscratch train)")
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--split", default="val", choices=("train", "val", "test"),
                   help="split of the data to browse and scan (default val, else test, else train)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; anything else is reachable from other machines "
                        "and prints a warning)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free port)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="folder for the top-9 record and its projections (default "
                        "~/.cache/zfscratch/explore/<hash of weights + data>)")
    p.add_argument("--images", type=int, default=None,
                   help="scan only N images for the top-9, spread evenly over the split (default all)")
    p.add_argument("--verbose", action="store_true", help="log every request on stderr")
    add_backend_arg(p)
    p.set_defaults(func=cmd_explore)


def _is_loopback(host):
    import ipaddress
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _listen(host, port, shown):
    """A listening TCP socket on ``host:port`` (our own, so a busy port is one UserError line)."""
    import socket
    from zfscratch.errors import UserError
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {shown}: cannot resolve it: {e.strerror or e}") from None
    fam, _, _, _, addr = infos[0]
    sock = socket.socket(fam, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UserError(f"--host {shown} --port {port}: cannot listen there: {e.strerror or e}") from None
    return sock


def cmd_explore(args):
    import logging
    import threading

    from zfscratch.commands.visualize import _load, _open_data
    from zfscratch.errors import UserError
    try:
        import flask  # noqa: F401
        from werkzeug.serving import make_server
    except ImportError:
        raise UserError("zfscratch explore needs Flask: pip install 'zfscratch[explore]'") from None
    from zfscratch.explore.app import create_app
    from zfscratch.explore.engine import Engine

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: expected 0..65535")
    if args.images is not None and args.images < 1:
        raise UserError(f"--images {args.images}: expected a positive number")
    host = "127.0.0.1" if args.host == "localhost" else args.host
    net, meta = _load(args.weights, args.backend)
    ds = _open_data(args.data, meta, args.split)
    desc = args.data or f"training data of {args.weights}"
    engine = Engine(net, meta, ds, weights_path=args.weights, data_desc=f"{desc} ({args.split})",
                    cache_dir=args.cache, images=args.images)
    if not args.verbose:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # the Host check needs the real port: bind first (port 0 = a free one), then build the app
    holder = {}

    def app(environ, start_response):
        return holder["app"](environ, start_response)

    sock = _listen(host, args.port, args.host)
    port = sock.getsockname()[1]
    srv = make_server(host, port, app, threaded=True, fd=sock.fileno())
    sock.close()  # the server holds its own duplicate of the socket
    holder["app"] = create_app(engine, host=host, port=port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    thread = threading.Thread(target=srv.serve_forever, name="explore-http", daemon=True)
    thread.start()
    print(f"serving on {url}", flush=True)
    if not _is_loopback(host):
        print(f"zfscratch: warning: --host {args.host}: the page and its data are reachable from other "
              f"machines (no authentication)", file=sys.stderr, flush=True)
    engine.start()
    if not args.no_browser:
        import webbrowser
        webbrowser.open(url)
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        print("zfscratch: stopping", file=sys.stderr)
    finally:
        srv.shutdown()
        srv.server_close()
    return 0
