"""Each benchmark's core at a tiny size: the structural facts its tables rest on (no timings)."""

from __future__ import annotations

import pytest

from benchmarks import (
    cold_start,
    concurrency,
    cron_cost,
    first_token,
    progress_writes,
    stop_latency,
    store_calls,
    webhooks,
)
from benchmarks.__main__ import BENCHMARKS
from benchmarks.common import Table, ratio


def test_store_calls_single_step_is_eight_http_requests_with_atomic_open_and_settle() -> None:
    """A single step opens the request and settles it, each one transaction (3 HTTP requests,
    and the settle's read of the account's period), in at most 8 HTTP requests with or without
    a turn row; a tool loop holds once per later step; a refused request and a retry write
    nothing and a retry calls no model; progress calls are counted apart; the seed rewrites the
    counter once per call and runs a retry again."""
    measured = store_calls.measure(requests=1)
    assert "| single step " in store_calls.render(measured)
    rows = {(row.scenario, row.backend): row for row in measured}
    assert len(rows) == 8
    for backend in ("SQLite", "Appwrite emulator"):
        single = rows[("single step", backend)]
        loop = rows[("3-step tool loop", backend)]
        refused = rows[("refused at the limit (429)", backend)]
        retry = rows[("retry of a completed request", backend)]
        assert single.ours_plain is not None
        for counts in (single.ours_turn, single.ours_plain):
            assert counts.by_method == {"get_account": 1, "open_request": 1, "settle": 1}
        atomic = ("open_request", "hold", "settle")
        in_loop = {name: loop.ours_turn.by_method[name] for name in atomic}
        assert in_loop == {"open_request": 1, "hold": 2, "settle": 3}
        assert loop.ours_turn.progress_calls == loop.ours_turn.by_method["stop_requested"]
        assert single.seed.by_method == {"read_usage": 1, "read_used": 1, "write_used": 1}
        assert loop.seed.by_method["write_used"] == 3
        for reads_only in (refused.ours_turn, refused.ours_plain):
            assert reads_only is not None
            assert all(name.startswith("get_") for name in reads_only.by_method)
        # A retry's claim is refused (the entry exists): nothing held, settled or discarded.
        assert not {"hold", "settle", "discard_request"} & set(retry.ours_turn.by_method)
        assert retry.ours_plain is None
        assert (single.ours_turn.model_calls, loop.ours_turn.model_calls) == (1, 3)
        assert retry.ours_turn.model_calls == 0
        assert retry.seed.model_calls == 1
        assert refused.seed.by_method == {"read_usage": 1}
        if backend == "SQLite":
            assert single.ours_turn.http_requests is None
            continue
        for counts in (single.ours_turn, single.ours_plain):
            assert counts.http_requests is not None
            assert counts.http_requests <= 8
            assert counts.transactions == {"open_request": True, "settle": True}
        assert loop.ours_turn.transactions == {"open_request": True, "hold": True, "settle": True}
        assert single.seed.http_requests == 3


def test_first_token_waits_for_one_read_and_one_transaction() -> None:
    """Before its model call a turn reads the account and opens the request in one transaction
    (4 HTTP requests on Appwrite); the seed only reads."""
    measured = first_token.measure(requests=1, event_delay=0.0)
    assert "| before (published counts) " in first_token.render(measured)
    results = {(r.backend, r.flow): r for r in measured}
    for backend in ("SQLite", "Appwrite emulator"):
        assert results[(backend, "ours, turn")].store_calls == 2
        assert results[(backend, "ours, no turn")].store_calls == 2
        assert results[(backend, "seed")].store_calls == 1
    assert results[("Appwrite emulator", "ours, turn")].http_requests == 4
    assert results[("Appwrite emulator", "seed")].http_requests == 1
    assert results[("SQLite", "seed")].http_requests is None


