"""The local runtime against a page that is not its own: DNS rebinding (a forged Host), foreign
origins (CORS, WebSockets), the session secret kept out of localStorage for its own page, and
headers only the platform may set."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator

import pytest
import requests
from metering.errors import ConfigurationError
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request

from localruntime.server import Runtime
from localruntime.settings import RuntimeSettings
from tests.support.runtime import AppwriteHttp, probe_functions, project_functions, running

APPWRITE_ERROR_KEYS = {"message", "code", "type", "version"}
CONFIGURED_ORIGIN = "https://chat.example.test"
CONFIGURED_HOST = "chat-alias.test"
TIMEOUT = 30


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    root = tmp_path_factory.mktemp("security")
    functions = {**project_functions(), **probe_functions(root / "functions")}
    env = {"CORS_ALLOWED_ORIGINS": CONFIGURED_ORIGIN, "ALLOWED_HOSTS": CONFIGURED_HOST}
    with running(root / "data", functions=functions, env=env, warm=True) as started:
        yield started


def own_origin(runtime: Runtime) -> str:
    return f"http://127.0.0.1:{runtime.port}"


def logged_in(runtime: Runtime) -> tuple[AppwriteHttp, str]:
    client = AppwriteHttp(runtime.base_url)
    return client, client.sign_up_and_log_in(f"sec-{uuid.uuid4().hex[:10]}@example.test")


def assert_appwrite_error(response: requests.Response, status: int, error_type: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == APPWRITE_ERROR_KEYS
    assert (body["code"], body["type"]) == (status, error_type)


# -- Host: DNS rebinding -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/config.json", "/v1/account", "/functions/probe-any/", "/outbox"]
)
@pytest.mark.parametrize(
    "host", ["attacker.example:{port}", "attacker.example", "127.0.0.1.attacker.example:{port}"]
)
def test_a_rebound_host_name_is_refused_with_a_json_404(
    runtime: Runtime, path: str, host: str
) -> None:
    """A page on another name that DNS points at 127.0.0.1 reaches the socket but gets nothing:
    every route answers Appwrite's router_host_not_found."""
    forged = host.format(port=runtime.port)
    response = requests.get(runtime.base_url + path, headers={"Host": forged}, timeout=TIMEOUT)
    assert_appwrite_error(response, 404, "router_host_not_found")
    assert "ALLOWED_HOSTS" in response.json()["message"]


def test_a_rebound_page_cannot_log_in_as_a_demo_account(runtime: Runtime) -> None:
    """The printed demo password is no use to a rebound page: the login is refused and no
    session cookie is set."""
    account = runtime.demo_accounts[0]
    response = requests.post(
        runtime.base_url + "/v1/account/sessions/email",
        json={"email": account.email, "password": runtime.settings.demo_password.value},
        headers={"Host": f"attacker.example:{runtime.port}", "X-Appwrite-Project": "local"},
        timeout=TIMEOUT,
    )
    assert_appwrite_error(response, 404, "router_host_not_found")
    assert "set-cookie" not in response.headers
    assert "x-fallback-cookies" not in response.headers


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "LOCALHOST:{port}", "127.0.0.1"],
)
def test_the_runtimes_own_host_names_are_served(runtime: Runtime, host: str) -> None:
    response = requests.get(
        runtime.base_url + "/v1/ping",
        headers={"Host": host.format(port=runtime.port)},
        timeout=TIMEOUT,
    )
    assert (response.status_code, response.text) == (200, "Pong!")


@pytest.mark.parametrize("host", [CONFIGURED_HOST, f"{CONFIGURED_HOST}:{{port}}"])
def test_a_configured_host_name_is_served(runtime: Runtime, host: str) -> None:
    response = requests.get(
        runtime.base_url + "/v1/ping",
        headers={"Host": host.format(port=runtime.port)},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200


def test_a_loopback_name_on_another_port_is_refused(runtime: Runtime) -> None:
    other = runtime.port + 1 if runtime.port < 65535 else runtime.port - 1
    response = requests.get(
        runtime.base_url + "/v1/ping", headers={"Host": f"localhost:{other}"}, timeout=TIMEOUT
    )
    assert_appwrite_error(response, 404, "router_host_not_found")


@pytest.mark.parametrize("entry", ["http://chat.test", "chat.test/path", "a b", "chat.test:x"])
def test_an_allowed_host_that_is_not_a_host_name_is_a_configuration_error(entry: str) -> None:
    with pytest.raises(ConfigurationError, match="ALLOWED_HOSTS"):
        RuntimeSettings.read({"ALLOWED_HOSTS": f"localhost,{entry}"})


def raw_request(runtime: Runtime, head: str) -> bytes:
    with socket.create_connection(("127.0.0.1", runtime.port), timeout=TIMEOUT) as sock:
        sock.sendall(head.encode("latin-1"))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "hosts",
    [[], ["127.0.0.1:{port}", "attacker.example:{port}"]],
    ids=["no-host", "two-hosts"],
)
def test_a_request_without_exactly_one_host_is_refused(runtime: Runtime, hosts: list[str]) -> None:
    lines = "".join(f"Host: {host.format(port=runtime.port)}\r\n" for host in hosts)
    answer = raw_request(runtime, f"GET /config.json HTTP/1.1\r\n{lines}Connection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 ")
    assert json.loads(body)["type"] == "router_host_not_found"


