"""The model provider through the Anthropic SDK: domain requests in, domain replies out.

The only module that imports ``anthropic``; SDK errors become ``UpstreamError`` (the provider
refused the request) or ``UpstreamUnavailable`` (worth retrying later). Requests mark their stable
prefix for Anthropic's prompt caching (``_CACHE_CONTROL``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import anthropic
import httpx2
from anthropic.types import (
    AssistantMessageParam,
    CacheControlEphemeralParam,
    ContentBlockParam,
    MessageParam,
    TextBlockParam,
    ToolChoiceAutoParam,
    ToolChoiceNoneParam,
    ToolChoiceParam,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlockParam,
    UserMessageParam,
)

from ..errors import InvalidRequest, UpstreamError, UpstreamUnavailable
from ..model import (
    Block,
    ModelReply,
    ModelRequest,
    StreamedCall,
    StreamSink,
    TextBlock,
    ToolUseBlock,
)
from ..tokens import TokenUsage

_RETRY_LATER_STATUSES = frozenset({408, 409, 429})
# An ``error`` event arrives on a 200 response, so its status says nothing; its type does.
_RETRY_LATER_ERROR_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error"})
# What reading a started stream can raise: the SDK's errors (an ``error`` event), the transport's
# (a lost connection, a read timeout) and a malformed event (the SDK's partial-JSON parser).
_STREAM_ERRORS = (anthropic.AnthropicError, httpx2.HTTPError, ValueError)
# How long the stream may stay silent (a model thinking, pings far apart) before the sink is
# asked between events whether to cut: a Stop must not wait for the next token.
SILENCE_POLL_SECONDS = 0.05


DEFAULT_BASE_URL = "https://api.anthropic.com"

# Prompt caching. A breakpoint caches the prompt up to and including its block (in the order
# tools, system, messages) once that prefix reaches the model's minimum (1,024 tokens for Sonnet);
# a later call that starts with the same prefix reads it at a tenth of the input price, and each
# read keeps it five more minutes. Written tokens cost 1.25x, so only what is sent again is
# marked: the stable prefix (the system prompt, covering the tools before it; the last tool
# without one), shared by every conversation, and the newest message, so that the next step of
# the tool loop and the next turn of the conversation, which resend all of it, read it. Two of
# the four breakpoints allowed are enough: the lookup walks 20 blocks back from a breakpoint, and
# a turn of this chat (two text blocks) or a step of its tool loop (three) adds far fewer. The
# user's charge does not change: the four kinds of tokens are disjoint and all counted.
_CACHE_CONTROL: CacheControlEphemeralParam = {"type": "ephemeral"}


class AnthropicModel:
    """A ``ModelClient`` over one SDK client, built once per cold start and reused."""

    def __init__(self, client: anthropic.Anthropic, *, prompt_caching: bool = True) -> None:
        self._client = client
        self._caching = prompt_caching

    @classmethod
    def connect(
        cls,
        api_key: str,
        *,
        base_url: str | None = None,
        timeout_seconds: float = 12.0,
        max_retries: int = 1,
        http_client: Any = None,
        prompt_caching: bool = True,
    ) -> AnthropicModel:
        """``http_client`` (an ``httpx2.Client``) is where tests put a fake transport;
        ``prompt_caching=False`` sends no breakpoint (the benchmark's baseline)."""
        client = anthropic.Anthropic(
            api_key=api_key,
            # Explicit, so that the SDK never reads ANTHROPIC_BASE_URL behind the configuration.
            base_url=base_url or DEFAULT_BASE_URL,
            timeout=timeout_seconds,
            max_retries=max_retries,
            http_client=http_client,
        )
        return cls(client, prompt_caching=prompt_caching)

    def complete(self, request: ModelRequest) -> ModelReply:
        try:
            message = self._client.messages.create(
                model=request.model,
                max_tokens=request.max_tokens,
                messages=_messages(request, cache=self._caching),
                **_optional(request, cache=self._caching),
            )
        except anthropic.AnthropicError as exc:
            raise _translate(exc) from exc
        return ModelReply(
            blocks=tuple(_blocks(message.content)),
            stop_reason=str(message.stop_reason or ""),
            usage=_usage(message.usage),
            model=str(message.model),
        )

    def stream(
        self, request: ModelRequest, sink: StreamSink, deadline_seconds: float
    ) -> StreamedCall:
        deadline_at = time.monotonic() + deadline_seconds
        try:
            manager = self._client.messages.stream(
                model=request.model,
                max_tokens=request.max_tokens,
                messages=_messages(request, cache=self._caching),
                # Also bounds each read, so that a silent connection cannot outlive the deadline
                # by more than one read.
                timeout=deadline_seconds,
                **_optional(request, cache=self._caching),
            )
            opened = manager.__enter__()
        except anthropic.AnthropicError as exc:
            raise _translate(exc) from exc
        # Leaving the block closes the response on every path, so a cut requests no more tokens.
        with opened as events:
            return _read_stream(events, sink, deadline_at)

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


class _Watchdog:
    """Asks the sink during a silence of the stream and closes the response on a cut or at the
    deadline, so that a blocked read ends at once; the reader asks after every event. One lock
    keeps the sink asked by one thread at a time."""

    def __init__(self, events: Any, sink: StreamSink, deadline_at: float) -> None:
        self.events = events
        self.sink = sink
        self.deadline_at = deadline_at
        self.lock = threading.Lock()
        self.started = False
        self.last_event = time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="stream-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join()

    def should_cut(self) -> bool:
        self.last_event = time.monotonic()
        with self.lock:
            return self.sink.should_stop() or time.monotonic() >= self.deadline_at

    def _watch(self) -> None:
        while not self.done.wait(SILENCE_POLL_SECONDS):
            silent = time.monotonic() - self.last_event >= SILENCE_POLL_SECONDS
            if not (self.started and silent):
                continue
            with self.lock:
                cut = self.sink.should_stop() or time.monotonic() >= self.deadline_at
            if cut:
                self.events.close()
                return


def _read_stream(events: Any, sink: StreamSink, deadline_at: float) -> StreamedCall:
    """Feed ``sink`` until ``message_stop`` or a cut; before ``message_start``, failures raise."""
    with _Watchdog(events, sink, deadline_at) as watchdog:
        return _read_events(events, sink, watchdog)


def _read_events(events: Any, sink: StreamSink, watchdog: _Watchdog) -> StreamedCall:
    iterator = iter(events)
    start_usage: Any = None
    output_tokens: int | None = None
    finished = False
    while True:
        try:
            event = next(iterator)
        except StopIteration:
            break
        except _STREAM_ERRORS as exc:
            if start_usage is None:
                raise _translate_before_start(exc) from exc
            break
        kind = getattr(event, "type", None)
        if kind == "message_start":
            start_usage = event.message.usage
            watchdog.started = True
        elif kind == "content_block_delta":
            delta = event.delta
            if delta.type == "text_delta":
                sink.text(str(delta.text))
            elif delta.type == "input_json_delta":
                sink.tool_input(str(delta.partial_json))
        elif kind == "message_delta":
            # Cumulative: the last one is the call's output so far.
            output_tokens = int(event.usage.output_tokens or 0)
        elif kind == "message_stop":
            finished = True
            break
        if start_usage is not None and watchdog.should_cut():
            break
    if start_usage is None:
        raise UpstreamUnavailable("the model provider ended the stream before starting a message")
    snapshot = events.current_message_snapshot
    usage = dataclasses.replace(_usage(start_usage), output_tokens=output_tokens or 0)
    reply = ModelReply(
        blocks=tuple(_blocks(snapshot.content)),
        stop_reason=str(snapshot.stop_reason or ""),
        usage=usage,
        model=str(snapshot.model),
    )
    return StreamedCall(reply=reply, cut=not finished, output_reported=output_tokens is not None)


def _translate_before_start(exc: Exception) -> UpstreamError | UpstreamUnavailable:
    if isinstance(exc, anthropic.APIStatusError) and exc.status_code < 300:
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error")
        error_type = error.get("type") if isinstance(error, dict) else None
        if error_type in _RETRY_LATER_ERROR_TYPES:
            return UpstreamUnavailable(f"the model provider is unavailable ({error_type})")
        return UpstreamError(f"the model provider refused the request ({error_type or '-'})")
    if isinstance(exc, anthropic.AnthropicError):
        return _translate(exc)
    if isinstance(exc, httpx2.HTTPError):
        return UpstreamUnavailable("the model provider dropped the stream before starting")
    return UpstreamError("the model provider streamed an unusable event")


def _messages(request: ModelRequest, *, cache: bool = False) -> list[MessageParam]:
    """The conversation; with ``cache``, a breakpoint on the newest message's last block that
    may carry one (the API refuses it on an empty text)."""
    messages: list[MessageParam] = []
    newest = len(request.messages) - 1
    for index, message in enumerate(request.messages):
        marked = _last_markable(message.blocks) if cache and index == newest else None
        content = [
            _block_param(block, cached=at == marked) for at, block in enumerate(message.blocks)
        ]
        if message.role == "user":
            messages.append(UserMessageParam(role="user", content=content))
        else:
            messages.append(AssistantMessageParam(role="assistant", content=content))
    return messages


def _last_markable(blocks: tuple[Block, ...]) -> int | None:
    """The index of the last block that may carry a breakpoint, if any."""
    for index in range(len(blocks) - 1, -1, -1):
        block = blocks[index]
        if not isinstance(block, TextBlock) or block.text:
            return index
    return None


def _block_param(block: Block, *, cached: bool = False) -> ContentBlockParam:
    if isinstance(block, TextBlock):
        text: TextBlockParam = {"type": "text", "text": block.text}
        if cached:
            text["cache_control"] = _CACHE_CONTROL
        return text
    if isinstance(block, ToolUseBlock):
        use: ToolUseBlockParam = {
            "type": "tool_use",
            "id": block.id,
            "name": block.name,
            "input": dict(block.input),
        }
        if cached:
            use["cache_control"] = _CACHE_CONTROL
        return use
    result: ToolResultBlockParam = {
        "type": "tool_result",
        "tool_use_id": block.tool_use_id,
        "content": block.content,
        "is_error": block.is_error,
    }
    if cached:
        result["cache_control"] = _CACHE_CONTROL
    return result


def _optional(request: ModelRequest, *, cache: bool = False) -> dict[str, Any]:
    """Parameters sent only when they say something (the SDK's ``omit`` otherwise); with
    ``cache``, the breakpoint of the stable prefix on the system prompt, else on the last tool."""
    extra: dict[str, Any] = {}
    if request.system:
        marked: TextBlockParam = {
            "type": "text",
            "text": request.system,
            "cache_control": _CACHE_CONTROL,
        }
        extra["system"] = [marked] if cache else request.system
    if request.tools:
        tools: list[ToolParam] = [
            {
                "name": tool.name,
                "description": tool.description,
                "input_schema": dict(tool.input_schema),
            }
            for tool in request.tools
        ]
        if cache and not request.system:
            tools[-1]["cache_control"] = _CACHE_CONTROL
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
