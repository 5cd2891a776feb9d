"""Regenerate docs/screenshots/: each page state in Debian's chromium against a fresh local runtime.

`make screenshots` runs it. The browser tests check the same states without writing any image,
so a test run never changes the docs; this command does, when asked.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from metering.account import new_account
from metering.ledger import LedgerEntry, LedgerStatus
from metering.plans import load_default_plans
from metering.ports import Payment, PaymentKind, UsageStore
from metering.pricing import load_default_prices
from metering.tokens import TokenUsage
from playwright.sync_api import Browser, Page, Route, ViewportSize, expect, sync_playwright

from localruntime.server import Runtime
from localruntime.sqlite_store import SQLiteStore
from tests.browser.chat_page import Backend, User, log_in, send, sign_up_in_page
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, DESKTOP
from tests.browser.page_support import (
    CHAT_EXECUTIONS,
    FakeChat,
    execution_document,
    model_pace,
    wait_for_reply,
    writing,
)
from tests.support.runtime import running
from tools import admin, build_web

ROOT = Path(__file__).resolve().parent.parent
REPORT_SHOT = "report"
# Chart.js animates its first draw for 1 s by default; the image is taken after it.
REPORT_DRAW_MS = 1500
OUT = ROOT / "docs" / "screenshots"
PHONE: ViewportSize = {"width": 375, "height": 740}
TALL: ViewportSize = {"width": 1100, "height": 1000}
WIDE: ViewportSize = {"width": 1280, "height": 900}
POEM = "Write me a short poem about autumn leaves falling on a quiet river at dusk"
# A reply as Claude writes them: prose, a code block, a table, a list and a link.
MARKDOWN_REPLY = """To count the words of a file in **Python**, read it and split on whitespace:

```python
from pathlib import Path

def word_count(path: str) -> int:
    return len(Path(path).read_text(encoding="utf-8").split())
```

How it compares with the shell:

| tool | command | counts |
|:-----|:--------|-------:|
| Python | `word_count("notes.txt")` | 1,204 |
| coreutils | `wc -w notes.txt` | 1,204 |

- `split()` without an argument treats runs of spaces and newlines as one separator.
- For very large files, read line by line instead.

