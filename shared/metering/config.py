"""Configuration parsed once from an injected mapping (default ``os.environ``), fully typed.

Values are read through their declarations (``metering.settings``); problems are reported together.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from . import settings as declared
from .errors import ConfigurationError
from .settings import Secret, Setting

__all__ = ["EnvReader", "Secret", "Setting", "StoreSettings"]

T = TypeVar("T")
N = TypeVar("N", int, float)


class EnvReader:
    """Reads typed values, collecting every problem so that they are reported together."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.problems: list[str] = []

    def read(self, setting: Setting[T], *, required: bool | None = None) -> T:
        """The value of ``setting``, its default when unset or invalid (the problem is kept).

        ``required`` overrides the declaration for a reader that can do without the value (the
        local runtime runs with no Anthropic key: it has an offline model)."""
        must = setting.required if required is None else required
        name = setting.name
        value: Any
        if setting.kind == "text":
            value = self._text(name, None if must else cast(str, setting.default))
        elif setting.kind == "optional":
            value = self.optional(name)
        elif setting.kind == "secret":
            value = self.secret(name, required=must)
        elif setting.kind == "integer":
            value = self._bounded(setting, int)
        elif setting.kind == "number":
            value = self._bounded(setting, float)
        elif setting.kind == "flag":
            value = self._flag(name, cast(bool, setting.default))
        else:
            value = self._choice(name, cast(str, setting.default), setting.choices)
        return cast(T, value)

    # Name-only reads, for a value without a default (``tools.migrate``'s required ones).

    def text(self, name: str) -> str:
        """A required string."""
        return self._text(name, None)

    def optional(self, name: str) -> str | None:
        return self.environ.get(name, "").strip() or None

    def secret(self, name: str, *, required: bool = False) -> Secret:
        value = self.environ.get(name, "").strip()
        if required and not value:
            self.problems.append(f"{name} is required")
        return Secret(value)

    def finish(self) -> None:
        """Raise one ConfigurationError listing every problem found so far."""
        if self.problems:
            raise ConfigurationError("invalid configuration: " + "; ".join(self.problems))

    def _text(self, name: str, default: str | None) -> str:
        value = self.environ.get(name, "").strip()
        if value:
            return value
        if default is None:
            self.problems.append(f"{name} is required")
            return ""
        return default

    def _choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._text(name, default).lower()
        if value not in choices:
            self.problems.append(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def _flag(self, name: str, default: bool) -> bool:
        raw = self.environ.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name} must be true or false, got {raw!r}")
        return default

    def _bounded(self, setting: Setting[Any], parse: Callable[[str], N]) -> N:
        name = setting.name
        default = cast(N, setting.default)
        minimum = cast(N | None, setting.minimum)
        maximum = cast(N | None, setting.maximum)
        raw = self.environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = parse(raw)
        except ValueError:
            self.problems.append(f"{name} must be a number, got {raw!r}")
            return default
        if isinstance(value, float) and not math.isfinite(value):
            self.problems.append(f"{name} must be a finite number, got {raw!r}")
            return default
        low = minimum is not None and value < minimum
        high = maximum is not None and value > maximum
        if low or high:
            bounds = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
            self.problems.append(f"{name} must be {bounds}, got {raw!r}")
            return default
        return value


@dataclass(frozen=True)
class StoreSettings:
    """Where usage lives: Appwrite TablesDB. (The local runtime and tests pass their own store.)"""

    appwrite_endpoint: str
    appwrite_project_id: str
    # Optional: without it the per-execution `x-appwrite-key` header is used.
    appwrite_api_key: Secret
    database_id: str
    subscriptions_table: str
    usage_events_table: str
    claims_table: str
    # Defaulted so that settings written before the alerts existed still describe a store.
    notices_table: str = "notices"
    payments_table: str = "payments"

    @classmethod
    def read(cls, env: EnvReader) -> StoreSettings:
        return cls(
            appwrite_endpoint=env.read(declared.APPWRITE_FUNCTION_API_ENDPOINT),
            appwrite_project_id=env.read(declared.APPWRITE_FUNCTION_PROJECT_ID),
            appwrite_api_key=env.read(declared.APPWRITE_API_KEY),
            database_id=env.read(declared.APPWRITE_DATABASE_ID),
            subscriptions_table=env.read(declared.APPWRITE_SUBSCRIPTIONS_TABLE),
            usage_events_table=env.read(declared.APPWRITE_USAGE_EVENTS_TABLE),
            claims_table=env.read(declared.APPWRITE_CLAIMS_TABLE),
            notices_table=env.read(declared.APPWRITE_NOTICES_TABLE),
            payments_table=env.read(declared.APPWRITE_PAYMENTS_TABLE),
        )
