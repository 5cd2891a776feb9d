"""The local runtime over HTTP, as the Appwrite Web SDK and Stripe talk to it: accounts,
sessions and JWTs, executions of the real functions, function domains, the page."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from appwrite.models.execution import Execution as ExecutionModel
from appwrite.models.session import Session as SessionModel
from appwrite.models.user import User as UserModel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from metering.plans import load_default_plans
from metering.service import get_or_create_account

from localruntime.server import Runtime
from localruntime.sqlite_store import SQLiteStore
from tests.strategies import json_values
from tests.support.runtime import (
    PASSWORD,
    AppwriteHttp,
    Execution,
    probe_functions,
    project_functions,
    running,
)
from tests.support.waiting import wait_until
from tools import stripe_events

APPWRITE_ERROR_KEYS = {"message", "code", "type", "version"}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    root = tmp_path_factory.mktemp("localruntime")
    functions = {**project_functions(), **probe_functions(root / "functions")}
    with running(root / "data", functions=functions, warm=True) as started:
        yield started


@pytest.fixture
def client(runtime: Runtime) -> AppwriteHttp:
    return AppwriteHttp(runtime.base_url)


@pytest.fixture
def store(runtime: Runtime) -> SQLiteStore:
    return SQLiteStore(str(runtime.metering_path))


def email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.test"


def logged_in(runtime: Runtime) -> tuple[AppwriteHttp, str]:
    client = AppwriteHttp(runtime.base_url)
    return client, client.sign_up_and_log_in(email())


def assert_appwrite_error(response: requests.Response, status: int, error_type: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == APPWRITE_ERROR_KEYS
    assert (body["code"], body["type"]) == (status, error_type)


def set_plan(store: SQLiteStore, user_id: str, tokens: int) -> None:
    get_or_create_account(store, load_default_plans(), user_id, datetime.now(UTC))
    store.update_account(user_id, {"plan": "starter", "max_tokens_per_month": tokens})


# -- accounts, sessions, JWTs ------------------------------------------------------------------


def test_sign_up_answers_a_user_the_appwrite_sdk_parses(client: AppwriteHttp) -> None:
    address = email()
    user = client.sign_up(address, name="Ada")
    parsed = UserModel.model_validate(user)
    assert (parsed.email, parsed.name, len(parsed.id)) == (address, "Ada", 20)


def test_sign_up_with_a_taken_email_is_409_user_already_exists(client: AppwriteHttp) -> None:
    address = email()
    client.sign_up(address)
    again = client.call(
        "POST", "/account", {"userId": "unique()", "email": address, "password": PASSWORD}
    )
    assert_appwrite_error(again, 409, "user_already_exists")


@pytest.mark.parametrize(
    ("field", "value"),
    [("password", "short"), ("email", "not-an-email"), ("userId", "-bad id"), ("email", 7)],
    ids=["short-password", "bad-email", "bad-user-id", "email-not-a-string"],
)
def test_invalid_sign_up_is_400_and_creates_nothing(
    client: AppwriteHttp, field: str, value: Any
) -> None:
    address = email()
    params = {"userId": "unique()", "email": address, "password": PASSWORD, field: value}
    assert_appwrite_error(client.call("POST", "/account", params), 400, "general_argument_invalid")
    assert client.sign_up(address)["email"] == address


def test_log_in_sets_the_session_cookie_and_the_fallback_header(runtime: Runtime) -> None:
    client = AppwriteHttp(runtime.base_url)
    address = email()
    user = client.sign_up(address)
    response = client.log_in(address)
    assert response.status_code == 201
    session = SessionModel.model_validate(response.json())
    assert (session.userid, session.current, session.secret) == (user["$id"], True, "")
    fallback = json.loads(response.headers["X-Fallback-Cookies"])
    assert fallback == {"a_session_local": client.http.cookies["a_session_local"]}
    assert client.call("GET", "/account").json()["$id"] == user["$id"]


def test_the_fallback_cookie_header_alone_authenticates(runtime: Runtime) -> None:
    """What the Web SDK sends from localStorage when the browser keeps no cookie."""
    first = AppwriteHttp(runtime.base_url)
    address = email()
    user_id = first.sign_up(address)["$id"]
    fallback = first.log_in(address).headers["X-Fallback-Cookies"]
    cookieless = AppwriteHttp(runtime.base_url)
    response = cookieless.call("GET", "/account", headers={"X-Fallback-Cookies": fallback})
    assert response.json()["$id"] == user_id


def test_other_cookies_of_localhost_do_not_hide_the_session(runtime: Runtime) -> None:
    client, user_id = logged_in(runtime)
    secret = client.http.cookies["a_session_local"]
    header = f'prefs={{"a":[1,2]}}; broken="open; a_session_local={secret}; theme=dark'
    bare = AppwriteHttp(runtime.base_url)
    assert bare.call("GET", "/account", headers={"Cookie": header}).json()["$id"] == user_id


@pytest.mark.parametrize(
    "password", ["wrong password", ""], ids=["wrong-password", "empty-password"]
)
def test_bad_credentials_are_401_user_invalid_credentials(
    client: AppwriteHttp, password: str
) -> None:
    address = email()
    client.sign_up(address)
    assert_appwrite_error(client.log_in(address, password), 401, "user_invalid_credentials")
    assert "a_session_local" not in client.http.cookies


def test_unknown_email_is_401_user_invalid_credentials(client: AppwriteHttp) -> None:
    assert_appwrite_error(client.log_in(email()), 401, "user_invalid_credentials")


def test_account_without_a_session_is_401_for_guests(client: AppwriteHttp) -> None:
    assert_appwrite_error(client.call("GET", "/account"), 401, "general_unauthorized_scope")


def test_a_second_login_while_logged_in_is_refused(runtime: Runtime) -> None:
    client = AppwriteHttp(runtime.base_url)
    address = email()
    client.sign_up_and_log_in(address)
    assert_appwrite_error(client.log_in(address), 401, "user_session_already_exists")


def test_a_wrong_project_is_404_project_not_found(client: AppwriteHttp) -> None:
    response = client.call("GET", "/account", headers={"X-Appwrite-Project": "elsewhere"})
    assert_appwrite_error(response, 404, "project_not_found")


def test_a_jwt_authenticates_until_its_session_is_deleted(runtime: Runtime) -> None:
    client, user_id = logged_in(runtime)
    token = client.jwt()
    bearer = AppwriteHttp(runtime.base_url)
    assert bearer.call("GET", "/account", headers={"X-Appwrite-JWT": token}).json()["$id"] == (
        user_id
    )
    deleted = client.call("DELETE", "/account/sessions/current")
    assert deleted.status_code == 204
    assert deleted.headers["X-Fallback-Cookies"] == "[]"
    after = bearer.call("GET", "/account", headers={"X-Appwrite-JWT": token})
    assert_appwrite_error(after, 401, "user_jwt_invalid")
    assert_appwrite_error(client.call("GET", "/account"), 401, "general_unauthorized_scope")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
        lambda t: "x" + t,
        lambda _: "a.b",
    ],
    ids=["bad-signature", "bad-header", "garbage"],
)
def test_a_forged_jwt_is_401_user_jwt_invalid(runtime: Runtime, mangle: Any) -> None:
    client, _ = logged_in(runtime)
    forged = mangle(client.jwt())
    bearer = AppwriteHttp(runtime.base_url)
    response = bearer.call("GET", "/account", headers={"X-Appwrite-JWT": forged})
    assert_appwrite_error(response, 401, "user_jwt_invalid")


def test_the_legacy_jwt_path_and_a_duration_are_accepted(runtime: Runtime) -> None:
    client, user_id = logged_in(runtime)
    response = client.call("POST", "/account/jwt", {"duration": 60})
    assert response.status_code == 201
    token = response.json()["jwt"]
    bearer = AppwriteHttp(runtime.base_url)
    assert bearer.call("GET", "/account", headers={"X-Appwrite-JWT": token}).json()["$id"] == (
        user_id
    )
    too_long = client.call("POST", "/account/jwts", {"duration": 99999})
    assert_appwrite_error(too_long, 400, "general_argument_invalid")


# -- executions --------------------------------------------------------------------------------


def test_an_execution_gets_appwrites_headers_and_a_verifiable_jwt(runtime: Runtime) -> None:
    client, user_id = logged_in(runtime)
    response = client.execute(
        "probe-users", '{"a":1}', headers={"content-type": "application/json", "x-custom": "v"}
    )
    assert response.status_code == 201
    execution = Execution(response.json())
    parsed = ExecutionModel.model_validate(execution)
    assert (parsed.trigger.value, parsed.status.value) == ("http", "completed")
    assert (execution["functionId"], execution.status_code) == ("probe-users", 201)
    assert {"name": "x-probe", "value": "yes"} in execution["responseHeaders"]
    seen = execution.body
    headers = seen["headers"]
    assert headers["x-appwrite-trigger"] == "http"
    assert headers["x-appwrite-user-id"] == user_id
    assert headers["x-appwrite-execution-id"] == execution["$id"]
    assert headers["x-appwrite-key"].startswith("dynamic_")
    assert headers["x-custom"] == "v"
    # The function verified the injected JWT through the Account API (a call back in).
    assert seen["verifiedUserId"] == user_id
    assert (seen["method"], seen["body"]) == ("POST", '{"a":1}')


def test_functions_see_the_local_environment(runtime: Runtime) -> None:
    """Every function is configured with Appwrite's variables and the embedded store (wrapped so
    that its row changes reach Realtime subscribers)."""
    client, _ = logged_in(runtime)
    env = client.execution("probe-users").body["env"]
    assert env == {
        "store": "PublishingStore",
        "APPWRITE_FUNCTION_API_ENDPOINT": runtime.base_url + "/v1",
        "APPWRITE_FUNCTION_PROJECT_ID": "local",
        "ANTHROPIC_API_KEY": "offline-local-key",
        "ANTHROPIC_BASE_URL": runtime.base_url + "/_offline/anthropic",
        "STRIPE_WEBHOOK_SECRET": runtime.settings.stripe_webhook_secret.value,
    }


def test_lowercase_appwrite_headers_from_the_client_are_dropped(runtime: Runtime) -> None:
    client, user_id = logged_in(runtime)
    forged = {"x-appwrite-user-id": "victim", "x-appwrite-trigger": "schedule"}
    headers = client.execution_with_headers("probe-users", forged).body["headers"]
    assert (headers["x-appwrite-user-id"], headers["x-appwrite-trigger"]) == (user_id, "http")


def test_a_callers_user_header_in_any_spelling_gives_way_to_the_platforms(
    runtime: Runtime,
) -> None:
    """A caller's `X-Appwrite-User-Id` never reaches the function: it sees the verified user."""
    client, user_id = logged_in(runtime)
    seen = client.execution_with_headers("probe-users", {"X-Appwrite-User-Id": "victim"}).body
    assert seen["headers"]["x-appwrite-user-id"] == user_id
    assert seen["verifiedUserId"] == user_id


