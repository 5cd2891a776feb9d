"""A scripted Anthropic Messages API behind an httpx2 transport, so the SDK's real parsing runs.

Replies are the API's JSON documents (usage with cache fields, ``tool_use`` blocks, error
envelopes). Like the real API, a reply longer than the request's ``max_tokens`` is cut there and
answered with ``stop_reason: max_tokens``. A request with ``"stream": true`` is answered with the
API's server-sent events for the same reply (or with a scripted ``Streamed`` event list), one
event per chunk, so a test sees how many events the client pulled and whether it closed.

With a ``PromptCache``, the fake applies the API's prompt caching rules to each request it
answers with a ``Reply``: the reply's input usage (plain input, cache writes by time to live,
cache reads) is what the rules make of the request's prompt, its output stays as scripted.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2

from localruntime.prompt_cache import CacheRuleError, PromptCache, PromptUsage

MODEL = "claude-sonnet-5-5"
_ids = itertools.count(1)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    529: "overloaded_error",
}


def usage_document(
    input_tokens: int,
    output_tokens: int,
    *,
    cache_write_5m: int = 0,
    cache_write_1h: int = 0,
    cache_read: int = 0,
) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": cache_write_5m + cache_write_1h,
        "cache_read_input_tokens": cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache_write_5m,
            "ephemeral_1h_input_tokens": cache_write_1h,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def message_document(
    content: list[dict[str, Any]],
    usage: dict[str, Any],
    stop_reason: str = "end_turn",
    model: str = MODEL,
) -> dict[str, Any]:
    return {
        "id": f"msg_01Fake{next(_ids):08d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def text_reply(text: str, input_tokens: int = 20, output_tokens: int = 10, **cache: int) -> Reply:
    content = [{"type": "text", "text": text}]
    return Reply(message_document(content, usage_document(input_tokens, output_tokens, **cache)))


def tool_use_reply(
    name: str,
    tool_input: dict[str, Any] | None = None,
    *,
    text: str = "Let me look that up.",
    input_tokens: int = 400,
    output_tokens: int = 40,
    **cache: int,
) -> Reply:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content.append(
        {
            "type": "tool_use",
            "id": f"toolu_01Fake{next(_ids):08d}",
            "name": name,
            "input": tool_input or {},
        }
    )
    usage = usage_document(input_tokens, output_tokens, **cache)
    return Reply(message_document(content, usage, stop_reason="tool_use"))


@dataclass(frozen=True)
class Reply:
    document: dict[str, Any]


@dataclass(frozen=True)
class Failure:
    status: int
    headers: dict[str, str] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        error_type = ERROR_TYPES.get(self.status, "api_error")
        return {
            "type": "error",
            "error": {"type": error_type, "message": f"fake {error_type}"},
            "request_id": f"req_fake{self.status}",
        }


@dataclass(frozen=True)
class Raise:
    """A transport failure: the SDK sees no response at all."""

    make: Callable[[httpx2.Request], Exception]


def timeout(request: httpx2.Request) -> Exception:
    return httpx2.ReadTimeout("timed out", request=request)


def connection_refused(request: httpx2.Request) -> Exception:
    return httpx2.ConnectError("connection refused", request=request)


Event = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Streamed:
    """A scripted SSE answer: ``events`` in order, ``delay_seconds`` before each one; with
    ``drop_after``, the connection is lost once that many events were sent."""

    events: tuple[Event, ...]
    delay_seconds: float = 0.0
    drop_after: int | None = None


def stream_events(document: dict[str, Any], *, chunk: int = 4) -> tuple[Event, ...]:
    """The events the API streams for ``document``: text and tool input in ``chunk``-sized
    deltas, a ``ping``, and the final usage on a cumulative ``message_delta``."""
    usage = document["usage"]
    # The API reports a token or so of output at the start; the final count comes at the end.
    start_usage = {**usage, "output_tokens": 1}
    start = {**document, "content": [], "stop_reason": None, "usage": start_usage}
    events: list[Event] = [("message_start", {"type": "message_start", "message": start})]
    events.append(("ping", {"type": "ping"}))
    for index, block in enumerate(document["content"]):
        if block["type"] == "text":
            opening: dict[str, Any] = {"type": "text", "text": ""}
            pieces = [block["text"][i : i + chunk] for i in range(0, len(block["text"]), chunk)]
            deltas = [{"type": "text_delta", "text": piece} for piece in pieces]
        else:
            opening = {**block, "input": {}}
            raw = json.dumps(block["input"])
            pieces = [raw[i : i + chunk] for i in range(0, len(raw), chunk)]
            deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
            )
        )
        for delta in deltas:
            events.append(
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(message_delta(document["stop_reason"], usage["output_tokens"]))
    events.append(("message_stop", {"type": "message_stop"}))
    return tuple(events)


def message_delta(stop_reason: str | None, output_tokens: int) -> Event:
    return (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        },
    )


def error_event(error_type: str = "overloaded_error") -> Event:
    return ("error", {"type": "error", "error": {"type": error_type, "message": "fake"}})


class SSEBody(httpx2.SyncByteStream):
    """A response body that streams one event per chunk and records what the client read."""

    def __init__(
        self, events: tuple[Event, ...], delay_seconds: float, drop_after: int | None = None
    ) -> None:
        self.events = events
        self.delay_seconds = delay_seconds
        self.drop_after = drop_after
        self.sent = 0
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for name, data in self.events:
            if self.closed:
                return
            if self.sent == self.drop_after:
                raise httpx2.ReadError("connection lost")
            if self.delay_seconds:
                time.sleep(self.delay_seconds)
            self.sent += 1
            yield f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

    def close(self) -> None:
        self.closed = True


Outcome = Reply | Failure | Raise | Streamed


@dataclass
class FakeAnthropic:
    """Answers ``/v1/messages`` from a script and ``/v1/messages/count_tokens`` from a rule."""

    script: deque[Outcome] = field(default_factory=deque)
    count_tokens: Callable[[dict[str, Any]], int] = lambda body: 25
    # Answered when the script has run out (fuzzing); without it an empty script fails the test.
    default: Reply | None = None
    # When set, every count_tokens call fails this way.
    count_failure: Failure | Raise | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    count_requests: list[dict[str, Any]] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    # The bodies of streamed answers, in order.
    streams: list[SSEBody] = field(default_factory=list)
    # When set, replies report the input usage the caching rules give their request.
    prompt_cache: PromptCache | None = None

    def then(self, *outcomes: Outcome) -> FakeAnthropic:
        self.script.extend(outcomes)
        return self

    def client(self) -> httpx2.Client:
        return httpx2.Client(transport=httpx2.MockTransport(self.handle))

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.urls.append(str(request.url))
        self.headers.append(dict(request.headers))
        body = json.loads(request.content)
        if request.url.path.endswith("/v1/messages/count_tokens"):
            self.count_requests.append(body)
            if self.count_failure is not None:
                return self._fail(self.count_failure, request)
            return httpx2.Response(200, json={"input_tokens": self.count_tokens(body)})
        if not request.url.path.endswith("/v1/messages"):
            return httpx2.Response(404, json=Failure(404).document())
        self.requests.append(body)
        if not self.script and self.default is None:
            raise AssertionError("the model was called more often than the test scripted")
        outcome = self.script.popleft() if self.script else self.default
        assert outcome is not None
        if isinstance(outcome, Reply) and self.prompt_cache is not None:
            try:
                prompt = self.prompt_cache.apply(body)
            except CacheRuleError as exc:
                return httpx2.Response(400, json=_invalid_request(str(exc)))
            outcome = Reply(with_prompt_usage(outcome.document, prompt))
        if isinstance(outcome, Reply) and body.get("stream"):
            outcome = Streamed(stream_events(_cut(outcome.document, body["max_tokens"])))
        if isinstance(outcome, Streamed):
            sse = SSEBody(outcome.events, outcome.delay_seconds, outcome.drop_after)
            self.streams.append(sse)
            return httpx2.Response(200, stream=sse, headers={"content-type": "text/event-stream"})
        if isinstance(outcome, Reply):
            return httpx2.Response(200, json=_cut(outcome.document, body["max_tokens"]))
        return self._fail(outcome, request)

    @staticmethod
    def _fail(outcome: Failure | Raise, request: httpx2.Request) -> httpx2.Response:
        if isinstance(outcome, Raise):
            raise outcome.make(request)
        headers = {"request-id": f"req_fake{outcome.status}", **outcome.headers}
        return httpx2.Response(outcome.status, json=outcome.document(), headers=headers)


def with_prompt_usage(document: dict[str, Any], prompt: PromptUsage) -> dict[str, Any]:
    """``document`` with its input usage replaced by ``prompt``'s, its output kept."""
    usage = usage_document(
        prompt.input_tokens,
        document["usage"]["output_tokens"],
        cache_write_5m=prompt.cache_write_5m,
        cache_write_1h=prompt.cache_write_1h,
        cache_read=prompt.cache_read,
    )
    return {**document, "usage": usage}


def _invalid_request(message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
        "request_id": "req_fake400",
    }


def _cut(document: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """What the API does to a reply that needs more than ``max_tokens``: stop there."""
    usage = document["usage"]
    if usage["output_tokens"] <= max_tokens:
        return document
    return {
        **document,
        "stop_reason": "max_tokens",
        "usage": {**usage, "output_tokens": max_tokens},
    }
