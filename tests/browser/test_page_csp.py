"""The page's Content-Security-Policy: the runtime sends the policy web/README.md documents, and
everything the page does (login, Realtime, a streamed reply rendered as Markdown, a copy) runs
under it without a single violation."""

from __future__ import annotations

import re
import urllib.request

import pytest
from playwright.sync_api import Page, expect

from localruntime.server import Runtime
from tests.browser.chat_page import Backend, log_in, send
from tests.browser.page_support import ROOT, signed_topup, wait_for_reply

pytestmark = pytest.mark.browser

# Every violation the page meets, from before its first script runs.
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__violations.push(`${event.effectiveDirective} ${event.blockedURI}`);
});
"""


def documented_policy() -> str:
    readme = (ROOT / "web" / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^Content-Security-Policy: (.+)$", readme, re.MULTILINE)
    assert found is not None, "web/README.md documents no Content-Security-Policy"
    return found.group(1).strip()


def test_the_runtime_sends_the_documented_policy(runtime: Runtime) -> None:
    """index.html comes with the policy web/README.md gives for a static host; no inline script
    or eval is allowed, and HTML goes only through the sanitiser's Trusted Types policy."""
    with urllib.request.urlopen(runtime.base_url + "/", timeout=10) as response:  # noqa: S310
        policy = response.headers["Content-Security-Policy"]
    assert policy == documented_policy()
    assert "'unsafe-inline'" not in policy
    assert "'unsafe-eval'" not in policy
    assert "require-trusted-types-for 'script'" in policy


def test_the_page_runs_under_its_policy_without_a_violation(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """Login, the live meter, a streamed reply with Markdown and a javascript: link: nothing is
    refused by the policy, so it allows all the page uses and nothing more is needed."""
    page.add_init_script(RECORD_VIOLATIONS)
    user = backend.sign_up("csp-user")
    log_in(page, runtime.base_url, user)
    page.wait_for_timeout(1_000)
    signed_topup(runtime, user, 1_000)
    expect(page.get_by_test_id("usage-tokens")).to_have_text("0 / 51,000 tokens")
    send(page, "**bold** [x](javascript:alert(1)) <script>alert(1)</script>")
    reply = wait_for_reply(page, 1)
    expect(reply.locator("strong")).to_have_text("bold")
    assert page.evaluate("window.__violations") == []
