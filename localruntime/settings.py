"""The local runtime's settings, parsed once from the environment merged with an optional ``.env``.

Its own are declared here, with the type of ``metering.settings``, which declares the functions'.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from metering import settings as functions
from metering.config import EnvReader, Secret
from metering.settings import LOCAL_RUNTIME, Setting, declared_in

from .cron import CronExpression

# Printed at start; `stripe listen --forward-to` and the sample-event command sign with it. The
# webhook knows it too, to refuse it anywhere but on the embedded store.
DEV_WEBHOOK_SECRET = functions.DEV_WEBHOOK_SECRET
# What the chat function is given as its key when it talks to the built-in offline model.
OFFLINE_MODEL_KEY = "offline-local-key"
# What the functions are given as their Stripe key when they talk to the local Stripe.
LOCAL_STRIPE_KEY = "sk_test_local"
PROJECT_ID = "local"
# An ALLOWED_HOSTS entry: a host name or address (IPv6 in brackets), with or without a port.
_HOST_ENTRY = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(:[0-9]{1,5})?")

HOST = Setting.text(
    "HOST",
    "127.0.0.1",
    (LOCAL_RUNTIME,),
    "address of the local runtime: the page, the Appwrite API (`/v1`), the function domains",
)
PORT = Setting.integer(
    "PORT", 8000, (LOCAL_RUNTIME,), "its port (0: any free one)", minimum=0, maximum=65535
)
DATA_DIR = Setting.text(
    "DATA_DIR",
    "data",
    (LOCAL_RUNTIME,),
    "folder of the local SQLite files (users and sessions, usage); delete it to start afresh",
)
CRON_SCHEDULE = Setting.optional(
    "CRON_SCHEDULE",
    (LOCAL_RUNTIME,),
    "cron expression (5 fields, UTC) of monthly-reset-cron",
    shown_default="its schedule in `appwrite.json`",
)
RUN_CRON = Setting.flag("RUN_CRON", True, (LOCAL_RUNTIME,), "run the cron once at start")
EXECUTION_TIMEOUT_SECONDS = Setting.number(
    "EXECUTION_TIMEOUT_SECONDS",
    30.0,
    (LOCAL_RUNTIME,),
    "limit of a synchronous execution, as on Appwrite (408 past it)",
    minimum=0.1,
    maximum=900.0,
)
DEMO_PASSWORD = Setting.text(
    "DEMO_PASSWORD",
    "local-demo-password",
    (LOCAL_RUNTIME,),
    "password of the demo accounts, at least 8 characters, set when they are first created",
)
CORS_ALLOWED_ORIGINS = Setting.optional(
    "CORS_ALLOWED_ORIGINS",
    (LOCAL_RUNTIME,),
    "comma-separated page origins (`https://app.example`) allowed to call the API with the"
    " user's session; no other origin gets CORS, loopback ones included",
    shown_default="only the runtime's own",
)
ALLOWED_HOSTS = Setting.optional(
    "ALLOWED_HOSTS",
    (LOCAL_RUNTIME,),
    "comma-separated extra host names (`name` or `name:port`) the runtime answers to; any other"
    " `Host` gets 404 (a defence against DNS rebinding)",
    shown_default="`HOST`, `localhost`, `127.0.0.1` and `[::1]` on `PORT`",
)
OFFLINE_MODEL_TOKENS_PER_SECOND = Setting.number(
    "OFFLINE_MODEL_TOKENS_PER_SECOND",
    30.0,
    (LOCAL_RUNTIME,),
    "tokens a second the offline model streams, slow enough that Stop can be tried (0: no delay)",
    minimum=0.0,
    maximum=100000.0,
)

DECLARED: tuple[Setting[Any], ...] = declared_in(globals())


@dataclass(frozen=True)
class RuntimeSettings:
    host: str
    port: int
    data_dir: Path
    anthropic_api_key: Secret
    anthropic_base_url: str | None
    stripe_webhook_secret: Secret
    stripe_secret_key: Secret
    cron_schedule: str | None
    sync_timeout_seconds: float
    demo_password: Secret
    cors_origins: tuple[str, ...]
    allowed_hosts: tuple[str, ...]
    run_cron: bool
    offline_model_tokens_per_second: float

    @property
    def offline_model(self) -> bool:
        return not self.anthropic_api_key

    @property
    def local_stripe(self) -> bool:
        """Without a Stripe key the runtime serves a local Stripe and points the functions at it."""
        return not self.stripe_secret_key

    @property
    def webhook_secret_is_default(self) -> bool:
        return self.stripe_webhook_secret.value == DEV_WEBHOOK_SECRET

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> RuntimeSettings:
        """Parse every setting; all problems are raised together as one ConfigurationError."""
        env = EnvReader(environ)
        # The functions require these deployed; locally their absence has a meaning.
        webhook_secret = env.read(functions.STRIPE_WEBHOOK_SECRET, required=False)
        origins = env.read(CORS_ALLOWED_ORIGINS) or ""
        hosts = env.read(ALLOWED_HOSTS) or ""
        settings = cls(
            host=env.read(HOST),
            port=env.read(PORT),
            data_dir=Path(env.read(DATA_DIR)),
            anthropic_api_key=env.read(functions.ANTHROPIC_API_KEY, required=False),
            anthropic_base_url=env.read(functions.ANTHROPIC_BASE_URL),
            stripe_webhook_secret=webhook_secret or Secret(DEV_WEBHOOK_SECRET),
            stripe_secret_key=env.read(functions.STRIPE_SECRET_KEY),
            cron_schedule=env.read(CRON_SCHEDULE),
            sync_timeout_seconds=env.read(EXECUTION_TIMEOUT_SECONDS),
            demo_password=Secret(env.read(DEMO_PASSWORD)),
            cors_origins=tuple(o.strip().rstrip("/") for o in origins.split(",") if o.strip()),
            allowed_hosts=tuple(h.strip().lower() for h in hosts.split(",") if h.strip()),
            run_cron=env.read(RUN_CRON),
            offline_model_tokens_per_second=env.read(OFFLINE_MODEL_TOKENS_PER_SECOND),
        )
        if settings.cron_schedule is not None:
            try:
                CronExpression.parse(settings.cron_schedule)
            except ValueError as error:
                env.problems.append(f"CRON_SCHEDULE is not a cron expression: {error}")
        for entry in settings.allowed_hosts:
            if not _HOST_ENTRY.fullmatch(entry):
                env.problems.append(
                    f"ALLOWED_HOSTS: {entry!r} is not a host name or host:port (no scheme, no path)"
                )
        if len(settings.demo_password.value) < 8:
            env.problems.append("DEMO_PASSWORD must have at least 8 characters")
        env.finish()
        return settings


def load_environment(env_file: Path = Path(".env")) -> dict[str, str]:
    """The process environment, completed with the values of ``env_file`` when it exists (the
    process environment wins). Nothing is written back: the functions get this mapping."""
    from_file = {key: value for key, value in dotenv_values(env_file).items() if value is not None}
    return {**from_file, **os.environ}
