"""Each benchmark's core at a tiny size: the structural facts its tables rest on (no timings)."""

from __future__ import annotations

import pytest

from benchmarks import cold_start, concurrency, cron_cost, store_calls
from benchmarks.common import Table, ratio


def test_store_calls_count_one_reservation_and_settlement_per_model_call() -> None:
    """Ours reserves once per model call and releases at most once per call; a refused request
    and a retry only read, and a retry calls no model; the seed rewrites the counter once per
    call and runs a retry again; HTTP is counted on Appwrite only."""
    rows = {(row.scenario, row.backend): row for row in store_calls.measure(requests=1)}
    assert len(rows) == 8
    for backend in ("SQLite", "Appwrite emulator"):
        single = rows[("single step", backend)]
        loop = rows[("3-step tool loop", backend)]
        refused = rows[("refused at the limit (429)", backend)]
        retry = rows[("retry of a completed request", backend)]
        assert single.ours.by_method["reserve"] == 1
        assert single.ours.by_method["create_ledger"] == 1
        assert single.ours.by_method["update_ledger"] == 1
        assert loop.ours.by_method["reserve"] == 3
        assert loop.ours.by_method["release"] <= 3
        assert single.seed.by_method == {"read_usage": 1, "read_used": 1, "write_used": 1}
        assert loop.seed.by_method["write_used"] == 3
        for reads_only in (refused, retry):
            assert all(name.startswith(("get_", "find_")) for name in reads_only.ours.by_method)
        assert (single.ours.model_calls, loop.ours.model_calls, retry.ours.model_calls) == (1, 3, 0)
        assert retry.seed.model_calls == 1
        assert retry.seed.by_method["write_used"] == 1
        assert refused.seed.by_method == {"read_usage": 1}
        http = [row.ours.http_requests for row in (single, loop, refused, retry)]
        if backend == "SQLite":
            assert http == [None, None, None, None]
        else:
            assert all(count is not None and count >= 1 for count in http)
            assert single.seed.http_requests == 3


def test_concurrency_ours_never_overshoots_nor_loses_an_update() -> None:
    """Under concurrent requests near the limit ours serves nothing past it, loses no charge and
    keeps its counter equal to its ledger; the seed's figures are reported alongside."""
    outcomes = concurrency.measure(threads=6, rounds=1, headroom=2_500, seed=3)
    assert [(o.backend, o.flow.split()[0]) for o in outcomes] == [
        ("SQLite", "ours"),
        ("SQLite", "seed"),
        ("Appwrite emulator", "ours"),
        ("Appwrite emulator", "seed"),
    ]
    for outcome in outcomes:
        assert outcome.errors == 0
        assert outcome.served + outcome.refused == outcome.requests == 6
        assert outcome.lost_updates >= 0  # a read-then-write can lose charges, never invent them
    for ours in outcomes[::2]:
        assert ours.overshoot == 0
        assert ours.counter_past_limit == 0
        assert ours.lost_updates == 0
        assert ours.ledger_drift == 0
        assert ours.served >= 1
    for seed in outcomes[1::2]:
        assert seed.ledger_drift is None
        assert seed.overshoot >= 0


@pytest.mark.slow  # two fresh interpreters, each importing a function
def test_cold_start_reports_packages_and_keeps_anthropic_out_of_the_cron() -> None:
    """The cron's entry module loads no Anthropic SDK, while the eager baseline does."""
    (result,) = cold_start.measure(runs=1, function_ids=("monthly-reset-cron",))
    assert result.function_id == "monthly-reset-cron"
    assert not result.imports_anthropic
    assert {"anthropic", "stripe", "appwrite"} <= set(result.eager_packages)
    assert result.ours_seconds > 0
    assert result.eager_seconds > 0


@pytest.mark.slow  # a fresh interpreter per function
@pytest.mark.parametrize("function_id", ["usage", "stripe-webhook"])
def test_cold_start_sample_of_functions_that_must_not_load_anthropic(function_id: str) -> None:
    """``usage`` and ``stripe-webhook`` never import ``anthropic`` at cold start."""
    assert "anthropic" not in cold_start.sample(function_id).packages


def test_cron_cost_paged_queries_find_exactly_the_rows_the_full_scan_finds() -> None:
    """Both approaches find the same due rows and do the same resets; ours reads only due rows."""
    size = 600
    comparisons = cron_cost.measure(subscriptions=size)
    by_key = {(c.due > 0, c.measure): c for c in comparisons}
    find = by_key[(True, "find due rows")]
    assert find.due == size // cron_cost.DUE_EVERY
    assert find.ours.due == find.baseline.due == find.due
    assert find.ours.rows_read == find.due
    assert find.baseline.rows_read == size
    run = by_key[(True, "whole cron run")]
    assert run.ours.due == run.baseline.due == find.due
    assert run.ours.store_calls < run.baseline.store_calls
    idle = by_key[(False, "find due rows")]
    assert idle.ours.rows_read == 0
    assert idle.ours.due == idle.baseline.due == 0
    assert idle.baseline.rows_read == size


def test_tables_render_markdown_and_ratios_divide_as_labelled() -> None:
    """A table has a header, an alignment rule and one line per row; ratio is a / b."""
    table = Table(["name", "calls"])
    table.add("ours", 1_000)
    lines = table.render().splitlines()
    assert lines == ["| name | calls |", "| ---- | ----: |", "| ours | 1,000 |"]
    assert ratio(6, 3) == "2.00x"
    assert ratio(3, 0) == "inf"
    assert ratio(0, 0) == "1.00x"
