"""Token accounting: validation of the disjoint usage fields and how usages add up."""

from __future__ import annotations

import pytest
from hypothesis import given
from metering.errors import InvalidRequest
from metering.tokens import TokenUsage

from tests.strategies import token_usages
from tests.support.builders import token_usage


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"input_tokens": -1}, id="negative-input"),
        pytest.param({"output_tokens": -5}, id="negative-output"),
        pytest.param({"cache_read_input_tokens": True}, id="bool-is-not-a-count"),
        pytest.param({"steps": 1.0}, id="float-is-not-a-count"),
        pytest.param({"input_tokens": "3"}, id="string-is-not-a-count"),
        pytest.param(
            {"cache_creation_input_tokens": 10, "cache_creation_1h_tokens": 11},
            id="1h-writes-exceed-all-writes",
        ),
        pytest.param({"cache_creation_1h_tokens": 1}, id="1h-writes-without-writes"),
    ],
)
def test_invalid_usage_is_refused(fields: dict[str, object]) -> None:
    """A usage with a negative, non-integer or inconsistent field cannot be built."""
    with pytest.raises(InvalidRequest):
        TokenUsage(**fields)  # type: ignore[arg-type]


def test_total_counts_each_disjoint_field_once() -> None:
    """The charge is input + cache writes + cache reads + output; 1h writes are not added again."""
    usage = token_usage(input=100, writes=40, reads=300, output=7, writes_1h=25, steps=2)

    assert usage.total_tokens == 447
    assert usage.cache_creation_5m_tokens == 15


def test_empty_usage_totals_zero() -> None:
    """A request that made no call is charged nothing."""
    assert TokenUsage().total_tokens == 0


@given(token_usages(), token_usages())
def test_totals_add_up_across_plus(a: TokenUsage, b: TokenUsage) -> None:
    """The total of a sum of usages is the sum of their totals, field by field."""
    combined = a + b

    assert combined.total_tokens == a.total_tokens + b.total_tokens
    assert combined.steps == a.steps + b.steps
    assert (
        combined.cache_creation_1h_tokens == a.cache_creation_1h_tokens + b.cache_creation_1h_tokens
    )
    assert (
        combined.cache_creation_5m_tokens == a.cache_creation_5m_tokens + b.cache_creation_5m_tokens
    )


@given(token_usages())
def test_empty_usage_is_the_identity_of_plus(usage: TokenUsage) -> None:
    """Adding nothing changes nothing, on either side."""
    assert usage + TokenUsage() == usage == TokenUsage() + usage
