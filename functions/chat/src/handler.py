"""One chat execution: identify the caller, validate the body, run the metered chat."""

from __future__ import annotations

import json
from typing import Any

from metering.adapters.store_factory import open_store
from metering.chat import ChatResult, ChatService
from metering.errors import InvalidRequest, MeteringError
from metering.http import Context, Json
from metering.identity import caller_id

from .bootstrap import ChatApp
from .schema import parse_chat_body


def handle_chat(context: Any, app: ChatApp) -> tuple[int, Json]:
    request = context.req
    user_id: str | None = None
    request_id: str | None = None
    try:
        if request.method != "POST":
            raise InvalidRequest("chat accepts POST requests only")
        user_id = caller_id(request.headers, app.verifier)
        chat_request = parse_chat_body(request.body_binary, app.config.limits)
        request_id = chat_request.request_id
        store = open_store(app.config.store, request.headers.get("x-appwrite-key"))
        service = ChatService(
            store=store,
            model=app.model,
            plans=app.plans,
            prices=app.prices,
            settings=app.config.chat,
            new_request_id=app.new_request_id,
        )
        result = service.handle(user_id, chat_request, app.clock())
    except MeteringError as error:
        event = "chat.failed" if error.status >= 500 else "chat.rejected"
        _log(context, event, user_id, request_id, code=error.code, status=error.status)
        raise
    _log_result(context, user_id, result)
    return 200, result.body


def _log_result(context: Context, user_id: str, result: ChatResult) -> None:
    usage = result.usage
    _log(
        context,
        "chat.replayed" if result.replayed else "chat.completed",
        user_id,
        result.request_id,
        steps=usage.steps,
        inputTokens=usage.input_tokens,
        cacheCreationInputTokens=usage.cache_creation_input_tokens,
        cacheReadInputTokens=usage.cache_read_input_tokens,
        outputTokens=usage.output_tokens,
        totalTokens=usage.total_tokens,
        truncated=result.truncated,
    )


def _log(
    context: Context, event: str, user_id: str | None, request_id: str | None, **fields: Any
) -> None:
    line = {"event": event, "userId": user_id, "requestId": request_id, **fields}
    context.log(json.dumps(line, separators=(",", ":")))
