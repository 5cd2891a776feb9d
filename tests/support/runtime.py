"""Start the local runtime in this process on a free port, and talk to it as the Web SDK does.

``running(tmp_path)`` yields a started ``Runtime`` (its ``base_url`` is what a browser opens);
``AppwriteHttp`` signs up, logs in and executes functions over plain HTTP with Appwrite's paths,
headers and cookies; ``local_stripe`` is the Stripe SDK on the runtime's local Stripe. Probe
functions (written to a temporary folder) report what they received.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import requests
import stripe
from metering.plans import load_default_plans
from stripe.params.checkout import SessionCreateParams

from localruntime.functions import FunctionSpec, discover
from localruntime.loader import ROOT
from localruntime.server import Runtime
from localruntime.settings import RuntimeSettings

PROJECT = "local"
PASSWORD = "correct horse battery"

# Reports the request it got and, when it carries a JWT, the user the Account API verifies it
# belongs to (through the real Appwrite SDK, as the functions do).
# The probe's wiring: like every function, it is configured with the runtime's mapping.
PROBE_BOOTSTRAP = """
ENVIRON = {}
OVERRIDES = {}


def configure(environ=None, **overrides):
    ENVIRON.clear()
    ENVIRON.update(environ or {})
    OVERRIDES.clear()
    OVERRIDES.update(overrides)
"""

ECHO_SOURCE = """
import time

from appwrite.client import Client
from appwrite.exception import AppwriteException
from appwrite.services.account import Account

from .bootstrap import ENVIRON, OVERRIDES


def main(context):
    req = context.req
    if req.query.get("sleep"):
        time.sleep(float(req.query["sleep"]))
    if req.query.get("crash"):
        raise RuntimeError("probe crash")
    verified = None
    jwt = req.headers.get("x-appwrite-user-jwt", "")
    if jwt:
        client = Client()
        client.set_endpoint(ENVIRON["APPWRITE_FUNCTION_API_ENDPOINT"])
        client.set_project(ENVIRON["APPWRITE_FUNCTION_PROJECT_ID"])
        client.set_jwt(jwt)
        try:
            verified = Account(client).get().id
        except AppwriteException as error:
            verified = "error:" + str(error.type)
    env = {
        key: ENVIRON.get(key)
        for key in (
            "APPWRITE_FUNCTION_API_ENDPOINT", "APPWRITE_FUNCTION_PROJECT_ID",
            "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "STRIPE_WEBHOOK_SECRET",
        )
    }
    env["store"] = type(OVERRIDES.get("store")).__name__
    return context.res.json(
        {
            "method": req.method,
            "path": req.path,
            "query": req.query_string,
            "headers": req.headers,
            "body": req.body_binary.decode("utf-8", "replace"),
            "bodyHex": req.body_binary.hex(),
            "verifiedUserId": verified,
            "env": env,
        },
        201,
        {"x-probe": "yes"},
    )
"""


def write_function(folder: Path, function_id: str, source: str) -> Path:
    target = folder / function_id / "src"
    target.mkdir(parents=True, exist_ok=True)
    (target / "main.py").write_text(source, encoding="utf-8")
    (target / "bootstrap.py").write_text(PROBE_BOOTSTRAP, encoding="utf-8")
    return folder / function_id


def probe_functions(folder: Path) -> dict[str, FunctionSpec]:
    """``probe-users`` (execute: users), ``probe-any`` (any) and ``probe-none`` (nobody)."""
    specs = {}
    for function_id, execute in (
        ("probe-users", ("users",)),
        ("probe-any", ("any",)),
        ("probe-none", ()),
    ):
        specs[function_id] = FunctionSpec(
            function_id, write_function(folder, function_id, ECHO_SOURCE), execute
        )
    return specs


def project_functions() -> dict[str, FunctionSpec]:
    """Every function appwrite.json declares, with its settings from there."""
    return discover(ROOT, ROOT / "functions")


@contextmanager
def running(
    data_dir: Path,
    *,
    functions: Mapping[str, FunctionSpec] | None = None,
    env: Mapping[str, str] | None = None,
    warm: bool = False,
) -> Iterator[Runtime]:
    """A started runtime on a free loopback port, stopped (and its environment restored) after.

    ``env`` is what ``make dev`` reads from the environment or ``.env``: the runtime's settings
    and, as there, the functions' own (``CHAT_TIMEOUT_SECONDS``, ...). ``warm`` imports every
    function first, so that a slow cold start on a busy machine does not count against the 30 s
    limit of the first executions.
    """
    environ = {"HOST": "127.0.0.1", "PORT": "0", "DATA_DIR": str(data_dir), **(env or {})}
    runtime = Runtime(RuntimeSettings.read(environ), functions=functions, environ=environ)
    runtime.start()
    try:
        if warm:
            for spec in runtime.specs.values():
                runtime.runner.main_of(spec)
        yield runtime
    finally:
        runtime.stop()


def local_stripe(runtime: Runtime) -> stripe.StripeClient:
    """The real Stripe SDK on the runtime's local Stripe, with the key the functions get."""
    env = runtime.function_environment()
    return stripe.StripeClient(
        env["STRIPE_SECRET_KEY"],
        base_addresses={"api": env["STRIPE_API_BASE"]},
        max_network_retries=0,
    )


