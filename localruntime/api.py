"""The Appwrite-compatible surface: account, sessions, JWTs, executions, function domains and
Messaging (the local outbox).

Shapes, status codes and error types follow Appwrite 1.8 so that the unchanged Web SDK (and the
Python SDK inside the functions) talk to it as to a real project.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

from .auth import JWT_DEFAULT_SECONDS, JWT_MAX_SECONDS, AuthStore, Session, User, unique_id
from .functions import (
    ExecutionLog,
    ExecutionRecord,
    FunctionRunner,
    FunctionSpec,
    Invocation,
    Outcome,
    appwrite_headers,
    console_lines,
)
from .messaging import Outbox
from .settings import PROJECT_ID
from .wire import AppwriteError, Headers, Reply, Request, invalid_param, json_reply, timestamp

log = logging.getLogger("localruntime")

SESSION_COOKIE = f"a_session_{PROJECT_ID}"
MAX_EXECUTION_BODY = 10 * 1024 * 1024
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# Hop-by-hop headers belong to one connection, not to the request a function sees.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "content-length"}

Route = tuple[str, re.Pattern[str], Callable[..., Reply]]


def _not_allowed_to_execute() -> AppwriteError:
    return AppwriteError(
        401,
        "user_unauthorized",
        "The current user is not authorized to perform the requested action.",
    )


def _unauthorized_scope() -> AppwriteError:
    return AppwriteError(
        401, "general_unauthorized_scope", 'User (role: guests) missing scopes (["account"])'
    )


class AppwriteSurface:
    def __init__(
        self,
        *,
        auth: AuthStore,
        runner: FunctionRunner,
        specs: Mapping[str, FunctionSpec],
        executions: ExecutionLog,
        clock: Callable[[], datetime],
        outbox: Outbox | None = None,
    ) -> None:
        self.auth = auth
        self.runner = runner
        self.specs = specs
        self.executions = executions
        self.clock = clock
        self.routes: list[Route] = [
            ("GET", re.compile(r"/v1/ping"), self.ping),
            ("POST", re.compile(r"/v1/account"), self.create_account),
            ("GET", re.compile(r"/v1/account"), self.get_account),
            ("POST", re.compile(r"/v1/account/sessions/email"), self.create_session),
            ("GET", re.compile(r"/v1/account/sessions/(?P<session_id>[^/]+)"), self.get_session),
            ("DELETE", re.compile(r"/v1/account/sessions"), self.delete_sessions),
            (
                "DELETE",
                re.compile(r"/v1/account/sessions/(?P<session_id>[^/]+)"),
                self.delete_session,
            ),
            ("POST", re.compile(r"/v1/account/jwts?"), self.create_jwt),
            (
                "POST",
                re.compile(r"/v1/functions/(?P<function_id>[^/]+)/executions"),
                self.create_execution,
            ),
            (
                "GET",
                re.compile(r"/v1/functions/(?P<function_id>[^/]+)/executions"),
                self.list_executions,
            ),
            (
                "GET",
                re.compile(
                    r"/v1/functions/(?P<function_id>[^/]+)/executions/(?P<execution_id>[^/]+)"
                ),
                self.get_execution,
            ),
        ]
        if outbox is not None:
            # Messaging: the emails the functions send, kept in the local outbox.
            self.routes += outbox.routes()

    # -- dispatch ------------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        project = request.header("x-appwrite-project")
        if project and project != PROJECT_ID:
            raise AppwriteError(
                404,
                "project_not_found",
                "Project with the requested ID could not be found. Please check the value of the "
                "X-Appwrite-Project header to ensure the correct project ID is being used.",
            )
        path = request.path.rstrip("/")
        for method, pattern, handler in self.routes:
            match = pattern.fullmatch(path)
            if match and method == request.method:
                return handler(request, **match.groupdict())
        raise AppwriteError(
            404,
            "general_route_not_found",
            "The requested route was not found. Please refer to the API docs and try again.",
        )

    def caller(self, request: Request) -> Session | None:
        """The session behind a request: a JWT header, the session cookie or its fallback."""
        jwt = request.header("x-appwrite-jwt")
        if jwt:
            return self.auth.verify_jwt(jwt)
        for secret in (request.cookie(SESSION_COOKIE), _fallback_secret(request)):
            if secret:
                session = self.auth.session_by_secret(secret)
                if session is not None:
                    return session
        return None

    def _user_session(self, request: Request) -> tuple[Session, User]:
        session = self.caller(request)
        user = self.auth.user(session.user_id) if session else None
        if session is None or user is None:
            raise _unauthorized_scope()
        return session, user

    # -- account -------------------------------------------------------------------------------

    def ping(self, request: Request) -> Reply:
        return Reply(200, b"Pong!", [("Content-Type", "text/plain; charset=utf-8")])

    def create_account(self, request: Request) -> Reply:
        params = request.json()
        user = self.auth.create_user(
            _string(params, "userId"),
            _string(params, "email"),
            _string(params, "password"),
            _string(params, "name", ""),
        )
        log.info("account created: %s", user.id)
        return json_reply(201, self.user_document(user))

    def get_account(self, request: Request) -> Reply:
        _, user = self._user_session(request)
        return json_reply(200, self.user_document(user))

    def create_session(self, request: Request) -> Reply:
        if self.caller(request) is not None:
            raise AppwriteError(
                401,
                "user_session_already_exists",
                "Creation of a session is prohibited when a session is active.",
            )
        params = request.json()
        session, secret = self.auth.create_session(
            _string(params, "email"), _string(params, "password"), request.client_ip
        )
        cookie = (
            f"{SESSION_COOKIE}={secret}; Expires={format_datetime(session.expires_at, usegmt=True)}"
            "; Path=/; HttpOnly; SameSite=Lax"
        )
        headers: Headers = [("Set-Cookie", cookie)]
        if not same_site(request):
            headers.append(("X-Fallback-Cookies", json.dumps({SESSION_COOKIE: secret})))
        return json_reply(201, self._session_document(session, current=True), headers)

    def get_session(self, request: Request, session_id: str) -> Reply:
        current, _ = self._user_session(request)
        session = self._own_session(current, session_id)
        return json_reply(200, self._session_document(session, current=session.id == current.id))

    def delete_session(self, request: Request, session_id: str) -> Reply:
        current, _ = self._user_session(request)
        session = self._own_session(current, session_id)
        self.auth.delete_session(session.id)
        return self._logged_out(request, clear_cookie=session.id == current.id)

    def delete_sessions(self, request: Request) -> Reply:
        current, _ = self._user_session(request)
        self.auth.delete_sessions(current.user_id)
        return self._logged_out(request, clear_cookie=True)

    def create_jwt(self, request: Request) -> Reply:
        session, _ = self._user_session(request)
        duration = request.json().get("duration", JWT_DEFAULT_SECONDS)
        if (
            isinstance(duration, bool)
            or not isinstance(duration, int)
            or not 0 <= duration <= JWT_MAX_SECONDS
        ):
            raise invalid_param(
                "duration", f"Value must be a valid range between 0 and {JWT_MAX_SECONDS:,}"
            )
        return json_reply(
            201, {"jwt": self.auth.mint_jwt(session, duration or JWT_DEFAULT_SECONDS)}
        )

    def _own_session(self, current: Session, session_id: str) -> Session:
        session = current if session_id == "current" else self.auth.session(session_id)
        if session is None or session.user_id != current.user_id:
            raise AppwriteError(
                404, "user_session_not_found", "The current user session could not be found."
            )
        return session

    def _logged_out(self, request: Request, *, clear_cookie: bool) -> Reply:
        headers: Headers = [] if same_site(request) else [("X-Fallback-Cookies", "[]")]
        if clear_cookie:
            expired = "Thu, 01 Jan 1970 00:00:00 GMT"
            headers.append(
                (
                    "Set-Cookie",
                    f"{SESSION_COOKIE}=; Expires={expired}; Path=/; HttpOnly; SameSite=Lax",
                )
            )
        return Reply(204, b"", headers)

    def user_document(self, user: User) -> dict[str, Any]:
        return {
            "$id": user.id,
            "$createdAt": timestamp(user.created_at),
            "$updatedAt": timestamp(user.password_updated_at),
            "name": user.name,
            "registration": timestamp(user.created_at),
            "status": True,
            "labels": [],
            "passwordUpdate": timestamp(user.password_updated_at),
            "email": user.email,
            "phone": "",
            "emailVerification": False,
            "phoneVerification": False,
            "mfa": False,
            "prefs": {},
            "targets": [],
            "accessedAt": timestamp(self.clock()),
        }

    def _session_document(self, session: Session, *, current: bool) -> dict[str, Any]:
        user = self.auth.user(session.user_id)
        blank = ("providerAccessToken", "providerAccessTokenExpiry", "providerRefreshToken")
        device = (
            "osCode", "osName", "osVersion", "clientType", "clientCode", "clientName",
            "clientVersion", "clientEngine", "clientEngineVersion", "deviceName", "deviceBrand",
            "deviceModel", "countryCode", "countryName",
        )  # fmt: skip
        return {
            "$id": session.id,
            "$createdAt": timestamp(session.created_at),
            "$updatedAt": timestamp(session.created_at),
            "userId": session.user_id,
            "expire": timestamp(session.expires_at),
            "provider": "email",
            "providerUid": user.email if user else "",
            **dict.fromkeys(blank, ""),
            "ip": session.ip,
            **dict.fromkeys(device, ""),
            "current": current,
            "factors": ["password"],
            # Appwrite shows the secret only to server keys; the cookie carries it.
            "secret": "",
            "mfaUpdatedAt": "",
        }

    # -- executions ----------------------------------------------------------------------------

    def _spec(self, function_id: str) -> FunctionSpec:
        spec = self.specs.get(function_id)
        if spec is None:
            raise AppwriteError(
                404, "function_not_found", "Function with the requested ID could not be found."
            )
        return spec

    def create_execution(self, request: Request, function_id: str) -> Reply:
        spec = self._spec(function_id)
        session = self.caller(request)
        user_id = session.user_id if session else None
        if not spec.allows(user_id):
            raise _not_allowed_to_execute()
        params = request.json()
        body, is_async, method, path, client_headers = _execution_params(params)
        execution_id = unique_id()
        injected = self._injected_headers(
            function_id, execution_id, "http", request.client_ip, session
        )
        # The caller's headers hold nothing in the x-appwrite- space (_execution_params drops it
        # in any spelling): each header the platform injects has the platform's value alone.
        invocation = Invocation(
            execution_id,
            function_id,
            "http",
            method,
            path,
            client_headers + injected,
            body.encode("utf-8"),
            user_id,
        )
        record = self._record(invocation, client_headers)
        if is_async:
            threading.Thread(target=self.run, args=(record,), daemon=True).start()
            return json_reply(202, record.document())
        self.run(record)
        return json_reply(201, record.document())

    def get_execution(self, request: Request, function_id: str, execution_id: str) -> Reply:
        session = self.caller(request)
        record = self.executions.get(execution_id)
        if (
            record is None
            or session is None
            or record.invocation.function_id != function_id
            or record.invocation.user_id != session.user_id
        ):
            raise AppwriteError(
                404, "execution_not_found", "Execution with the requested ID could not be found."
            )
        return json_reply(200, record.document())

    def list_executions(self, request: Request, function_id: str) -> Reply:
        self._spec(function_id)
        session = self.caller(request)
        records = self.executions.of_user(function_id, session.user_id) if session else []
        documents = [record.document() for record in reversed(records)]
        return json_reply(200, {"total": len(documents), "executions": documents})

    def domain(self, request: Request, function_id: str, subpath: str) -> Reply:
        """A request to the function's own domain: raw in, raw out, no user identity."""
        spec = self._spec(function_id)
        if "any" not in spec.execute:
            raise _not_allowed_to_execute()
        execution_id = unique_id()
        forwarded = [
            (key, value)
            for key, value in request.headers
            if not key.lower().startswith("x-appwrite-") and key.lower() not in _HOP_BY_HOP
        ]
        injected = self._injected_headers(function_id, execution_id, "http", request.client_ip)
        path = (subpath or "/") + (f"?{request.query_string}" if request.query_string else "")
        invocation = Invocation(
            execution_id,
            function_id,
            "http",
            request.method,
            path,
            forwarded + injected,
            request.body,
        )
        outcome = self.run(self._record(invocation, forwarded))
        if outcome.timed_out:
            return Reply(408, b"Request Timeout", [("Content-Type", "text/plain")])
        if outcome.status_code >= 500 and not outcome.body:
            # Appwrite answers an empty error body with an HTML error page.
            page = b"<!doctype html><title>Error</title><h1>Internal Server Error</h1>"
            return Reply(outcome.status_code, page, [("Content-Type", "text/html")])
        headers = [(k, v) for k, v in outcome.headers.items() if k not in _HOP_BY_HOP]
        return Reply(outcome.status_code, outcome.body, headers)

    def run_scheduled(self, function_id: str) -> Outcome:
        """One execution as Appwrite's scheduler makes it."""
        execution_id = unique_id()
        injected = self._injected_headers(function_id, execution_id, "schedule", "")
        invocation = Invocation(execution_id, function_id, "schedule", "POST", "/", injected, b"")
        return self.run(self._record(invocation, []))

    def _injected_headers(
        self,
        function_id: str,
        execution_id: str,
        trigger: str,
        client_ip: str,
        session: Session | None = None,
    ) -> Headers:
        """What Appwrite adds to an execution; without a session (a request to the function's
        domain, the scheduler) the user id and the JWT are empty."""
        return appwrite_headers(
            trigger=trigger,
            user_id=session.user_id if session else "",
            jwt=self.auth.mint_jwt(session) if session else "",
            key=self.auth.dynamic_key(function_id, execution_id),
            execution_id=execution_id,
            client_ip=client_ip,
        )

    def _record(self, invocation: Invocation, client_headers: Headers) -> ExecutionRecord:
        now = self.clock()
        user_id = invocation.user_id
        permissions = [f'read("user:{user_id}")'] if user_id else []
        record = ExecutionRecord(invocation, client_headers, now, now, permissions=permissions)
        self.executions.add(record)
        return record

    def run(self, record: ExecutionRecord) -> Outcome:
        record.status = "processing"
        outcome = self.runner.run(record.invocation)
        record.outcome = outcome
        record.status = "failed" if outcome.timed_out or outcome.status_code >= 500 else "completed"
        record.updated_at = self.clock()
        invocation = record.invocation
        log.info(
            "execution %s %s %s %s -> %d %s in %.2fs",
            invocation.function_id,
            invocation.trigger,
            invocation.method,
            invocation.path,
            outcome.status_code,
            record.status,
            outcome.duration,
        )
        for line in console_lines(invocation.function_id, outcome):
            log.info("%s", line)
        return outcome