def test_progress_writes_pair_a_text_write_with_a_stop_check_per_interval() -> None:
    """Ours writes the turn's text only where it looks for a Stop; the naive baseline writes at
    every delta; on Appwrite each progress call is one HTTP request."""
    results = progress_writes.measure(seconds=0.4)
    assert "| naive: every delta " in progress_writes.render(results)
    assert [(r.backend, r.flow) for r in results] == [
        ("SQLite", "ours"),
        ("SQLite", "naive: every delta"),
        ("Appwrite emulator", "ours"),
        ("Appwrite emulator", "naive: every delta"),
    ]
    for ours, naive in zip(results[::2], results[1::2], strict=True):
        assert naive.text_writes == naive.tokens == ours.tokens
        assert ours.text_writes <= ours.stop_checks
        assert ours.text_writes <= naive.text_writes
        for result in (ours, naive):
            if result.http_requests is not None:
                assert result.http_requests == result.text_writes + result.stop_checks


def test_stop_cuts_the_stream_and_charges_what_ran() -> None:
    """A Stop in the store closes the model stream before the reply ends and charges at least
    the text delivered before it and no more than the stream sent; a Stop only in the browser
    charges the whole reply."""
    runs = stop_latency.measure(reply_tokens=60, stops=1)
    assert f"| {stop_latency.BROWSER} " in stop_latency.render(runs)
    assert [(r.backend, r.flow) for r in runs] == [
        ("SQLite", stop_latency.OURS),
        ("SQLite", stop_latency.BROWSER),
        ("Appwrite emulator", stop_latency.OURS),
        ("Appwrite emulator", stop_latency.BROWSER),
    ]
    for ours, browser in zip(runs[::2], runs[1::2], strict=True):
        assert ours.status == "stopped"
        assert ours.estimated
        assert ours.delivered <= ours.charged_output <= ours.sent < ours.reply_tokens
        assert ours.charged_output <= ours.reservation
        assert browser.status == "completed"
        assert browser.charged_output == browser.sent == browser.reply_tokens


def test_concurrency_over_http_ours_never_overshoots_nor_loses_an_update() -> None:
    """Through the runtime's execution API, on SQLite and the TablesDB emulation over HTTP, ours
    (synchronous and streamed turns) serves nothing past the limit, loses no charge and keeps its
    counter equal to its ledger; the seed's read-then-write answers every request; the row with
    the default per-user caps is there."""
    outcomes = concurrency.measure((4,), default_caps_size=4)
    assert "| ours, default caps (3 in flight, 30/min) " in concurrency.render(outcomes)
    expected = [
        (backend, 4, flow)
        for backend in ("SQLite", "Appwrite emulator (HTTP)")
        for flow in concurrency.FLOWS
    ]
    expected.append(("SQLite", 4, concurrency.DEFAULT_CAPS_ROW))
    assert [(o.backend, o.requests, o.flow) for o in outcomes] == expected
    for outcome in outcomes:
        assert not outcome.errors
        assert outcome.served + outcome.refused_total == outcome.requests
        room = concurrency.HEADROOM_PER_REQUEST * 4
        if outcome.flow == concurrency.DEFAULT_CAPS_ROW:
            room = concurrency.CAPS_ROOM
        assert outcome.limit - outcome.start == room
    for ours in (o for o in outcomes if o.flow != concurrency.SEED):
        assert ours.overshoot == ours.counter_past_limit == 0
        assert ours.lost_updates == 0
        assert ours.ledger_drift == 0
        assert set(ours.refused) <= {"token_limit_exceeded", "rate_limited"}
    # With room for every request, whatever the caps refuse is theirs, never the limit's.
    assert outcomes[-1].refused["token_limit_exceeded"] == 0
    for seed in (o for o in outcomes if o.flow == concurrency.SEED):
        assert seed.served == seed.requests  # it checks only what it read before anyone wrote
        assert seed.ledger_drift is None
        assert seed.lost_updates >= 0  # a read-then-write can lose charges, never invent them


