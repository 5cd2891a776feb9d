"""One chat execution: identify the caller, validate the body, run the metered chat."""

from __future__ import annotations

from metering.alert_service import AlertOutcome
from metering.chat import ChatService
from metering.edge import Answer, LogLine, Request
from metering.identity import caller_id
from metering.wire import chat_response

from .bootstrap import ChatApp
from .schema import parse_chat_body


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
