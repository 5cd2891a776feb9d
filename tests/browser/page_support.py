"""What the page tests need beyond chat_page.py: turns as the page shows them, the chat function
answered at the HTTP edge, signed Stripe events, the offline model's pace, and axe-core."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from playwright.sync_api import Locator, Page, Request, Route, expect

from localruntime.server import Runtime
from tests.browser.chat_page import User
from tools.stripe_events import post, scenario_events

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"
CHAT_EXECUTIONS = "**/v1/functions/chat/executions"
WEBHOOK_FUNCTION = "stripe-webhook"


def assistant(page: Page) -> Locator:
    return page.locator('[data-testid="message"][data-role="assistant"]')


def writing(page: Page) -> Locator:
    """The reply being written (at most one)."""
    return page.locator('[data-testid="message"][data-status="writing"]')


def request_id_of(message: Locator) -> str:
    """The turn a shown reply belongs to: its key is ``a-<requestId>`` (``turn-`` while written)."""
    key = message.get_attribute("data-key") or ""
    return key.split("-", 1)[1]


@contextmanager
def model_pace(runtime: Runtime, tokens_per_second: float) -> Iterator[None]:
    """The offline model streams at this pace for the block: slow enough to act mid-reply."""
    before = runtime.model.tokens_per_second
    runtime.model.tokens_per_second = tokens_per_second
    try:
        yield
    finally:
        runtime.model.tokens_per_second = before


# Records every length the reply being written shows, so that a test can tell that the text grew
# before the turn ended (and not only after).
WATCH_GROWTH = """
() => {
  window.__growth = [];
  const list = document.querySelector('[data-testid="conversation"]');
  const record = () => {
    const node = list.querySelector('[data-status="writing"] [data-testid="message-content"]');
    const length = node ? node.textContent.length : -1;
    const last = window.__growth[window.__growth.length - 1];
    if (node && length !== last) window.__growth.push(length);
  };
  new MutationObserver(record).observe(list, {
    childList: true, subtree: true, characterData: true, attributes: true,
  });
}
"""


def growth(page: Page) -> list[int]:
    return list(page.evaluate("window.__growth"))


def signed_topup(runtime: Runtime, user: User, tokens: int) -> None:
    """A top-up pack paid on Stripe: its signed checkout.session.completed to the webhook."""
    url = f"{runtime.base_url}/functions/{WEBHOOK_FUNCTION}/"
    secret = runtime.settings.stripe_webhook_secret.value
    for event in scenario_events("topup", user.user_id, "starter", tokens, datetime.now(UTC)):
        status, body = post(url, event, secret)
        assert status == 200, body


def axe_violations(page: Page, impacts: tuple[str, ...] = ("serious", "critical")) -> list[str]:
    """axe-core's violations of these impacts on the page as it is, one line each.

    The script is evaluated by the test driver, which the page's Content-Security-Policy does not
    restrict (a <script> tag added to the page would be refused)."""
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(AXE.read_text(encoding="utf-8"))
    result = page.evaluate(
        "() => axe.run(document, { resultTypes: ['violations'] })"
        ".then((r) => r.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5)})))"
    )
    return [
        f"{v['impact']} {v['id']}: {v['help']} {v['nodes']}"
        for v in result
        if v["impact"] in impacts
    ]


def execution_document(status: int, body: Mapping[str, Any] | None, *, done: bool = True) -> str:
    """An Appwrite execution object; ``done=False`` is an asynchronous one just queued."""
    return json.dumps(
        {
            "$id": f"test-execution-{status}",
            "functionId": "chat",
            "trigger": "http",
            "status": ("completed" if status < 500 else "failed") if done else "waiting",
            "responseStatusCode": status if done else 0,
            "responseBody": json.dumps(body) if done and body is not None else "",
            "responseHeaders": [],
            "duration": 0.01,
        }
    )


def turn_answer(request_id: str, content: str, *, status: str = "completed") -> dict[str, Any]:
    """What GET /turns/{id} answers for a finished turn."""
    return {
        "turn": {
            "requestId": request_id,
            "status": status,
            "content": content,
            "model": "claude-test",
            "stopReason": "end_turn",
            "truncated": False,
            "usage": {
                "inputTokens": 20,
                "cacheCreationInputTokens": 0,
                "cacheReadInputTokens": 0,
                "outputTokens": 40,
                "totalTokens": 60,
                "steps": 1,
                "costUsd": 0.00066,
            },
            "estimated": False,
        },
        "usage": None,
    }


@dataclass
class FakeChat:
    """The chat function at the HTTP edge: a turn is queued, and its read answers ``content``
    (what a model wrote) as a finished turn. Records the bodies the page sent."""

    content: str
    sent: list[dict[str, Any]] = field(default_factory=list)
    usage: Callable[[], Any] = lambda: None

    def __call__(self, route: Route) -> None:
        request: Request = route.request
        execution: dict[str, Any] = request.post_data_json or {}
        self.sent.append(execution)
        path = str(execution.get("path", "/"))
        if path.startswith("/turns/"):
            request_id = path.split("/")[2]
            answer = turn_answer(request_id, self.content)
            answer["usage"] = self.usage()
            route.fulfill(
                status=201, content_type="application/json", body=execution_document(200, answer)
            )
            return
        route.fulfill(
            status=202,
            content_type="application/json",
            body=execution_document(0, None, done=False),
        )


def expect_no_horizontal_scroll(page: Page) -> None:
    widths = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], widths


def focused_test_id(page: Page) -> str:
    return str(page.evaluate("() => document.activeElement?.dataset?.testid ?? ''"))


def wait_for_reply(page: Page, count: int) -> Locator:
    """The ``count``-th reply, once finished (its token chip shows)."""
    replies = assistant(page)
    expect(page.get_by_test_id("message-tokens")).to_have_count(count, timeout=30_000)
    return replies.nth(count - 1)
