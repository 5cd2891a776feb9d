"""Plans and top-up packs are data: the packaged set, lookups, and refusal of malformed files."""

from __future__ import annotations

import json
from typing import Any

import pytest
from metering.errors import PlanError
from metering.plans import load_default_plans, parse_plans


def plan_file(plans: list[dict[str, Any]], default: object = "demo", **extra: object) -> str:
    return json.dumps({"default": default, "plans": plans, **extra})


def pack(pack_id: object = "topup_1k", tokens: object = 1000, **extra: object) -> dict[str, Any]:
    return {"id": pack_id, "tokens": tokens, **extra}


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
        pytest.param(plan_file([plan()], topups={}), id="topups-not-a-list"),
        pytest.param(plan_file([plan()], topups=["topup_1k"]), id="pack-not-an-object"),
        pytest.param(plan_file([plan()], topups=[pack(pack_id="")]), id="pack-empty-id"),
        pytest.param(plan_file([plan()], topups=[pack(pack_id=7)]), id="pack-numeric-id"),
        pytest.param(plan_file([plan()], topups=[{"id": "topup_1k"}]), id="pack-missing-tokens"),
        pytest.param(plan_file([plan()], topups=[pack(tokens=0)]), id="pack-zero-tokens"),
        pytest.param(plan_file([plan()], topups=[pack(tokens=-5)]), id="pack-negative-tokens"),
        pytest.param(plan_file([plan()], topups=[pack(tokens="1000")]), id="pack-string-tokens"),
        pytest.param(plan_file([plan()], topups=[pack(tokens=True)]), id="pack-bool-tokens"),
        pytest.param(plan_file([plan()], topups=[pack(name=3)]), id="pack-bad-name"),
        pytest.param(plan_file([plan()], topups=[pack(), pack("TOPUP_1K")]), id="pack-duplicate"),
        pytest.param(plan_file([plan()], topups=[pack("Demo")]), id="pack-named-like-a-plan"),
    ],
)
def test_malformed_plan_files_raise_plan_error(text: str) -> None:
    """Every defect in a plans file is a PlanError, never a silent default."""
    with pytest.raises(PlanError):
        parse_plans(text)


def test_default_packs_are_the_contract_packs_in_file_order() -> None:
    """plans.json sells 25,000 and 100,000 token packs, offered in that order."""
    packs = load_default_plans().topups

    assert [(p.id, p.name, p.tokens) for p in packs] == [
        ("topup_25k", "25,000 tokens", 25_000),
        ("topup_100k", "100,000 tokens", 100_000),
    ]


def test_pack_lookup_ignores_case_and_is_none_when_unknown() -> None:
    """``find_topup`` names a pack by id in any case; unknown, empty or missing ids find none."""
    catalog = load_default_plans()

    found = catalog.find_topup("TOPUP_25K")
    assert found is not None
    assert found.tokens == 25_000
    assert catalog.find_topup("topup_1m") is None
    assert catalog.find_topup("starter") is None
    assert catalog.find_topup("") is None
    assert catalog.find_topup(None) is None


def test_a_plan_file_without_packs_sells_none() -> None:
    """``topups`` is optional: a file without it parses with no packs."""
    assert parse_plans(plan_file([plan()])).topups == ()


def test_a_pack_without_a_name_is_named_by_its_lower_case_id() -> None:
    """Pack ids are normalised like plan ids; the name defaults to the id."""
    (only,) = parse_plans(plan_file([plan()], topups=[pack("Topup_1K")])).topups

    assert (only.id, only.name, only.tokens) == ("topup_1k", "topup_1k", 1000)
