"""Anthropic's prompt caching rules over Messages API request bodies, for the offline model and
the tests' fake of the API: how a prompt is counted, which prefix is read from the cache, which
is written, and how long an entry lives.

The rules, as the API documents them: the prompt is one sequence of blocks in the order tools,
system, messages; a ``cache_control`` breakpoint (at most four) caches the whole prefix up to and
including its block, once that prefix is at least the model's minimum length; a later request
reads the longest cached prefix it shares, looked up from each breakpoint back over at most 20
blocks; what lies between that prefix and the last breakpoint is written (``cache_creation``),
the rest is plain input. An entry lives five minutes (or an hour with ``ttl: "1h"``) from its
last use: every read refreshes it. Tokens are counted at four characters a token.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 3
# With tools, the API adds its own tool-use system prompt ahead of them (346 tokens for
# ``auto``/``none`` on the Claude 4 family); it is part of the cacheable prefix.
TOOL_USE_SYSTEM_PROMPT_TOKENS = 346
# The minimum cacheable prompt length of the Sonnet models; a shorter prefix is never cached.
MIN_CACHEABLE_TOKENS = 1024
MAX_BREAKPOINTS = 4
# How many blocks the lookup walks back from a breakpoint for a cached prefix.
LOOKBACK_BLOCKS = 20
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}


class CacheRuleError(ValueError):
    """A request the API refuses for its ``cache_control`` blocks (a 400 there)."""


def tokens_of(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def blocks_of(content: Any) -> list[dict[str, Any]]:
    """A content field as blocks: a plain string is one text block."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        return []
    return [block for block in content if isinstance(block, dict)]


def block_text(block: dict[str, Any]) -> str:
    """What a block contributes to the prompt, for counting."""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "tool_use":
        return str(block.get("name", "")) + json.dumps(block.get("input", {}), sort_keys=True)
    if kind == "tool_result":
        inner = block.get("content", "")
        if isinstance(inner, str):
            return inner
        return "".join(block_text(b) for b in blocks_of(inner))
    return _canonical(block)


@dataclass(frozen=True, slots=True)
class Segment:
    """One block of the prompt: its tokens, the identity of the prompt up to and including it,
    and its breakpoint's time to live (None: not a breakpoint)."""

    tokens: int
    key: str
    ttl: str | None


@dataclass(frozen=True, slots=True)
class PromptUsage:
    """A prompt's tokens split as the API reports them (the four parts are disjoint)."""

    input_tokens: int
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0

    @property
    def cache_creation(self) -> int:
        return self.cache_write_5m + self.cache_write_1h

    @property
    def total(self) -> int:
        return self.input_tokens + self.cache_creation + self.cache_read


def segments(request: dict[str, Any]) -> list[Segment]:
    """The prompt of ``request`` (a validated Messages API body) as blocks in cache order.

    Raises ``CacheRuleError`` for what the API refuses: more than four breakpoints, a
    ``cache_control`` that is not ephemeral with a known ttl, a one-hour breakpoint after a
    five-minute one, or a breakpoint on an empty text block.
    """
    digest = hashlib.sha256(str(request.get("model", "")).encode())
    parts: list[Segment] = []

    def add(tokens: int, identity: str, block: dict[str, Any] | None = None) -> None:
        digest.update(b"\x00" + identity.encode())
        parts.append(Segment(tokens, digest.hexdigest(), _ttl(block)))

    tools = [tool for tool in request.get("tools") or [] if isinstance(tool, dict)]
    if tools:
        add(TOOL_USE_SYSTEM_PROMPT_TOKENS, "tool-use system prompt")
    for tool in tools:
        identity = _canonical(tool)
        add(tokens_of(identity), identity, tool)
    for block in blocks_of(request.get("system") or []):
        add(tokens_of(block_text(block)), _canonical(block), block)
    # A change of tool_choice invalidates the cached messages, never the tools or the system.
    digest.update(b"\x01" + _canonical({"tool_choice": request.get("tool_choice")}).encode())
    for message in request.get("messages") or []:
        if not isinstance(message, dict):
            continue
        overhead = MESSAGE_OVERHEAD_TOKENS
        digest.update(b"\x02" + str(message.get("role")).encode())
        for block in blocks_of(message.get("content")):
            add(overhead + tokens_of(block_text(block)), _canonical(block), block)
            overhead = 0
    _check_breakpoints(parts)
    return parts


