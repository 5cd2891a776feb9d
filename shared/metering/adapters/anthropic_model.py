"""The model provider through the Anthropic SDK: domain requests in, domain replies out.

The only module that imports ``anthropic``; SDK errors become ``UpstreamError`` (the provider
refused the request) or ``UpstreamUnavailable`` (worth retrying later).
"""

from __future__ import annotations

from typing import Any

import anthropic
from anthropic.types import (
    AssistantMessageParam,
    ContentBlockParam,
    MessageParam,
    ToolChoiceAutoParam,
    ToolChoiceNoneParam,
    ToolChoiceParam,
    ToolParam,
    UserMessageParam,
)

from ..errors import InvalidRequest, UpstreamError, UpstreamUnavailable
from ..model import (
    Block,
    ModelReply,
    ModelRequest,
    TextBlock,
    ToolUseBlock,
)
from ..tokens import TokenUsage

_RETRY_LATER_STATUSES = frozenset({408, 409, 429})


DEFAULT_BASE_URL = "https://api.anthropic.com"


class AnthropicModel:
    """A ``ModelClient`` over one SDK client, built once per cold start and reused."""

    def __init__(self, client: anthropic.Anthropic) -> None:
        self._client = client

    @classmethod
    def connect(
        cls,
        api_key: str,
        *,
        base_url: str | None = None,
        timeout_seconds: float = 12.0,
        max_retries: int = 1,
        http_client: Any = None,
    ) -> AnthropicModel:
        """``http_client`` (an ``httpx2.Client``) is where tests put a fake transport."""
        client = anthropic.Anthropic(
            api_key=api_key,
            # Explicit, so that the SDK never reads ANTHROPIC_BASE_URL behind the configuration.
            base_url=base_url or DEFAULT_BASE_URL,
            timeout=timeout_seconds,
            max_retries=max_retries,
            http_client=http_client,
        )
        return cls(client)

    def complete(self, request: ModelRequest) -> ModelReply:
        try:
            message = self._client.messages.create(
                model=request.model,
                max_tokens=request.max_tokens,
                messages=_messages(request),
                **_optional(request),
            )
        except anthropic.AnthropicError as exc:
            raise _translate(exc) from exc
        return ModelReply(
            blocks=tuple(_blocks(message.content)),
            stop_reason=str(message.stop_reason or ""),
            usage=_usage(message.usage),
            model=str(message.model),
        )

    def count_tokens(self, request: ModelRequest) -> int:
        try:
            counted = self._client.messages.count_tokens(
                model=request.model, messages=_messages(request), **_optional(request)
            )
        except anthropic.AnthropicError as exc:
            raise _translate(exc) from exc
        tokens = counted.input_tokens
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise UpstreamError("the model provider returned an unusable token count")
        return tokens


def _messages(request: ModelRequest) -> list[MessageParam]:
    messages: list[MessageParam] = []
    for message in request.messages:
        content = [_block_param(block) for block in message.blocks]
        if message.role == "user":
            messages.append(UserMessageParam(role="user", content=content))
        else:
            messages.append(AssistantMessageParam(role="assistant", content=content))
    return messages


def _block_param(block: Block) -> ContentBlockParam:
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    if isinstance(block, ToolUseBlock):
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": dict(block.input)}
    return {
        "type": "tool_result",
        "tool_use_id": block.tool_use_id,
        "content": block.content,
        "is_error": block.is_error,
    }


def _optional(request: ModelRequest) -> dict[str, Any]:
    """Parameters sent only when they say something (the SDK's ``omit`` otherwise)."""
    extra: dict[str, Any] = {}
    if request.system:
        extra["system"] = request.system
    if request.tools:
        tools: list[ToolParam] = [
            {
                "name": tool.name,
                "description": tool.description,
                "input_schema": dict(tool.input_schema),
            }
            for tool in request.tools
        ]
        choice: ToolChoiceParam = (
            ToolChoiceNoneParam(type="none")
            if request.tool_choice == "none"
            else ToolChoiceAutoParam(type="auto")
        )
        extra["tools"] = tools
        extra["tool_choice"] = choice
    return extra


def _blocks(content: Any) -> list[Block]:
    blocks: list[Block] = []
    for block in content:
        kind = getattr(block, "type", None)
        if kind == "text":
            blocks.append(TextBlock(text=str(block.text)))
        elif kind == "tool_use":
            raw_input = block.input if isinstance(block.input, dict) else {}
            blocks.append(ToolUseBlock(id=str(block.id), name=str(block.name), input=raw_input))
        # Other block kinds (thinking, server tools) are not requested by this client.
    return blocks


def _usage(usage: Any) -> TokenUsage:
    """Anthropic's disjoint usage fields; the one-hour share of cache writes when reported."""
    cache_creation = int(usage.cache_creation_input_tokens or 0)
    one_hour = 0
    breakdown = getattr(usage, "cache_creation", None)
    if breakdown is not None:
        one_hour = int(breakdown.ephemeral_1h_input_tokens or 0)
        five_minutes = int(breakdown.ephemeral_5m_input_tokens or 0)
        cache_creation = max(cache_creation, one_hour + five_minutes)
    try:
        return TokenUsage(
            input_tokens=int(usage.input_tokens or 0),
            cache_creation_input_tokens=cache_creation,
            cache_read_input_tokens=int(usage.cache_read_input_tokens or 0),
            output_tokens=int(usage.output_tokens or 0),
            cache_creation_1h_tokens=one_hour,
            steps=1,
        )
    except InvalidRequest as exc:
        raise UpstreamError(f"the model provider reported unusable usage: {exc}") from exc


def _translate(exc: anthropic.AnthropicError) -> UpstreamError | UpstreamUnavailable:
    """Map an SDK error to the domain; the message names the cause, never the request body."""
    if isinstance(exc, anthropic.APITimeoutError):
        return UpstreamUnavailable("the model provider timed out")
    if isinstance(exc, anthropic.APIConnectionError):
        return UpstreamUnavailable("the model provider is unreachable")
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        where = f"status {status}, request id {exc.request_id or '-'}"
        if status in _RETRY_LATER_STATUSES or status >= 500:
            return UpstreamUnavailable(f"the model provider is unavailable ({where})")
        return UpstreamError(f"the model provider refused the request ({where})")
    return UpstreamError(f"the model provider answered unexpectedly ({type(exc).__name__})")
