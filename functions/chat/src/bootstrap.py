"""Wiring of the chat function, done once per cold start: configuration, model client, identity."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from metering import settings as declared
from metering.adapters.anthropic_model import AnthropicModel
from metering.adapters.appwrite_account import caller_verifier
from metering.adapters.appwrite_messaging import NotifierOpener, notifier_opener
from metering.adapters.store_factory import StoreOpener, store_opener
from metering.chat import ChatSettings
from metering.coldstart import ColdStart, utc_now
from metering.config import EnvReader, Secret, StoreSettings
from metering.errors import ConfigurationError
from metering.plans import PlanCatalog, load_default_plans
from metering.ports import IdentityVerifier, ModelClient, Notifier, UsageStore
from metering.pricing import PriceTable, load_default_prices

from .schema import BodyLimits

# Appwrite stops synchronous executions at 30 s: attempts x timeout must stay well below it.
SYNC_EXECUTION_SECONDS = 30


@dataclass(frozen=True)
class ChatConfig:
    store: StoreSettings
    anthropic_api_key: Secret
    anthropic_base_url: str | None
    chat: ChatSettings
    limits: BodyLimits
    timeout_seconds: float
    max_retries: int
    stop_wait_seconds: float

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> ChatConfig:
        env = EnvReader(environ)
        store = StoreSettings.read(env)
        api_key = env.read(declared.ANTHROPIC_API_KEY)
        base_url = env.read(declared.ANTHROPIC_BASE_URL)
        chat = ChatSettings(
            model=env.read(declared.CHAT_MODEL),
            max_tokens=env.read(declared.CHAT_MAX_TOKENS),
            min_output_tokens=env.read(declared.CHAT_MIN_OUTPUT_TOKENS),
            system_prompt=env.read(declared.CHAT_SYSTEM_PROMPT),
            max_steps=env.read(declared.CHAT_MAX_STEPS),
            call_deadline_seconds=env.read(declared.CHAT_TIMEOUT_SECONDS),
            progress_interval_seconds=env.read(declared.CHAT_PROGRESS_INTERVAL_SECONDS),
            max_turns_in_flight=env.read(declared.CHAT_MAX_TURNS_IN_FLIGHT),
            max_requests_per_minute=env.read(declared.CHAT_MAX_REQUESTS_PER_MINUTE),
        )
        limits = BodyLimits(
            max_body_bytes=env.read(declared.CHAT_MAX_BODY_BYTES),
            max_messages=env.read(declared.CHAT_MAX_MESSAGES),
            max_message_chars=env.read(declared.CHAT_MAX_MESSAGE_CHARS),
        )
        timeout = chat.call_deadline_seconds
        stop_wait = env.read(declared.CHAT_STOP_WAIT_SECONDS)
        retries = env.read(declared.CHAT_MAX_RETRIES)
        if chat.min_output_tokens > chat.max_tokens:
            env.problems.append("CHAT_MIN_OUTPUT_TOKENS must not exceed CHAT_MAX_TOKENS")
        if timeout * (retries + 1) >= SYNC_EXECUTION_SECONDS:
            env.problems.append(
                "CHAT_TIMEOUT_SECONDS x (CHAT_MAX_RETRIES + 1) must stay below the 30 s limit"
            )
        env.finish()
        return cls(
            store=store,
            anthropic_api_key=api_key,
            anthropic_base_url=base_url,
            chat=chat,
            limits=limits,
            timeout_seconds=timeout,
            max_retries=retries,
            stop_wait_seconds=stop_wait,
        )


@dataclass(frozen=True)
class ChatApp:
    config: ChatConfig
    stores: StoreOpener
    # Where the usage alerts' emails go (Appwrite Messaging), per execution like the store.
    notifiers: NotifierOpener
    model: ModelClient
    verifier: IdentityVerifier
    plans: PlanCatalog
    prices: PriceTable
    clock: Callable[[], datetime]
    new_request_id: Callable[[], str]
    # The stream's progress interval and the Stop's wait run on these.
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def new_request_id() -> str:
    return uuid.uuid4().hex


def build(
    environ: Mapping[str, str],
    *,
    clock: Callable[[], datetime] = utc_now,
    verifier: IdentityVerifier | None = None,
    anthropic_http_client: Any = None,
    store: UsageStore | None = None,
    notifier: Notifier | None = None,
) -> ChatApp:
    """Everything an execution needs; ``anthropic_http_client`` carries a test transport."""
    config = ChatConfig.read(environ)
    prices = load_default_prices()
    if not prices.has_model(config.chat.model, clock()):
        raise ConfigurationError(f"CHAT_MODEL {config.chat.model!r} has no price")
    model = AnthropicModel.connect(
        config.anthropic_api_key.value,
        base_url=config.anthropic_base_url,
        timeout_seconds=config.timeout_seconds,
        max_retries=config.max_retries,
        http_client=anthropic_http_client,
    )
    return ChatApp(
        config=config,
        stores=store_opener(config.store, store),
        notifiers=notifier_opener(config.store, notifier),
        model=model,
        verifier=caller_verifier(config.store, verifier),
        plans=load_default_plans(),
        prices=prices,
        clock=clock,
        new_request_id=new_request_id,
    )


_cold_start: ColdStart[ChatApp] = ColdStart(build)
# The app of this cold start, built on first use from the process environment, or from what the
# local runtime or a test passes to `configure(environ, **overrides)`.
current = _cold_start.current
configure = _cold_start.configure
