"""A deterministic stand-in for Claude that speaks the Anthropic Messages API.

Replies derive from the last user message; usage is estimated at four characters a token, with
prompt caching applied and reported by the API's rules (``prompt_cache``).
A question about usage, tokens or quota is first answered with a call of the chat's usage tool,
so that the tool loop runs locally too. With ``"stream": true`` the same reply comes as the API's
server-sent events, a token per delta at a set pace, so that a Stop can be tried locally.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .prompt_cache import (
    CHARS_PER_TOKEN,
    TTL_SECONDS,
    CacheRuleError,
    PromptCache,
    block_text,
    blocks_of,
    prompt_tokens,
    tokens_of,
)

_USAGE_QUESTION = re.compile(
    r"\b(usage|tokens?|quota|limit|allowance|remaining|left|plan)\b", re.IGNORECASE
)
_CLOSERS = (
    "Every token of this reply is metered exactly like a reply from Claude.",
    "Set ANTHROPIC_API_KEY to talk to Claude itself.",
    "Ask me how many tokens you have left to watch the tool loop run.",
    "Replies here are deterministic: the same question always gets the same answer.",
    "The usage meter above updates after each message.",
    "Nothing in this conversation left your machine.",
)
# The streams a test can still look up by message id; older ones are forgotten.
REMEMBERED_STREAMS = 64


class ModelApiError(Exception):
    """An error in the API's own format: ``{"type": "error", "error": {"type", "message"}}``."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"type": "error", "error": {"type": error_type, "message": message}}


def _invalid(message: str) -> ModelApiError:
    return ModelApiError(400, "invalid_request_error", message)


class StreamState(StrEnum):
    STREAMING = "streaming"
    COMPLETED = "completed"  # message_stop was written
    ABANDONED = "abandoned"  # the client went away first: nothing more was generated


@dataclass
class StreamRecord:
    """What one streamed reply has sent so far. Each delta is one token: four characters of
    text or of tool input JSON. ``sent_tokens`` counts the deltas written to the connection."""

    message_id: str
    tokens: int
    sent_tokens: int = 0
    state: StreamState = StreamState.STREAMING


class OfflineModel:
    """Thread-safe; remembers cached prompt prefixes for their time to live (on ``clock``),
    and its last streams (``stream_record``) so that a test can see where a closed stream
    stopped.

    ``tokens_per_second`` paces streamed deltas (0: as fast as the connection takes them).
    """

    def __init__(
        self,
        tokens_per_second: float = 0.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if tokens_per_second < 0:
            raise ValueError("tokens_per_second must not be negative")
        self.tokens_per_second = tokens_per_second
        self._clock = clock
        self._sleep = sleep
        self._cache = PromptCache(clock)
        self._lock = threading.Lock()
        self._counter = 0
        self._streams: deque[StreamRecord] = deque(maxlen=REMEMBERED_STREAMS)

    def count_tokens(self, request: dict[str, Any]) -> dict[str, Any]:
        _validate(request, need_max_tokens=False)
        try:
            return {"input_tokens": prompt_tokens(request)}
        except CacheRuleError as exc:
            raise _invalid(str(exc)) from exc

    def create_message(self, request: dict[str, Any]) -> dict[str, Any]:
        """The reply as one Message document (whatever ``stream`` says: the server routes)."""
        _validate(request, need_max_tokens=True)
        try:
            prompt = self._cache.apply(request)
        except CacheRuleError as exc:
            raise _invalid(str(exc)) from exc
        content, stop_reason, output_tokens = _answer(request)
        with self._lock:
            self._counter += 1
            number = self._counter
        digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]
        return {
            "id": f"msg_offline_{digest}{number:06d}",
            "type": "message",
            "role": "assistant",
            "model": request["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": prompt.input_tokens,
                "cache_creation_input_tokens": prompt.cache_creation,
                "cache_read_input_tokens": prompt.cache_read,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": prompt.cache_write_5m,
                    "ephemeral_1h_input_tokens": prompt.cache_write_1h,
                },
                "output_tokens": output_tokens,
                "service_tier": "standard",
            },
        }

    def stream_message(self, request: dict[str, Any]) -> Generator[bytes, None, None]:
        """The reply's server-sent events, one per item. A request the API refuses raises
        ``ModelApiError`` here, before any event, so that it can still be a JSON error.

        The caller writes each item before asking for the next and closes the generator when a
        write fails: generation stops there, and the record says so.
        """
        document = self.create_message(request)
        events = _stream_events(document)
        tokens = sum(1 for _, _, token in events if token)
        record = StreamRecord(document["id"], tokens)
        with self._lock:
            self._streams.append(record)
        return self._paced(events, record)

    def stream_record(self, message_id: str) -> StreamRecord | None:
        with self._lock:
            return next((r for r in self._streams if r.message_id == message_id), None)

    def streams(self) -> list[StreamRecord]:
        """The remembered streams, oldest first (live records: they change as they stream)."""
        with self._lock:
            return list(self._streams)

    def _paced(
        self, events: list[tuple[str, dict[str, Any], bool]], record: StreamRecord
    ) -> Generator[bytes, None, None]:
        interval = 1 / self.tokens_per_second if self.tokens_per_second else 0.0
        due = self._clock()
        try:
            for name, data, token in events:
                if token and interval:
                    # Due times from the start, so that slow writes do not slow the pace further.
                    due += interval
                    self._sleep(max(0.0, due - self._clock()))
                yield f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                # Asked for the next event: the caller has written this one.
                if token:
                    record.sent_tokens += 1
            record.state = StreamState.COMPLETED
        finally:
            if record.state is StreamState.STREAMING:
                record.state = StreamState.ABANDONED


