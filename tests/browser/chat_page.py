"""What the browser tests do to the system: make users, put them at a usage, drive the page."""

from __future__ import annotations

import json
import os
import secrets
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from metering.plans import load_default_plans
from metering.ports import UsageStore
from metering.service import get_or_create_account
from playwright.sync_api import Page, expect

from tests.support.builders import charge

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
PASSWORD = "browser-test-password"


@dataclass(frozen=True)
class User:
    user_id: str
    email: str
    password: str = PASSWORD


class Backend:
    """The runtime's account API (over HTTP, as a client would) and its usage store."""

    def __init__(self, base_url: str, store: UsageStore) -> None:
        self.base_url = base_url
        self.store = store
        self.plans = load_default_plans()

    def sign_up(self, name: str, plan: str = "starter") -> User:
        """A new user on ``plan``, as after a Stripe subscription to it.

        ``name`` must be unique in the runtime; fixed names keep the screenshots the same.
        """
        user = User(name, f"{name}@example.com")
        user_id = user.user_id
        body = {"userId": user_id, "email": user.email, "password": user.password, "name": "Ada"}
        request = urllib.request.Request(  # noqa: S310 -- the runtime's own http:// URL
            f"{self.base_url}/v1/account",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json", "x-appwrite-project": "local"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            assert response.status == 201, response.status
        now = datetime.now(UTC)
        get_or_create_account(self.store, self.plans, user_id, now)
        chosen = self.plans.get(plan)
        self.store.update_account(
            user_id, {"plan": chosen.id, "max_tokens_per_month": chosen.tokens_per_month}
        )
        return user

    def use_tokens(self, user: User, tokens: int) -> None:
        """Charge ``tokens`` the way a finished chat request does: hold, then settle."""
        account = self.store.get_account(user.user_id)
        assert account is not None
        request_id = "seed-" + secrets.token_hex(12)
        charge(self.store, user.user_id, request_id, tokens, datetime.now(UTC), limit=account.limit)

    def add_topup(self, user: User, tokens: int) -> None:
        """Credit a pack the way the webhook does once its payment is confirmed."""
        self.store.add_topup(user.user_id, tokens)

    def used(self, user: User) -> int:
        account = self.store.get_account(user.user_id)
        assert account is not None
        return account.current_tokens_used


def log_in(page: Page, base_url: str, user: User) -> None:
    page.goto(base_url + "/")
    expect(page.get_by_test_id("auth-view")).to_be_visible()
    page.get_by_test_id("auth-email").fill(user.email)
    page.get_by_test_id("auth-password").fill(user.password)
    page.get_by_test_id("auth-submit").click()
    expect(page.get_by_test_id("chat-view")).to_be_visible()
    expect(page.get_by_test_id("usage-meter")).to_be_visible()


def sign_up_in_page(page: Page, base_url: str, email: str) -> None:
    """A visitor creates an account through the page's own form and lands in the chat."""
    page.goto(base_url + "/")
    expect(page.get_by_test_id("auth-view")).to_be_visible()
    page.get_by_test_id("auth-toggle").click()
    page.get_by_test_id("auth-email").fill(email)
    page.get_by_test_id("auth-password").fill(PASSWORD)
    page.get_by_test_id("auth-submit").click()
    expect(page.get_by_test_id("chat-view")).to_be_visible()
    expect(page.get_by_test_id("usage-meter")).to_be_visible()


def user_id_of(base_url: str, email: str) -> str:
    """The id the runtime gave the account of ``email``, asked as its owner would."""
    body = json.dumps({"email": email, "password": PASSWORD}).encode()
    headers = {"content-type": "application/json", "x-appwrite-project": "local"}
    request = urllib.request.Request(  # noqa: S310 -- the runtime's own http:// URL
        f"{base_url}/v1/account/sessions/email", data=body, headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        session = json.load(response)
    return str(session["userId"])


def send(page: Page, text: str) -> None:
    page.get_by_test_id("message-input").fill(text)
    page.get_by_test_id("message-input").press("Enter")


def assistant_messages(page: Page) -> list[str]:
    return page.locator('[data-testid="message"][data-role="assistant"]').all_inner_texts()


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", animations="disabled", caret="hide")


def showcase(page: Page, name: str) -> None:
    """A screenshot for the docs, written only when asked for (``SCREENSHOTS=1``)."""
    if os.environ.get("SCREENSHOTS") == "1":
        screenshot(page, name)