def prompt_tokens(request: dict[str, Any]) -> int:
    """The input tokens of ``request`` however they are cached (what ``count_tokens`` says)."""
    return sum(part.tokens for part in segments(request))


class PromptCache:
    """The API's cache of prompt prefixes for one workspace; thread-safe, on ``clock`` (seconds,
    monotonic) so that a test can let entries expire."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        min_tokens: int = MIN_CACHEABLE_TOKENS,
    ) -> None:
        self._clock = clock
        self.min_tokens = min_tokens
        self._lock = threading.Lock()
        # prompt identity -> (expires at, ttl)
        self._entries: dict[str, tuple[float, str]] = {}

    def apply(self, request: dict[str, Any]) -> PromptUsage:
        """Serve ``request``'s prompt: read the longest cached prefix it shares (refreshing
        it), write each breakpoint past it that is long enough, and say what was what."""
        parts = segments(request)
        ends = list(itertools.accumulate(part.tokens for part in parts))
        breakpoints = [i for i, part in enumerate(parts) if part.ttl is not None]
        with self._lock:
            now = self._clock()
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            read_at = self._longest_cached(parts, breakpoints)
            read = 0
            if read_at is not None:
                read = ends[read_at]
                ttl = self._entries[parts[read_at].key][1]
                self._entries[parts[read_at].key] = (now + TTL_SECONDS[ttl], ttl)
            written = {"5m": 0, "1h": 0}
            start = read
            for at in breakpoints:
                if (read_at is not None and at <= read_at) or ends[at] < self.min_tokens:
                    continue
                ttl = parts[at].ttl or "5m"
                written[ttl] += ends[at] - start
                start = ends[at]
                self._entries[parts[at].key] = (now + TTL_SECONDS[ttl], ttl)
        total = ends[-1] if ends else 0
        return PromptUsage(
            input_tokens=total - read - written["5m"] - written["1h"],
            cache_write_5m=written["5m"],
            cache_write_1h=written["1h"],
            cache_read=read,
        )

    def _longest_cached(self, parts: list[Segment], breakpoints: list[int]) -> int | None:
        """The last block of the longest cached prefix within reach of a breakpoint."""
        for at in reversed(breakpoints):
            for index in range(at, max(-1, at - LOOKBACK_BLOCKS), -1):
                if parts[index].key in self._entries:
                    return index
        return None


def _canonical(block: dict[str, Any]) -> str:
    """A block's identity: its content, whatever its breakpoint (moving one changes nothing)."""
    return json.dumps(
        {key: value for key, value in block.items() if key != "cache_control"}, sort_keys=True
    )


def _ttl(block: dict[str, Any] | None) -> str | None:
    control = None if block is None else block.get("cache_control")
    if control is None:
        return None
    if not isinstance(control, dict):
        raise CacheRuleError("cache_control: must be an object")
    ttl = control.get("ttl", "5m")
    if control.get("type") != "ephemeral" or ttl not in TTL_SECONDS:
        raise CacheRuleError("cache_control: must be ephemeral with a ttl of 5m or 1h")
    if block is not None and block.get("type") == "text" and not block.get("text"):
        raise CacheRuleError("cache_control cannot be set for empty text blocks")
    return str(ttl)


def _check_breakpoints(parts: list[Segment]) -> None:
    ttls = [part.ttl for part in parts if part.ttl is not None]
    if len(ttls) > MAX_BREAKPOINTS:
        raise CacheRuleError(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(ttls)}."
        )
    if "5m" in ttls and "1h" in ttls[ttls.index("5m") :]:
        raise CacheRuleError("a ttl='1h' cache_control block must not come after a ttl='5m' block")