def _stream_events(document: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    """The events the API streams for ``document``, each with whether it carries a token:
    ``message_start`` (the input usage, exact, and a first output token), each block's start,
    deltas and stop (a ``ping`` after the first start), then the cumulative usage on
    ``message_delta`` and ``message_stop``."""
    usage = document["usage"]
    start_usage = {**usage, "output_tokens": min(1, usage["output_tokens"])}
    start = {**document, "content": [], "stop_reason": None, "usage": start_usage}
    events: list[tuple[str, dict[str, Any], bool]] = [
        ("message_start", {"type": "message_start", "message": start}, False)
    ]
    for index, block in enumerate(document["content"]):
        if block["type"] == "text":
            opening: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(block["text"])]
        else:
            opening = {**block, "input": {}}
            raw = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in _pieces(raw)]
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
                False,
            )
        )
        if index == 0:
            events.append(("ping", {"type": "ping"}, False))
        events += [
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": d},
                True,
            )
            for d in deltas
        ]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}, False))
    final_usage = {
        key: usage[key]
        for key in (
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "output_tokens",
        )
    }
    delta = {"stop_reason": document["stop_reason"], "stop_sequence": None}
    events.append(
        ("message_delta", {"type": "message_delta", "delta": delta, "usage": final_usage}, False)
    )
    events.append(("message_stop", {"type": "message_stop"}, False))
    return events


def _pieces(text: str) -> Iterator[str]:
    return (text[i : i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN))