def test_webhooks_apply_each_event_once_and_refuse_duplicates_at_the_claim() -> None:
    """Every delivery answers 200; each top-up is credited once however many duplicates came;
    a duplicate costs one store call (the refused claim), a first delivery more."""
    results = webhooks.measure(users=6)
    assert f"| {webhooks.VERIFY_ONLY} " in webhooks.render(results)
    flows = (
        webhooks.VERIFY_ONLY,
        webhooks.OURS_FIRST,
        webhooks.OURS_DUPLICATE,
        webhooks.OURS_MIXED,
    )
    expected = [(backend, flow) for backend in ("SQLite", "Appwrite emulator") for flow in flows]
    assert [(r.backend, r.flow) for r in results] == expected
    for result in results:
        assert result.answered_200 == result.deliveries
    by_key = {(r.backend, r.flow): r for r in results}
    for backend in ("SQLite", "Appwrite emulator"):
        first = by_key[(backend, webhooks.OURS_FIRST)]
        duplicate = by_key[(backend, webhooks.OURS_DUPLICATE)]
        mixed = by_key[(backend, webhooks.OURS_MIXED)]
        assert first.credited == duplicate.credited == first.expected == 6 * webhooks.TOPUP_TOKENS
        assert mixed.credited == mixed.expected == 3 * webhooks.TOPUP_TOKENS
        assert mixed.deliveries == 6
        assert duplicate.store_calls == duplicate.deliveries
        assert first.store_calls > first.deliveries


@pytest.mark.slow  # two fresh interpreters, each importing a function
def test_cold_start_reports_packages_and_keeps_anthropic_out_of_the_cron() -> None:
    """The cron's entry module loads no Anthropic SDK, while the eager baseline does."""
    (result,) = cold_start.measure(runs=1, function_ids=("monthly-reset-cron",))
    assert result.function_id == "monthly-reset-cron"
    assert "| monthly-reset-cron " in cold_start.render([result], 1)
    assert not result.imports_anthropic
    assert result.packages == ()  # its floor imports nothing
    assert {"anthropic", "stripe", "appwrite"} <= set(result.eager_packages)
    assert result.ours_seconds > 0
    assert result.eager_seconds > 0


@pytest.mark.slow  # a fresh interpreter per function
@pytest.mark.parametrize("function_id", ["usage", "stripe-webhook", "billing"])
def test_cold_start_sample_of_functions_that_must_not_load_anthropic(function_id: str) -> None:
    """``usage``, ``stripe-webhook`` and ``billing`` never import ``anthropic`` at cold start;
    the floor imports the same third-party modules without the entry module."""
    ours = cold_start.sample(function_id)
    assert "anthropic" not in ours.packages
    assert ours.modules
    floor = cold_start.sample(function_id, ours.modules, load=False)
    assert floor.packages == ours.packages


def test_cron_cost_ours_reads_only_due_rows_and_does_what_the_full_scan_does() -> None:
    """At every share of due rows both runs do the same work (``measure`` raises otherwise);
    ours reads only the due rows, the scan reads every row; a run with nothing due reads none."""
    shares = ((600, 100), (600, 10), (200, 1))
    comparisons = cron_cost.measure(shares)
    table = [line for line in cron_cost.render(comparisons).splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(comparisons)  # the header, its rule, a row per run
    assert [(c.subscriptions, c.due) for c in comparisons] == [
        (600, 6),
        (600, 0),
        (600, 60),
        (200, 200),
    ]
    for c in comparisons:
        assert c.ours.due == c.baseline.due == c.due
        assert c.baseline.rows_read >= c.subscriptions
        # The due rows' query, then the reconciliation of the users the run reset.
        assert c.ours.rows_read == 2 * c.due
        assert c.ours.store_calls <= c.baseline.store_calls
        assert c.ours.peak_bytes > 0


def test_every_benchmark_is_registered() -> None:
    """``make bench`` runs every benchmark module, those of the identity cache and prompt caching
    included."""
    assert {
        "store_calls",
        "first_token",
        "progress_writes",
        "stop_latency",
        "concurrency",
        "webhooks",
        "cold_start",
        "cron_cost",
        "identity_cache",
        "prompt_caching",
    } == set(BENCHMARKS)


def test_tables_render_markdown_and_ratios_divide_as_labelled() -> None:
    """A table has a header, an alignment rule and one line per row; ratio is a / b."""
    table = Table(["name", "calls"])
    table.add("ours", 1_000)
    lines = table.render().splitlines()
    assert lines == ["| name | calls |", "| ---- | ----: |", "| ours | 1,000 |"]
    assert ratio(6, 3) == "2.00x"
    assert ratio(3, 0) == "inf"
    assert ratio(0, 0) == "1.00x"
