"""Plan and top-up pack definitions are data: loaded from a JSON plans file, validated once."""

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


@dataclass(frozen=True, slots=True)
class TopupPack:
    """A one-time purchase of ``tokens``, kept until used (never reset with the period)."""

    id: str
    name: str
    tokens: int


@dataclass(frozen=True)
class PlanCatalog:
    plans: Mapping[str, Plan]
    default_id: str
    # In the file's order, which is the order they are offered in.
    topups: tuple[TopupPack, ...] = ()

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

    def find_topup(self, pack_id: str | None) -> TopupPack | None:
        wanted = pack_id.lower() if pack_id else None
        return next((pack for pack in self.topups if pack.id == wanted), None)


def _non_negative_int(entry: Mapping[str, Any], key: str, where: str) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PlanError(f"{where}: {key} must be a non-negative integer, got {value!r}")
    return value


def _identity(entry: Mapping[str, Any], where: str) -> tuple[str, str]:
    """The entry's id (lower case) and its name, which defaults to the id."""
    entry_id = entry.get("id")
    if not isinstance(entry_id, str) or not entry_id.strip():
        raise PlanError(f"{where}: id must be a non-empty string")
    entry_id = entry_id.strip().lower()
    name = entry.get("name", entry_id)
    if not isinstance(name, str) or not name:
        raise PlanError(f"{where}: name must be a non-empty string")
    return entry_id, name


def _parse_topups(entries: object, plans: Mapping[str, Plan]) -> tuple[TopupPack, ...]:
    if not isinstance(entries, list):
        raise PlanError("plans file: 'topups' must be a list")
    packs: dict[str, TopupPack] = {}
    for index, entry in enumerate(entries):
        where = f"topups[{index}]"
        if not isinstance(entry, dict):
            raise PlanError(f"{where} must be an object")
        pack_id, name = _identity(entry, where)
        # Plan and pack ids are both Stripe lookup keys, which Stripe keeps unique.
        if pack_id in packs or pack_id in plans:
            raise PlanError(f"{where}: id {pack_id!r} is already a plan or pack id")
        tokens = _non_negative_int(entry, "tokens", where)
        if tokens == 0:
            raise PlanError(f"{where}: tokens must be positive")
        packs[pack_id] = TopupPack(id=pack_id, name=name, tokens=tokens)
    return tuple(packs.values())


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
        plan_id, name = _identity(entry, where)
        if plan_id in plans:
            raise PlanError(f"{where}: duplicate plan id {plan_id!r}")
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
    topups = _parse_topups(document.get("topups", []), plans)
    return PlanCatalog(plans=plans, default_id=default_id.lower(), topups=topups)


def load_default_plans() -> PlanCatalog:
    """The packaged plan set (the seed's table) and its top-up packs."""
    return parse_plans((DATA_DIR / DEFAULT_PLANS_FILE).read_text(encoding="utf-8"))