def _validate(request: dict[str, Any], *, need_max_tokens: bool) -> None:
    """Refuse, as the API does, what it would refuse; what passes is safe to read below."""
    if not isinstance(request.get("model"), str) or not request["model"]:
        raise _invalid("model: Field required")
    if need_max_tokens:
        max_tokens = request.get("max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise _invalid("max_tokens: must be an integer of at least 1")
    if not isinstance(request.get("stream", False), bool):
        raise _invalid("stream: must be a boolean")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages: at least one message is required")
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _invalid(f"{where}.role: must be 'user' or 'assistant'")
        _check_content(message.get("content"), where + ".content")
    if messages[0]["role"] != "user":
        raise _invalid("messages: first message must use the 'user' role")
    system = request.get("system")
    if system is not None:
        _check_content(system, "system", kinds=("text",), allow_empty=True)
    tools = request.get("tools", [])
    if not isinstance(tools, list) or not all(
        isinstance(t, dict) and isinstance(t.get("name"), str) and t["name"] for t in tools
    ):
        raise _invalid("tools: each tool needs a name")
    for index, tool in enumerate(tools):
        _check_cache_control(tool, f"tools.{index}")
    choice = request.get("tool_choice")
    if choice is not None and (
        not isinstance(choice, dict)
        or choice.get("type") not in ("auto", "any", "tool", "none")
        or (choice["type"] == "tool" and not isinstance(choice.get("name"), str))
    ):
        raise _invalid("tool_choice: must be auto, any, none or a named tool")


def _check_content(
    content: Any, where: str, kinds: tuple[str, ...] = ("text", "tool_use", "tool_result"),
    *, allow_empty: bool = False,
) -> None:  # fmt: skip
    if isinstance(content, str) and (content or allow_empty):
        return
    if not isinstance(content, list) or not (content or allow_empty):
        raise _invalid(f"{where}: must be a non-empty string or list of blocks")
    for index, block in enumerate(content):
        at = f"{where}.{index}"
        if not isinstance(block, dict) or block.get("type") not in kinds:
            raise _invalid(f"{at}.type: must be one of {', '.join(kinds)}")
        kind = block["type"]
        if kind == "text" and not isinstance(block.get("text"), str):
            raise _invalid(f"{at}.text: Field required")
        if kind == "tool_use" and not (
            isinstance(block.get("id"), str)
            and isinstance(block.get("name"), str)
            and isinstance(block.get("input"), dict)
        ):
            raise _invalid(f"{at}: tool_use needs an id, a name and an input object")
        if kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise _invalid(f"{at}.tool_use_id: Field required")
            if "content" in block:
                _check_content(block["content"], at + ".content", ("text",), allow_empty=True)
        _check_cache_control(block, at)


def _check_cache_control(block: dict[str, Any], where: str) -> None:
    control = block.get("cache_control")
    if control is None:
        return
    if (
        not isinstance(control, dict)
        or control.get("type") != "ephemeral"
        or control.get("ttl", "5m") not in TTL_SECONDS
    ):
        raise _invalid(f"{where}.cache_control: must be ephemeral with a ttl of 5m or 1h")


def _answer(request: dict[str, Any]) -> tuple[list[dict[str, Any]], str, int]:
    """The reply's content blocks, its stop reason and its output tokens."""
    last = request["messages"][-1]
    blocks = blocks_of(last["content"])
    results = [b for b in blocks if b.get("type") == "tool_result"]
    if last["role"] == "user" and results:
        return _cut(_tool_answer(results), request["max_tokens"])
    question = " ".join(block_text(b) for b in blocks if b.get("type") == "text").strip()
    tool = _usage_tool(request)
    if last["role"] == "user" and tool is not None and _wants_tool(request, question):
        return _tool_call(tool, question, request["max_tokens"])
    return _cut(_reply_to(question), request["max_tokens"])


def _usage_tool(request: dict[str, Any]) -> str | None:
    names = [str(tool["name"]) for tool in request.get("tools", [])]
    choice = request.get("tool_choice") or {}
    if choice.get("type") == "none" or not names:
        return None
    if choice.get("type") == "tool" and choice.get("name") in names:
        return str(choice["name"])
    if "get_my_usage" in names:
        return "get_my_usage"
    return next((name for name in names if "usage" in name), names[0])


def _wants_tool(request: dict[str, Any], question: str) -> bool:
    choice = request.get("tool_choice") or {}
    return choice.get("type") in ("any", "tool") or bool(_USAGE_QUESTION.search(question))


def _tool_call(tool: str, question: str, max_tokens: int) -> tuple[list[dict[str, Any]], str, int]:
    preface = "Let me look up your current usage."
    call_id = "toolu_offline_" + hashlib.sha256(question.encode()).hexdigest()[:20]
    use = {"type": "tool_use", "id": call_id, "name": tool, "input": {}}
    needed = tokens_of(preface) + tokens_of(tool + "{}") + 8
    if needed > max_tokens:
        # Too little room for the call itself: the API stops mid-way, with no tool_use block.
        return _cut(preface + " " + "." * (max_tokens * CHARS_PER_TOKEN), max_tokens)
    return [{"type": "text", "text": preface}, use], "tool_use", needed


def _tool_answer(results: list[dict[str, Any]]) -> str:
    raw = block_text(results[-1])
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    stats: dict[str, Any] = data if isinstance(data, dict) else {}
    tokens: dict[str, Any] = stats["tokens"] if isinstance(stats.get("tokens"), dict) else {}
    used, limit = tokens.get("used"), tokens.get("limit")
    if results[-1].get("is_error") or not isinstance(used, int) or not isinstance(limit, int):
        return f"I could not read your usage just now. The tool said: {raw[:200]}"
    plan = stats["plan"] if isinstance(stats.get("plan"), str) else "current"
    return (
        f"You have used {used:,} of the {limit:,} tokens of your {plan} plan this period "
        f"({tokens.get('percent', 0)}%), so {max(0, limit - used):,} tokens remain. "
        "This answer and the lookup before it were metered too."
    )


def _reply_to(question: str) -> str:
    digest = hashlib.sha256(question.encode()).digest()
    words = question.split()
    quoted = " ".join(words[:12]) + (" ..." if len(words) > 12 else "")
    closers = [_CLOSERS[(digest[i] + i) % len(_CLOSERS)] for i in range(1 + digest[0] % 3)]
    unique = list(dict.fromkeys(closers))
    return (
        f"This is the offline model of the local runtime. You wrote {len(words)} "
        f"word{'s' if len(words) != 1 else ''}, starting with: \u201c{quoted}\u201d. "
        + " ".join(unique)
    )


def _cut(text: str, max_tokens: int) -> tuple[list[dict[str, Any]], str, int]:
    if tokens_of(text) <= max_tokens:
        return [{"type": "text", "text": text}], "end_turn", tokens_of(text)
    return (
        [{"type": "text", "text": text[: max_tokens * CHARS_PER_TOKEN]}],
        "max_tokens",
        max_tokens,
    )
