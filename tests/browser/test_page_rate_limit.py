"""The page's answer to a chat refused for the user's pace (429 ``rate_limited``): the wait, the
message kept in an enabled box, the same message sent again once the user retries."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Page, expect

from localruntime.server import Runtime
from tests.browser.chat_page import Backend, log_in, send

pytestmark = pytest.mark.browser

CHAT_EXECUTIONS = "**/v1/functions/chat/executions"


def refused(reason: str, retry_after: int) -> str:
    """The execution object of a chat answered 429 ``rate_limited``."""
    body = {
        "error": {
            "code": "rate_limited",
            "message": "Too many requests",
            "retryAfter": retry_after,
            "details": [{"reason": reason, "limit": 3}],
        }
    }
    return json.dumps(
        {
            "$id": "rate-limited-execution",
            "functionId": "chat",
            "trigger": "http",
            "status": "completed",
            "responseStatusCode": 429,
            "responseBody": json.dumps(body),
            "responseHeaders": [{"name": "retry-after", "value": str(retry_after)}],
            "duration": 0.01,
        }
    )


@pytest.mark.parametrize(
    "refusal",
    [
        ("turns_in_flight", 2, "Your other messages are still being answered. Wait 2 seconds"),
        ("requests_per_minute", 41, "many messages in the last minute. Wait 41 seconds"),
    ],
    ids=["in-flight", "per-minute"],
)
def test_a_rate_limited_message_says_how_long_to_wait_and_stays_in_the_box(
    page: Page, runtime: Runtime, backend: Backend, refusal: tuple[str, int, str]
) -> None:
    """Not the allowance: no limit notice, the box enabled with the text, Retry sends it."""
    reason, retry_after, wording = refusal
    user = backend.sign_up(f"paced-{retry_after}")
    log_in(page, runtime.base_url, user)
    page.route(
        CHAT_EXECUTIONS,
        lambda route: route.fulfill(
            status=201, content_type="application/json", body=refused(reason, retry_after)
        ),
    )

    send(page, "Quick one")

    banner = page.get_by_test_id("error-banner")
    expect(banner).to_contain_text(wording)
    expect(page.get_by_test_id("limit-notice")).to_have_count(0)
    expect(page.get_by_test_id("message-input")).to_be_enabled()
    expect(page.get_by_test_id("message-input")).to_have_value("Quick one")
    expect(page.get_by_test_id("send-button")).to_be_enabled()

    page.unroute(CHAT_EXECUTIONS)
    page.get_by_test_id("retry-button").click()
    expect(page.get_by_test_id("message-tokens")).to_have_count(1)
    expect(page.get_by_test_id("error-banner")).to_have_count(0)