def checkout_session(
    runtime: Runtime,
    user_id: str,
    *,
    plan: str | None = None,
    topup: str | None = None,
    customer: str | None = None,
) -> stripe.checkout.Session:
    """A Checkout Session for ``user_id`` with what the billing function puts on one: the price
    by its lookup key (the plan or pack id), ``client_reference_id`` and ``metadata.user_id``,
    ``subscription_data.metadata.user_id`` or the pack's ``topup_tokens`` and ``topup_id``."""
    client = local_stripe(runtime)
    if bool(plan) == bool(topup):
        raise ValueError("a plan or a top-up pack")
    lookup_key = str(plan or topup)
    price = client.v1.prices.list(params={"lookup_keys": [lookup_key], "active": True}).data[0]
    back = runtime.function_environment()["BILLING_RETURN_URL"]
    params: dict[str, Any] = {
        "line_items": [{"price": price.id, "quantity": 1}],
        "client_reference_id": user_id,
        "metadata": {"user_id": user_id},
        "success_url": back + "?checkout=success",
        "cancel_url": back + "?checkout=cancel",
    }
    if customer:
        params["customer"] = customer
    if plan:
        params.update(mode="subscription", subscription_data={"metadata": {"user_id": user_id}})
    else:
        pack = load_default_plans().find_topup(topup)
        assert pack is not None
        params.update(mode="payment")
        params["metadata"].update(topup_tokens=str(pack.tokens), topup_id=pack.id)
    return client.v1.checkout.sessions.create(params=cast("SessionCreateParams", params))


class AppwriteHttp:
    """One browser's worth of Appwrite Web SDK calls: a cookie jar and the SDK's headers."""

    def __init__(self, base_url: str) -> None:
        self.endpoint = base_url + "/v1"
        self.http = requests.Session()
        self.http.headers.update(
            {
                "X-Appwrite-Project": PROJECT,
                "X-Appwrite-Response-Format": "1.8.0",
                "x-sdk-name": "Web",
                "content-type": "application/json",
            }
        )

    def call(
        self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> requests.Response:
        return self.http.request(
            method,
            self.endpoint + path,
            data=json.dumps(body if body is not None else {}),
            headers=dict(headers or {}),
            timeout=60,
        )

    def sign_up(self, email: str, password: str = PASSWORD, name: str = "") -> dict[str, Any]:
        response = self.call(
            "POST",
            "/account",
            {"userId": "unique()", "email": email, "password": password, "name": name},
        )
        assert response.status_code == 201, response.text
        user: dict[str, Any] = response.json()
        return user

    def log_in(self, email: str, password: str = PASSWORD) -> requests.Response:
        return self.call("POST", "/account/sessions/email", {"email": email, "password": password})

    def sign_up_and_log_in(self, email: str) -> str:
        user_id = str(self.sign_up(email)["$id"])
        response = self.log_in(email)
        assert response.status_code == 201, response.text
        return user_id

    def jwt(self) -> str:
        response = self.call("POST", "/account/jwts")
        assert response.status_code == 201, response.text
        return str(response.json()["jwt"])

    def execute(
        self,
        function_id: str,
        body: str = "",
        *,
        method: str = "POST",
        path: str = "/",
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        return self.call(
            "POST",
            f"/functions/{function_id}/executions",
            {
                "body": body,
                "async": False,
                "path": path,
                "method": method,
                "headers": dict(headers or {"content-type": "application/json"}),
            },
        )

    def execution(self, function_id: str, body: Any = None, method: str = "POST") -> Execution:
        """Execute and return the execution object (the call itself must succeed)."""
        response = self.execute(
            function_id, "" if body is None else json.dumps(body), method=method
        )
        assert response.status_code == 201, response.text
        return Execution(response.json())

    def execution_with_headers(self, function_id: str, headers: Mapping[str, str]) -> Execution:
        response = self.execute(function_id, headers=headers)
        assert response.status_code == 201, response.text
        return Execution(response.json())


class Execution(dict[str, Any]):
    """An Appwrite execution object, with its response body parsed."""

    @property
    def status_code(self) -> int:
        return int(self["responseStatusCode"])

    @property
    def body(self) -> Any:
        return json.loads(self["responseBody"])