def test_a_guest_cannot_execute_a_users_function(client: AppwriteHttp) -> None:
    assert_appwrite_error(client.execute("probe-users"), 401, "user_unauthorized")
    assert_appwrite_error(client.execute("usage", method="GET"), 401, "user_unauthorized")


def test_nobody_executes_the_cron_over_http(runtime: Runtime) -> None:
    client, _ = logged_in(runtime)
    assert_appwrite_error(client.execute("monthly-reset-cron"), 401, "user_unauthorized")
    assert_appwrite_error(client.execute("probe-none"), 401, "user_unauthorized")


def test_an_unknown_function_is_404_function_not_found(runtime: Runtime) -> None:
    client, _ = logged_in(runtime)
    assert_appwrite_error(client.execute("nope"), 404, "function_not_found")


@pytest.mark.parametrize(
    "params",
    [{"method": "FETCH"}, {"async": "yes"}, {"headers": ["a"]}, {"body": {"a": 1}}],
    ids=["bad-method", "async-not-bool", "headers-not-object", "body-not-string"],
)
def test_invalid_execution_parameters_are_400(runtime: Runtime, params: dict[str, Any]) -> None:
    client, _ = logged_in(runtime)
    response = client.call("POST", "/functions/probe-users/executions", params)
    assert_appwrite_error(response, 400, "general_argument_invalid")