def test_a_rebound_websocket_is_refused(runtime: Runtime) -> None:
    """Realtime checks the Host too, before the upgrade."""
    rejected = websocket_handshake(runtime, host=f"attacker.example:{runtime.port}", origin=None)
    assert rejected == 404


def websocket_handshake(runtime: Runtime, *, host: str, origin: str | None) -> int:
    """The status the runtime answers a WebSocket upgrade with (101 when accepted)."""
    ws = WSConnection(ConnectionType.CLIENT)
    extra = [(b"origin", origin.encode())] if origin else []
    with socket.create_connection(("127.0.0.1", runtime.port), timeout=TIMEOUT) as sock:
        sock.sendall(ws.send(Request(host, "/v1/realtime?project=local", extra_headers=extra)))
        while True:
            data = sock.recv(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    return 101
                if isinstance(event, RejectConnection):
                    return event.status_code
            assert data, "the runtime closed the connection without an answer"


def test_a_foreign_origin_cannot_open_realtime(runtime: Runtime) -> None:
    """A page elsewhere cannot ride the browser's cookie into the user's Realtime channels."""
    host = f"127.0.0.1:{runtime.port}"
    assert websocket_handshake(runtime, host=host, origin="https://evil.example") == 403
    assert websocket_handshake(runtime, host=host, origin=own_origin(runtime)) == 101


# -- config.json -------------------------------------------------------------------------------


def test_config_json_never_echoes_the_host_header(runtime: Runtime) -> None:
    """Even an allowed alias gets the runtime's own endpoint, not what the request named."""
    config = requests.get(
        runtime.base_url + "/config.json",
        headers={"Host": f"{CONFIGURED_HOST}:{runtime.port}"},
        timeout=TIMEOUT,
    ).json()
    assert config["endpoint"] == runtime.base_url + "/v1"


# -- CORS --------------------------------------------------------------------------------------


def preflight(runtime: Runtime, origin: str) -> requests.Response:
    return requests.options(
        runtime.base_url + "/v1/account/sessions/email",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-appwrite-project, content-type",
        },
        timeout=TIMEOUT,
    )


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:5173",
        "http://127.0.0.1:1",
        "http://[::1]:3000",
        "https://evil.example",
        "null",
    ],
)
def test_no_cors_for_other_origins_even_on_loopback(runtime: Runtime, origin: str) -> None:
    """Another app on a loopback port is another origin: it gets no CORS and its API calls are
    refused as Appwrite refuses an unknown origin."""
    answer = preflight(runtime, origin)
    assert "Access-Control-Allow-Origin" not in answer.headers
    assert "Access-Control-Allow-Credentials" not in answer.headers
    call = requests.get(
        runtime.base_url + "/v1/account", headers={"Origin": origin}, timeout=TIMEOUT
    )
    assert_appwrite_error(call, 403, "general_unknown_origin")
    assert "Access-Control-Allow-Origin" not in call.headers


def test_a_login_from_another_loopback_origin_is_refused(runtime: Runtime) -> None:
    """A simple (no-preflight) POST from another origin does not log in: no cookie, no secret."""
    account = runtime.demo_accounts[0]
    response = requests.post(
        runtime.base_url + "/v1/account/sessions/email",
        data=json.dumps({"email": account.email, "password": runtime.settings.demo_password.value}),
        headers={"Origin": "http://localhost:5173", "Content-Type": "text/plain"},
        timeout=TIMEOUT,
    )
    assert_appwrite_error(response, 403, "general_unknown_origin")
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize(
    "origin",
    [CONFIGURED_ORIGIN, "http://localhost:{port}", f"http://{CONFIGURED_HOST}:{{port}}"],
    ids=["configured", "own-alias", "configured-host"],
)
def test_cors_with_credentials_for_configured_and_own_origins(
    runtime: Runtime, origin: str
) -> None:
    origin = origin.format(port=runtime.port)
    answer = preflight(runtime, origin)
    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == origin
    assert answer.headers["Access-Control-Allow-Credentials"] == "true"
    assert "x-appwrite-project" in answer.headers["Access-Control-Allow-Headers"]


# -- the session secret and X-Fallback-Cookies -------------------------------------------------


