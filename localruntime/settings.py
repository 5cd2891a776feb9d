"""The local runtime's settings, parsed once from the environment merged with an optional ``.env``.

Every variable, its default and its meaning is listed in ``.env.example``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values
from metering.config import EnvReader, Secret

from .cron import CronExpression

# Printed at start; `stripe listen --forward-to` and the sample-event command sign with it.
DEV_WEBHOOK_SECRET = "whsec_dev_local_only_0123456789abcdef"  # noqa: S105 -- public dev value
# What the chat function is given as its key when it talks to the built-in offline model.
OFFLINE_MODEL_KEY = "offline-local-key"
PROJECT_ID = "local"
DEFAULT_DEMO_PASSWORD = "local-demo-password"  # noqa: S105 -- printed at start


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
    run_cron: bool

    @property
    def offline_model(self) -> bool:
        return not self.anthropic_api_key

    @property
    def webhook_secret_is_default(self) -> bool:
        return self.stripe_webhook_secret.value == DEV_WEBHOOK_SECRET

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> RuntimeSettings:
        """Parse every setting; all problems are raised together as one ConfigurationError."""
        env = EnvReader(environ)
        webhook_secret = env.secret("STRIPE_WEBHOOK_SECRET")
        origins = env.optional("CORS_ALLOWED_ORIGINS") or ""
        settings = cls(
            host=env.text("HOST", "127.0.0.1"),
            port=env.integer("PORT", 8000, minimum=0, maximum=65535),
            data_dir=Path(env.text("DATA_DIR", "data")),
            anthropic_api_key=env.secret("ANTHROPIC_API_KEY"),
            anthropic_base_url=env.optional("ANTHROPIC_BASE_URL"),
            stripe_webhook_secret=webhook_secret or Secret(DEV_WEBHOOK_SECRET),
            stripe_secret_key=env.secret("STRIPE_SECRET_KEY"),
            cron_schedule=env.optional("CRON_SCHEDULE"),
            sync_timeout_seconds=env.number(
                "EXECUTION_TIMEOUT_SECONDS", 30.0, minimum=0.1, maximum=900.0
            ),
            demo_password=Secret(env.text("DEMO_PASSWORD", DEFAULT_DEMO_PASSWORD)),
            cors_origins=tuple(o.strip().rstrip("/") for o in origins.split(",") if o.strip()),
            run_cron=env.flag("RUN_CRON", default=True),
        )
        if settings.cron_schedule is not None:
            try:
                CronExpression.parse(settings.cron_schedule)
            except ValueError as error:
                env.problems.append(f"CRON_SCHEDULE is not a cron expression: {error}")
        if len(settings.demo_password.value) < 8:
            env.problems.append("DEMO_PASSWORD must have at least 8 characters")
        env.finish()
        return settings


def load_environment(env_file: Path = Path(".env")) -> dict[str, str]:
    """The process environment, completed with the values of ``env_file`` when it exists (the
    process environment wins). Nothing is written back: the functions get this mapping."""
    from_file = {key: value for key, value in dotenv_values(env_file).items() if value is not None}
    return {**from_file, **os.environ}
