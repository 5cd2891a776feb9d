"""What the browser tests do to the system: make users, put them at a usage, drive the page."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from metering.adapters.sqlite_store import SQLiteStore
from metering.ledger import LedgerEntry, LedgerStatus
from metering.plans import load_default_plans
from metering.service import get_or_create_account
from metering.tokens import TokenUsage
from playwright.sync_api import Page, expect

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
PASSWORD = "browser-test-password"


STARTUP_SECONDS = 60


@dataclass(frozen=True)
class RunningRuntime:
    base_url: str
    data_dir: Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def start_runtime(data_dir: Path) -> Iterator[RunningRuntime]:
    """``python -m localruntime`` on a free port, offline model, no cron, until the block ends."""
    port = _free_port()
    # Without an Anthropic key the runtime uses its offline model, whatever this machine has set.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "STRIPE_"))}
    env.update(DATA_DIR=str(data_dir), RUN_CRON="0", PORT=str(port), HOST="127.0.0.1")
    log_path = data_dir / "runtime.log"
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "localruntime", "--env-file", str(data_dir / "absent.env")]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_until_serving(process, base_url, log_path)
            yield RunningRuntime(base_url, data_dir)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_serving(process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log_path.read_text(errors="replace")
            raise RuntimeError(f"the local runtime exited with {process.returncode}:\n{output}")
        try:
            # The URL is the runtime's own http:// address.
            with urllib.request.urlopen(f"{base_url}/config.json", timeout=2):  # noqa: S310
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the local runtime did not answer within {STARTUP_SECONDS} s")


@dataclass(frozen=True)
class User:
    user_id: str
    email: str
    password: str = PASSWORD


class Backend:
    """The runtime's account API (over HTTP, as a client would) and its usage store."""

    def __init__(self, base_url: str, data_dir: Path) -> None:
        self.base_url = base_url
        self.store = SQLiteStore(str(data_dir / "metering.sqlite3"))
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
        """Charge ``tokens`` the way a finished chat request does: reserve, then settle."""
        now = datetime.now(UTC)
        account = self.store.get_account(user.user_id)
        assert account is not None
        request_id = "seed-" + secrets.token_hex(12)
        self.store.create_ledger(
            LedgerEntry(
                request_id=request_id,
                user_id=user.user_id,
                status=LedgerStatus.RESERVED,
                model="claude-sonnet-5-5",
                period_start=account.period_start,
                created_at=now,
                updated_at=now,
            )
        )
        self.store.reserve(user.user_id, request_id, tokens, account.limit)
        output = tokens // 4
        usage = TokenUsage(input_tokens=tokens - output, output_tokens=output, steps=1)
        self.store.update_ledger(
            request_id, {"status": LedgerStatus.SETTLED, "usage": usage, "updated_at": now}
        )

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


def send(page: Page, text: str) -> None:
    page.get_by_test_id("message-input").fill(text)
    page.get_by_test_id("message-input").press("Enter")


def assistant_messages(page: Page) -> list[str]:
    return page.locator('[data-testid="message"][data-role="assistant"]').all_inner_texts()


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", animations="disabled", caret="hide")
