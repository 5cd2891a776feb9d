"""Reservation arithmetic for the hard cap: the input bound, the call budget, settlement."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from metering.reservation import (
    PER_MESSAGE_OVERHEAD_TOKENS,
    PER_REQUEST_OVERHEAD_TOKENS,
    CallBudget,
    Settlement,
    budget_call,
    input_upper_bound,
    settle,
)


def test_input_bound_counts_utf8_bytes_plus_framing() -> None:
    """Multi-byte characters count by their bytes, and each message adds its overhead."""
    bound = input_upper_bound(["hello", "héllo €"], messages=2)

    assert bound == 5 + 10 + 2 * PER_MESSAGE_OVERHEAD_TOKENS + PER_REQUEST_OVERHEAD_TOKENS


@pytest.mark.parametrize(
    ("remaining", "input_tokens", "configured", "minimum", "expected"),
    [
        pytest.param(10_000, 500, 1_024, 64, CallBudget(500, 1_024, capped=False), id="roomy"),
        pytest.param(1_524, 500, 1_024, 64, CallBudget(500, 1_024, capped=False), id="exact-fit"),
        pytest.param(1_000, 500, 1_024, 64, CallBudget(500, 500, capped=True), id="capped"),
        pytest.param(564, 500, 1_024, 64, CallBudget(500, 64, capped=True), id="just-the-minimum"),
        pytest.param(563, 500, 1_024, 64, None, id="minimum-does-not-fit"),
        pytest.param(400, 500, 1_024, 64, None, id="input-alone-too-big"),
        pytest.param(501, 500, 1_024, 0, CallBudget(500, 1, capped=True), id="at-least-one-token"),
        pytest.param(500, 500, 1_024, 0, None, id="no-room-for-any-output"),
        pytest.param(0, 0, 1_024, 1, None, id="nothing-left"),
    ],
)
def test_budget_call(
    remaining: int, input_tokens: int, configured: int, minimum: int, expected: CallBudget | None
) -> None:
    """The call gets the configured max_tokens, capped to what remains, or nothing at all."""
    assert budget_call(remaining, input_tokens, configured, minimum) == expected


@given(
    remaining=st.integers(min_value=0, max_value=10**7),
    input_tokens=st.integers(min_value=0, max_value=10**6),
    configured=st.integers(min_value=1, max_value=10**5),
    minimum=st.integers(min_value=0, max_value=10**4),
)
def test_a_budgeted_call_always_fits_in_what_remains(
    remaining: int, input_tokens: int, configured: int, minimum: int
) -> None:
    """Whatever the numbers, a budget never reserves more than remains nor sends a tiny call."""
    budget = budget_call(remaining, input_tokens, configured, minimum)

    if budget is None:
        assert remaining - input_tokens < max(1, minimum)
    else:
        assert budget.reserve_tokens <= remaining
        assert min(configured, max(1, minimum)) <= budget.max_tokens <= configured
        assert budget.capped == (budget.max_tokens < configured)


@pytest.mark.parametrize(
    ("reserved", "actual", "expected"),
    [
        pytest.param(1_000, 400, Settlement(charged=400, release=600, extra=0), id="under"),
        pytest.param(1_000, 1_000, Settlement(charged=1_000, release=0, extra=0), id="exact"),
        pytest.param(1_000, 0, Settlement(charged=0, release=1_000, extra=0), id="nothing-used"),
        pytest.param(1_000, 1_100, Settlement(charged=1_100, release=0, extra=100), id="over"),
    ],
)
def test_settle(reserved: int, actual: int, expected: Settlement) -> None:
    """Settling charges the actual usage: the rest goes back, any excess is charged on top."""
    assert settle(reserved, actual) == expected


@given(st.integers(min_value=0, max_value=10**7), st.integers(min_value=0, max_value=10**7))
def test_settlement_balances(reserved: int, actual: int) -> None:
    """What stays on the counter after settling is exactly the actual usage."""
    settlement = settle(reserved, actual)

    assert reserved - settlement.release + settlement.extra == settlement.charged == actual
    assert min(settlement.release, settlement.extra) == 0
