"""The page's own Appwrite Web SDK realtime client, in chromium, against the local runtime's
/v1/realtime: the owner of a row receives its change, another user receives nothing."""

from __future__ import annotations

from metering import codec
from playwright.sync_api import Browser, Page

from localruntime.server import Runtime
from tests.browser.chat_page import Backend, User, log_in
from tests.browser.conftest import DESKTOP

TOPUP = 1234
WAIT_MS = 10_000
SETTLE_MS = 1_000

# The SDK the page loads, with the endpoint and project of the page's config.json, as
# web/api.js creates its Client; every event received goes into window.__events.
SUBSCRIBE = """
async (channel) => {
  const { Client } = await import("/vendor/appwrite.js");
  const config = await (await fetch("/config.json", { cache: "no-store" })).json();
  const endpoint = new URL(config.endpoint, window.location.href).href.replace(/\\/$/, "");
  const client = new Client().setEndpoint(endpoint).setProject(config.projectId);
  window.__events = [];
  window.__client = client;
  client.subscribe(channel, (event) => window.__events.push(event));
  return config.projectId;
}
"""

# The SDK has sent its subscribe message: its socket is open and nothing waits to be sent.
SENT = """
() => {
  const realtime = window.__client.realtime;
  return realtime.socket?.readyState === WebSocket.OPEN && realtime.pendingSubscribes.size === 0;
}
"""


def _row_channel(runtime: Runtime, user: User) -> str:
    account = runtime.store.get_account(user.user_id)
    assert account is not None
    row_id = codec.row_key(account.row_id or account.user_id)
    return f"databases.koffers_db.tables.subscriptions.rows.{row_id}"


def _subscribe(page: Page, channel: str) -> None:
    assert page.evaluate(SUBSCRIBE, channel) == "local"
    page.wait_for_function(SENT, timeout=WAIT_MS)


def test_owner_receives_row_change_other_user_does_not(
    runtime: Runtime, backend: Backend, page: Page, browser: Browser
) -> None:
    """The SDK client of a row's owner receives its top-up; another user's client gets nothing."""
    owner = backend.sign_up("realtime-owner")
    other = backend.sign_up("realtime-other")
    channel = _row_channel(runtime, owner)
    log_in(page, runtime.base_url, owner)
    _subscribe(page, channel)

    other_context = browser.new_context(viewport=DESKTOP, locale="en-US", timezone_id="UTC")
    try:
        other_page = other_context.new_page()
        errors: list[str] = []
        other_page.on("pageerror", lambda error: errors.append(str(error)))
        log_in(other_page, runtime.base_url, other)
        _subscribe(other_page, channel)
        # The runtime reads a subscribe message at once; a second lets it on a loaded machine.
        page.wait_for_timeout(SETTLE_MS)

        before = runtime.store.get_account(owner.user_id).topup_tokens
        runtime.store.add_topup(owner.user_id, TOPUP)
        page.wait_for_function(
            "(want) => (window.__events || []).some((e) => e.payload.topupTokens === want)",
            arg=before + TOPUP,
            timeout=WAIT_MS,
        )
        events = page.evaluate("window.__events")
        assert len(events) == 1
        assert channel in events[0]["channels"]
        assert events[0]["payload"]["$permissions"] == [f'read("user:{owner.user_id}")']

        other_page.wait_for_timeout(SETTLE_MS)
        assert other_page.evaluate("window.__events") == []
        assert errors == [], f"the other page raised: {errors}"
    finally:
        other_context.close()
