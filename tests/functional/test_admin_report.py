"""`python -m tools.admin report`: a month's tokens, cost, revenue and margin per plan and user,
against SQLite and the Appwrite emulation, totals equal to the ledger's and the payments'."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from metering.account import new_account
from metering.ledger import LedgerStatus
from metering.plans import load_default_plans
from metering.ports import Payment, PaymentKind, UsageStore
from metering.tokens import TokenUsage

from localruntime.sqlite_store import SQLiteStore
from tests.support.admin import STORES, admin_store, run_admin
from tests.support.builders import ledger_entry
from tools import admin
from tools.admin_commands.context import Context

MARCH = datetime(2026, 3, 1, tzinfo=UTC)
APRIL = datetime(2026, 4, 1, tzinfo=UTC)
MID = datetime(2026, 3, 15, 12, tzinfo=UTC)


def seed(store: UsageStore) -> None:
    """Two users on two plans, requests and payments inside March and just outside it."""
    plans = load_default_plans()
    for user_id, plan in (("user-a", "starter"), ("user-b", "pro")):
        store.create_account(new_account(user_id, plans.default, MID))
        store.update_account(user_id, {"plan": plan, "max_tokens_per_month": 10**9})
    requests = [
        ("user-a", "r1", MARCH, TokenUsage(1_000, 200, 300, 500), 10_555_555),
        ("user-a", "r2", MID, TokenUsage(2_000, 0, 0, 1_000), 21_004_999),
        ("user-b", "r3", APRIL - timedelta(milliseconds=1), TokenUsage(4_000, 0, 0, 50), 12_750),
        ("user-b", "r4", APRIL, TokenUsage(9_999, 0, 0, 9_999), 999_999_999),  # April's
    ]
    for user_id, request_id, when, usage, cost in requests:
        account = store.get_account(user_id)
        assert account is not None
        entry = ledger_entry(
            user_id,
            request_id,
            period_start=account.period_start,
            created_at=when,
            updated_at=when,
            held_tokens=usage.total_tokens,
        )
        store.open_request(entry, 10**12)
        store.settle(
            user_id,
            request_id,
            0,
            {
                "status": LedgerStatus.SETTLED,
                "usage": usage,
                "cost_micro_usd": cost,
                "held_tokens": 0,
            },
        )
    payments = [
        ("in_a", "user-a", 900, MID),
        ("in_b", "user-b", 2_900, MARCH),
        ("in_late", "user-b", 5_000, APRIL),  # April's
    ]
    for stripe_id, user_id, amount, when in payments:
        store.record_payment(
            Payment(stripe_id, PaymentKind.INVOICE, user_id, amount, "usd", paid_at=when)
        )


def report(store: UsageStore, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    return run_admin(store, monkeypatch, ["report", *args])


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UsageStore]:
    with admin_store(request.param, tmp_path) as opened:
        yield opened


def rows(text: str) -> dict[tuple[str, str], dict[str, str]]:
    usage = text.split("\n\n", maxsplit=1)[0]
    return {(row["scope"], row["name"]): row for row in csv.DictReader(io.StringIO(usage))}


def test_totals_equal_the_ledger_and_the_payments_to_the_cent(
    store: UsageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """March's totals: its three requests' tokens and cost, its two payments, nothing of April."""
    seed(store)
    code, out, err = report(store, monkeypatch, "--month", "2026-03", "--format", "csv")

    assert (code, err) == (0, "")
    table = rows(out)
    total = table[("total", "")]
    assert (total["input"], total["cache_writes"], total["cache_reads"], total["output"]) == (
        "7000",
        "200",
        "300",
        "1550",
    )
    # 10_555_555 + 21_004_999 + 12_750 micro-USD = 31.573304 USD; 900 + 2_900 cents.
    assert total["cost_usd"] == "31.57"
    assert total["revenue"] == "38.00 USD"
    assert total["margin_usd"] == "6.43"
    assert table[("plan", "starter")]["cost_usd"] == "31.56"
    assert table[("user", "user-b")]["revenue"] == "29.00 USD"
    assert table[("user", "user-b")]["plan"] == "pro"


def test_the_estimate_table_sets_the_seed_beside_the_ledger(
    store: UsageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starter's 50k tokens: $0.39 at the seed's mix, and at the ledger's real cost per token."""
    seed(store)
    code, out, _ = report(store, monkeypatch, "--month", "2026-03", "--format", "csv")

    estimate = out.split("\n\n")[1]
    starter = next(row for row in csv.DictReader(io.StringIO(estimate)) if row["plan"] == "starter")
    assert code == 0
    assert (starter["seed_input_share"], starter["seed_cost_usd"]) == ("60%", "0.39")
    # user-a: 31_560_554 micro-USD over 5_000 tokens.
    assert starter["real_usd_per_mtok"] == "6312.11"
    assert starter["real_input_share"] == "70.0%"