def same_site(request: Request) -> bool:
    """Whether the page that sent ``request`` is on the API's own site, as Appwrite decides
    whether to send X-Fallback-Cookies (its ``domainVerification``): the host of the Origin (or
    the Referer) against the request's own host name. There the browser sends the HttpOnly
    session cookie, so the secret is not handed to the page's JavaScript (the Web SDK keeps a
    fallback in localStorage). Appwrite compares registrable domains; for the local runtime's
    IP addresses and single-label names the host name is the whole site, as browsers see it."""
    page = request.header("origin") or request.header("referer") or ""
    page_host = urlsplit(page).hostname
    own_host = urlsplit(f"//{request.header('host') or ''}").hostname
    return bool(page_host) and page_host == own_host


def _fallback_secret(request: Request) -> str | None:
    raw = request.header("x-fallback-cookies")
    if not raw:
        return None
    try:
        cookies = json.loads(raw)
    except ValueError:
        return None
    value = cookies.get(SESSION_COOKIE) if isinstance(cookies, dict) else None
    return value if isinstance(value, str) else None


def _string(params: Mapping[str, Any], name: str, default: str | None = None) -> str:
    value = params.get(name, default)
    if value is None:
        raise AppwriteError(400, "general_argument_invalid", f'Param "{name}" is not optional.')
    if not isinstance(value, str):
        raise invalid_param(name, "Value must be a valid string")
    return value


