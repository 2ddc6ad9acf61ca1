"""HTTP front of the Fritz-like service: ThreadingHTTPServer, token checks, dispatch.

Input: HTTP requests. Output: SkyPortal envelopes for /api/*, the candidates page, PNGs at
/static/thumbnails/<obj>_<ttype>.png, /healthz. API calls need `Authorization: token <t>`
(401 when absent or malformed, 403 when unknown); the page takes the token once as ?token=
and keeps it in a cookie. The standard library is enough for this traffic (a thread per
connection; the poster's bench reaches hundreds of calls/s), so the service adds no web
framework dependency.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import logging
import re
import signal
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pymongo
from pymongo.errors import ConnectionFailure

from nightjar_fritz import page
from nightjar_fritz.api import Api, Catalog, Route
from nightjar_fritz.config import ConfigError, FritzConfig
from nightjar_fritz.faults import FaultPlan, Faults
from nightjar_fritz.payloads import ApiError, parse
from nightjar_fritz.store import FritzStore
from nightjar_fritz.web import Request, Response, error, success

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024
COOKIE = "nightjar_token"
_SECRET_PARAM = re.compile(r"token=[^&\s]*")
_THUMBNAIL = re.compile(r"^/static/thumbnails/(?P<obj_id>[\w.+-]+)_(?P<ttype>[a-z0-9_]+)\.png$")


class FritzApp:
    """Routes one request to the API, the page or the test hooks; no socket code here."""

    def __init__(self, api: Api, tokens: list[str], faults: Faults | None) -> None:
        if not tokens:
            raise ConfigError("no accepted tokens (FritzConfig.accepted_tokens() names the fix)")
        self.api = api
        self._tokens = [token.encode() for token in tokens]
        self._routes: list[Route] = api.routes()
        self.faults = faults

    def handle(self, request: Request) -> Response:
        try:
            return self._dispatch(request)
        except ApiError as exc:
            return error(exc.status, exc.message)
        except ConnectionFailure as exc:
            log.warning("MongoDB unavailable: %s", exc)
            return error(503, "database unavailable; try again")
        except Exception:  # the top of a request: answer 500, keep serving
            log.exception("%s %s failed", request.method, request.path)
            return error(500, "internal error (see the service log)")

    def _dispatch(self, request: Request) -> Response:
        path = request.path
        if path == "/healthz":
            return Response(200, b"ok\n", "text/plain")
        if path in ("/", "/candidates") or path.startswith("/static/"):
            return self._page(request)
        if path == "/_test/faults" and self.faults is not None:
            self._authenticate(request)
            return self._set_faults(request)
        if not path.startswith("/api/"):
            raise ApiError(404, f"no such page: {path}")
        self._authenticate(request)
        plan = self.faults.take(request.method, path) if self.faults else None
        if plan is not None and plan.mode == "error":
            raise ApiError(plan.status, f"injected fault (test): HTTP {plan.status}")
        if plan is not None:
            time.sleep(plan.seconds)
        return self._route(request)

    def _route(self, request: Request) -> Response:
        allowed = []
        for route in self._routes:
            match = route.pattern.match(request.path)
            if match is None:
                continue
            if route.method == request.method:
                return route.handler(dataclasses.replace(request, match=match.groupdict()))
            allowed.append(route.method)
        if allowed:
            raise ApiError(
                405, f"{request.method} not allowed on {request.path} ({', '.join(allowed)})"
            )
        raise ApiError(404, f"no such endpoint: {request.path}")

    def _authenticate(self, request: Request) -> None:
        header = request.header("Authorization")
        if not header:
            raise ApiError(401, "missing Authorization header: send 'Authorization: token <token>'")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "token" or not token or " " in token:
            raise ApiError(401, "malformed Authorization header: expected 'token <token>'")
        if not self._known(token):
            raise ApiError(403, "unknown token")

    def _known(self, token: str) -> bool:
        given = token.encode()
        return any(hmac.compare_digest(given, known) for known in self._tokens)

    def _set_faults(self, request: Request) -> Response:
        assert self.faults is not None
        if request.method == "GET":
            return success(self.faults.state())
        if request.method != "POST":
            raise ApiError(405, "use GET or POST on /_test/faults")
        return success(self.faults.set(parse(FaultPlan, request.json())))

    def _page(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            raise ApiError(405, "the page is read-only")
        token = request.params.get("token")
        if token and self._known(token):
            rest = {k: v for k, v in request.params.items() if k != "token"}
            location = request.path + (f"?{urlencode(rest)}" if rest else "")
            cookie = f"{COOKIE}={token}; HttpOnly; SameSite=Lax; Path=/"
            return Response(303, b"", "text/plain", {"Location": location, "Set-Cookie": cookie})
        cookie_token = _cookie(request.header("Cookie"))
        if not (cookie_token and self._known(cookie_token)):
            body = b"<p>Sign in: open <code>/?token=&lt;your API token&gt;</code> once.</p>"
            return Response(401, body, "text/html; charset=utf-8")
        thumbnail = _THUMBNAIL.match(request.path)
        if thumbnail:
            png = self.api.store.thumbnail_png(thumbnail["obj_id"], thumbnail["ttype"])
            if png is None:
                raise ApiError(404, "no such thumbnail")
            return Response(200, png, "image/png", {"Cache-Control": "max-age=60"})
        if request.path.startswith("/static/"):
            raise ApiError(404, f"no such file: {request.path}")
        html = page.render(self.api, request.params)
        return Response(200, html.encode(), "text/html; charset=utf-8")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # The headers and the body go out in two writes: with Nagle's algorithm on, the body
    # waits for the client's delayed ACK of the headers, ~40-50 ms a call on a kept-alive
    # connection (measured: 50 ms p50 per call, both processes idle; 2 candidates/s).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        url = urlsplit(self.path)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._send(error(400, "Content-Length is not a number"))
            return
        if length > MAX_BODY_BYTES:
            self._send(error(413, f"request body over {MAX_BODY_BYTES} bytes"))
            return
        body = self.rfile.read(length) if length > 0 else b""
        request = Request(
            method=self.command,
            path=url.path,
            params=dict(parse_qsl(url.query)),
            headers=dict(self.headers.items()),
            body=body,
        )
        self._send(self.server.app.handle(request))

    def _send(self, response: Response) -> None:
        self.send_response(response.status, HTTPStatus(response.status).phrase)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        # The page's sign-in link carries the token: keep it out of the logs.
        log.debug("%s %s", self.address_string(), _SECRET_PARAM.sub("token=***", format % args))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: FritzApp) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End kept-alive connections too: a stopped service must not answer anyone."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout) before the answer: expected, not a traceback.
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("client %s went away: %s", client_address, error)
            return
        log.exception("request from %s failed", client_address)


class FritzServer:
    """The service bound to host:port; `serve_forever()` for the CLI, `start()` for tests."""

    def __init__(
        self, config: FritzConfig, host: str | None = None, port: int | None = None
    ) -> None:
        server = config.server
        app_tokens = config.accepted_tokens()  # before connecting: a config error comes first
        self._mongo: pymongo.MongoClient[Any] = pymongo.MongoClient(
            config.mongo_uri(), serverSelectionTimeoutMS=config.mongo.timeout_ms, tz_aware=True
        )
        store = FritzStore(self._mongo[server.database])
        store.ensure_indexes()
        catalog = Catalog(
            filters=config.filter_names(),
            groups=dict(server.groups),
            streams=dict(server.streams),
        )
        faults = Faults() if server.faults_enabled else None
        app = FritzApp(Api(store, catalog), app_tokens, faults)
        address = (host or server.host, server.port if port is None else port)
        self._http = _Server(address, app)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve_forever(self) -> None:
        log.info("Fritz-like API on %s (database %s)", self.url, self._http.app.api.store.db.name)
        self._http.serve_forever()

    def shutdown(self) -> None:
        """Make serve_forever() return (call from another thread)."""
        self._http.shutdown()

    def close(self) -> None:
        self._http.server_close()
        self._http.close_connections()
        self._mongo.close()

    def serve_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then close (the command line's main loop)."""

        def _stop(signum: int, frame: Any) -> None:
            # shutdown() waits for serve_forever to return, so it must not run on its thread.
            threading.Thread(target=self.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        self.serve_forever()
        self.close()

    def start(self) -> FritzServer:
        """Serve on a background thread (tests, or a process that embeds the service)."""
        self._thread = threading.Thread(target=self._http.serve_forever, name="fritz", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join()
            self._thread = None
        self.close()


def _cookie(header: str | None) -> str | None:
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:  # a malformed cookie header is just "not signed in"
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel else None
