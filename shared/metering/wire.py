"""JSON as it crosses the wire: the one ``Json`` alias, and each HTTP shape declared once as a
TypedDict next to the serialiser that builds it from domain results."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict

from .account import Account, level, percent
from .alerts import Notice
from .timeutil import format_timestamp
from .tokens import TokenUsage

if TYPE_CHECKING:
    # Types only: the chat's usage tool answers the model with UsageStats built here.
    from .chat import ChatReply, ChatResult
    from .checkout import PricedOffer, Shelf
    from .turn_service import TurnView

# A JSON object built for an answer.
Json = dict[str, Any]
# A JSON object read from outside (a request, a vendor payload): never mutated.
JsonIn = Mapping[str, Any]


class TokenFigures(TypedDict):
    used: int
    limit: int
    remaining: int
    percent: float
    planTokens: int
    addonTokens: int
    topupTokens: int
    lifetimeUsed: int
    periodStart: str
    resetsAt: str | None


class Metric(TypedDict):
    used: int
    limit: int
    percent: float


class NoticeItem(TypedDict):
    """One usage alert's in-app notice."""

    id: str
    threshold: int
    level: str
    message: str
    createdAt: str


class UsageStats(TypedDict):
    """The caller's usage: the body of ``usage``, and ``usage`` of a chat reply or its 429.
    ``notices`` (the period's usage alerts, newest first) is in the ``usage`` answer only: the
    chat does not read them, so that a request below 75 % costs no extra store call."""

    userId: str
    plan: str
    level: str
    tokens: TokenFigures
    storage: Metric
    banks: Metric
    notices: NotRequired[list[NoticeItem]]


class MessageUsage(TypedDict):
    """What one chat request was charged, over every step of its tool loop."""

    inputTokens: int
    cacheCreationInputTokens: int
    cacheReadInputTokens: int
    outputTokens: int
    totalTokens: int
    steps: int
    costUsd: float


class ChatMessage(TypedDict):
    role: Literal["assistant"]
    content: str
    model: str
    stopReason: str
    truncated: bool
    usage: MessageUsage
    # True when some output was measured from the text received (a call cut before its usage).
    estimated: bool


class ChatResponse(TypedDict):
    """The body of a chat answered (first time or replayed)."""

    message: ChatMessage
    usage: UsageStats


class TurnDocument(TypedDict):
    """A streamed turn as its user reads it: the text so far, then its final state."""

    requestId: str
    status: str
    content: str
    model: str
    stopReason: str
    truncated: bool
    usage: MessageUsage
    estimated: bool


class TurnResponse(TypedDict):
    """The body of ``GET /turns/{id}`` and ``POST /turns/{id}/stop``."""

    turn: TurnDocument
    usage: UsageStats


def usage_stats(account: Account) -> UsageStats:
    used, limit = account.current_tokens_used, account.limit
    resets_at = account.resets_at
    return {
        "userId": account.user_id,
        "plan": account.plan,
        "level": level(used, limit).value,
        "tokens": {
            "used": used,
            "limit": limit,
            "remaining": account.remaining,
            "percent": percent(used, limit),
            "planTokens": account.max_tokens_per_month,
            "addonTokens": account.addon_tokens,
            "topupTokens": account.topup_tokens,
            "lifetimeUsed": account.lifetime_tokens_used,
            "periodStart": format_timestamp(account.period_start),
            "resetsAt": format_timestamp(resets_at) if resets_at else None,
        },
        "storage": _metric(account.storage_bytes_used, account.storage_bytes_limit),
        "banks": _metric(account.bank_connections_used, account.bank_connections_limit),
    }


def _metric(used: int, limit: int) -> Metric:
    return {"used": used, "limit": limit, "percent": percent(used, limit) if limit else 0.0}


def message_usage(usage: TokenUsage, cost_micro_usd: int) -> MessageUsage:
    return {
        "inputTokens": usage.input_tokens,
        "cacheCreationInputTokens": usage.cache_creation_input_tokens,
        "cacheReadInputTokens": usage.cache_read_input_tokens,
        "outputTokens": usage.output_tokens,
        "totalTokens": usage.total_tokens,
        "steps": usage.steps,
        "costUsd": cost_micro_usd / 1e6,
    }


def chat_message(reply: ChatReply) -> ChatMessage:
    return {
        "role": "assistant",
        "content": reply.content,
        "model": reply.model,
        "stopReason": reply.stop_reason,
        "truncated": reply.truncated,
        "usage": message_usage(reply.usage, reply.cost_micro_usd),
        "estimated": reply.estimated,
    }


def chat_response(result: ChatResult) -> ChatResponse:
    return {"message": chat_message(result.reply), "usage": usage_stats(result.account)}


def turn_response(view: TurnView) -> TurnResponse:
    turn = view.turn
    # A Stop asked but not settled yet: the row still says streaming, the caller is told more.
    status = "stopping" if view.stopping else turn.status.value
    document: TurnDocument = {
        "requestId": turn.request_id,
        "status": status,
        "content": turn.content,
        "model": turn.model,
        "stopReason": turn.stop_reason,
        "truncated": turn.truncated,
        "usage": message_usage(turn.usage, turn.cost_micro_usd),
        "estimated": turn.estimated,
    }
    return {"turn": document, "usage": usage_stats(view.account)}


# -- billing -------------------------------------------------------------------------------------


class PriceFigures(TypedDict):
    """A price as the billing system holds it: minor units (cents) and its currency code."""

    amount: int
    currency: str


class TopupOffer(TypedDict):
    id: str
    name: str
    tokens: int
    price: PriceFigures


class PlanOffer(TopupOffer):
    current: bool


class PlansAnswer(TypedDict):
    """The body of billing's GET /plans: what the caller can buy, and the caller's plan."""

    plans: list[PlanOffer]
    topups: list[TopupOffer]
    currentPlan: str


class SessionUrl(TypedDict):
    """The body of billing's POST /checkout and POST /portal: where to send the browser."""

    url: str


def _topup_offer(item: PricedOffer) -> TopupOffer:
    return {
        "id": item.offer.id,
        "name": item.offer.name,
        "tokens": item.offer.tokens,
        "price": {"amount": item.amount, "currency": item.currency},
    }


def plans_answer(shelf: Shelf) -> PlansAnswer:
    return {
        "plans": [
            {**_topup_offer(item), "current": item.offer.id == shelf.current_plan}
            for item in shelf.plans
        ],
        "topups": [_topup_offer(item) for item in shelf.topups],
        "currentPlan": shelf.current_plan,
    }


def session_url(url: str) -> SessionUrl:
    return {"url": url}


# -- usage alerts ------------------------------------------------------------------------------


def notice_item(notice: Notice) -> NoticeItem:
    return {
        "id": notice.id,
        "threshold": notice.threshold,
        "level": notice.level.value,
        "message": notice.message,
        "createdAt": format_timestamp(notice.created_at),
    }


def usage_answer(account: Account, notices: Iterable[Notice]) -> UsageStats:
    """The body of ``usage``: the account's UsageStats and its notices of the period."""
    stats = usage_stats(account)
    stats["notices"] = [notice_item(notice) for notice in notices]
    return stats
