"""One chat execution: identify the caller, then run the metered chat or read or stop a turn."""

from __future__ import annotations

import re

from metering.alert_service import AlertOutcome
from metering.chat import ChatService
from metering.edge import Answer, LogLine, Request
from metering.errors import InvalidRequest, PathNotFound
from metering.identity import caller_id
from metering.turn_service import TurnService
from metering.wire import chat_response, turn_response

from .bootstrap import ChatApp
from .schema import REQUEST_ID_PATTERN, parse_chat_body

TURN_PATH = re.compile(r"^/turns/(?P<id>[^/]+)(?P<stop>/stop)?/?$")
REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


def handle(request: Request, log: LogLine, app: ChatApp) -> Answer:
    """``POST /`` chats (a turn when the body has a requestId); ``GET /turns/{id}`` reads a
    turn and ``POST /turns/{id}/stop`` stops it."""
    path = request.path or "/"
    if path in ("/", ""):
        if request.method != "POST":
            raise InvalidRequest("chat accepts POST requests only")
        return handle_chat(request, log, app)
    route = TURN_PATH.match(path)
    if route is None:
        raise PathNotFound(f"no route {path}")
    expected = "POST" if route["stop"] else "GET"
    if request.method != expected:
        raise InvalidRequest(f"{path} accepts {expected} requests only")
    request_id = route["id"]
    if not REQUEST_ID.match(request_id):
        raise InvalidRequest("the requestId in the path is not valid")
    user_id = caller_id(request.headers, app.verifier)
    log.add(userId=user_id, requestId=request_id)
    turns = TurnService(
        app.stores(request.headers.get("x-appwrite-key")),
        monotonic=app.monotonic,
        sleep=app.sleep,
        stop_wait_seconds=app.config.stop_wait_seconds,
    )
    if route["stop"]:
        view = turns.stop(user_id, request_id, app.clock())
        log.add(turnStatus=view.turn.status.value, stopping=view.stopping)
        return Answer(dict(turn_response(view)), outcome="stop")
    view = turns.read(user_id, request_id)
    return Answer(dict(turn_response(view)), outcome="read")


def handle_chat(request: Request, log: LogLine, app: ChatApp) -> Answer:
    user_id = caller_id(request.headers, app.verifier)
    log.add(userId=user_id)
    chat_request = parse_chat_body(request.body_binary, app.config.limits)
    log.add(requestId=chat_request.request_id)
    execution_key = request.headers.get("x-appwrite-key")
    service = ChatService(
        store=app.stores(execution_key),
        notifier=app.notifiers(execution_key),
        model=app.model,
        plans=app.plans,
        prices=app.prices,
        settings=app.config.chat,
        new_request_id=app.new_request_id,
        monotonic=app.monotonic,
    )
    result = service.handle(user_id, chat_request, app.clock())
    usage = result.usage
    log.add(
        requestId=result.request_id,
        steps=usage.steps,
        inputTokens=usage.input_tokens,
        cacheCreationInputTokens=usage.cache_creation_input_tokens,
        cacheReadInputTokens=usage.cache_read_input_tokens,
        outputTokens=usage.output_tokens,
        totalTokens=usage.total_tokens,
        truncated=result.truncated,
        estimated=result.reply.estimated,
        turnStatus=result.reply.status.value,
    )
    if result.alert is not None:
        _log_alert(log, user_id, result.alert)
    body = dict(chat_response(result))
    return Answer(body, outcome="replayed" if result.replayed else "completed")


def _log_alert(log: LogLine, user_id: str, alert: AlertOutcome) -> None:
    log.add(alert=alert.threshold, alertState=alert.state.value)
    if alert.error:
        # A line of its own: the operator greps for alerts that a later request must retry.
        log.note("alert.failed", userId=user_id, threshold=alert.threshold, error=alert.error)
