"""Every setting the functions and tools read, declared once: name, default, bounds and meaning.

``EnvReader.read`` parses them; ``python -m tools.settings_table`` writes the READMEs' tables.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")

Kind = Literal["text", "optional", "secret", "integer", "number", "flag", "choice"]

# Who reads a setting: the function ids of appwrite.json, the migration tool, the local runtime.
CHAT = "chat"
USAGE = "usage"
WEBHOOK = "stripe-webhook"
CRON = "monthly-reset-cron"
BILLING = "billing"
FUNCTIONS = (CHAT, USAGE, WEBHOOK, CRON, BILLING)
MIGRATE = "tools.admin"
LOCAL_RUNTIME = "make dev"

_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


@dataclass(frozen=True)
class Secret:
    """A secret value that never shows in a repr, a log line or an error."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')"

    def __bool__(self) -> bool:
        return bool(self.value)


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One environment variable. ``T`` is what reading it gives; ``shown_default`` is how the
    tables describe a default that is not a plain value (set by Appwrite, the SDK's own)."""

    name: str
    kind: Kind
    default: T
    help: str
    used_by: tuple[str, ...]
    minimum: T | None = None
    maximum: T | None = None
    choices: tuple[str, ...] = ()
    required: bool = False
    shown_default: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"setting name {self.name!r} is not an environment variable name")
        if not self.used_by or not self.help:
            raise ValueError(f"setting {self.name} needs its readers and a meaning")
        if self.kind == "choice" and self.default not in self.choices:
            raise ValueError(f"setting {self.name}: default {self.default!r} is not a choice")
        if self.kind in ("integer", "number"):
            low, high, value = self.minimum, self.maximum, self.default
            if (low is not None and value < low) or (high is not None and value > high):  # type: ignore[operator]
                raise ValueError(f"setting {self.name}: default {value!r} is out of bounds")

    # The factories take a declaration's columns in the README's order: the variable, its default
    # (where it has one), who reads it, what it means; bounds and overrides follow by keyword.

    @staticmethod
    def text(
        name: str,
        default: str | None,
        used_by: Iterable[str],
        help: str,
        *,
        shown_default: str | None = None,
    ) -> Setting[str]:
        """A string; ``default`` None makes it required."""
        return Setting(
            name,
            "text",
            default or "",
            help,
            tuple(used_by),
            required=default is None,
            shown_default=shown_default,
        )

    @staticmethod
    def optional(
        name: str, used_by: Iterable[str], help: str, *, shown_default: str | None = None
    ) -> Setting[str | None]:
        """A string that may be unset (None)."""
        return Setting(name, "optional", None, help, tuple(used_by), shown_default=shown_default)

    @staticmethod
    def secret(
        name: str,
        used_by: Iterable[str],
        help: str,
        *,
        required: bool = False,
        shown_default: str | None = None,
    ) -> Setting[Secret]:
        """A key or password: unset reads as an empty, falsy Secret."""
        return Setting(
            name,
            "secret",
            Secret(""),
            help,
            tuple(used_by),
            required=required,
            shown_default=shown_default,
        )

    @staticmethod
    def integer(
        name: str,
        default: int,
        used_by: Iterable[str],
        help: str,
        *,
        minimum: int = 0,
        maximum: int | None = None,
    ) -> Setting[int]:
        return Setting(
            name, "integer", default, help, tuple(used_by), minimum=minimum, maximum=maximum
        )

    @staticmethod
    def number(
        name: str,
        default: float,
        used_by: Iterable[str],
        help: str,
        *,
        minimum: float = 0.0,
        maximum: float | None = None,
    ) -> Setting[float]:
        return Setting(
            name, "number", default, help, tuple(used_by), minimum=minimum, maximum=maximum
        )

    @staticmethod
    def flag(name: str, default: bool, used_by: Iterable[str], help: str) -> Setting[bool]:
        """true/false, also 1/0, yes/no, on/off."""
        return Setting(name, "flag", default, help, tuple(used_by))

    @staticmethod
    def choice(
        name: str, default: str, choices: tuple[str, ...], used_by: Iterable[str], help: str
    ) -> Setting[str]:
        """One of ``choices``, case-insensitively."""
        return Setting(name, "choice", default, help, tuple(used_by), choices=choices)


