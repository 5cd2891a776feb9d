"""Plans are data: the packaged set, lookups, and refusal of malformed plan files."""

from __future__ import annotations

import json
from typing import Any

import pytest
from metering.errors import PlanError
from metering.plans import load_default_plans, parse_plans


def plan_file(plans: list[dict[str, Any]], default: object = "demo") -> str:
    return json.dumps({"default": default, "plans": plans})


def plan(plan_id: object = "demo", tokens: object = 30, **extra: object) -> dict[str, Any]:
    return {
        "id": plan_id,
        "tokensPerMonth": tokens,
        "storageBytes": 0,
        "bankConnections": 0,
        **extra,
    }


@pytest.mark.parametrize(
    ("plan_id", "name", "tokens"),
    [
        pytest.param("demo", "Demo", 30, id="demo"),
        pytest.param("starter", "Starter", 50_000, id="starter"),
        pytest.param("pro", "Pro", 200_000, id="pro"),
        pytest.param("business", "Business", 1_000_000, id="business"),
    ],
)
def test_default_plans_are_the_seed_table(plan_id: str, name: str, tokens: int) -> None:
    """The packaged plans file holds the seed's monthly allowances."""
    found = load_default_plans().get(plan_id)

    assert (found.id, found.name, found.tokens_per_month) == (plan_id, name, tokens)


def test_default_plan_set_is_exactly_four_plans_defaulting_to_demo() -> None:
    """New users land on Demo; no other plan is defined."""
    catalog = load_default_plans()

    assert set(catalog.plans) == {"demo", "starter", "pro", "business"}
    assert catalog.default.id == "demo"


def test_plan_lookup_ignores_case() -> None:
    """Stripe metadata may say ``Pro``; it names the ``pro`` plan."""
    catalog = load_default_plans()

    assert catalog.get("PRO").id == "pro"
    found = catalog.find("Starter")
    assert found is not None
    assert found.id == "starter"


def test_unknown_plan_raises_on_get_and_is_none_on_find() -> None:
    """``get`` insists on a known plan; ``find`` answers None for unknown or missing ids."""
    catalog = load_default_plans()

    with pytest.raises(PlanError, match="platinum"):
        catalog.get("platinum")
    assert catalog.find("platinum") is None
    assert catalog.find(None) is None
    assert catalog.find("") is None


def test_a_minimal_plan_file_parses_with_name_defaulting_to_id() -> None:
    """A plan without a name is named by its id, normalised to lower case."""
    catalog = parse_plans(plan_file([plan("Team", 5)], default="TEAM"))

    assert catalog.default.id == "team"
    assert catalog.default.name == "team"
    assert catalog.default.tokens_per_month == 5


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{not json", id="bad-json"),
        pytest.param("[]", id="not-an-object"),
        pytest.param(json.dumps({"default": "demo"}), id="no-plans-list"),
        pytest.param(plan_file([]), id="no-plans"),
        pytest.param(plan_file(["demo"]), id="plan-not-an-object"),  # type: ignore[list-item]
        pytest.param(plan_file([plan(plan_id="")]), id="empty-id"),
        pytest.param(plan_file([plan(plan_id=None)]), id="missing-id"),
        pytest.param(
            plan_file([{"id": "demo", "storageBytes": 0, "bankConnections": 0}]),
            id="missing-tokens",
        ),
        pytest.param(plan_file([plan(tokens=-1)]), id="negative-tokens"),
        pytest.param(plan_file([plan(tokens="30")]), id="string-tokens"),
        pytest.param(plan_file([plan(tokens=True)]), id="bool-tokens"),
        pytest.param(plan_file([plan(tokens=1.5)]), id="fractional-tokens"),
        pytest.param(plan_file([plan(storageBytes=-1)]), id="negative-storage"),
        pytest.param(plan_file([plan(name="")]), id="empty-name"),
        pytest.param(plan_file([plan("demo"), plan("Demo")]), id="duplicate-id"),
        pytest.param(plan_file([plan("demo")], default="gold"), id="unknown-default"),
        pytest.param(plan_file([plan("demo")], default=None), id="missing-default"),
    ],
)
def test_malformed_plan_files_raise_plan_error(text: str) -> None:
    """Every defect in a plans file is a PlanError, never a silent default."""
    with pytest.raises(PlanError):
        parse_plans(text)
