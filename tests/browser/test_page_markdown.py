"""Replies rendered as Markdown, safely: code blocks with a copy button, tables, links that open
in a new tab without a hold on the page, and markup or javascript: links that stay inert."""

from __future__ import annotations

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from localruntime.server import Runtime
from tests.browser.chat_page import Backend, log_in, send
from tests.browser.page_support import (
    CHAT_EXECUTIONS,
    FakeChat,
    expect_no_horizontal_scroll,
    wait_for_reply,
)

pytestmark = pytest.mark.browser

REPLY = """Here is **how** to read a file in *Python*:

```python
with open("notes.txt") as notes:
    print(notes.read())  # a long comment, well past the width of a phone screen
```

| plan | tokens a month | price |
|:-----|---------------:|------:|
| Starter | 50,000 | $9 |
| Pro | 200,000 | $29 |

See [the docs](https://docs.python.org/3/library/functions.html#open) or
[this](javascript:window.__clicked=1) and ![a pixel](https://tracker.example/p.png).

<script>window.__injected = 1</script>
<img src="x" onerror="window.__injected = 2">
<a href="https://evil.example" onclick="window.__injected = 3">raw link</a>

- [x] done
- [ ] to do
"""


@pytest.fixture
def clipboard(context: BrowserContext, runtime: Runtime) -> None:
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=runtime.base_url)


def test_markdown_renders_code_tables_and_safe_links(
    page: Page, runtime: Runtime, backend: Backend, clipboard: None
) -> None:
    """A reply's Markdown becomes a code block with its language and a working copy button, a
    table, and links with target=_blank and rel=noopener noreferrer; a javascript: link has no
    address, an image is a link instead of a request, and raw HTML is shown as text, never run."""
    page.route(CHAT_EXECUTIONS, FakeChat(REPLY))
    user = backend.sign_up("markdown")
    log_in(page, runtime.base_url, user)
    send(page, "How do I read a file?")
    reply = wait_for_reply(page, 1)
    content = reply.get_by_test_id("message-content")

    expect(content.locator("strong")).to_have_text("how")
    block = content.get_by_test_id("code-block")
    expect(block).to_contain_text("python")
    expect(block.locator("pre code")).to_contain_text('with open("notes.txt") as notes:')
    block.get_by_test_id("copy-code").click()
    expect(block.get_by_test_id("copy-code")).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith('with open("notes.txt") as notes:\n    print(notes.read())')
    expect(page.get_by_test_id("announcer")).to_have_text("Code copied.")

    table = content.locator("table")
    expect(table.locator("th")).to_have_text(["plan", "tokens a month", "price"])
    expect(table.locator("tbody tr")).to_have_count(2)
    expect(table.locator("td").nth(1)).to_have_attribute("align", "right")

    docs = content.get_by_role("link", name="the docs")
    expect(docs).to_have_attribute("href", "https://docs.python.org/3/library/functions.html#open")
    expect(docs).to_have_attribute("target", "_blank")
    expect(docs).to_have_attribute("rel", "noopener noreferrer nofollow")
    inert = content.locator("a", has_text="this")
    expect(inert).not_to_have_attribute("href", "javascript:window.__clicked=1")
    assert inert.get_attribute("href") is None
    inert.click()
    pixel = content.get_by_role("link", name="a pixel")
    expect(pixel).to_have_attribute("href", "https://tracker.example/p.png")
    assert content.locator("img, script, iframe, [onerror], [onclick]").count() == 0
    expect(content).to_contain_text("<script>window.__injected = 1</script>")
    expect(content).to_contain_text('<img src="x" onerror="window.__injected = 2">')
    expect(content.locator("input[type=checkbox]")).to_have_count(2)
    expect(content.locator("input[type=checkbox]").first).to_be_disabled()
    assert page.evaluate("[window.__injected, window.__clicked]") == [None, None]


def test_markup_typed_by_the_user_stays_text_in_the_streamed_reply(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """Through the real turn (the offline model quotes the message), inline Markdown renders,
    while a <script>, an event handler and a javascript: link stay inert."""
    user = backend.sign_up("markdown-live")
    log_in(page, runtime.base_url, user)
    send(
        page,
        "**bold** `code` [x](javascript:window.__clicked=1) <script>window.__injected=1</script>",
    )
    reply = wait_for_reply(page, 1)
    content = reply.get_by_test_id("message-content")
    expect(content.locator("strong")).to_have_text("bold")
    expect(content.locator("code")).to_have_text("code")
    expect(content).to_contain_text("<script>window.__injected=1</script>")
    link = content.locator("a", has_text="x")
    expect(link).to_have_count(1)
    assert link.get_attribute("href") is None
    link.click()
    assert content.locator("script").count() == 0
    assert page.evaluate("[window.__injected, window.__clicked]") == [None, None]


def test_wide_code_and_tables_scroll_inside_the_reply_on_a_phone(
    page: Page, runtime: Runtime, backend: Backend
) -> None:
    """At 375 px the long code line and the table scroll within their own boxes: the page has
    no horizontal scroll, and each box can be reached by keyboard to scroll it."""
    page.route(CHAT_EXECUTIONS, FakeChat(REPLY))
    user = backend.sign_up("markdown-phone")
    page.set_viewport_size({"width": 375, "height": 740})
    log_in(page, runtime.base_url, user)
    send(page, "How do I read a file?")
    reply = wait_for_reply(page, 1)
    expect_no_horizontal_scroll(page)
    pre = reply.locator("pre")
    assert pre.evaluate("node => node.scrollWidth > node.clientWidth")
    expect(pre).to_have_attribute("tabindex", "0")
    conversation = page.get_by_test_id("conversation")
    assert conversation.evaluate("node => node.scrollWidth <= node.clientWidth")
