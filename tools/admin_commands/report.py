"""A month's economics per plan and per user: tokens by kind, cost, revenue and margin, beside the
seed's estimated cost per plan computed again from the ledger.

Cost is the ledger's own ``costMicroUsd`` (what each request was priced at when it ran); revenue
is the month's recorded payments. Margin is counted only in USD, the currency costs are in.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from metering.errors import InvalidRequest
from metering.ledger import LedgerEntry, LedgerStatus
from metering.plans import PlanCatalog, load_default_plans
from metering.ports import Page, Payment, UsageStore

from tools.admin_commands.context import Context

T = TypeVar("T")

PAGE = 100
MICRO_PER_CENT = 10_000
# The seed's "Estimated Costs per Plan" assumptions.
SEED_INPUT_SHARE = 0.6
SEED_INPUT_USD_PER_MTOK = 3.0
SEED_OUTPUT_USD_PER_MTOK = 15.0
NO_PLAN = "(none)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--month", required=True, type=month, help="the month, YYYY-MM (UTC)")
    parser.add_argument(
        "--format",
        choices=("table", "csv", "html"),
        default="table",
        help="html: one self-contained file with charts of daily tokens and cost (use --out)",
    )
    parser.add_argument("--out", help="write the report to this file instead of stdout")


def month(text: str) -> tuple[datetime, datetime]:
    """[first instant, first instant of the next month) of ``YYYY-MM``."""
    try:
        start = datetime.strptime(text, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a month as YYYY-MM") from None
    following = start.replace(year=start.year + 1, month=1) if start.month == 12 else None
    return start, following or start.replace(month=start.month + 1)


@dataclass
class Line:
    """One row of the report: a user's, a plan's or the total's sums."""

    input_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    output_tokens: int = 0
    cost_micro_usd: int = 0
    requests: int = 0
    revenue: dict[str, int] = field(default_factory=dict)  # currency -> minor units

    @property
    def tokens(self) -> int:
        return (
            self.input_tokens
            + self.cache_write_tokens
            + self.cache_read_tokens
            + self.output_tokens
        )

    def add_entry(self, entry: LedgerEntry) -> None:
        usage = entry.usage
        self.input_tokens += usage.input_tokens
        self.cache_write_tokens += usage.cache_creation_input_tokens
        self.cache_read_tokens += usage.cache_read_input_tokens
        self.output_tokens += usage.output_tokens
        self.cost_micro_usd += entry.cost_micro_usd
        self.requests += 1

    def add_payment(self, payment: Payment) -> None:
        currency = payment.currency.lower()
        self.revenue[currency] = self.revenue.get(currency, 0) + payment.amount

    @property
    def margin_micro_usd(self) -> int:
        return self.revenue.get("usd", 0) * MICRO_PER_CENT - self.cost_micro_usd


@dataclass
class Report:
    month: str
    users: dict[str, Line]
    plans: dict[str, Line]
    total: Line
    user_plan: dict[str, str]
    catalog: PlanCatalog
    # YYYY-MM-DD (UTC) -> that day's sums, for the HTML charts.
    daily: dict[str, Line] = field(default_factory=dict)


def pages(fetch: Callable[[str | None], Page[T]]) -> Iterator[T]:
    cursor: str | None = None
    while True:
        page = fetch(cursor)
        yield from page.items
        cursor = page.next_cursor
        if cursor is None:
            return


def build(store: UsageStore, start: datetime, end: datetime, catalog: PlanCatalog) -> Report:
    users: dict[str, Line] = defaultdict(Line)
    days: dict[str, Line] = defaultdict(Line)
    total = Line()
    for entry in pages(lambda cursor: store.list_ledger(start, end, PAGE, cursor)):
        if entry.status == LedgerStatus.ADJUSTMENT:
            continue  # an operator's record: no usage, no cost, not a request
        users[entry.user_id].add_entry(entry)
        days[entry.created_at.astimezone(UTC).strftime("%Y-%m-%d")].add_entry(entry)
        total.add_entry(entry)
    for payment in pages(lambda cursor: store.list_payments(start, end, PAGE, cursor)):
        users[payment.user_id].add_payment(payment)
        total.add_payment(payment)
    user_plan: dict[str, str] = {}
    plans: dict[str, Line] = defaultdict(Line)
    for user_id in sorted(users):
        account = store.get_account(user_id)
        plan = account.plan if account is not None and account.plan else NO_PLAN
        user_plan[user_id] = plan
        merge(plans[plan], users[user_id])
    daily = {}
    day = start
    while day < end:
        key = day.strftime("%Y-%m-%d")
        daily[key] = days.get(key, Line())
        day += timedelta(days=1)
    return Report(
        start.strftime("%Y-%m"), dict(users), dict(plans), total, user_plan, catalog, daily
    )


