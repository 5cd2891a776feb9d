"""Usage alerts, purely: which threshold is due, its level and texts, and a reset re-arming it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from metering.account import Account, Level, apply_reset, level, plan_reset
from metering.alerts import (
    THRESHOLDS,
    alert_key,
    due,
    notice_email,
    reached,
    threshold_notice,
)

from tests.support.builders import APRIL, MARCH, MAY, NOW, subscription


def starter(used: int, sent: int = 0, **fields: object) -> Account:
    """A 10,000-token subscription in March with ``used`` tokens and ``sent`` the last alert."""
    return subscription(10_000, current_tokens_used=used, alert_threshold_sent=sent, **fields)


@pytest.mark.parametrize(
    ("used", "limit", "expected"),
    [
        pytest.param(0, 10_000, 0, id="nothing-used"),
        pytest.param(7_499, 10_000, 0, id="74.99%"),
        pytest.param(7_500, 10_000, 75, id="75%"),
        pytest.param(8_999, 10_000, 75, id="89.99%"),
        pytest.param(9_000, 10_000, 90, id="90%"),
        pytest.param(9_999, 10_000, 90, id="99.99%"),
        pytest.param(10_000, 10_000, 100, id="100%"),
        pytest.param(3, 4, 75, id="small-limit-75%"),
        pytest.param(0, 0, 0, id="zero-limit-unused"),
        pytest.param(1, 0, 100, id="zero-limit-used"),
    ],
)
def test_reached_is_the_highest_threshold_at_or_below_the_usage(
    used: int, limit: int, expected: int
) -> None:
    """Integer comparisons at 75, 90 and 100 %: 74.99 % reaches nothing."""
    assert reached(used, limit) == expected


@given(
    used=st.integers(min_value=1, max_value=10**9), limit=st.integers(min_value=1, max_value=10**9)
)
def test_the_threshold_reached_agrees_with_the_warning_level(used: int, limit: int) -> None:
    """An alert is reached exactly when the level leaves ``ok``, and names that level."""
    threshold = reached(used, limit)
    expected = {0: Level.OK, 75: Level.WARNING, 90: Level.CRITICAL, 100: Level.EXCEEDED}
    assert expected[threshold] == level(used, limit)


@pytest.mark.parametrize(
    ("used", "sent", "expected"),
    [
        pytest.param(5_000, 0, None, id="below-75"),
        pytest.param(7_600, 0, 75, id="first-75"),
        pytest.param(7_600, 75, None, id="75-already-sent"),
        pytest.param(9_100, 75, 90, id="90-after-75"),
        pytest.param(9_100, 90, None, id="90-already-sent"),
        pytest.param(9_500, 0, 90, id="past-75-and-90-at-once-sends-90-only"),
        pytest.param(10_000, 0, 100, id="straight-to-100"),
        pytest.param(10_000, 90, 100, id="100-after-90"),
        pytest.param(10_000, 100, None, id="100-already-sent"),
        # A top-up lowered the percentage: the period's alerts already sent stay sent.
        pytest.param(7_600, 90, None, id="back-below-the-last-sent"),
    ],
)
def test_due_is_the_new_highest_threshold_only(used: int, sent: int, expected: int | None) -> None:
    """One alert per threshold per period, and only the highest of those crossed at once."""
    assert due(starter(used, sent)) == expected


@pytest.mark.parametrize(
    ("threshold", "level_"),
    [(75, Level.WARNING), (90, Level.CRITICAL), (100, Level.EXCEEDED)],
)
def test_each_threshold_has_the_level_of_the_usage_answer(threshold: int, level_: Level) -> None:
    """75 % is a warning, 90 % critical, 100 % exceeded, as in UsageStats."""
    notice = threshold_notice(starter(10_000), threshold, NOW, "n-1")
    assert (notice.threshold, notice.level) == (threshold, level_)


def test_a_reset_re_arms_every_threshold() -> None:
    """After the reset to April the same usage is due again, under a new period's key."""
    march = starter(9_500, sent=90)
    assert due(march) is None
    reset = plan_reset(march, APRIL, MAY, NOW)
    assert reset is not None

    april = apply_reset(march, reset)

    assert april.alert_threshold_sent == 0
    assert due(replace(april, current_tokens_used=9_500)) == 90
    assert alert_key("user-1", APRIL, 90) != alert_key("user-1", MARCH, 90)


def test_the_key_names_the_user_the_period_and_the_threshold() -> None:
    """One claim per user, period and threshold."""
    keys = {
        alert_key(user, period, threshold)
        for user in ("user-1", "user-2")
        for period in (MARCH, APRIL)
        for threshold in THRESHOLDS
    }
    assert len(keys) == 12
    assert alert_key("user-1", MARCH, 90) == "alert:user-1:2026-03-01T00:00:00.000Z:90"


@pytest.mark.parametrize(
    ("threshold", "says"),
    [
        (75, "75 % of this period's tokens"),
        (90, "A top-up pack or a bigger plan"),
        (100, "new messages are refused until the allowance resets"),
    ],
)
def test_the_notice_says_the_threshold_and_when_usage_resets(threshold: int, says: str) -> None:
    """The text names what was reached and the reset date (the period's end, UTC)."""
    notice = threshold_notice(starter(10_000), threshold, NOW, "n-1")
    assert says in notice.message
    assert notice.message.endswith("Usage resets on 1 April 2026 (UTC).")
    assert (notice.user_id, notice.period_start, notice.created_at) == ("user-1", MARCH, NOW)


def test_a_demo_notice_names_the_next_calendar_month() -> None:
    """Without a subscription usage resets on the first of the next month."""
    demo = starter(30, plan="demo", stripe_subscription_id=None, period_end=None)
    notice = threshold_notice(demo, 100, NOW, "n-1")
    assert notice.message.endswith("Usage resets on 1 April 2026 (UTC).")


def test_an_unknown_threshold_has_no_notice() -> None:
    """Only 75, 90 and 100 % are alerts."""
    with pytest.raises(ValueError, match="50"):
        threshold_notice(starter(10_000), 50, NOW, "n-1")


def test_the_email_goes_to_the_user_under_the_notice_id() -> None:
    """The email's message id is the notice's id, so a resend is refused, not delivered."""
    notice = threshold_notice(starter(9_000), 90, NOW, "hdeadbeef")

    email = notice_email(notice)

    assert (email.message_id, email.user_id) == ("hdeadbeef", "user-1")
    assert email.subject == "You have used 90 % of your tokens"
    assert email.content.startswith(notice.message)