def test_the_table_and_the_out_file(
    store: UsageStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The terminal table names every user and plan; --out writes it to a file instead."""
    seed(store)
    target = tmp_path / "march.txt"
    code, out, _ = report(store, monkeypatch, "--month", "2026-03", "--out", str(target))

    assert code == 0
    assert out == f"report of 2026-03 written to {target}\n"
    text = target.read_text(encoding="utf-8")
    assert "user-a" in text
    assert "user-b" in text
    assert "Estimated cost per plan" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--month", "2026-13"], "is not a month as YYYY-MM"),
        (["--month", "march"], "is not a month as YYYY-MM"),
        ([], "the following arguments are required: --month"),
        (["--month", "2026-03", "--format", "pdf"], "invalid choice"),
    ],
)
def test_bad_arguments_fail_in_one_line(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each bad argument: exit 2 and one stderr line naming it."""
    code, out, err = report(SQLiteStore(str(tmp_path / "s.sqlite3")), monkeypatch, *args)

    assert (code, out) == (2, "")
    assert message in err
    assert err.count("\n") == 1


def test_an_unwritable_out_file_fails_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A folder that does not exist: exit 1 and one stderr line."""
    store = SQLiteStore(str(tmp_path / "s.sqlite3"))
    code, _, err = report(
        store, monkeypatch, "--month", "2026-03", "--out", str(tmp_path / "no" / "r.txt")
    )

    assert code == 1
    assert "cannot write" in err
    assert err.count("\n") == 1


def test_the_html_file_is_self_contained_with_its_charts(
    store: UsageStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The HTML inlines Chart.js (no remote script) and charts every day of the month."""
    from tools.admin_commands.report import CHART_JS_FILE

    # `make test` installs it (`make report-deps`): its absence is a failure, never a skip.
    assert CHART_JS_FILE.exists(), "run `make report-deps`"
    seed(store)
    target = tmp_path / "march.html"
    code, _, err = report(
        store, monkeypatch, "--month", "2026-03", "--format", "html", "--out", str(target)
    )

    page = target.read_text(encoding="utf-8")
    assert (code, err) == (0, "")
    assert "src=" not in page
    assert "Chart.js v4" in page
    assert '"2026-03-01"' in page
    assert '"2026-03-31"' in page
    assert "31.57" in page


def test_manual_records_are_not_counted_as_requests(
    store: UsageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's grant in the month adds no request, token or cost to the report."""
    seed(store)
    _, before, _ = report(store, monkeypatch, "--month", "2026-03", "--format", "csv")
    original = Context.__init__

    def in_march(self: Context, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.clock = lambda: MID

    monkeypatch.setattr(Context, "__init__", in_march)
    out, err_stream = io.StringIO(), io.StringIO()
    granted = admin.main(
        ["grant", "--user", "user-a", "--tokens", "5", "--reason", "r"],
        environ={"DATA_DIR": "unused"},
        out=out,
        err=err_stream,
    )
    _, after, _ = report(store, monkeypatch, "--month", "2026-03", "--format", "csv")

    assert granted == 0, err_stream.getvalue()
    assert rows(after) == rows(before)
