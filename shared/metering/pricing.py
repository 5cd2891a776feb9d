"""Cost in micro-USD from an explicit, effective-dated per-model price table."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from .errors import PricingError
from .timeutil import parse_timestamp
from .tokens import TokenUsage

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_PRICES_FILE = "prices.json"

# Prices are kept in pico-USD per token (= micro-USD per million tokens) so that every part of a
# cost is an exact integer; only the final micro-USD figure is rounded, once.
_PICO_PER_MICRO = 1_000_000


def pico_to_micro_usd(pico_usd: int) -> int:
    """Whole micro-USD, rounded half up: the one rounding every cost goes through."""
    return (pico_usd + _PICO_PER_MICRO // 2) // _PICO_PER_MICRO


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Prices of one model in pico-USD per token (USD per MTok x 1e6)."""

    input: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int
    output: int


@dataclass(frozen=True, slots=True)
class CostPart:
    kind: str
    tokens: int
    pico_usd: int


@dataclass(frozen=True, slots=True)
class Cost:
    parts: tuple[CostPart, ...]
    price_version: str

    @property
    def pico_usd(self) -> int:
        return sum(part.pico_usd for part in self.parts)

    @property
    def micro_usd(self) -> int:
        """Rounded half up to whole micro-USD."""
        return pico_to_micro_usd(self.pico_usd)


@dataclass(frozen=True)
class PriceSet:
    version: str
    effective_from: datetime
    models: Mapping[str, ModelPrice]


@dataclass(frozen=True)
class PriceTable:
    """Price sets ordered newest first; the one in force at a moment is the newest started."""

    sets: Sequence[PriceSet]

    def price_set_at(self, at: datetime) -> PriceSet:
        for price_set in self.sets:
            if price_set.effective_from <= at:
                return price_set
        raise PricingError(f"no price set is in force at {at.isoformat()}")

    def has_model(self, model: str, at: datetime) -> bool:
        return model in self.price_set_at(at).models

    def cost(self, model: str, usage: TokenUsage, at: datetime) -> Cost:
        price_set = self.price_set_at(at)
        price = price_set.models.get(model)
        if price is None:
            raise PricingError(f"no price for model {model!r} in price set {price_set.version}")
        kinds = (
            ("input", usage.input_tokens, price.input),
            ("cache_write_5m", usage.cache_creation_5m_tokens, price.cache_write_5m),
            ("cache_write_1h", usage.cache_creation_1h_tokens, price.cache_write_1h),
            ("cache_read", usage.cache_read_input_tokens, price.cache_read),
            ("output", usage.output_tokens, price.output),
        )
        parts = tuple(CostPart(kind, tokens, tokens * unit) for kind, tokens, unit in kinds)
        return Cost(parts=parts, price_version=price_set.version)


def _usd_per_mtok(value: Any, where: str) -> int:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise PricingError(f"{where} must be a decimal string, got {value!r}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise PricingError(f"{where} is not a decimal number: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise PricingError(f"{where} must be a non-negative finite number")
    pico = amount * _PICO_PER_MICRO
    if pico != pico.to_integral_value():
        raise PricingError(f"{where} has more precision than a micro-USD per MTok")
    return int(pico)


def parse_prices(text: str) -> PriceTable:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PricingError(f"price file is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("versions"), list):
        raise PricingError("price file must be an object with a 'versions' list")
    sets: list[PriceSet] = []
    for index, entry in enumerate(document["versions"]):
        where = f"versions[{index}]"
        if not isinstance(entry, dict):
            raise PricingError(f"{where} must be an object")
        version = entry.get("version")
        if not isinstance(version, str) or not version:
            raise PricingError(f"{where}: version must be a non-empty string")
        try:
            effective_from = parse_timestamp(entry.get("effectiveFrom"))
        except ValueError as exc:
            raise PricingError(f"{where}: effectiveFrom: {exc}") from exc
        models_in = entry.get("models")
        if not isinstance(models_in, dict) or not models_in:
            raise PricingError(f"{where}: models must be a non-empty object")
        models: dict[str, ModelPrice] = {}
        for model, raw in models_in.items():
            at = f"{where}.models.{model}"
            if not isinstance(raw, dict):
                raise PricingError(f"{at} must be an object")
            price = ModelPrice(
                input=_usd_per_mtok(raw.get("input"), f"{at}.input"),
                cache_write_5m=_usd_per_mtok(raw.get("cacheWrite5m"), f"{at}.cacheWrite5m"),
                cache_write_1h=_usd_per_mtok(raw.get("cacheWrite1h"), f"{at}.cacheWrite1h"),
                cache_read=_usd_per_mtok(raw.get("cacheRead"), f"{at}.cacheRead"),
                output=_usd_per_mtok(raw.get("output"), f"{at}.output"),
            )
            aliases = raw.get("aliases", [])
            if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
                raise PricingError(f"{at}.aliases must be a list of strings")
            for name in (model, *aliases):
                if name in models:
                    raise PricingError(f"{at}: model {name!r} priced twice")
                models[name] = price
        sets.append(PriceSet(version=version, effective_from=effective_from, models=models))
    if not sets:
        raise PricingError("price file defines no price set")
    if len({s.version for s in sets}) != len(sets):
        raise PricingError("price set versions must be unique")
    sets.sort(key=lambda s: s.effective_from, reverse=True)
    return PriceTable(sets=tuple(sets))


def load_default_prices() -> PriceTable:
    return parse_prices((DATA_DIR / DEFAULT_PRICES_FILE).read_text(encoding="utf-8"))