def declared_in(namespace: Mapping[str, object]) -> tuple[Setting[Any], ...]:
    """The settings a module declares, in the order it declares them."""
    return tuple(value for value in namespace.values() if isinstance(value, Setting))


# Each declaration reads as a row of the README's table: the variable, its default, who reads it,
# what it means; then, by keyword, its bounds or how the table shows its default.

# -- chat --------------------------------------------------------------------------------------

ANTHROPIC_API_KEY = Setting.secret(
    "ANTHROPIC_API_KEY",
    (CHAT, LOCAL_RUNTIME),
    "Anthropic API key",
    required=True,
    shown_default="required; `make dev`: unset means the built-in offline model",
)
ANTHROPIC_BASE_URL = Setting.optional(
    "ANTHROPIC_BASE_URL",
    (CHAT, LOCAL_RUNTIME),
    "another Messages API server (a proxy); `make dev` points it at the offline model",
    shown_default="SDK default",
)
CHAT_MODEL = Setting.text(
    "CHAT_MODEL",
    "claude-sonnet-5-5",
    (CHAT,),
    "model id; without a price in `shared/metering/data/prices.json` the function refuses to start",
)
CHAT_MAX_TOKENS = Setting.integer(
    "CHAT_MAX_TOKENS",
    1024,
    (CHAT,),
    "`max_tokens` of each call before the cap lowers it",
    minimum=1,
    maximum=64_000,
)
CHAT_MIN_OUTPUT_TOKENS = Setting.integer(
    "CHAT_MIN_OUTPUT_TOKENS",
    16,
    (CHAT,),
    "smallest output worth a call, not above `CHAT_MAX_TOKENS`; less room is a 429",
    minimum=1,
)
CHAT_SYSTEM_PROMPT = Setting.text(
    "CHAT_SYSTEM_PROMPT",
    "You are a helpful assistant inside a personal finance app. Answer concisely. "
    "When the user asks about their own token usage or plan, call get_my_usage.",
    (CHAT,),
    "system prompt",
    shown_default="a short assistant prompt",
)
CHAT_MAX_STEPS = Setting.integer(
    "CHAT_MAX_STEPS", 4, (CHAT,), "model calls per request in the tool loop", minimum=1, maximum=16
)
CHAT_TIMEOUT_SECONDS = Setting.number(
    "CHAT_TIMEOUT_SECONDS",
    12.0,
    (CHAT,),
    "the longest one model call may stream (cut and charged like a Stop past it, never "
    "retried once the provider answered); `timeout x (CHAT_MAX_RETRIES + 1)` must stay under "
    "Appwrite's 30 s",
    minimum=1.0,
    maximum=29.0,
)
CHAT_PROGRESS_INTERVAL_SECONDS = Setting.number(
    "CHAT_PROGRESS_INTERVAL_SECONDS",
    0.25,
    (CHAT,),
    "how often a streaming turn writes its text and looks for a Stop (each is a database write "
    "and a read; Stop is noticed within about this long)",
    minimum=0.05,
    maximum=5.0,
)
CHAT_STOP_WAIT_SECONDS = Setting.number(
    "CHAT_STOP_WAIT_SECONDS",
    5.0,
    (CHAT,),
    "how long `POST /turns/{id}/stop` waits for the turn to settle before answering `stopping`",
    minimum=0.0,
    maximum=20.0,
)
CHAT_MAX_RETRIES = Setting.integer(
    "CHAT_MAX_RETRIES", 1, (CHAT,), "SDK retries of a failed attempt", minimum=0, maximum=5
)
CHAT_MAX_MESSAGES = Setting.integer(
    "CHAT_MAX_MESSAGES", 50, (CHAT,), "messages per request; 413 past it", minimum=1
)
CHAT_MAX_MESSAGE_CHARS = Setting.integer(
    "CHAT_MAX_MESSAGE_CHARS", 20_000, (CHAT,), "characters per message; 413 past it", minimum=1
)
CHAT_MAX_BODY_BYTES = Setting.integer(
    "CHAT_MAX_BODY_BYTES",
    262_144,
    (CHAT,),
    "request body size, checked before parsing; 413 past it",
    minimum=64,
)
CHAT_MAX_TURNS_IN_FLIGHT = Setting.integer(
    "CHAT_MAX_TURNS_IN_FLIGHT",
    3,
    (CHAT,),
    "a user's chat requests running at once, across every instance (counted on the account "
    "row in the change that opens a request); one more is a 429 `rate_limited` with "
    "`Retry-After: 2`; 0 means no cap",
)
CHAT_MAX_REQUESTS_PER_MINUTE = Setting.integer(
    "CHAT_MAX_REQUESTS_PER_MINUTE",
    30,
    (CHAT,),
    "a user's chat requests started in any 60 s (counted from the ledger before each request; "
    "requests arriving together may pass it by up to `CHAT_MAX_TURNS_IN_FLIGHT`); one more is a "
    "429 `rate_limited` with `Retry-After` until a slot frees; 0 means no cap",
)