def test_a_crash_is_a_failed_execution_with_an_empty_500(runtime: Runtime) -> None:
    client, _ = logged_in(runtime)
    execution = Execution(client.execute("probe-users", path="/?crash=1").json())
    assert (execution["status"], execution.status_code, execution["responseBody"]) == (
        "failed",
        500,
        "",
    )


def test_path_and_query_reach_the_function(runtime: Runtime) -> None:
    client, _ = logged_in(runtime)
    execution = Execution(client.execute("probe-users", path="/a/b?x=1&y=%20", method="PUT").json())
    seen = execution.body
    assert (seen["method"], seen["path"], seen["query"]) == ("PUT", "/a/b", "x=1&y=%20")
    assert (execution["requestMethod"], execution["requestPath"]) == ("PUT", "/a/b?x=1&y=%20")


def test_an_execution_can_be_read_back_by_its_caller_only(runtime: Runtime) -> None:
    owner, _ = logged_in(runtime)
    execution = owner.execution("probe-users")
    path = f"/functions/probe-users/executions/{execution['$id']}"
    assert owner.call("GET", path).json()["$id"] == execution["$id"]
    stranger, _ = logged_in(runtime)
    assert_appwrite_error(stranger.call("GET", path), 404, "execution_not_found")


def test_an_async_execution_answers_202_and_completes_later(runtime: Runtime) -> None:
    client, _ = logged_in(runtime)
    response = client.call(
        "POST", "/functions/probe-users/executions", {"async": True, "path": "/?sleep=0.2"}
    )
    assert response.status_code == 202
    assert response.json()["status"] in ("waiting", "processing")
    path = f"/functions/probe-users/executions/{response.json()['$id']}"

    def finished() -> dict[str, Any] | None:
        document: dict[str, Any] = client.call("GET", path).json()
        return document if document["status"] in ("completed", "failed") else None

    document = wait_until(finished, timeout=30, what="the async execution")
    assert (document["status"], document["responseStatusCode"]) == ("completed", 201)