def _execution_params(params: Mapping[str, Any]) -> tuple[str, bool, str, str, Headers]:
    body = _string(params, "body", "")
    if len(body) > MAX_EXECUTION_BODY:
        raise invalid_param("body", f"Value must be no longer than {MAX_EXECUTION_BODY} chars")
    is_async = params.get("async", False)
    if not isinstance(is_async, bool):
        raise invalid_param("async", "Value must be a valid boolean")
    method = _string(params, "method", "POST").upper()
    if method not in METHODS:
        raise invalid_param("method", f"Value must be one of ({', '.join(METHODS)})")
    path = _string(params, "path", "/") or "/"
    path = path if path.startswith("/") else "/" + path
    if params.get("scheduledAt"):
        raise invalid_param("scheduledAt", "the local runtime runs executions immediately")
    headers = params.get("headers", {})
    if isinstance(headers, str):
        try:
            headers = json.loads(headers) if headers.strip() else {}
        except ValueError:
            headers = None
    if not isinstance(headers, dict) or not all(isinstance(k, str) for k in headers):
        raise invalid_param("headers", "Value must be a valid object")
    if not all(isinstance(v, str | int | float | bool) for v in headers.values()):
        raise invalid_param("headers", "Header values must be strings")
    # The x-appwrite- space is the platform's: a caller's header there, in any spelling, would
    # sit beside the injected one of the same name (Appwrite refuses only lower-case keys).
    client_headers = [
        (key, str(value))
        for key, value in headers.items()
        if not key.lower().startswith("x-appwrite-")
    ]
    return body, is_async, method, path, client_headers
