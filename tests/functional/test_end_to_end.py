"""The billing story end to end through the `make dev` process: the local runtime started as
`python -m localruntime`, the page's HTTP calls, and the documented sample-event command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from metering.timeutil import parse_timestamp

from tests.support.runtime import AppwriteHttp
from tests.support.waiting import wait_until
from tools.stripe_events import one_month_later

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[str]:
    """`make dev`'s process on a free port with a fresh data folder, stopped after the test."""
    port = free_port()
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ANTHROPIC_", "STRIPE_", "APPWRITE_", "METERING_", "CHAT_"))
    }
    environ |= {"DATA_DIR": str(tmp_path / "data"), "RUN_CRON": "false"}
    process = subprocess.Popen(
        [sys.executable, "-m", "localruntime", "--port", str(port), "--env-file", "/nonexistent"],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            requests.get(base_url + "/config.json", timeout=2)
        except requests.ConnectionError:
            return False
        return True

    try:
        wait_until(serving, timeout=60, what="the start of the local runtime", interval=0.2)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


def send_events(base_url: str, scenario: str, user_id: str, *extra: str) -> None:
    """Run the documented dev command, as an operator would."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.stripe_events",
            scenario,
            "--user",
            user_id,
            "--url",
            base_url + "/functions/stripe-webhook",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.count(' 200 {"received":true}') >= 1, completed.stdout


@pytest.mark.slow
def test_sign_up_subscribe_chat_renew_and_see_usage_return_to_zero(dev_server: str) -> None:
    """A renewal paid a month later resets the counter once and moves resetsAt one month."""
    client = AppwriteHttp(dev_server)
    user_id = client.sign_up_and_log_in("e2e@example.com")
    assert client.execution("usage", method="GET").body["plan"] == "demo"

    subscribed_at = datetime.now(UTC)
    send_events(dev_server, "subscribe", user_id, "--plan", "starter")
    before = client.execution("usage", method="GET").body
    assert (before["plan"], before["tokens"]["limit"]) == ("starter", 50_000)

    chat = client.execution(
        "chat", {"messages": [{"role": "user", "content": "Hello there"}], "requestId": "e2e-1"}
    )
    assert chat.status_code == 200, chat.body
    charged = chat.body["message"]["usage"]["totalTokens"]
    assert charged > 0
    assert chat.body["usage"]["tokens"]["used"] == charged

    renewal = one_month_later(subscribed_at)
    send_events(dev_server, "renew", user_id, "--plan", "starter", "--at", renewal.isoformat())
    after = client.execution("usage", method="GET").body
    tokens = after["tokens"]
    assert (tokens["used"], tokens["lifetimeUsed"]) == (0, charged)
    # Stripe timestamps are whole seconds.
    assert abs(parse_timestamp(tokens["periodStart"]) - renewal).total_seconds() < 1
    moved = parse_timestamp(tokens["resetsAt"]) - parse_timestamp(before["tokens"]["resetsAt"])
    assert 28 <= moved.days <= 31, moved

    # Stripe sent invoice.paid and invoice.payment_succeeded for it, and may send them again.
    send_events(dev_server, "renew", user_id, "--plan", "starter", "--at", renewal.isoformat())
    again = client.execution("usage", method="GET").body
    assert again["tokens"] == tokens
