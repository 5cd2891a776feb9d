"""Chat configuration: parsed once from a mapping, every problem reported together."""

from __future__ import annotations

import pytest
from metering import settings as declared
from metering.errors import ConfigurationError

from localruntime.loader import load_function

# Functions are loaded as open-runtimes loads them: `src` inside the function's own package.
load_function("chat")
from fn_chat.src.bootstrap import ChatConfig, build  # noqa: E402 -- after the package exists

BASE = {
    "APPWRITE_FUNCTION_API_ENDPOINT": "http://127.0.0.1:9/v1",
    "APPWRITE_FUNCTION_PROJECT_ID": "config-test",
    "ANTHROPIC_API_KEY": "sk-ant-config-test",
}


def test_defaults_fit_the_contract_and_the_sync_limit() -> None:
    """Sonnet 5.5, 1024 max tokens, 4 steps, 12 s x 2 attempts < 30 s; key hidden from repr."""
    config = ChatConfig.read(BASE)

    assert config.chat.model == "claude-sonnet-5-5"
    assert config.chat.system_prompt == declared.CHAT_SYSTEM_PROMPT.default
    assert "get_my_usage" in config.chat.system_prompt
    assert (config.chat.max_tokens, config.chat.min_output_tokens) == (1024, 16)
    assert config.chat.max_steps == 4
    assert (config.timeout_seconds, config.max_retries) == (12.0, 1)
    assert (config.limits.max_messages, config.limits.max_message_chars) == (50, 20_000)
    assert config.limits.max_body_bytes == 262_144
    assert config.anthropic_base_url is None
    assert "sk-ant-config-test" not in repr(config)


def test_overrides_are_read_from_the_mapping() -> None:
    """Every CHAT_* name and ANTHROPIC_BASE_URL is honoured."""
    config = ChatConfig.read(
        {
            **BASE,
            "ANTHROPIC_BASE_URL": "http://127.0.0.1:8000/anthropic",
            "CHAT_MODEL": "claude-haiku-4-5",
            "CHAT_MAX_TOKENS": "256",
            "CHAT_MIN_OUTPUT_TOKENS": "8",
            "CHAT_SYSTEM_PROMPT": "Be terse.",
            "CHAT_MAX_STEPS": "2",
            "CHAT_TIMEOUT_SECONDS": "9",
            "CHAT_MAX_RETRIES": "2",
            "CHAT_MAX_MESSAGES": "10",
            "CHAT_MAX_MESSAGE_CHARS": "500",
            "CHAT_MAX_BODY_BYTES": "4096",
        }
    )

    assert config.anthropic_base_url == "http://127.0.0.1:8000/anthropic"
    assert (config.chat.model, config.chat.max_tokens, config.chat.max_steps) == (
        "claude-haiku-4-5",
        256,
        2,
    )
    assert config.chat.system_prompt == "Be terse."
    assert (config.timeout_seconds, config.max_retries) == (9.0, 2)
    assert (config.limits.max_messages, config.limits.max_message_chars) == (10, 500)
    assert config.limits.max_body_bytes == 4096


def test_all_problems_are_reported_at_once() -> None:
    """A missing key, a bad number and a too-long timeout budget arrive in one error."""
    with pytest.raises(ConfigurationError) as raised:
        ChatConfig.read(
            {
                **BASE,
                "ANTHROPIC_API_KEY": "",
                "CHAT_MAX_STEPS": "many",
                "CHAT_TIMEOUT_SECONDS": "20",
            }
        )

    message = str(raised.value)
    assert "ANTHROPIC_API_KEY is required" in message
    assert "CHAT_MAX_STEPS" in message
    assert "30 s" in message


def test_a_model_without_a_price_is_refused_at_cold_start() -> None:
    """Requests to an unpriced model could not be costed: the function refuses to start."""
    with pytest.raises(ConfigurationError, match="no price"):
        build({**BASE, "CHAT_MODEL": "claude-unknown-9"})
