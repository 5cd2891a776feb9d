"""Accounts: the limit, the UsageStats document, warning levels and the period reset rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from metering.account import (
    Account,
    Level,
    PeriodClose,
    apply_reset,
    close_period,
    demo_period_due,
    level,
    new_account,
    percent,
    plan_reset,
)
from metering.plans import load_default_plans
from metering.wire import usage_stats

from tests.strategies import accounts, instants, periods
from tests.support.builders import APRIL, MARCH, MAY, NOW, subscription


def starter(**fields: object) -> Account:
    """A 50,000-token subscription in March; ``fields`` override."""
    return subscription(50_000, **fields)


def test_new_account_is_on_the_default_plan_for_this_calendar_month() -> None:
    """First touch: the Demo allowance, zero usage, the current UTC month as period."""
    account = new_account("user-1", load_default_plans().default, NOW)

    assert (account.plan, account.max_tokens_per_month, account.current_tokens_used) == (
        "demo",
        30,
        0,
    )
    assert (account.period_start, account.period_end) == (MARCH, APRIL)
    assert account.row_id == "user-1"
    assert not account.has_subscription


def test_limit_is_plan_plus_addon_plus_topup() -> None:
    """The allowance adds the plan's tokens, recurring add-ons and the one-time top-up balance."""
    account = starter(addon_tokens=5_000, topup_tokens=2_500, current_tokens_used=57_000)

    assert account.limit == 57_500
    assert account.remaining == 500


def test_usage_stats_has_exactly_the_contract_shape() -> None:
    """The UsageStats document carries exactly the keys and values of the HTTP contract."""
    account = starter(
        addon_tokens=10_000,
        topup_tokens=0,
        current_tokens_used=45_000,
        lifetime_tokens_used=123,
        storage_bytes_used=512,
        storage_bytes_limit=1_024,
        bank_connections_used=1,
        bank_connections_limit=3,
    )

    assert usage_stats(account) == {
        "userId": "user-1",
        "plan": "starter",
        "level": "warning",
        "tokens": {
            "used": 45_000,
            "limit": 60_000,
            "remaining": 15_000,
            "percent": 75.0,
            "planTokens": 50_000,
            "addonTokens": 10_000,
            "topupTokens": 0,
            "lifetimeUsed": 123,
            "periodStart": "2026-03-01T00:00:00.000Z",
            "resetsAt": "2026-04-01T00:00:00.000Z",
        },
        "storage": {"used": 512, "limit": 1_024, "percent": 50.0},
        "banks": {"used": 1, "limit": 3, "percent": 33.3},
    }


@pytest.mark.parametrize(
    ("account", "resets_at"),
    [
        pytest.param(starter(period_end=MAY), "2026-05-01T00:00:00.000Z", id="stripe-period-end"),
        pytest.param(starter(period_end=None), None, id="subscription-without-period-end"),
        pytest.param(
            starter(stripe_subscription_id=None, period_end=None),
            "2026-04-01T00:00:00.000Z",
            id="demo-next-utc-month",
        ),
    ],
)
def test_usage_stats_resets_at(account: Account, resets_at: str | None) -> None:
    """Subscriptions reset at Stripe's period end; Demo at the next UTC month."""
    assert usage_stats(account)["tokens"]["resetsAt"] == resets_at


def test_unlimited_metrics_report_zero_percent() -> None:
    """Storage and banks without a limit show 0 %, not a division error."""
    stats = usage_stats(starter(storage_bytes_used=10, storage_bytes_limit=0))

    assert stats["storage"] == {"used": 10, "limit": 0, "percent": 0.0}


@pytest.mark.parametrize(
    ("used", "limit", "expected"),
    [
        pytest.param(0, 1_000, Level.OK, id="unused"),
        pytest.param(749, 1_000, Level.OK, id="74.9%"),
        pytest.param(7_499, 10_000, Level.OK, id="74.99%-does-not-round-up"),
        pytest.param(750, 1_000, Level.WARNING, id="75%"),
        pytest.param(899, 1_000, Level.WARNING, id="89.9%"),
        pytest.param(900, 1_000, Level.CRITICAL, id="90%"),
        pytest.param(999, 1_000, Level.CRITICAL, id="99.9%"),
        pytest.param(1_000, 1_000, Level.EXCEEDED, id="100%"),
        pytest.param(1_001, 1_000, Level.EXCEEDED, id="past-the-limit"),
        pytest.param(0, 0, Level.EXCEEDED, id="zero-allowance"),
        pytest.param(3, 4, Level.WARNING, id="small-limit-75%"),
        pytest.param(29, 30, Level.CRITICAL, id="demo-96.7%"),
    ],
)
def test_level_boundaries(used: int, limit: int, expected: Level) -> None:
    """Warning from 75 %, critical from 90 %, exceeded at 100 %, all inclusive."""
    assert level(used, limit) is expected


@pytest.mark.parametrize(
    ("used", "limit", "expected"),
    [
        pytest.param(0, 0, 0.0, id="nothing-of-nothing"),
        pytest.param(5, 0, 100.0, id="anything-of-nothing"),
        pytest.param(1, 3, 33.3, id="one-decimal"),
        pytest.param(2, 3, 66.6, id="rounded-down"),
        pytest.param(9_996, 10_000, 99.9, id="not-100-before-the-limit"),
        pytest.param(1_200, 1_000, 100.0, id="capped-at-100"),
    ],
)
def test_percent(used: int, limit: int, expected: float) -> None:
    """Percentages have one decimal, round down (100 only at the limit) and never pass 100."""
    assert percent(used, limit) == expected


