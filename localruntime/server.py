"""The runtime: one multithreaded HTTP server for the page, the Appwrite surface, the function
domains and the offline model, plus the schedule of the cron function.

Functions call back into the server (JWT verification, the offline model) while an execution is
in flight, so every connection gets its own thread.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import sys
import threading
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from metering.errors import ConfigurationError
from metering.plans import load_default_plans
from metering.ports import UsageStore

from localruntime.sqlite_store import SQLiteStore

from .api import AppwriteSurface
from .auth import AuthStore, utc_now
from .cron import CronExpression, Scheduler
from .functions import ExecutionLog, FunctionRunner, FunctionSpec, discover
from .loader import ROOT
from .messaging import Outbox
from .offline_model import ModelApiError, OfflineModel
from .realtime import PATH as REALTIME_PATH
from .realtime import Hub, PublishingStore, UserDocument
from .seed import DemoAccount, seed
from .settings import LOCAL_STRIPE_KEY, OFFLINE_MODEL_KEY, PROJECT_ID, RuntimeSettings
from .stripe_local import PREFIX as STRIPE_PREFIX
from .stripe_local import WEBHOOK_USER_AGENT, LocalStripe
from .wire import AppwriteError, Reply, Request, json_reply

log = logging.getLogger("localruntime")

CRON_FUNCTION = "monthly-reset-cron"
# Where the local Stripe delivers its events: the function domain `stripe listen` forwards to.
WEBHOOK_FUNCTION = "stripe-webhook"
MAX_REQUEST_BODY = 32 * 1024 * 1024
SHUTDOWN_POLL_SECONDS = 0.05
OFFLINE_PREFIX = "/_offline/anthropic"
# The chat page's Content-Security-Policy: its own scripts, styles and images, its API (the same
# origin here, WebSockets included), and HTML only through the sanitiser's Trusted Types policy.
# web/README.md gives the same policy for a static host.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
    "require-trusted-types-for 'script'; trusted-types dompurify"
)
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")  # noqa: S104 -- names of wildcard binds, not a bind
# The names every local runtime answers to on its port, whatever it is bound to.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class HostPolicy:
    """Which ``Host`` headers and page origins the runtime serves: its own names on its port,
    and what ALLOWED_HOSTS and CORS_ALLOWED_ORIGINS add.

    A page on any other name that DNS points at 127.0.0.1 (DNS rebinding) reaches the socket but
    sends its own name as ``Host``, so it is refused before any route runs.
    """

    port: int
    # Served on ``port``, or named without a port (a browser never omits a port it uses).
    names: frozenset[str]
    # ``name:port`` entries of ALLOWED_HOSTS, served exactly.
    exact: frozenset[str]
    # ALLOWED_HOSTS names without a port: also their origins without one (a proxy in front).
    configured_names: frozenset[str]
    origins: frozenset[str]

    @classmethod
    def of(cls, settings: RuntimeSettings, port: int) -> HostPolicy:
        bound = settings.host.lower()
        own = set(LOOPBACK_NAMES)
        if bound not in _WILDCARD_HOSTS:
            own.add(f"[{bound}]" if ":" in bound else bound)
        exact = {entry for entry in settings.allowed_hosts if _split_host(entry)[1] is not None}
        bare = {entry for entry in settings.allowed_hosts if entry not in exact}
        return cls(
            port=port,
            names=frozenset(own | bare),
            exact=frozenset(exact),
            configured_names=frozenset(bare),
            origins=frozenset(origin.lower() for origin in settings.cors_origins),
        )

    def allows_host(self, value: str) -> bool:
        name, port = _split_host(value.strip().lower())
        if port is not None and f"{name}:{port}" in self.exact:
            return True
        return name in self.names and port in (None, self.port)

    def allows_origin(self, origin: str) -> bool:
        """A page origin that may call the API with the user's session: one of the runtime's
        own (on its port) or a configured one. Other loopback ports are other apps."""
        origin = origin.strip().lower().rstrip("/")
        if origin in self.origins:
            return True
        scheme, _, authority = origin.partition("://")
        if scheme not in _DEFAULT_PORTS or not authority or "/" in authority:
            return False
        name, port = _split_host(authority)
        if port is not None and f"{name}:{port}" in self.exact:
            return True
        if name in self.configured_names and port in (None, self.port):
            return True
        return name in self.names and (port or _DEFAULT_PORTS[scheme]) == self.port


def _split_host(value: str) -> tuple[str, int | None]:
    """``name`` and port of a ``Host`` value; an unparsable one yields a name nothing allows."""
    if value.startswith("["):
        end = value.find("]")
        name, rest = value[: end + 1], value[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            return "", None
        port = rest[1:] if rest else None
    elif ":" in value:
        name, _, port = value.rpartition(":")
        if ":" in name:  # an IPv6 address without its brackets
            return "", None
    else:
        name, port = value, None
    if port is None:
        return name, None
    if not (port.isascii() and port.isdigit()):
        return "", None
    return name, int(port)


def host_not_trusted() -> AppwriteError:
    return AppwriteError(
        404,
        "router_host_not_found",
        "Host is not trusted: the local runtime answers only to its own host names"
        " (localhost, 127.0.0.1, [::1] and HOST on its port); add others with ALLOWED_HOSTS.",
    )


def unknown_origin(origin: str) -> AppwriteError:
    return AppwriteError(
        403,
        "general_unknown_origin",
        f"The request originated from an unknown origin ({origin[:100]}). Add it to"
        " CORS_ALLOWED_ORIGINS to let a page there use the API.",
    )


class Runtime:
    """Start, serve, stop. Construct with settings; everything else has a default."""

    def __init__(
        self,
        settings: RuntimeSettings,
        *,
        root: Path = ROOT,
        functions: Mapping[str, FunctionSpec] | None = None,
        web_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
        store: UsageStore | None = None,
        model: OfflineModel | None = None,
    ) -> None:
        self.settings = settings
        # What the functions read their own settings from (CHAT_MODEL, ...), as when deployed.
        self.environ: Mapping[str, str] = dict(environ or {})
        self.root = root
        self.specs = dict(
            functions if functions is not None else discover(root, root / "functions")
        )
        self.web_dir = (web_dir or root / "web").resolve()
        self.data_dir = settings.data_dir.resolve()
        # Benchmarks and the soak put another store (the TablesDB emulation) or a model with
        # injected faults behind the same surface; by default the embedded SQLite file and the
        # offline model.
        self.model = model or OfflineModel(settings.offline_model_tokens_per_second)
        self._given_store = store
        self.executions = ExecutionLog()
        self.demo_accounts: list[DemoAccount] = []
        self.port = settings.port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._scheduler: Scheduler | None = None
        # Served at STRIPE_PREFIX when no Stripe key is set (from start on).
        self.stripe: LocalStripe | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.public_host}:{self.port}"

    @property
    def public_host(self) -> str:
        host = self.settings.host
        if host in _WILDCARD_HOSTS:
            return "127.0.0.1"
        return f"[{host}]" if ":" in host else host

    @property
    def hosts(self) -> HostPolicy:
        """What this runtime answers to (its port is known once it is bound)."""
        return HostPolicy.of(self.settings, self.port)

    def admit(self, headers: list[tuple[str, str]]) -> None:
        """Refuse a request whose ``Host`` is not one of this runtime's (exactly one, as HTTP/1.1
        requires); before any route, the WebSocket upgrade included."""
        hosts = [value for key, value in headers if key.lower() == "host"]
        if len(hosts) != 1 or not self.hosts.allows_host(hosts[0]):
            raise host_not_trusted()

    @property
    def stripe_base_url(self) -> str:
        """The local Stripe's base (the SDK's ``api`` base address; pages below it)."""
        return f"{self.base_url}{STRIPE_PREFIX}"

    @property
    def metering_path(self) -> Path:
        return self.data_dir / "metering.sqlite3"

    def start(self) -> None:
        """Bind, configure the functions' environment, seed the demo accounts, serve."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        server = _Server((self.settings.host, self.settings.port), _Handler)
        server.runtime = self
        self._server = server
        self.port = server.server_address[1]
        try:
            self.auth = AuthStore(self.data_dir / "auth.sqlite3")
            self.outbox = Outbox(
                self.data_dir / "outbox.sqlite3", email_of=self._email_of, clock=utc_now
            )
            self.realtime = Hub(PROJECT_ID, self._realtime_user, self._realtime_session)
            self.store = PublishingStore(
                self._given_store or SQLiteStore(str(self.metering_path)),
                self.realtime,
                self.environ.get("APPWRITE_DATABASE_ID", "koffers_db"),
            )
            if self.settings.local_stripe:
                self.stripe = LocalStripe(
                    path=self.data_dir / "stripe.sqlite3",
                    plans=load_default_plans(),
                    base_url=self.stripe_base_url,
                    webhook_secret=self.settings.stripe_webhook_secret.value,
                    deliver=self._deliver_stripe_event,
                    clock=utc_now,
                )
            self.runner = FunctionRunner(
                self.specs,
                host=self.public_host,
                port=self.port,
                timeout=self.settings.sync_timeout_seconds,
                environ=self.function_environment(),
                store=self.store,
            )
            self.api = AppwriteSurface(
                auth=self.auth,
                runner=self.runner,
                specs=self.specs,
                executions=self.executions,
                clock=utc_now,
                outbox=self.outbox,
            )
            # A new runtime is a new container: every function starts cold with this environment.
            self.runner.cold_reset()
            self.demo_accounts = seed(
                self.auth,
                self.store,
                load_default_plans(),
                self.settings.demo_password.value,
                utc_now(),
            )
        except BaseException:
            self.stop()
            raise
        self._thread = threading.Thread(
            target=server.serve_forever,
            # How often the loop looks for a stop request: the default half second is what every
            # stop (Ctrl-C, a restart in the tests) would wait.
            kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS},
            name="http",
            daemon=True,
        )
        self._thread.start()

    def warm_up(self) -> None:
        """Cold-start every function in the background, so that the first request is warm."""

        def load_all() -> None:
            for spec in self.specs.values():
                started = time.monotonic()
                try:
                    self.runner.main_of(spec)
                except Exception:  # the execution that needs it will report the same failure
                    log.exception("cold start of %s failed", spec.id)
                    continue
                log.info("cold start of %s in %.1fs", spec.id, time.monotonic() - started)

        threading.Thread(target=load_all, name="warm-up", daemon=True).start()

    def start_cron(self) -> None:
        """Run the cron function now and then on its schedule (when it has one)."""
        schedule = self.cron_schedule
        if not self.settings.run_cron or schedule is None or self._scheduler is not None:
            return
        try:
            expression = CronExpression.parse(schedule)
        except ValueError as error:
            raise ConfigurationError(f"schedule of {CRON_FUNCTION}: {error}") from error
        self._scheduler = Scheduler(expression, self.run_cron)
        self._scheduler.start()

    def stop(self) -> None:
        hub: Hub | None = getattr(self, "realtime", None)
        if hub is not None:
            hub.close()
        if self._scheduler is not None:
            self._scheduler.stop()
        if self._thread is not None and self._server is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        if self._server is not None:
            self._server.server_close()
        # A start that failed half-way may not have got as far as these.
        runner: FunctionRunner | None = getattr(self, "runner", None)
        if runner is not None:
            runner.cold_reset()
        auth: AuthStore | None = getattr(self, "auth", None)
        if auth is not None:
            auth.close()
        if self.stripe is not None:
            self.stripe.close()

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C raises KeyboardInterrupt here)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)

    # -- the functions' environment ------------------------------------------------------------

    @property
    def cron_schedule(self) -> str | None:
        spec = self.specs.get(CRON_FUNCTION)
        if spec is None:
            return None
        return self.settings.cron_schedule or spec.schedule

    def function_environment(self) -> dict[str, str]:
        """What every function is configured with: the runtime's environment and Appwrite's
        variables (its store is passed beside it).

        The functions share this process, so per-function variables such as
        ``APPWRITE_FUNCTION_ID`` cannot differ between them and are not set.
        """
        settings = self.settings
        env: dict[str, str | None] = {
            **self.environ,
            "APPWRITE_FUNCTION_API_ENDPOINT": f"{self.base_url}/v1",
            "APPWRITE_FUNCTION_PROJECT_ID": PROJECT_ID,
            "APPWRITE_FUNCTION_DEPLOYMENT": "local",
            "APPWRITE_FUNCTION_RUNTIME_NAME": "Python",
            "APPWRITE_FUNCTION_RUNTIME_VERSION": "3.12",
            "APPWRITE_REGION": "local",
            "STRIPE_WEBHOOK_SECRET": settings.stripe_webhook_secret.value,
            "STRIPE_SECRET_KEY": settings.stripe_secret_key.value or None,
            # Checkout and the portal send the buyer back to the page.
            "BILLING_RETURN_URL": self.environ.get("BILLING_RETURN_URL") or f"{self.base_url}/",
        }
        if settings.local_stripe:
            env["STRIPE_SECRET_KEY"] = LOCAL_STRIPE_KEY
            env["STRIPE_API_BASE"] = self.stripe_base_url
        if settings.offline_model:
            env["ANTHROPIC_API_KEY"] = OFFLINE_MODEL_KEY
            env["ANTHROPIC_BASE_URL"] = f"{self.base_url}{OFFLINE_PREFIX}"
        else:
            env["ANTHROPIC_API_KEY"] = settings.anthropic_api_key.value
            env["ANTHROPIC_BASE_URL"] = settings.anthropic_base_url
        return {key: value for key, value in env.items() if value is not None}

    def _deliver_stripe_event(self, payload: bytes, signature: str) -> tuple[int, bytes]:
        """One event of the local Stripe to the webhook's function domain, in process, as
        Stripe's POST would arrive there."""
        request = Request(
            method="POST",
            path=f"/functions/{WEBHOOK_FUNCTION}/",
            query_string="",
            headers=[
                ("Content-Type", "application/json; charset=utf-8"),
                ("Stripe-Signature", signature),
                ("User-Agent", WEBHOOK_USER_AGENT),
            ],
            body=payload,
            client_ip="127.0.0.1",
        )
        try:
            reply = self.api.domain(request, WEBHOOK_FUNCTION, "/")
        except AppwriteError as error:
            return error.status, error.message.encode("utf-8")
        return reply.status, reply.body

    def _email_of(self, user_id: str) -> str | None:
        """Where the local Messaging delivers a user's email: their sign-up address."""
        user = self.auth.user(user_id)
        return user.email if user is not None else None

    # -- the cron ------------------------------------------------------------------------------

    def _realtime_user(
        self, headers: list[tuple[str, str]], jwt: str | None
    ) -> UserDocument | None:
        extra = [("x-appwrite-jwt", jwt)] if jwt else []
        request = Request("GET", REALTIME_PATH, "", [*headers, *extra], b"", "")
        try:
            session = self.api.caller(request)
        except AppwriteError:
            return None
        return None if session is None else self._realtime_document(session.user_id)

    def _realtime_session(self, secret: str) -> UserDocument | None:
        session = self.auth.session_by_secret(secret)
        return None if session is None else self._realtime_document(session.user_id)

    def _realtime_document(self, user_id: str) -> UserDocument | None:
        user = self.auth.user(user_id)
        return None if user is None else self.api.user_document(user)

    def run_cron(self) -> None:
        outcome = self.api.run_scheduled(CRON_FUNCTION)
        summary = outcome.body.decode("utf-8", "replace").strip() or "(empty body)"
        log.info("cron %s: %d %s", CRON_FUNCTION, outcome.status_code, summary[:2000])

    # -- routing -------------------------------------------------------------------------------

    def route(self, request: Request) -> Reply:
        path = request.path
        if path == "/v1" or path.startswith("/v1/"):
            return self._with_cors(request, self._appwrite(request))
        if self.stripe is not None and (
            path == STRIPE_PREFIX or path.startswith(STRIPE_PREFIX + "/")
        ):
            return self.stripe.handle(request, path[len(STRIPE_PREFIX) :])
        if path.startswith(OFFLINE_PREFIX + "/"):
            return self._offline(request, path[len(OFFLINE_PREFIX) :])
        if path == "/functions" or path.startswith("/functions/"):
            function_id, _, rest = path[len("/functions/") :].partition("/")
            return self.api.domain(request, unquote(function_id), "/" + rest)
        if request.method not in ("GET", "HEAD"):
            raise AppwriteError(405, "general_not_allowed", "Method not allowed.")
        if path == "/config.json":
            return self._config(request)
        if path == "/outbox":
            return self.outbox.page()
        return self._static(path)

    def _appwrite(self, request: Request) -> Reply:
        if request.method == "OPTIONS":
            return Reply(204)
        origin = request.header("origin")
        try:
            # As Appwrite refuses a client from an origin it has no platform for: a page
            # elsewhere cannot even send a simple (unpreflighted) request, a login included.
            if origin is not None and not self.hosts.allows_origin(origin):
                raise unknown_origin(origin)
            return self.api.handle(request)
        except AppwriteError as error:
            return error.reply()

    def _with_cors(self, request: Request, reply: Reply) -> Reply:
        origin = request.header("origin")
        if not origin or not self.hosts.allows_origin(origin):
            return reply
        reply.headers += [
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Access-Control-Expose-Headers", "X-Fallback-Cookies"),
            ("Vary", "Origin"),
        ]
        if request.method == "OPTIONS":
            requested = request.header("access-control-request-headers") or ""
            reply.headers += [
                ("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS"),
                ("Access-Control-Allow-Headers", requested),
                ("Access-Control-Max-Age", "86400"),
            ]
        return reply

    def _offline(self, request: Request, path: str) -> Reply:
        headers = [("request-id", f"req_offline_{time.monotonic_ns()}")]
        try:
            document = _model_call(request, path)
            if path.endswith("/count_tokens"):
                return json_reply(200, self.model.count_tokens(document), headers)
            if document.get("stream") is True:
                events = self.model.stream_message(document)
                kind = [("Content-Type", "text/event-stream; charset=utf-8")]
                return StreamedReply(
                    200, headers=[*kind, ("Cache-Control", "no-cache"), *headers], chunks=events
                )
            return json_reply(200, self.model.create_message(document), headers)
        except ModelApiError as error:
            return json_reply(error.status, error.body, headers)

    def _config(self, request: Request) -> Reply:
        # The runtime's own address, never the request's Host: a page is pointed only here.
        return json_reply(
            200,
            {
                "endpoint": f"{self.base_url}/v1",
                "projectId": PROJECT_ID,
                "offlineModel": self.settings.offline_model,
                "functions": {"chat": "chat", "usage": "usage"},
            },
            [("Cache-Control", "no-store")],
        )

    def _static(self, path: str) -> Reply:
        relative = unquote(path).lstrip("/") or "index.html"
        target = (self.web_dir / relative).resolve()
        hidden = any(part.startswith(".") for part in Path(relative).parts)
        if target.is_dir():
            target = target / "index.html"
        if hidden or not target.is_relative_to(self.web_dir) or not target.is_file():
            return Reply(404, b"Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix in (".js", ".mjs"):
            kind = "text/javascript"
        if kind.startswith("text/") or kind == "application/json":
            kind += "; charset=utf-8"
        headers = [("Content-Type", kind), ("Cache-Control", "no-cache")]
        if target.suffix == ".html":
            headers.append(("Content-Security-Policy", PAGE_CSP))
        return Reply(200, target.read_bytes(), headers)


def _model_call(request: Request, path: str) -> dict[str, Any]:
    """The JSON body of a valid call to the offline model, or the API's error."""
    if request.method != "POST" or path not in ("/v1/messages", "/v1/messages/count_tokens"):
        raise ModelApiError(404, "not_found_error", f"{request.method} {path} not found")
    if not (request.header("x-api-key") or request.header("authorization")):
        raise ModelApiError(401, "authentication_error", "x-api-key header is required")
    try:
        document = json.loads(request.body)
    except (UnicodeDecodeError, ValueError):
        raise ModelApiError(400, "invalid_request_error", "the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise ModelApiError(400, "invalid_request_error", "the body must be a JSON object")
    return document


@dataclass
class StreamedReply(Reply):
    """A reply whose body is written chunk by chunk as ``chunks`` yields it (chunked encoding);
    when a write fails (the client left) ``chunks`` is closed, so nothing more is generated."""

    chunks: Generator[bytes, None, None] = field(kw_only=True)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many executions may be in flight at once, each calling back in; the default backlog is 5.
    request_queue_size = 256
    runtime: Runtime

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that closes or resets its keep-alive connection is not the server's failure:
        # socketserver would print a traceback for each one.
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("client %s left mid-request", client_address)
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    # Idle keep-alive connections give their thread back after this long.
    timeout = 120

    def log_message(self, format: str, *args: Any) -> None:
        # One line per request is written by _handle; the stdlib's own lines would double it.
        return

    def _handle(self) -> None:
        started = time.monotonic()
        parts = urlsplit(self.path)
        try:
            self.server.runtime.admit(list(self.headers.items()))
            if (
                self.command == "GET"
                and parts.path == REALTIME_PATH
                and "websocket" in self.headers.get("upgrade", "").lower()
            ):
                self._realtime()
                return
            reply = self._reply(parts.path, parts.query)
        except AppwriteError as error:
            if error.type == "router_host_not_found":
                # Refused before its body was read: the connection cannot carry another request.
                self.close_connection = True
            reply = error.reply()
        except Exception:
            log.exception("request failed: %s %s", self.command, parts.path)
            reply = AppwriteError(500, "general_unknown", "Server Error").reply()
        self._send(reply)
        elapsed = (time.monotonic() - started) * 1000
        log.info("%s %s %d %.0fms", self.command, parts.path, reply.status, elapsed)

    # The stdlib dispatches on `do_<METHOD>` (its names): every method takes the one path through
    # the router, which answers those it does not serve.
    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle  # noqa: N815

    def _realtime(self) -> None:
        origin = self.headers.get("origin")
        # Browsers send cookies with a WebSocket upgrade from any page and CORS does not apply:
        # the origin is checked here, or another site could read the user's Realtime channels.
        if origin is not None and not self.server.runtime.hosts.allows_origin(origin):
            raise unknown_origin(origin)
        # The connection leaves HTTP for good: wsproto reads the upgrade request again as sent.
        self.close_connection = True
        lines = [self.requestline, *(f"{key}: {value}" for key, value in self.headers.items())]
        handshake = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        headers = list(self.headers.items())
        self.server.runtime.realtime.serve(self.connection, handshake, headers)
        log.info("GET %s websocket closed", REALTIME_PATH)

    def _reply(self, path: str, query: str) -> Reply:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            self.close_connection = True
            raise AppwriteError(411, "general_argument_invalid", "Send a Content-Length.")
        try:
            length = int(self.headers.get("content-length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_REQUEST_BODY:
            self.close_connection = True
            raise AppwriteError(413, "general_argument_invalid", "Request body too large.")
        body = self.rfile.read(length) if length else b""
        request = Request(
            method=self.command,
            path=path,
            query_string=query,
            headers=list(self.headers.items()),
            body=body,
            client_ip=self.client_address[0],
        )
        return self.server.runtime.route(request)

    def _send(self, reply: Reply) -> None:
        if isinstance(reply, StreamedReply):
            self._send_streamed(reply)
            return
        self.send_response(reply.status)
        for key, value in reply.headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD" and reply.body:
            self.wfile.write(reply.body)

    def _send_streamed(self, reply: StreamedReply) -> None:
        try:
            self.send_response(reply.status)
            for key, value in reply.headers:
                self.send_header(key, value)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in reply.chunks:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            # The client closed the stream (a Stop, a deadline): the connection is done.
            self.close_connection = True
        finally:
            reply.chunks.close()
