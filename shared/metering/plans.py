"""Plan definitions are data: loaded from a JSON plans file, validated once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PlanError

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_PLANS_FILE = "plans.json"


@dataclass(frozen=True, slots=True)
class Plan:
    id: str
    name: str
    tokens_per_month: int
    storage_bytes: int
    bank_connections: int


@dataclass(frozen=True)
class PlanCatalog:
    plans: Mapping[str, Plan]
    default_id: str

    @property
    def default(self) -> Plan:
        return self.plans[self.default_id]

    def get(self, plan_id: str) -> Plan:
        try:
            return self.plans[plan_id.lower()]
        except KeyError:
            raise PlanError(f"unknown plan {plan_id!r}") from None

    def find(self, plan_id: str | None) -> Plan | None:
        return self.plans.get(plan_id.lower()) if plan_id else None


def _non_negative_int(entry: Mapping[str, Any], key: str, where: str) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PlanError(f"{where}: {key} must be a non-negative integer, got {value!r}")
    return value


def parse_plans(text: str) -> PlanCatalog:
    """Parse and validate a plans file; every defect is a PlanError naming where it is."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanError(f"plans file is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("plans"), list):
        raise PlanError("plans file must be an object with a 'plans' list")
    plans: dict[str, Plan] = {}
    for index, entry in enumerate(document["plans"]):
        where = f"plans[{index}]"
        if not isinstance(entry, dict):
            raise PlanError(f"{where} must be an object")
        plan_id = entry.get("id")
        if not isinstance(plan_id, str) or not plan_id.strip():
            raise PlanError(f"{where}: id must be a non-empty string")
        plan_id = plan_id.strip().lower()
        if plan_id in plans:
            raise PlanError(f"{where}: duplicate plan id {plan_id!r}")
        name = entry.get("name", plan_id)
        if not isinstance(name, str) or not name:
            raise PlanError(f"{where}: name must be a non-empty string")
        plans[plan_id] = Plan(
            id=plan_id,
            name=name,
            tokens_per_month=_non_negative_int(entry, "tokensPerMonth", where),
            storage_bytes=_non_negative_int(entry, "storageBytes", where),
            bank_connections=_non_negative_int(entry, "bankConnections", where),
        )
    if not plans:
        raise PlanError("plans file defines no plan")
    default_id = document.get("default")
    if not isinstance(default_id, str) or default_id.lower() not in plans:
        raise PlanError(f"default plan {default_id!r} is not defined")
    return PlanCatalog(plans=plans, default_id=default_id.lower())


def load_default_plans() -> PlanCatalog:
    """The packaged plan set (the seed's table)."""
    return parse_plans((DATA_DIR / DEFAULT_PLANS_FILE).read_text(encoding="utf-8"))