@given(accounts())
def test_remaining_is_never_negative(account: Account) -> None:
    """Whatever the counters, remaining is between zero and the limit, and percent in [0, 100]."""
    stats = usage_stats(account)

    assert 0 <= account.remaining <= max(0, account.limit)
    assert stats["tokens"]["remaining"] == account.remaining
    assert 0.0 <= stats["tokens"]["percent"] <= 100.0
    assert (stats["level"] == "exceeded") == (account.remaining == 0)


# -- resets --------------------------------------------------------------------------------------


def test_reset_moves_usage_to_lifetime_and_consumes_topup_beyond_the_allowance() -> None:
    """Usage past plan + add-on comes out of the top-up; the counter restarts."""
    account = starter(
        addon_tokens=5_000,
        topup_tokens=8_000,
        current_tokens_used=58_000,
        lifetime_tokens_used=1_000,
    )

    reset = plan_reset(account, APRIL, MAY, NOW)

    assert reset is not None
    assert close_period(account, carried=0) == PeriodClose(used=58_000, topup_consumed=3_000)
    after = apply_reset(account, reset)
    assert (after.current_tokens_used, after.lifetime_tokens_used, after.topup_tokens) == (
        0,
        59_000,
        5_000,
    )
    assert (after.period_start, after.period_end, after.last_token_reset_at) == (APRIL, MAY, NOW)


@pytest.mark.parametrize(
    "new_start",
    [pytest.param(MARCH, id="same-period"), pytest.param(MARCH - timedelta(days=1), id="earlier")],
)
def test_reset_that_is_not_forward_is_not_planned(new_start: datetime) -> None:
    """A renewal for the current or an earlier period plans nothing."""
    assert plan_reset(starter(current_tokens_used=10), new_start, APRIL, NOW) is None


def test_reset_carries_the_requests_in_flight_into_the_new_period() -> None:
    """What requests in flight put on the counter stays on it: they end in the new period.
    The ending period's usage is the rest, and only it can consume the top-up."""
    account = starter(current_tokens_used=58_000, topup_tokens=8_000, lifetime_tokens_used=10)
    reset = plan_reset(account, APRIL, MAY, NOW)
    assert reset is not None

    after = apply_reset(account, reset, carried=6_500)

    assert close_period(account, carried=6_500) == PeriodClose(used=51_500, topup_consumed=1_500)
    assert (after.current_tokens_used, after.lifetime_tokens_used, after.topup_tokens) == (
        6_500,
        51_510,
        6_500,
    )


def test_a_reset_never_carries_more_than_the_counter_holds() -> None:
    """A counter below what its requests in flight hold (an operator lowered it) closes the
    period at zero usage and keeps what it has."""
    account = starter(current_tokens_used=300)

    assert close_period(account, carried=1_000) == PeriodClose(used=0, topup_consumed=0)


@given(accounts(), periods(), instants)
def test_a_reset_never_moves_a_period_backwards(
    account: Account, period: tuple[datetime, datetime], now: datetime
) -> None:
    """A planned reset always starts after the stored period, and the result moves forward."""
    reset = plan_reset(account, period[0], period[1], now)

    if reset is None:
        assert period[0] <= account.period_start
    else:
        assert reset.period_start > account.period_start
        assert apply_reset(account, reset).period_start > account.period_start


@given(accounts(), periods(), instants)
def test_applying_the_same_reset_twice_equals_once(
    account: Account, period: tuple[datetime, datetime], now: datetime
) -> None:
    """Renewing to a period, planned from the state at hand each time, twice equals once.

    (That a store applies one plan at most once is pinned by the store contract suite.)
    """

    def renew(state: Account) -> Account:
        reset = plan_reset(state, period[0], period[1], now)
        return state if reset is None else apply_reset(state, reset)

    once = renew(account)

    assert renew(once) == once
    assert once.current_tokens_used + once.lifetime_tokens_used == (
        account.current_tokens_used + account.lifetime_tokens_used
    )
    assert 0 <= once.topup_tokens <= account.topup_tokens


@pytest.mark.parametrize(
    ("account", "now", "due"),
    [
        pytest.param(starter(stripe_subscription_id=None), NOW, None, id="demo-within-its-month"),
        pytest.param(
            starter(stripe_subscription_id=None),
            APRIL,
            (APRIL, MAY),
            id="demo-at-the-first-of-the-month",
        ),
        pytest.param(
            starter(stripe_subscription_id=None),
            datetime(2026, 6, 10, tzinfo=UTC),
            (datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 7, 1, tzinfo=UTC)),
            id="demo-months-behind-jumps-to-now",
        ),
        pytest.param(starter(), datetime(2026, 6, 10, tzinfo=UTC), None, id="subscription"),
    ],
)
def test_demo_period_due(
    account: Account, now: datetime, due: tuple[datetime, datetime] | None
) -> None:
    """Demo accounts move to the current UTC month once it began; subscriptions never do here."""
    assert demo_period_due(account, now) == due