def merge(into: Line, line: Line) -> None:
    into.input_tokens += line.input_tokens
    into.cache_write_tokens += line.cache_write_tokens
    into.cache_read_tokens += line.cache_read_tokens
    into.output_tokens += line.output_tokens
    into.cost_micro_usd += line.cost_micro_usd
    into.requests += line.requests
    for currency, amount in line.revenue.items():
        into.revenue[currency] = into.revenue.get(currency, 0) + amount


def usd(micro: int) -> str:
    """Micro-USD as dollars and cents, rounded half away from zero once."""
    cents = (abs(micro) + MICRO_PER_CENT // 2) // MICRO_PER_CENT
    return f"{'-' if micro < 0 and cents else ''}{cents // 100}.{cents % 100:02d}"


def money(revenue: dict[str, int]) -> str:
    if not revenue:
        return "0.00"
    return " + ".join(
        f"{amount // 100}.{amount % 100:02d} {currency.upper()}"
        for currency, amount in sorted(revenue.items())
    )


USAGE_HEADER = (
    "scope",
    "name",
    "plan",
    "requests",
    "input",
    "cache_writes",
    "cache_reads",
    "output",
    "total_tokens",
    "cost_usd",
    "revenue",
    "margin_usd",
)
ESTIMATE_HEADER = (
    "plan",
    "tokens_per_month",
    "seed_input_share",
    "seed_cost_usd",
    "real_input_share",
    "real_usd_per_mtok",
    "real_cost_usd",
)


def usage_rows(report: Report) -> list[tuple[str, ...]]:
    def row(scope: str, name: str, plan: str, line: Line) -> tuple[str, ...]:
        return (
            scope,
            name,
            plan,
            str(line.requests),
            str(line.input_tokens),
            str(line.cache_write_tokens),
            str(line.cache_read_tokens),
            str(line.output_tokens),
            str(line.tokens),
            usd(line.cost_micro_usd),
            money(line.revenue),
            usd(line.margin_micro_usd),
        )

    rows = [row("plan", plan, plan, report.plans[plan]) for plan in sorted(report.plans)]
    rows += [
        row("user", user, report.user_plan[user], report.users[user])
        for user in sorted(report.users)
    ]
    rows.append(row("total", "", "", report.total))
    return rows


def estimate_rows(report: Report) -> list[tuple[str, ...]]:
    """The seed's estimate per plan, and the same monthly allowance at the ledger's real mix and
    real cost per token (the plan's users', or every user's when the plan had none)."""
    seed_usd_per_token = (
        SEED_INPUT_SHARE * SEED_INPUT_USD_PER_MTOK
        + (1 - SEED_INPUT_SHARE) * SEED_OUTPUT_USD_PER_MTOK
    ) / 1_000_000
    rows: list[tuple[str, ...]] = []
    for plan in sorted(report.catalog.plans.values(), key=lambda plan: plan.tokens_per_month):
        line = report.plans.get(plan.id)
        basis = line if line is not None and line.tokens else report.total
        if basis.tokens:
            real_share = f"{(basis.tokens - basis.output_tokens) / basis.tokens:.1%}"
            micro_per_token = basis.cost_micro_usd / basis.tokens
            real_per_mtok = f"{micro_per_token:.2f}"
            real_cost = usd(round(plan.tokens_per_month * micro_per_token))
        else:
            real_share = real_per_mtok = real_cost = "n/a"
        rows.append(
            (
                plan.id,
                str(plan.tokens_per_month),
                f"{SEED_INPUT_SHARE:.0%}",
                f"{plan.tokens_per_month * seed_usd_per_token:.2f}",
                real_share,
                real_per_mtok,
                real_cost,
            )
        )
    return rows


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, ["-" * width for width in widths], *rows]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