# -- Stripe ------------------------------------------------------------------------------------

STRIPE_WEBHOOK_SECRET = Setting.secret(
    "STRIPE_WEBHOOK_SECRET",
    (WEBHOOK, LOCAL_RUNTIME),
    "the Stripe endpoint's signing secret (`whsec_...`); without it every call answers 500 "
    "and logs the configuration error",
    required=True,
    shown_default="required; `make dev`: a printed development value",
)
STRIPE_SECRET_KEY = Setting.secret(
    "STRIPE_SECRET_KEY",
    (WEBHOOK, CRON, BILLING, LOCAL_RUNTIME),
    "Stripe API key: billing finds prices and creates Checkout and portal sessions with it, the "
    "webhook reads plan metadata kept on products, the cron looks up missed renewals; without "
    "it billing answers 500 and the others skip those look-ups (the cron's summary says so)",
    shown_default="unset; billing: required",
)
STRIPE_API_BASE = Setting.optional(
    "STRIPE_API_BASE",
    (WEBHOOK, CRON, BILLING),
    "another Stripe API base (tests, local mocks)",
    shown_default="Stripe's",
)
STRIPE_MAX_TOKENS = Setting.integer(
    "STRIPE_MAX_TOKENS",
    100_000_000,
    (WEBHOOK,),
    "largest token amount an event may carry (a top-up pack, a plan's or the add-ons' monthly "
    "tokens); an event past it is invalid: it changes nothing and is logged as an error",
    minimum=1,
    maximum=10**15,
)
# Public (printed by `make dev`): the webhook accepts it only with the embedded store the local
# runtime injects, so that a deployed endpoint never trusts events anyone could sign.
DEV_WEBHOOK_SECRET = "whsec_dev_local_only_0123456789abcdef"  # noqa: S105 -- public dev value

# -- billing (the page's checkout and portal) -------------------------------------------------

BILLING_RETURN_URL = Setting.text(
    "BILLING_RETURN_URL",
    None,
    (BILLING,),
    "the chat page's URL (`http://` or `https://`): Checkout returns to it with "
    "`?checkout=success` or `?checkout=cancel`, the Customer Portal as it is; without it "
    "billing answers 500",
    shown_default="required",
)

# -- the cron ----------------------------------------------------------------------------------

