"""Hypothesis strategies shared by the property tests: metering domain values and any JSON."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st
from metering.account import Account
from metering.timeutil import month_start, next_month_start
from metering.tokens import TokenUsage

token_counts = st.integers(min_value=0, max_value=2_000_000)


@st.composite
def token_usages(draw: st.DrawFn) -> TokenUsage:
    """Any valid usage: the one-hour cache writes are a subset of all cache writes."""
    cache_creation = draw(token_counts)
    return TokenUsage(
        input_tokens=draw(token_counts),
        cache_creation_input_tokens=cache_creation,
        cache_read_input_tokens=draw(token_counts),
        output_tokens=draw(token_counts),
        cache_creation_1h_tokens=draw(st.integers(min_value=0, max_value=cache_creation)),
        steps=draw(st.integers(min_value=0, max_value=20)),
    )


# Whole seconds: stores keep milliseconds, and nothing in the domain needs finer.
instants = st.datetimes(
    min_value=datetime(2020, 1, 1),  # noqa: DTZ001 -- bounds of a strategy that adds UTC
    max_value=datetime(2035, 12, 31),  # noqa: DTZ001
    timezones=st.just(UTC),
).map(lambda moment: moment.replace(microsecond=0))

month_starts = instants.map(month_start)


@st.composite
def accounts(draw: st.DrawFn, user_id: str = "user-1") -> Account:
    """An account in any reachable state: counters may sit anywhere up to (and past) the limit."""
    period_start = draw(month_starts)
    subscribed = draw(st.booleans())
    plan_tokens = draw(st.integers(min_value=0, max_value=1_000_000))
    addon = draw(st.integers(min_value=0, max_value=100_000))
    topup = draw(st.integers(min_value=0, max_value=100_000))
    return Account(
        user_id=user_id,
        row_id=user_id,
        plan=draw(st.sampled_from(["demo", "starter", "pro", "business"])),
        status="active" if subscribed else "none",
        max_tokens_per_month=plan_tokens,
        addon_tokens=addon,
        topup_tokens=topup,
        current_tokens_used=draw(
            st.integers(min_value=0, max_value=plan_tokens + addon + topup + 1_000)
        ),
        lifetime_tokens_used=draw(st.integers(min_value=0, max_value=10**9)),
        period_start=period_start,
        period_end=next_month_start(period_start),
        stripe_subscription_id="sub_1" if subscribed else None,
        storage_bytes_used=draw(st.integers(min_value=0, max_value=10**10)),
        storage_bytes_limit=draw(st.integers(min_value=0, max_value=10**10)),
        bank_connections_used=draw(st.integers(min_value=0, max_value=60)),
        bank_connections_limit=draw(st.integers(min_value=0, max_value=50)),
    )


json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)


def json_values(*, width: int = 4, key_size: int = 10, leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value: null, booleans, numbers and short strings, nested in lists and objects of
    up to ``width`` items (keys up to ``key_size`` characters), ``leaves`` scalars at most."""
    return st.recursive(
        json_scalars,
        lambda inner: (
            st.lists(inner, max_size=width)
            | st.dictionaries(st.text(max_size=key_size), inner, max_size=width)
        ),
        max_leaves=leaves,
    )


@st.composite
def periods(draw: st.DrawFn) -> tuple[datetime, datetime]:
    """A billing period: a start and an end one to 400 days later."""
    start = draw(instants)
    return start, start + timedelta(days=draw(st.integers(min_value=1, max_value=400)))