See [the pathlib documentation](https://docs.python.org/3/library/pathlib.html) for more.
"""


@dataclass(frozen=True)
class Stage:
    runtime: Runtime
    backend: Backend
    out: Path

    def shoot(self, page: Page, name: str) -> Path:
        path = self.out / f"{name}.png"
        # No blinking caret or half-finished transition: the same state gives the same image.
        page.screenshot(path=path, animations="disabled", caret="hide")
        return path


def usage_0(page: Page, stage: Stage) -> None:
    """A reply with its token breakdown open."""
    user = stage.backend.sign_up("ada")
    log_in(page, stage.runtime.base_url, user)
    send(page, "Hello there")
    wait_for_reply(page, 1).get_by_test_id("message-tokens").focus()
    stage.shoot(page, "usage-0")


def _at(stage: Stage, page: Page, name: str, tokens: int) -> User:
    user = stage.backend.sign_up(name)
    stage.backend.use_tokens(user, tokens)
    log_in(page, stage.runtime.base_url, user)
    return user


def usage_76(page: Page, stage: Stage) -> None:
    _at(stage, page, "grace", 38_000)
    expect(page.get_by_test_id("usage-banner")).to_be_visible()
    stage.shoot(page, "usage-76")


def usage_91(page: Page, stage: Stage) -> None:
    _at(stage, page, "alan", 45_500)
    expect(page.get_by_test_id("usage-banner")).to_be_visible()
    stage.shoot(page, "usage-91")


def usage_100(page: Page, stage: Stage) -> None:
    """The limit view: the allowance spent, the box off, the packs and plans to buy."""
    _at(stage, page, "edsger", 50_000)
    expect(page.get_by_test_id("topup-buy").first).to_be_visible()
    stage.shoot(page, "usage-100")


def too_long(page: Page, stage: Stage) -> None:
    """One message too long for what is left: the box stays on with the text to shorten."""
    _at(stage, page, "verbose", 48_000)
    send(page, "Please read this carefully. " * 400)
    expect(page.get_by_test_id("too-long-notice")).to_be_visible()
    stage.shoot(page, "too-long")


def error(page: Page, stage: Stage) -> None:
    user = stage.backend.sign_up("barbara")
    log_in(page, stage.runtime.base_url, user)
    send(page, "What can you do?")
    wait_for_reply(page, 1)
    body = {"error": {"code": "upstream_unavailable", "message": "x"}}

    def refuse(route: Route) -> None:
        route.fulfill(
            status=201, content_type="application/json", body=execution_document(503, body)
        )

    page.route(CHAT_EXECUTIONS, refuse)
    send(page, "Will this arrive?")
    expect(page.get_by_test_id("error-banner")).to_be_visible()
    stage.shoot(page, "error")


def rate_limited(page: Page, stage: Stage) -> None:
    """A burst past the cap of messages a minute: the wait, the text kept in the box."""
    user = stage.backend.sign_up("rosa")
    log_in(page, stage.runtime.base_url, user)
    send(page, "What can you do?")
    wait_for_reply(page, 1)
    body = {
        "error": {
            "code": "rate_limited",
            "message": "At most 30 messages a minute; try again in 41 s",
            "retryAfter": 41,
            "details": [{"reason": "requests_per_minute", "limit": 30}],
        }
    }

    def refuse(route: Route) -> None:
        route.fulfill(
            status=201, content_type="application/json", body=execution_document(429, body)
        )

    page.route(CHAT_EXECUTIONS, refuse)
    send(page, "And one more thing?")
    expect(page.get_by_test_id("error-banner")).to_be_visible()
    stage.shoot(page, "rate-limited")


def mobile_91(page: Page, stage: Stage) -> None:
    user = stage.backend.sign_up("linus")
    stage.backend.use_tokens(user, 45_500)
    page.set_viewport_size(PHONE)
    log_in(page, stage.runtime.base_url, user)
    send(page, "How do I read the meter on a phone?")
    wait_for_reply(page, 1)
    stage.shoot(page, "mobile-91")


def streaming(page: Page, stage: Stage) -> None:
    """A reply being written, with Stop offered; then the same reply stopped."""
    user = stage.backend.sign_up("streamer")
    log_in(page, stage.runtime.base_url, user)
    send(page, "Hello! What are you?")
    wait_for_reply(page, 1)
    with model_pace(stage.runtime, 5):
        send(page, POEM)
        content = writing(page).get_by_test_id("message-content")
        expect(content).to_have_text(re.compile(r"\w.{40}"))
        stage.shoot(page, "streaming")
        page.keyboard.press("Escape")
        stopped = page.locator('[data-testid="message"][data-status="stopped"]')
        expect(stopped).to_have_count(1, timeout=20_000)
    page.get_by_test_id("message-input").fill("Go on from where you stopped")
    stage.shoot(page, "stopped")


def markdown(page: Page, stage: Stage) -> None:
    """A reply rendered as Markdown: a code block with its copy button, a table, links."""
    page.route(CHAT_EXECUTIONS, FakeChat(MARKDOWN_REPLY))
    user = stage.backend.sign_up("markdown")
    page.set_viewport_size(TALL)
    log_in(page, stage.runtime.base_url, user)
    # The reply's charge, as the real turn would have put it on the meter.
    stage.backend.use_tokens(user, 60)
    send(page, "How do I count the words in a file?")
    wait_for_reply(page, 1).get_by_test_id("copy-code").hover()
    page.get_by_test_id("conversation").evaluate("node => { node.scrollTop = 0; }")
    stage.shoot(page, "markdown")


def money_loop(page: Page, stage: Stage) -> None:
    """Demo explained with the plans, the local checkout page, and a pack offered at the limit."""
    base = stage.runtime.base_url
    sign_up_in_page(page, base, "buyer@screenshots.test")
    expect(page.get_by_test_id("plan-card")).to_have_count(3)
    stage.shoot(page, "demo-plans")
    page.locator('[data-testid="plan-choose"][data-plan="starter"]').click()
    expect(page.get_by_test_id("checkout-pay")).to_be_visible()
    stage.shoot(page, "checkout")
    page.get_by_test_id("checkout-pay").click()
    page.wait_for_url(re.compile(re.escape(base) + r"/(\?.*)?$"))
    expect(page.get_by_test_id("usage-plan")).to_have_text("Starter plan")
    send(page, "Hello from a paying customer")
    wait_for_reply(page, 1)
    user_id = page.evaluate(
        "() => Object.keys(localStorage).find((k) => k.startsWith('metered-chat:conversation'))"
    ).rsplit(":", 1)[1]
    buyer = User(user_id, "buyer@screenshots.test")
    stage.backend.use_tokens(buyer, 50_000 - 5 - stage.backend.used(buyer))
    send(page, "One more question")
    expect(page.get_by_test_id("topup-buy").first).to_be_visible()
    stage.shoot(page, "limit-buy")


SHOTS: dict[str, Callable[[Page, Stage], None]] = {
    "usage-0": usage_0,
    "usage-76": usage_76,
    "usage-91": usage_91,
    "usage-100": usage_100,
    "too-long": too_long,
    "error": error,
    "rate-limited": rate_limited,
    "mobile-91": mobile_91,
    "streaming": streaming,
    "markdown": markdown,
    "money-loop": money_loop,
}


# The operator's report of one month: plan users chatting every day and paying their invoices,
# recorded through the store's own request and payment paths, priced by the project's table.
REPORT_MONTH = datetime(2026, 11, 1, tzinfo=UTC)
REPORT_USERS = (
    ("ana", "starter", 900, 1_400),
    ("ben", "starter", 900, 900),
    ("chloe", "pro", 2_900, 5_200),
    ("dev", "pro", 2_900, 2_600),
    ("emre", "business", 9_900, 21_000),
)


def seed_report_month(store: UsageStore) -> None:
    plans = load_default_plans()
    prices = load_default_prices()
    model = "claude-sonnet-5-5"
    for index, (user_id, plan, amount, daily) in enumerate(REPORT_USERS):
        store.create_account(new_account(user_id, plans.default, REPORT_MONTH))
        store.update_account(user_id, {"plan": plan, "max_tokens_per_month": 10**9})
        for day in range(30):
            at = REPORT_MONTH + timedelta(days=day, hours=9 + index)
            # Weekdays busier than weekends; conversations grow, so cache reads grow with them.
            scale = (1.0 if at.weekday() < 5 else 0.4) * (0.8 + 0.4 * ((day * 7 + index) % 5) / 4)
            tokens = int(daily * scale)
            usage = TokenUsage(
                input_tokens=tokens * 20 // 100,
                cache_creation_input_tokens=tokens * 10 // 100,
                cache_read_input_tokens=tokens * 40 // 100,
                output_tokens=tokens * 30 // 100,
            )
            request_id = f"{user_id}-{day:02d}"
            store.open_request(
                LedgerEntry(
                    request_id=request_id,
                    user_id=user_id,
                    status=LedgerStatus.RESERVED,
                    model=model,
                    period_start=REPORT_MONTH,
                    created_at=at,
                    updated_at=at,
                    held_tokens=usage.total_tokens,
                ),
                10**12,
            )
            store.settle(
                user_id,
                request_id,
                0,
                {
                    "status": LedgerStatus.SETTLED,
                    "usage": usage,
                    "cost_micro_usd": prices.cost(model, usage, at).micro_usd,
                    "held_tokens": 0,
                },
            )
        store.record_payment(
            Payment(
                f"in_{user_id}",
                PaymentKind.INVOICE,
                user_id,
                amount,
                "usd",
                paid_at=REPORT_MONTH + timedelta(hours=index),
            )
        )


def shoot_report(browser: Browser, out: Path, data: Path) -> None:
    """The HTML report of the seeded month, written by `python -m tools.admin report`."""
    # The command's own local target: the SQLite store in DATA_DIR, as after `make dev`.
    month_dir = data / "report"
    month_dir.mkdir()
    seed_report_month(SQLiteStore(str(month_dir / "metering.sqlite3")))
    target = month_dir / "report.html"
    month = REPORT_MONTH.strftime("%Y-%m")
    code = admin.main(
        ["report", "--month", month, "--format", "html", "--out", str(target)],
        environ={"DATA_DIR": str(month_dir)},
    )
    if code != 0:
        raise RuntimeError(f"report exited {code}")
    context = browser.new_context(viewport=WIDE, locale="en-US", timezone_id="UTC")
    try:
        page = context.new_page()
        page.goto(target.as_uri())
        # Chart.js draws on load; its canvases have their size once it has run.
        page.wait_for_function("document.querySelectorAll('canvas').length >= 2")
        page.wait_for_timeout(REPORT_DRAW_MS)
        page.screenshot(path=out / "report.png", full_page=True, animations="disabled")
    finally:
        context.close()
    print("screenshots: report")


def run(browser: Browser, stage: Stage, names: list[str]) -> None:
    for name in names:
        context = browser.new_context(viewport=DESKTOP, locale="en-US", timezone_id="UTC")
        try:
            page = context.new_page()
            SHOTS[name](page, stage)
            # Requests still in flight (a usage read) would end in a broken pipe on the runtime.
            page.wait_for_load_state("networkidle")
        finally:
            context.close()
        print(f"screenshots: {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="where the PNG files go")
    parser.add_argument(
        "--only", nargs="*", choices=sorted([*SHOTS, REPORT_SHOT]), help="just these states"
    )
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).is_file():
        print(f"screenshots: {CHROMIUM} is missing: run `make chromium`", file=sys.stderr)
        return 1
    if build_web.main([]) != 0:
        return 1
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="screenshots-") as data,
        running(Path(data)) as runtime,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            stage = Stage(runtime, Backend(runtime.base_url, runtime.store), out)
            names = args.only if args.only is not None else [*SHOTS, REPORT_SHOT]
            run(browser, stage, [name for name in names if name in SHOTS])
            if REPORT_SHOT in names:
                shoot_report(browser, out, Path(data))
        finally:
            browser.close()
    print(f"screenshots: written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
