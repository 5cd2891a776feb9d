"""Configuration parsed once from an injected mapping (default ``os.environ``), fully typed.

Each function composes the sections it needs; all problems are reported together.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from .errors import ConfigurationError

T = TypeVar("T")


@dataclass(frozen=True)
class Secret:
    """A secret value that never shows in a repr, a log line or an error."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')"

    def __bool__(self) -> bool:
        return bool(self.value)


class EnvReader:
    """Reads typed values, collecting every problem so that they are reported together."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.problems: list[str] = []

    def text(self, name: str, default: str | None = None) -> str:
        value = self.environ.get(name, "").strip()
        if value:
            return value
        if default is None:
            self.problems.append(f"{name} is required")
            return ""
        return default

    def optional(self, name: str) -> str | None:
        return self.environ.get(name, "").strip() or None

    def secret(self, name: str, *, required: bool = False) -> Secret:
        value = self.environ.get(name, "").strip()
        if required and not value:
            self.problems.append(f"{name} is required")
        return Secret(value)

    def integer(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        return self._parse(name, default, int, minimum, maximum)

    def number(
        self, name: str, default: float, minimum: float = 0.0, maximum: float | None = None
    ) -> float:
        return self._parse(name, default, float, minimum, maximum)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default).lower()
        if value not in choices:
            self.problems.append(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.environ.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name} must be true or false, got {raw!r}")
        return default

    def _parse(
        self,
        name: str,
        default: T,
        parse: Callable[[str], T],
        minimum: T,
        maximum: T | None,
    ) -> T:
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
        if value < minimum or (maximum is not None and value > maximum):  # type: ignore[operator]
            bounds = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
            self.problems.append(f"{name} must be {bounds}, got {raw!r}")
            return default
        return value

    def finish(self) -> None:
        """Raise one ConfigurationError listing every problem found so far."""
        if self.problems:
            raise ConfigurationError("invalid configuration: " + "; ".join(self.problems))


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

    @classmethod
    def read(cls, env: EnvReader) -> StoreSettings:
        return cls(
            appwrite_endpoint=env.text("APPWRITE_FUNCTION_API_ENDPOINT"),
            appwrite_project_id=env.text("APPWRITE_FUNCTION_PROJECT_ID"),
            appwrite_api_key=env.secret("APPWRITE_API_KEY"),
            database_id=env.text("APPWRITE_DATABASE_ID", "koffers_db"),
            subscriptions_table=env.text("APPWRITE_SUBSCRIPTIONS_TABLE", "subscriptions"),
            usage_events_table=env.text("APPWRITE_USAGE_EVENTS_TABLE", "usage_events"),
            claims_table=env.text("APPWRITE_CLAIMS_TABLE", "stripe_events"),
        )
