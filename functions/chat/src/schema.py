"""The chat request body: parsed and validated at the edge, turned into a domain request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from metering.chat import ChatRequest
from metering.errors import InvalidRequest, PayloadTooLarge
from metering.model import Message
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

REQUEST_ID_PATTERN = r"^[A-Za-z0-9._-]{1,36}$"


@dataclass(frozen=True, slots=True)
class BodyLimits:
    max_body_bytes: int
    max_messages: int
    max_message_chars: int


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    role: Literal["user", "assistant"]
    # The provider refuses whitespace-only text: reject it here, not as an upstream error.
    content: Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]


class ChatBodyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    messages: list[ChatMessageIn] = Field(min_length=1)
    request_id: Annotated[str, StringConstraints(pattern=REQUEST_ID_PATTERN)] | None = Field(
        default=None, alias="requestId"
    )


def parse_chat_body(raw: bytes, limits: BodyLimits) -> ChatRequest:
    """A domain ``ChatRequest`` from the raw body, or a 400/413 naming what is wrong."""
    if len(raw) > limits.max_body_bytes:
        raise PayloadTooLarge(f"the body is larger than {limits.max_body_bytes} bytes")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the body is not UTF-8 text") from None
    try:
        body = ChatBodyIn.model_validate_json(raw)
    except ValidationError as exc:
        details = _details(exc)
        raise InvalidRequest("the body is not a valid chat request", details=details) from None
    if len(body.messages) > limits.max_messages:
        raise PayloadTooLarge(f"at most {limits.max_messages} messages are accepted")
    for message in body.messages:
        if len(message.content) > limits.max_message_chars:
            raise PayloadTooLarge(
                f"a message may have at most {limits.max_message_chars} characters"
            )
    if body.messages[0].role != "user" or body.messages[-1].role != "user":
        raise InvalidRequest("the conversation must start and end with a user message")
    messages = tuple(Message.text(m.role, m.content) for m in body.messages)
    return ChatRequest(messages=messages, request_id=body.request_id)


def _details(exc: ValidationError) -> list[dict[str, Any]]:
    """Where and what, never the offending input."""
    return [
        {"loc": ".".join(str(part) for part in error["loc"]) or "body", "msg": error["msg"]}
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