def log_in_from(runtime: Runtime, headers: dict[str, str]) -> requests.Response:
    client = AppwriteHttp(runtime.base_url)
    address = f"sec-{uuid.uuid4().hex[:10]}@example.test"
    client.sign_up(address)
    response = client.call(
        "POST",
        "/account/sessions/email",
        {"email": address, "password": "correct horse battery"},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    assert "a_session_local" in client.http.cookies
    return response


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://127.0.0.1:{port}"},
        {"Referer": "http://127.0.0.1:{port}/"},
        {"Origin": "http://localhost:{port}", "Host": "localhost:{port}"},
    ],
    ids=["origin", "referer", "localhost-page-and-api"],
)
def test_the_runtimes_own_page_gets_no_fallback_cookie(
    runtime: Runtime, headers: dict[str, str]
) -> None:
    """Same site as the API, the page keeps the session in its HttpOnly cookie only: the secret
    never reaches JavaScript (the Web SDK would store it in localStorage)."""
    sent = {key: value.format(port=runtime.port) for key, value in headers.items()}
    assert "X-Fallback-Cookies" not in log_in_from(runtime, sent).headers


@pytest.mark.parametrize(
    "headers",
    [{}, {"Origin": CONFIGURED_ORIGIN}, {"Origin": "http://localhost:{port}"}],
    ids=["no-origin", "configured-origin", "localhost-page-127-api"],
)
def test_a_page_on_another_site_gets_the_fallback_cookie(
    runtime: Runtime, headers: dict[str, str]
) -> None:
    """As on Appwrite: where the cookie cannot be sent (another site, or no browser at all) the
    SDK is given the fallback."""
    sent = {key: value.format(port=runtime.port) for key, value in headers.items()}
    fallback = json.loads(log_in_from(runtime, sent).headers["X-Fallback-Cookies"])
    assert set(fallback) == {"a_session_local"}


def test_logging_out_from_the_own_page_sends_no_fallback_header(runtime: Runtime) -> None:
    client, _ = logged_in(runtime)
    own = client.call(
        "DELETE", "/account/sessions/current", headers={"Origin": own_origin(runtime)}
    )
    assert own.status_code == 204
    assert "X-Fallback-Cookies" not in own.headers


# -- headers only the platform sets ------------------------------------------------------------

FORGED = {
    "X-Appwrite-Trigger": "schedule",
    "X-Appwrite-User-Id": "victim",
    "X-APPWRITE-USER-JWT": "eyJforged.forged.forged",
    "X-Appwrite-Key": "forged-key",
    "X-Appwrite-Execution-Id": "forged-execution",
    "X-Appwrite-Event": "users.victim.update",
    "X-Appwrite-Client-IP": "203.0.113.9",
    "x-Appwrite-Country-Code": "XX",
    "X-Appwrite-Continent-EU": "true",
}


def test_a_caller_cannot_set_any_platform_header(runtime: Runtime) -> None:
    """Whatever the caller of createExecution sends in the x-appwrite- space, in any case, the
    function sees the platform's values alone."""
    client, user_id = logged_in(runtime)
    execution = client.execution_with_headers("probe-users", {**FORGED, "x-custom": "kept"})
    headers = execution.body["headers"]
    assert headers["x-appwrite-trigger"] == "http"
    assert headers["x-appwrite-user-id"] == user_id
    assert headers["x-appwrite-execution-id"] == execution["$id"]
    assert headers["x-appwrite-key"].startswith("dynamic_")
    assert headers["x-appwrite-client-ip"] == "127.0.0.1"
    assert (headers["x-appwrite-country-code"], headers["x-appwrite-continent-eu"]) == (
        "",
        "false",
    )
    assert "x-appwrite-event" not in headers
    assert execution.body["verifiedUserId"] == user_id
    assert headers["x-custom"] == "kept"
    names = {entry["name"].lower() for entry in execution["requestHeaders"]}
    assert not {name for name in names if name.startswith("x-appwrite-")}


def test_a_forged_user_header_does_not_reach_usage(runtime: Runtime) -> None:
    """usage answers its verified caller: the forged hint never arrives to be judged."""
    client, user_id = logged_in(runtime)
    forged = {"X-Appwrite-User-Id": "local-business", "content-type": "application/json"}
    response = client.execute("usage", "", method="GET", headers=forged)
    execution = response.json()
    assert execution["responseStatusCode"] == 200, execution["responseBody"]
    assert json.loads(execution["responseBody"])["userId"] == user_id


def test_a_domain_request_cannot_set_platform_headers(runtime: Runtime) -> None:
    response = requests.post(
        runtime.base_url + "/functions/probe-any/",
        data=b"{}",
        headers=FORGED,
        timeout=TIMEOUT,
    )
    headers = response.json()["headers"]
    assert (headers["x-appwrite-user-id"], headers["x-appwrite-user-jwt"]) == ("", "")
    assert headers["x-appwrite-trigger"] == "http"
    assert headers["x-appwrite-key"].startswith("dynamic_")
