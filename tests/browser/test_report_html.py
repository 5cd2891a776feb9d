"""The HTML report opened in Debian's chromium: Chart.js (inlined, no network) draws both charts
and the page's totals are the store's."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from localruntime.sqlite_store import SQLiteStore
from tools import admin
from tools.screenshots import REPORT_MONTH, REPORT_USERS, seed_report_month

# The share of a chart's pixels that are not blank once drawn (axes, bars, the line).
DRAWN = """(id) => {
  const canvas = document.getElementById(id);
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let index = 3; index < pixels.length; index += 4) if (pixels[index] > 0) painted += 1;
  return painted / (pixels.length / 4);
}"""


def test_the_report_draws_its_charts_offline_with_the_ledgers_totals(
    page: Page, tmp_path: Path
) -> None:
    store = SQLiteStore(str(tmp_path / "metering.sqlite3"))
    seed_report_month(store)
    target = tmp_path / "report.html"
    month = REPORT_MONTH.strftime("%Y-%m")
    code = admin.main(
        ["report", "--month", month, "--format", "html", "--out", str(target)],
        environ={"DATA_DIR": str(tmp_path)},
    )
    assert code == 0
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(target.as_uri())

    expect(page.locator("canvas")).to_have_count(2)
    for chart in ("tokens", "cost"):
        page.wait_for_function(f"({DRAWN})('{chart}') > 0.01")
    assert errors == []
    assert requested == [target.as_uri()]  # the library is inlined: nothing else is fetched
    total = page.locator("tr").filter(has=page.locator("td", has_text="total"))
    revenue = sum(amount for _, _, amount, _ in REPORT_USERS) / 100
    expect(total).to_contain_text(f"{revenue:.2f} USD")
    expect(total).to_contain_text(str(30 * len(REPORT_USERS)))
