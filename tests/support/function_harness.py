"""Run a function's real ``main(context)`` against an SQLite store, a fake Account API and,
for chat, a fake Anthropic transport, for billing, Stripe's API at the HTTP edge; inspect the
store before and after."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import responses
from metering.account import Account, new_account
from metering.plans import load_default_plans
from metering.ports import UsageStore

from localruntime.context import RuntimeContext, RuntimeRequest, RuntimeResult, execute
from localruntime.loader import bootstrap_of, load_function, package_name
from localruntime.sqlite_store import SQLiteStore
from tests.support.anthropic_fake import FakeAnthropic
from tests.support.identity import ENDPOINT, PROJECT_ID, FakeAccounts
from tests.support.stripe_api import FakeStripe

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ROOT_DIR = Path(__file__).resolve().parents[2]


def modules_after_build(function_id: str, **environ: str) -> set[str]:
    """The top-level modules a fresh process holds once it has loaded and wired ``function_id``
    with a dead endpoint, project ``p`` and ``environ``."""
    environment = {
        "APPWRITE_FUNCTION_API_ENDPOINT": "http://127.0.0.1:9/v1",
        "APPWRITE_FUNCTION_PROJECT_ID": "p",
        **environ,
    }
    code = (
        "import sys\n"
        "from localruntime.loader import load_function\n"
        f"load_function({function_id!r})\n"
        f"import {package_name(function_id)}.src.bootstrap as b\n"
        f"b.build({environment!r})\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT_DIR, capture_output=True, text=True, check=True
    )
    return set(completed.stdout.split())


def base_environment(sqlite_path: Path) -> dict[str, str]:
    return {
        "APPWRITE_FUNCTION_API_ENDPOINT": ENDPOINT,
        "APPWRITE_FUNCTION_PROJECT_ID": PROJECT_ID,
        "ANTHROPIC_API_KEY": "sk-ant-functional-test",
        # One attempt per call: retries would only slow the failure cases down.
        "CHAT_MAX_RETRIES": "0",
    }


@dataclass
class Harness:
    function_id: str
    sqlite_path: Path
    accounts: FakeAccounts
    model: FakeAnthropic = field(default_factory=FakeAnthropic)
    stripe: FakeStripe = field(default_factory=FakeStripe)

    @property
    def main(self) -> Callable[[RuntimeContext], Any]:
        return load_function(self.function_id).main  # type: ignore[no-any-return]

    def store(self) -> SQLiteStore:
        return SQLiteStore(str(self.sqlite_path))

    def call(
        self,
        body: bytes | dict[str, Any] | None = None,
        *,
        user: str | None = None,
        method: str = "POST",
        headers: dict[str, str] | None = None,
        query_string: str = "",
        path: str = "/",
    ) -> RuntimeResult:
        """Execute ``main`` as Appwrite does for a signed-in ``user`` (JWT and user-id headers)."""
        sent = {"content-type": "application/json", "x-appwrite-trigger": "http"}
        if user is not None:
            sent["x-appwrite-user-id"] = user
            sent["x-appwrite-user-jwt"] = self.jwt(user)
        sent.update(headers or {})
        raw = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
        request = RuntimeRequest(
            method=method, path=path, headers=sent, body=raw, query_string=query_string
        )
        return execute(self.main, RuntimeContext(req=request))

    def jwt(self, user_id: str) -> str:
        for jwt, owner in self.accounts.users.items():
            if owner == user_id:
                return jwt
        return self.accounts.issue(user_id)

    def seed(self, user_id: str, plan: str = "starter", used: int = 0, **fields: Any) -> Account:
        """An account on ``plan`` with ``used`` tokens already on its counter."""
        catalog = load_default_plans()
        account = new_account(user_id, catalog.get(plan), NOW)
        values = {"current_tokens_used": used, **fields}
        return self.store().create_account(replace(account, **values))

    def used(self, user_id: str) -> int:
        account = self.store().get_account(user_id)
        assert account is not None
        return account.current_tokens_used

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table: equal snapshots mean nothing was stored or changed."""
        with sqlite3.connect(self.sqlite_path) as connection:
            tables = [
                row[0]
                for row in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            ]
            return {
                table: sorted(connection.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
                for table in tables
            }


def billing_environment(stripe: FakeStripe) -> dict[str, str]:
    return {
        "STRIPE_SECRET_KEY": stripe.api_key,
        "STRIPE_API_BASE": stripe.base,
        "BILLING_RETURN_URL": "https://app.example.test/chat",
    }


@contextmanager
def running(
    function_id: str,
    sqlite_path: Path,
    environment: dict[str, str] | None = None,
    model: FakeAnthropic | None = None,
    store: UsageStore | None = None,
) -> Iterator[Harness]:
    """Configure a cold start of ``function_id`` (over ``store``, by default the SQLite file) and
    answer the Account API meanwhile."""
    load_function(function_id)
    bootstrap = bootstrap_of(function_id)
    harness = Harness(function_id, sqlite_path, FakeAccounts(), model or FakeAnthropic())
    env = {**base_environment(sqlite_path), **(environment or {})}
    # The schema exists before the first snapshot.
    extra: dict[str, Any] = {"clock": lambda: NOW, "store": store or harness.store()}
    if function_id == "chat":
        extra["anthropic_http_client"] = harness.model.client()
    if function_id == "billing":
        # Billing reads no clock: it never creates or changes an account.
        del extra["clock"]
        env = {**billing_environment(harness.stripe), **env}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        harness.accounts.register(mock)
        harness.stripe.register(mock)
        bootstrap.configure(env, **extra)
        try:
            yield harness
        finally:
            bootstrap.configure()