# Installed by `npm ci --prefix tools/report` (pinned in its package.json); inlined so that the
# file opens anywhere, offline, with no CDN.
CHART_JS = Path(__file__).resolve().parents[1] / "report" / "node_modules" / "chart.js" / "dist"
CHART_JS_FILE = CHART_JS / "chart.umd.js"


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: Report) -> str:
    try:
        library = CHART_JS_FILE.read_text(encoding="utf-8").replace("</script", "<\\/script")
    except OSError:
        raise InvalidRequest(
            "the HTML report needs Chart.js: run npm ci --prefix tools/report"
        ) from None
    data = {
        "days": list(report.daily),
        "input": [line.input_tokens for line in report.daily.values()],
        "cacheWrites": [line.cache_write_tokens for line in report.daily.values()],
        "cacheReads": [line.cache_read_tokens for line in report.daily.values()],
        "output": [line.output_tokens for line in report.daily.values()],
        "costUsd": [line.cost_micro_usd / 1_000_000 for line in report.daily.values()],
    }
    # `</` cannot end the script early once escaped.
    payload = json.dumps(data).replace("</", "<\\/")
    title = f"Usage, cost and revenue, {report.month} (UTC)"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #1f2937; }}
table {{ border-collapse: collapse; margin-bottom: 2rem; font-size: 0.9rem; }}
th, td {{ border: 1px solid #d1d5db; padding: 0.3rem 0.6rem; text-align: right; }}
td {{ font-variant-numeric: tabular-nums; white-space: nowrap; }}
th {{ background: #f3f4f6; }}
.charts {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 2rem; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<div class="charts"><div><h2>Daily tokens</h2><canvas id="tokens"></canvas></div>
<div><h2>Daily cost (USD)</h2><canvas id="cost"></canvas></div></div>
<h2>Per plan and per user</h2>
{html_table(USAGE_HEADER, usage_rows(report))}
<h2>Estimated cost per plan: the seed's (60 % input, $3 / $15 per MTok) and the ledger's</h2>
{html_table(ESTIMATE_HEADER, estimate_rows(report))}
<script>{library}</script>
<script>
const data = {payload};
const stacked = {{ x: {{ stacked: true }}, y: {{ stacked: true, beginAtZero: true }} }};
new Chart(document.getElementById("tokens"), {{
  type: "bar",
  data: {{ labels: data.days, datasets: [
    {{ label: "input", data: data.input }},
    {{ label: "cache writes", data: data.cacheWrites }},
    {{ label: "cache reads", data: data.cacheReads }},
    {{ label: "output", data: data.output }},
  ] }},
  options: {{ animation: false, scales: stacked }},
}});
new Chart(document.getElementById("cost"), {{
  type: "line",
  data: {{ labels: data.days, datasets: [{{ label: "cost (USD)", data: data.costUsd }}] }},
  options: {{ animation: false, scales: {{ y: {{ beginAtZero: true }} }} }},
}});
</script>
</body></html>
"""


def render(report: Report, form: str) -> str:
    if form == "html":
        return render_html(report)
    if form == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(("month", *USAGE_HEADER))
        writer.writerows((report.month, *row) for row in usage_rows(report))
        writer.writerow(())
        writer.writerow(("month", *ESTIMATE_HEADER))
        writer.writerows((report.month, *row) for row in estimate_rows(report))
        return buffer.getvalue()
    return (
        f"Usage, cost and revenue, {report.month} (UTC)\n"
        f"{table(USAGE_HEADER, usage_rows(report))}\n\n"
        "Estimated cost per plan: the seed's (60 % input, $3 / $15 per MTok) and the ledger's\n"
        f"{table(ESTIMATE_HEADER, estimate_rows(report))}\n"
    )


def run(args: argparse.Namespace, context: Context) -> int:
    start, end = args.month
    if start > context.clock():
        raise InvalidRequest(f"{start:%Y-%m} has not started yet")
    report = build(context.store(), start, end, load_default_plans())
    text = render(report, args.format)
    if args.out:
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as error:
            raise InvalidRequest(f"cannot write {args.out}: {error.strerror}") from None
        context.say(f"report of {report.month} written to {args.out}")
    else:
        context.out.write(text)
    return 0