# -- function domains --------------------------------------------------------------------------


def test_a_domain_request_reaches_the_function_byte_for_byte(runtime: Runtime) -> None:
    raw = b"t=1,v1=abc\n\xff\x00 not utf-8"
    response = requests.post(
        runtime.base_url + "/functions/probe-any/",
        data=raw,
        headers={"content-type": "application/octet-stream"},
        timeout=30,
    )
    assert (response.status_code, response.headers["x-probe"]) == (201, "yes")
    assert bytes.fromhex(response.json()["bodyHex"]) == raw


def test_a_domain_request_passes_headers_path_and_body(runtime: Runtime) -> None:
    response = requests.post(
        runtime.base_url + "/functions/probe-any/hook/deep?x=1",
        json={"k": "v"},
        headers={"X-Appwrite-User-Id": "victim", "x-a": "b"},
        timeout=30,
    )
    seen = response.json()
    assert (seen["path"], seen["query"], json.loads(seen["body"])) == (
        "/hook/deep",
        "x=1",
        {"k": "v"},
    )
    headers = seen["headers"]
    assert (headers["x-appwrite-user-id"], headers["x-appwrite-user-jwt"]) == ("", "")
    assert (headers["x-a"], headers["x-appwrite-trigger"]) == ("b", "http")
    assert seen["verifiedUserId"] is None