CRON_GRACE_SECONDS = Setting.integer(
    "CRON_GRACE_SECONDS",
    6 * 3600,
    (CRON,),
    "how long after `periodEnd` a renewal webhook may still come before the cron asks Stripe (6 h)",
)
CRON_RESERVATION_TTL_SECONDS = Setting.integer(
    "CRON_RESERVATION_TTL_SECONDS",
    15 * 60,
    (CRON,),
    "age after which a chat's unsettled hold belongs to a dead request and is given back (15 min)",
    minimum=60,
)
CRON_PAGE_SIZE = Setting.integer(
    "CRON_PAGE_SIZE", 100, (CRON,), "rows per page", minimum=1, maximum=5000
)
CRON_TIME_BUDGET_SECONDS = Setting.integer(
    "CRON_TIME_BUDGET_SECONDS",
    240,
    (CRON,),
    "stop starting work after this long and resume next run; keep it below the function's timeout",
    minimum=1,
)
CRON_RECONCILE_SHARE_PERCENT = Setting.integer(
    "CRON_RECONCILE_SHARE_PERCENT",
    25,
    (CRON,),
    "share of the time budget the Stripe look-ups leave to reconciliation; either pass that runs "
    "out resumes where it stopped next run",
    minimum=0,
    maximum=90,
)

# -- the store (Appwrite TablesDB) -------------------------------------------------------------

APPWRITE_FUNCTION_API_ENDPOINT = Setting.text(
    "APPWRITE_FUNCTION_API_ENDPOINT",
    None,
    FUNCTIONS,
    "endpoint of the tables and the Account API; the SDK never falls back to Cloud",
    shown_default="set by Appwrite",
)
APPWRITE_FUNCTION_PROJECT_ID = Setting.text(
    "APPWRITE_FUNCTION_PROJECT_ID", None, FUNCTIONS, "project id", shown_default="set by Appwrite"
)
APPWRITE_API_KEY = Setting.secret(
    "APPWRITE_API_KEY",
    (*FUNCTIONS, MIGRATE),
    "static API key; functions use it for the database, else the per-execution `x-appwrite-key`",
    shown_default="functions: unset; `tools.admin`: required",
)
APPWRITE_DATABASE_ID = Setting.text("APPWRITE_DATABASE_ID", "koffers_db", FUNCTIONS, "database id")
APPWRITE_SUBSCRIPTIONS_TABLE = Setting.text(
    "APPWRITE_SUBSCRIPTIONS_TABLE",
    "subscriptions",
    FUNCTIONS,
    "table id of the accounts (one row per user)",
)
APPWRITE_USAGE_EVENTS_TABLE = Setting.text(
    "APPWRITE_USAGE_EVENTS_TABLE", "usage_events", FUNCTIONS, "table id of the ledger"
)
APPWRITE_CLAIMS_TABLE = Setting.text(
    "APPWRITE_CLAIMS_TABLE",
    "claims",
    FUNCTIONS,
    "table id of the claims (Stripe events, top-ups, resets)",
)
APPWRITE_NOTICES_TABLE = Setting.text(
    "APPWRITE_NOTICES_TABLE",
    "notices",
    FUNCTIONS,
    "table id of the usage alerts' in-app notices (rows each user may read)",
)
APPWRITE_PAYMENTS_TABLE = Setting.text(
    "APPWRITE_PAYMENTS_TABLE",
    "payments",
    FUNCTIONS,
    "table id of the payments: paid invoices and top-ups (revenue), refunds taken back",
)

# -- tools.admin ---------------------------------------------------------------------------------

APPWRITE_ENDPOINT = Setting.text(
    "APPWRITE_ENDPOINT",
    None,
    (MIGRATE,),
    "API endpoint of the project to migrate (`http://` or `https://`)",
)
APPWRITE_PROJECT_ID = Setting.text(
    "APPWRITE_PROJECT_ID", None, (MIGRATE,), "id of the project to migrate"
)

DECLARED: tuple[Setting[Any], ...] = declared_in(globals())
