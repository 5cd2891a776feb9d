"""Cost from the effective-dated price table: exact parts, the cache split, malformed files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from metering.errors import PricingError
from metering.pricing import load_default_prices, parse_prices
from metering.tokens import TokenUsage

from tests.strategies import token_usages

PRICES = load_default_prices()
NOV_2026 = datetime(2026, 11, 15, tzinfo=UTC)
MTOK = 1_000_000
SONNETS = ["claude-sonnet-5-5", "claude-sonnet-5", "claude-sonnet-4-6", "claude-sonnet-4-5"]


def test_sonnet_costs_3_usd_in_and_15_usd_out_per_million_tokens() -> None:
    """A million input plus a million output tokens of the default model cost $18."""
    cost = PRICES.cost(
        "claude-sonnet-5-5", TokenUsage(input_tokens=MTOK, output_tokens=MTOK), NOV_2026
    )

    assert cost.micro_usd == 18_000_000
    assert cost.price_version == "2026-11-01"


@pytest.mark.parametrize("model", SONNETS)
def test_sonnet_cache_prices_follow_the_seed_multipliers(model: str) -> None:
    """Cache writes cost 1.25x (5 min) or 2x (1 h) the input price; cache reads 0.1x."""
    price = PRICES.price_set_at(NOV_2026).models[model]

    assert price.input == 3 * MTOK
    assert price.output == 15 * MTOK
    assert Decimal(price.cache_write_5m) == Decimal("1.25") * price.input
    assert Decimal(price.cache_write_1h) == 2 * price.input
    assert Decimal(price.cache_read) == Decimal("0.1") * price.input


def test_cache_writes_are_split_into_5m_and_1h_parts() -> None:
    """One-hour writes are priced at the 1h rate, the rest of the writes at the 5m rate."""
    usage = TokenUsage(cache_creation_input_tokens=MTOK, cache_creation_1h_tokens=400_000)

    cost = PRICES.cost("claude-sonnet-5-5", usage, NOV_2026)

    parts = {part.kind: (part.tokens, part.pico_usd) for part in cost.parts}
    assert parts["cache_write_5m"] == (600_000, 600_000 * 3_750_000)
    assert parts["cache_write_1h"] == (400_000, 400_000 * 6_000_000)
    assert cost.micro_usd == 2_250_000 + 2_400_000


@pytest.mark.parametrize(
    ("cache_reads", "micro_usd"),
    [
        pytest.param(1, 0, id="0.3-rounds-down"),
        pytest.param(5, 2, id="1.5-rounds-half-up"),
        pytest.param(10, 3, id="exact"),
    ],
)
def test_cost_is_rounded_once_to_whole_micro_usd(cache_reads: int, micro_usd: int) -> None:
    """Parts stay exact; only the final micro-USD figure is rounded, half up."""
    cost = PRICES.cost(
        "claude-sonnet-5-5", TokenUsage(cache_read_input_tokens=cache_reads), NOV_2026
    )

    assert cost.micro_usd == micro_usd


@pytest.mark.parametrize(
    ("at", "version"),
    [
        pytest.param(datetime(2025, 10, 1, tzinfo=UTC), "2025-10-01", id="first-day-of-old"),
        pytest.param(
            datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC), "2025-10-01", id="last-of-old"
        ),
        pytest.param(datetime(2026, 11, 1, tzinfo=UTC), "2026-11-01", id="first-of-new"),
        pytest.param(
            datetime(2026, 12, 1, 23, 59, 59, tzinfo=UTC), "2026-11-01", id="last-of-november"
        ),
        pytest.param(datetime(2026, 12, 2, tzinfo=UTC), "2026-12-02", id="first-of-december"),
        pytest.param(datetime(2030, 1, 1, tzinfo=UTC), "2026-12-02", id="long-after"),
    ],
)
def test_the_newest_started_price_set_is_in_force(at: datetime, version: str) -> None:
    """Effective dating picks the price set that began most recently before the moment."""
    cost = PRICES.cost("claude-sonnet-4-5", TokenUsage(input_tokens=1), at)

    assert cost.price_version == version


def test_nothing_is_priced_before_the_first_price_set() -> None:
    """A moment before every price set has no prices at all."""
    with pytest.raises(PricingError):
        PRICES.cost(
            "claude-sonnet-4-5", TokenUsage(input_tokens=1), datetime(2024, 1, 1, tzinfo=UTC)
        )


@pytest.mark.parametrize(
    ("model", "at"),
    [
        pytest.param("gpt-4o", NOV_2026, id="foreign-model"),
        pytest.param("claude-sonnet-5-5", datetime(2026, 6, 1, tzinfo=UTC), id="not-yet-priced"),
        pytest.param("", NOV_2026, id="empty-name"),
    ],
)
def test_unpriced_model_raises_pricing_error(model: str, at: datetime) -> None:
    """A model without a price in the set in force is an error, never a free call."""
    assert not PRICES.has_model(model, at)
    with pytest.raises(PricingError):
        PRICES.cost(model, TokenUsage(input_tokens=1), at)


def test_aliases_share_their_model_price() -> None:
    """A dated model id costs what its alias costs."""
    usage = TokenUsage(input_tokens=1_234, output_tokens=567)

    dated = PRICES.cost("claude-haiku-4-5-20251001", usage, NOV_2026)

    assert dated == PRICES.cost("claude-haiku-4-5", usage, NOV_2026)


@given(token_usages(), st.sampled_from([*SONNETS, "claude-haiku-4-5", "claude-opus-4-5"]))
def test_cost_equals_the_sum_of_its_priced_parts(usage: TokenUsage, model: str) -> None:
    """Each part is its tokens times its unit price, the total is their sum, no token is lost."""
    price = PRICES.price_set_at(NOV_2026).models[model]
    units = {
        "input": price.input,
        "cache_write_5m": price.cache_write_5m,
        "cache_write_1h": price.cache_write_1h,
        "cache_read": price.cache_read,
        "output": price.output,
    }

    cost = PRICES.cost(model, usage, NOV_2026)

    assert all(part.pico_usd == part.tokens * units[part.kind] for part in cost.parts)
    assert cost.pico_usd == sum(part.pico_usd for part in cost.parts)
    assert sum(part.tokens for part in cost.parts) == usage.total_tokens
    assert abs(cost.micro_usd * MTOK - cost.pico_usd) <= MTOK // 2


@given(token_usages(), token_usages())
def test_exact_cost_is_additive_over_usages(a: TokenUsage, b: TokenUsage) -> None:
    """Pricing two calls apart or their summed usage at once gives the same exact cost."""

    def pico(usage: TokenUsage) -> int:
        return PRICES.cost("claude-sonnet-5-5", usage, NOV_2026).pico_usd

    assert pico(a + b) == pico(a) + pico(b)


# -- malformed price files -----------------------------------------------------------------------

GOOD_MODEL = {
    "input": "3",
    "cacheWrite5m": "3.75",
    "cacheWrite1h": "6",
    "cacheRead": "0.3",
    "output": "15",
}


def price_file(*versions: dict[str, Any]) -> str:
    return json.dumps({"versions": list(versions)})


def version(
    name: str = "v1", effective: object = "2026-01-01T00:00:00Z", **models: Any
) -> dict[str, Any]:
    return {"version": name, "effectiveFrom": effective, "models": models or {"m": GOOD_MODEL}}


def test_a_well_formed_price_file_parses() -> None:
    """The reference file used below is itself valid, so each defect is what fails."""
    table = parse_prices(price_file(version()))

    assert table.has_model("m", datetime(2026, 2, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{oops", id="bad-json"),
        pytest.param("[]", id="not-an-object"),
        pytest.param(json.dumps({"versions": {}}), id="versions-not-a-list"),
        pytest.param(price_file(), id="no-versions"),
        pytest.param(json.dumps({"versions": ["v1"]}), id="version-not-an-object"),
        pytest.param(price_file(version(name="")), id="empty-version"),
        pytest.param(price_file(version(effective="2026-01-01")), id="naive-effective-date"),
        pytest.param(price_file(version(effective=None)), id="missing-effective-date"),
        pytest.param(
            price_file({"version": "v1", "effectiveFrom": "2026-01-01T00:00:00Z", "models": {}}),
            id="no-models",
        ),
        pytest.param(price_file(version(m="cheap")), id="model-not-an-object"),
        pytest.param(price_file(version(m={**GOOD_MODEL, "input": "-1"})), id="negative-price"),
        pytest.param(price_file(version(m={**GOOD_MODEL, "output": "abc"})), id="not-a-number"),
        pytest.param(price_file(version(m={**GOOD_MODEL, "output": "NaN"})), id="not-finite"),
        pytest.param(price_file(version(m={**GOOD_MODEL, "output": 1.5})), id="float-not-string"),
        pytest.param(price_file(version(m={**GOOD_MODEL, "output": True})), id="bool-price"),
        pytest.param(
            price_file(version(m={k: v for k, v in GOOD_MODEL.items() if k != "cacheRead"})),
            id="missing-price",
        ),
        pytest.param(
            price_file(version(m={**GOOD_MODEL, "input": "0.0000001"})), id="sub-pico-price"
        ),
        pytest.param(
            price_file(version(m={**GOOD_MODEL, "aliases": "m2"})), id="aliases-not-a-list"
        ),
        pytest.param(
            price_file(version(m=GOOD_MODEL, n={**GOOD_MODEL, "aliases": ["m"]})),
            id="alias-prices-a-model-twice",
        ),
        pytest.param(
            price_file(version("v1"), version("v1", "2026-06-01T00:00:00Z")), id="duplicate-version"
        ),
    ],
)
def test_malformed_price_files_raise_pricing_error(text: str) -> None:
    """Every defect in a price file is a PricingError naming it, never a guessed price."""
    with pytest.raises(PricingError):
        parse_prices(text)


def test_sonnet_5_5_is_priced_at_its_published_rates_from_december() -> None:
    """$2 / $10 per MTok, cache writes $2.50 (5 min) and $4 (1 h), reads $0.20, from the
    2026-12-02 set on; the month before keeps the rates its rows were priced with."""
    million = 1_000_000
    at = datetime(2026, 12, 2, tzinfo=UTC)
    rates = {
        "input_tokens": 2_000_000,
        "cache_read_input_tokens": 200_000,
        "output_tokens": 10_000_000,
        "cache_creation_input_tokens": 2_500_000,
    }
    for kind, micro_usd in rates.items():
        usage = TokenUsage(**{kind: million})
        assert PRICES.cost("claude-sonnet-5-5", usage, at).micro_usd == micro_usd, kind
    before = PRICES.cost("claude-sonnet-5-5", TokenUsage(output_tokens=million), at.replace(day=1))
    assert before.micro_usd == 15_000_000