def test_a_domain_of_a_function_without_any_is_401(runtime: Runtime) -> None:
    response = requests.get(runtime.base_url + "/functions/probe-users/", timeout=30)
    assert_appwrite_error(response, 401, "user_unauthorized")


def test_an_empty_500_on_a_domain_becomes_an_error_page(runtime: Runtime) -> None:
    response = requests.get(runtime.base_url + "/functions/probe-any/?crash=1", timeout=30)
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/html")


def test_the_webhook_domain_refuses_an_unsigned_event(runtime: Runtime) -> None:
    event = stripe_events.load_event("customer.subscription.deleted")
    response = requests.post(runtime.base_url + "/functions/stripe-webhook", json=event, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


def test_a_signed_sample_event_changes_the_users_plan(runtime: Runtime) -> None:
    client, user_id = logged_in(runtime)
    url = runtime.base_url + "/functions/stripe-webhook"
    secret = runtime.settings.stripe_webhook_secret.value
    for event in stripe_events.scenario_events("subscribe", user_id, "pro", 0, datetime.now(UTC)):
        assert stripe_events.post(url, event, secret) == (200, '{"received":true}')
    stats = client.execution("usage", method="GET").body
    assert (stats["plan"], stats["tokens"]["planTokens"]) == ("pro", 200_000)


# -- the real functions end to end -------------------------------------------------------------


def test_demo_accounts_log_in_with_their_plans(runtime: Runtime) -> None:
    plans = load_default_plans()
    for demo in runtime.demo_accounts:
        client = AppwriteHttp(runtime.base_url)
        assert client.log_in(demo.email, runtime.settings.demo_password.value).status_code == 201
        stats = client.execution("usage", method="GET").body
        assert (stats["userId"], stats["plan"]) == (demo.user_id, demo.plan)
        assert stats["tokens"]["limit"] == plans.get(demo.plan).tokens_per_month
    assert {d.email for d in runtime.demo_accounts} == {
        f"{plan}@local.test" for plan in ("demo", "starter", "pro", "business")
    }


def test_chat_answers_and_charges_exactly_what_it_reports(
    runtime: Runtime, store: SQLiteStore
) -> None:
    client, user_id = logged_in(runtime)
    set_plan(store, user_id, 50_000)
    body = {"messages": [{"role": "user", "content": "Hello there, what can you do?"}]}
    result = client.execution("chat", body).body
    message = result["message"]
    assert message["role"] == "assistant"
    assert "offline model" in message["content"]
    assert message["usage"]["steps"] == 1
    assert result["usage"]["tokens"]["used"] == message["usage"]["totalTokens"] > 0


def test_a_usage_question_runs_the_tool_loop_locally(runtime: Runtime, store: SQLiteStore) -> None:
    client, user_id = logged_in(runtime)
    set_plan(store, user_id, 50_000)
    body = {"messages": [{"role": "user", "content": "How many tokens do I have left?"}]}
    message = client.execution("chat", body).body["message"]
    assert message["usage"]["steps"] == 2
    assert "50,000" in message["content"]
    account = store.get_account(user_id)
    assert account is not None
    assert account.current_tokens_used == message["usage"]["totalTokens"]


def test_chat_over_the_limit_is_429_with_usage(runtime: Runtime, store: SQLiteStore) -> None:
    client, user_id = logged_in(runtime)
    set_plan(store, user_id, 5)
    body = {"messages": [{"role": "user", "content": "Hello"}]}
    execution = client.execution("chat", body)
    assert (execution.status_code, execution["status"]) == (429, "completed")
    assert execution.body["error"]["code"] == "token_limit_exceeded"
    assert execution.body["usage"]["userId"] == user_id


def test_the_cron_runs_as_a_scheduled_execution(runtime: Runtime) -> None:
    outcome = runtime.api.run_scheduled("monthly-reset-cron")
    assert outcome.status_code == 200
    assert json.loads(outcome.body)["complete"] is True


# -- the page ----------------------------------------------------------------------------------


def test_config_json_points_the_page_at_this_runtime(runtime: Runtime) -> None:
    config = requests.get(runtime.base_url + "/config.json", timeout=30).json()
    assert config == {
        "endpoint": runtime.base_url + "/v1",
        "projectId": "local",
        "offlineModel": True,
        "functions": {"chat": "chat", "usage": "usage"},
    }


def test_the_page_and_its_files_are_served(runtime: Runtime) -> None:
    page = requests.get(runtime.base_url + "/", timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.content == (runtime.web_dir / "index.html").read_bytes()
    script = requests.get(runtime.base_url + "/app.js", timeout=30)
    assert script.headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize(
    "path", ["/../pyproject.toml", "/%2e%2e/pyproject.toml", "/.hidden", "/missing.js"]
)
def test_nothing_outside_the_page_folder_is_served(runtime: Runtime, path: str) -> None:
    assert requests.get(runtime.base_url + path, timeout=30).status_code == 404


def test_the_runtimes_own_origins_get_cors_with_credentials(runtime: Runtime) -> None:
    origin = f"http://localhost:{runtime.port}"
    preflight = requests.options(
        runtime.base_url + "/v1/account",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-appwrite-project, content-type",
        },
        timeout=30,
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
    assert "x-appwrite-project" in preflight.headers["Access-Control-Allow-Headers"]
    foreign = requests.get(
        runtime.base_url + "/v1/account", headers={"Origin": "https://evil.example"}, timeout=30
    )
    assert "Access-Control-Allow-Origin" not in foreign.headers


def test_an_unknown_api_route_is_404_general_route_not_found(client: AppwriteHttp) -> None:
    assert_appwrite_error(client.call("GET", "/databases"), 404, "general_route_not_found")


def test_data_stays_in_the_data_folder(runtime: Runtime) -> None:
    names = {path.name for path in Path(runtime.data_dir).iterdir()}
    assert {"auth.sqlite3", "metering.sqlite3"} <= names


# -- malformed input ---------------------------------------------------------------------------

_json_values = json_values(width=3, key_size=8, leaves=8)
_param_names = st.sampled_from(
    ["userId", "email", "password", "name", "body", "async", "path", "method", "headers",
     "duration", "scheduledAt"]
)  # fmt: skip
_bodies = (
    st.dictionaries(_param_names | st.text(max_size=8), _json_values, max_size=6).map(
        lambda d: json.dumps(d).encode()
    )
    | _json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=64)
)
_routes = st.sampled_from(
    [
        "/account",
        "/account/sessions/email",
        "/account/jwts",
        "/functions/probe-users/executions",
        "/functions/usage/executions",
        "/functions/nope/executions",
    ]
)


@pytest.fixture(scope="module")
def fallback_session(runtime: Runtime) -> str:
    """The fallback-cookie header of a logged-in user, so that fuzzed calls reach executions."""
    client = AppwriteHttp(runtime.base_url)
    address = email()
    client.sign_up(address)
    return client.log_in(address).headers["X-Fallback-Cookies"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(route=_routes, body=_bodies)
def test_no_malformed_api_call_is_a_server_error(
    runtime: Runtime, fallback_session: str, route: str, body: bytes
) -> None:
    response = requests.post(
        f"{runtime.base_url}/v1{route}",
        data=body,
        headers={"X-Appwrite-Project": "local", "X-Fallback-Cookies": fallback_session},
        timeout=60,
    )
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()) == APPWRITE_ERROR_KEYS
