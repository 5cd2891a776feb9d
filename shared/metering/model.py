"""A model conversation in domain words, and the local bound on its input tokens.

Adapters translate these types to and from a vendor SDK; no SDK type crosses ``ModelClient``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .reservation import input_upper_bound
from .tokens import TokenUsage

Role = Literal["user", "assistant"]
ToolChoice = Literal["auto", "none"]

STOP_TOOL_USE = "tool_use"
STOP_MAX_TOKENS = "max_tokens"

# Framing a tool call or result costs more than a plain text turn; counted per block.
PER_BLOCK_OVERHEAD_TOKENS = 32
# With tools, the provider adds its own tool-use system prompt (documented at a few hundred
# tokens for current models); the bound doubles the largest documented figure.
TOOL_USE_SYSTEM_PROMPT_TOKENS = 1100


@dataclass(frozen=True, slots=True)
class TextBlock:
    text: str


@dataclass(frozen=True, slots=True)
class ToolUseBlock:
    id: str
    name: str
    input: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToolResultBlock:
    tool_use_id: str
    content: str
    is_error: bool = False


Block = TextBlock | ToolUseBlock | ToolResultBlock


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    blocks: tuple[Block, ...]

    @classmethod
    def text(cls, role: Role, text: str) -> Message:
        return cls(role=role, blocks=(TextBlock(text),))


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call: its name, what it does, and a JSON schema of its input."""

    name: str
    description: str
    input_schema: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ModelRequest:
    model: str
    system: str
    messages: tuple[Message, ...]
    max_tokens: int
    tools: tuple[ToolSpec, ...] = ()
    # "none" lets a conversation that already holds tool calls end with a plain answer.
    tool_choice: ToolChoice = "auto"


@dataclass(frozen=True, slots=True)
class ModelReply:
    blocks: tuple[Block, ...]
    stop_reason: str
    usage: TokenUsage
    model: str

    @property
    def text(self) -> str:
        return "".join(block.text for block in self.blocks if isinstance(block, TextBlock))

    @property
    def tool_uses(self) -> tuple[ToolUseBlock, ...]:
        return tuple(block for block in self.blocks if isinstance(block, ToolUseBlock))


class StreamSink(Protocol):
    """Where a streamed call delivers what it receives, and how its caller asks it to stop."""

    def text(self, delta: str) -> None:
        """A piece of reply text, in order."""

    def tool_input(self, delta: str) -> None:
        """A piece of a tool call's input JSON (partial, not parseable on its own)."""

    def should_stop(self) -> bool:
        """Polled between events; True cuts the call (Stop, the user left)."""


@dataclass(frozen=True, slots=True)
class StreamedCall:
    """One streamed model call as it ended.

    ``reply`` holds the blocks received (partial when cut). Its input and cache usage are exact
    (from ``message_start``); its output is the last cumulative ``message_delta`` count, 0 when
    none arrived, which ``output_reported`` tells apart from a reported 0 so the caller knows when
    the output must be measured instead. ``cut`` is True when the call closed before
    ``message_stop`` (Stop, deadline, lost connection, an error event): the provider still
    billed what it generated.
    """

    reply: ModelReply
    cut: bool
    output_reported: bool


def _block_texts(block: Block) -> tuple[str, ...]:
    if isinstance(block, TextBlock):
        return (block.text,)
    if isinstance(block, ToolUseBlock):
        return (block.id, block.name, json.dumps(block.input, ensure_ascii=False))
    return (block.tool_use_id, block.content)


def request_input_bound(request: ModelRequest) -> int:
    """A safe upper bound on the input tokens of ``request``, computed locally."""
    texts: list[str] = [request.system]
    blocks = 0
    for message in request.messages:
        for block in message.blocks:
            texts.extend(_block_texts(block))
            blocks += 1
    for tool in request.tools:
        texts.extend(
            (tool.name, tool.description, json.dumps(tool.input_schema, ensure_ascii=False))
        )
    bound = input_upper_bound(texts, len(request.messages))
    bound += blocks * PER_BLOCK_OVERHEAD_TOKENS
    if request.tools:
        bound += TOOL_USE_SYSTEM_PROMPT_TOKENS + len(request.tools) * PER_BLOCK_OVERHEAD_TOKENS
    return bound
