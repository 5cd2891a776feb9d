"""The metered chat: a bounded tool loop in which every model call is reserved, capped and settled.

Written against the ports only (``UsageStore``, ``ModelClient``); ``now`` is passed in.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from .account import Account
from .alert_service import AlertOutcome, Alerts
from .errors import (
    AlreadyExists,
    InvalidRequest,
    LimitReached,
    LimitReason,
    MeteringError,
    RequestInProgress,
    TokenLimitExceeded,
)
from .ledger import LedgerEntry, LedgerStatus
from .model import (
    STOP_MAX_TOKENS,
    STOP_TOOL_USE,
    Block,
    Message,
    ModelReply,
    ModelRequest,
    TextBlock,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    request_input_bound,
)
from .plans import PlanCatalog
from .ports import ModelClient, Notifier, UsageStore
from .pricing import PriceTable, pico_to_micro_usd
from .reservation import CallBudget, budget_call, settle
from .service import get_or_create_account
from .tokens import TokenUsage
from .wire import Json, usage_stats

# Attempts to reserve a call when concurrent requests keep taking the room it was planned from.
RESERVE_ATTEMPTS = 3
# The shortest message a user could still send: what "a shorter message would fit" is tried with.
MINIMAL_MESSAGE = "hi"


@dataclass(frozen=True, slots=True)
class ChatSettings:
    model: str
    max_tokens: int
    min_output_tokens: int
    system_prompt: str
    max_steps: int


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated conversation: plain text turns, the last from the user."""

    messages: tuple[Message, ...]
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ChatReply:
    """The assistant's answer to one request and what it was charged; a retry replays it."""

    content: str
    model: str
    stop_reason: str
    truncated: bool
    usage: TokenUsage
    cost_micro_usd: int


@dataclass(frozen=True, slots=True)
class ChatResult:
    request_id: str
    reply: ChatReply
    # Read after the request settled: its figures already include the reply.
    account: Account
    replayed: bool = False
    # The usage alert this request found due, if any (None for nearly every request).
    alert: AlertOutcome | None = None

    @property
    def usage(self) -> TokenUsage:
        return self.reply.usage

    @property
    def truncated(self) -> bool:
        return self.reply.truncated


def reply_record(reply: ChatReply) -> str:
    """What a ledger entry keeps of its reply beyond its own columns (model, usage, cost)."""
    record = {
        "content": reply.content,
        "stop_reason": reply.stop_reason,
        "truncated": reply.truncated,
    }
    return json.dumps(record, separators=(",", ":"))


def recorded_reply(entry: LedgerEntry) -> ChatReply:
    """The reply a settled entry recorded, rebuilt from its record and its columns."""
    record = json.loads(entry.reply)
    return ChatReply(
        content=record["content"],
        model=entry.model,
        # Entries settled before the record existed hold the response message, camelCase.
        stop_reason=record.get("stop_reason", record.get("stopReason")),
        truncated=record["truncated"],
        usage=entry.usage,
        cost_micro_usd=entry.cost_micro_usd,
    )


@dataclass(frozen=True, slots=True)
class Tool:
    spec: ToolSpec
    run: Callable[[str], Json]


def usage_tool(store: UsageStore) -> Tool:
    """``get_my_usage``: the caller's own usage stats, read from the store when called."""

    def run(user_id: str) -> Json:
        account = store.get_account(user_id)
        if account is None:
            return {"error": "no account"}
        return dict(usage_stats(account))

    spec = ToolSpec(
        name="get_my_usage",
        description=(
            "Returns the current user's token usage for this billing period: plan, tokens used, "
            "monthly limit, remaining tokens, percent used and when usage resets."
        ),
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
    )
    return Tool(spec=spec, run=run)


@dataclass
class _Run:
    """What one chat request has done so far."""

    user_id: str
    request_id: str
    limit: int
    remaining: int
    conversation: list[Message]
    usage: TokenUsage = TokenUsage()  # noqa: RUF009 -- immutable
    pico_usd: int = 0
    price_version: str = ""
    model: str = ""
    held: int = 0
    texts: list[str] = field(default_factory=list)
    stop_reason: str = ""
    truncated: bool = False


class ChatService:
    def __init__(
        self,
        *,
        store: UsageStore,
        model: ModelClient,
        plans: PlanCatalog,
        prices: PriceTable,
        settings: ChatSettings,
        new_request_id: Callable[[], str],
        tools: Mapping[str, Tool] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.store = store
        self.alerts = Alerts(store, notifier) if notifier is not None else None
        self.model = model
        self.plans = plans
        self.prices = prices
        self.settings = settings
        self.new_request_id = new_request_id
        default_tools = (usage_tool(store),)
        self.tools = dict(tools) if tools is not None else {t.spec.name: t for t in default_tools}

    def handle(self, user_id: str, request: ChatRequest, now: datetime) -> ChatResult:
        account = get_or_create_account(self.store, self.plans, user_id, now)
        if request.request_id is not None:
            replayed = self._replay(user_id, request.request_id)
            if replayed is not None:
                return replayed
        run = _Run(
            user_id=user_id,
            request_id=request.request_id or self.new_request_id(),
            limit=account.limit,
            remaining=account.remaining,
            conversation=list(request.messages),
        )
        first = self._request(run, step=0)
        # Decided before anything is written: a refused request leaves no trace.
        budget = self._budget(first, run.remaining)
        if budget is None:
            raise TokenLimitExceeded(account=account, reason=self._refusal(first, run.remaining))
        if not self._claim(run, account, now):
            # A concurrent request with the same id won the race: answer as a retry would be.
            replayed = self._replay(user_id, run.request_id)
            if replayed is not None:
                return replayed
            raise RequestInProgress("a request with this requestId is still running")
        try:
            self._loop(run, first, budget, now)
            # Inside: a reply that cannot be recorded is abandoned like a failed step, so the
            # completed steps stay charged instead of waiting for the cron to give them back.
            reply = self._record(run, now)
        except BaseException:
            self._abandon(run, now)
            raise
        result = ChatResult(run.request_id, reply, self._account(run.user_id))
        if self.alerts is not None:
            # The account read after settling: a pure check, no store call below 75 %.
            result = replace(result, alert=self.alerts.after_usage(result.account, now))
        return result

    # -- idempotency ---------------------------------------------------------------------------

    def _replay(self, user_id: str, request_id: str) -> ChatResult | None:
        entry = self.store.get_ledger(request_id)
        if entry is None:
            return None
        if entry.user_id != user_id:
            raise InvalidRequest("requestId is already in use; send a new one")
        if entry.status is LedgerStatus.RESERVED:
            raise RequestInProgress("a request with this requestId is still running")
        if entry.status is not LedgerStatus.SETTLED or not entry.reply:
            raise InvalidRequest("the request with this requestId did not complete; send a new one")
        return ChatResult(request_id, recorded_reply(entry), self._account(user_id), replayed=True)

    def _claim(self, run: _Run, account: Account, now: datetime) -> bool:
        """Claim the request id by creating its ledger entry; False when it exists already.

        The entry is the claim (not ``claims.run_once``): reservations are recorded on it and a
        replay reads its reply. Settling completes it, discarding an uncharged one releases it.
        """
        entry = LedgerEntry(
            request_id=run.request_id,
            user_id=run.user_id,
            status=LedgerStatus.RESERVED,
            model=self.settings.model,
            period_start=account.period_start,
            created_at=now,
            updated_at=now,
        )
        try:
            self.store.create_ledger(entry)
        except AlreadyExists:
            return False
        return True

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self, run: _Run, first: ModelRequest, budget: CallBudget, now: datetime) -> None:
        request = first
        for step in range(self.settings.max_steps):
            if step > 0:
                request = self._request(run, step)
                next_budget = self._budget(request, run.remaining)
                if next_budget is None:
                    run.truncated = True
                    return
                budget = next_budget
            reserved = self._reserve(run, request, budget, first_call=step == 0)
            if reserved is None:
                run.truncated = True
                return
            budget = reserved
            reply = self.model.complete(replace(request, max_tokens=budget.max_tokens))
            self._settle(run, reply, now)
            run.texts.extend(b.text for b in reply.blocks if isinstance(b, TextBlock) and b.text)
            run.stop_reason = reply.stop_reason
            if reply.stop_reason == STOP_MAX_TOKENS and budget.capped:
                run.truncated = True
            last = step == self.settings.max_steps - 1
            if reply.stop_reason != STOP_TOOL_USE or not reply.tool_uses or last:
                return
            # The provider refuses empty text blocks when they are sent back.
            said = tuple(b for b in reply.blocks if not isinstance(b, TextBlock) or b.text)
            run.conversation.append(Message(role="assistant", blocks=said))
            run.conversation.append(Message(role="user", blocks=self._run_tools(run, reply)))

    def _request(self, run: _Run, step: int) -> ModelRequest:
        last = step == self.settings.max_steps - 1
        has_tool_history = step > 0
        # On the last allowed step tools stay defined only because earlier turns refer to them.
        tools = tuple(t.spec for t in self.tools.values())
        if last and not has_tool_history:
            tools = ()
        return ModelRequest(
            model=self.settings.model,
            system=self.settings.system_prompt,
            messages=tuple(run.conversation),
            max_tokens=self.settings.max_tokens,
            tools=tools,
            tool_choice="none" if last else "auto",
        )

    def _budget(
        self, request: ModelRequest, remaining: int, *, ask_count: bool = True
    ) -> CallBudget | None:
        """The call's budget; ``ask_count=False`` trusts the local bound alone, never asking
        the model for a count."""
        settings = self.settings
        estimate = request_input_bound(request)
        budget = budget_call(remaining, estimate, settings.max_tokens, settings.min_output_tokens)
        if budget is not None or not ask_count:
            return budget
        # Close to the limit the local bound is too coarse; the provider's count is exact.
        if remaining < settings.min_output_tokens:
            return None
        exact = self.model.count_tokens(request)
        return budget_call(remaining, exact, settings.max_tokens, settings.min_output_tokens)

    def _reserve(
        self, run: _Run, request: ModelRequest, budget: CallBudget, *, first_call: bool
    ) -> CallBudget | None:
        """Reserve ``budget``, or a smaller one when concurrent requests took the room it was
        planned from: re-plan from the fresh balance a few times before giving up."""
        for _ in range(RESERVE_ATTEMPTS):
            try:
                used = self.store.reserve(
                    run.user_id, run.request_id, budget.reserve_tokens, run.limit
                )
            except LimitReached:
                fresh = self._account(run.user_id)
                smaller = self._budget(request, max(0, run.limit - fresh.current_tokens_used))
                if smaller is None:
                    break
                budget = smaller
                continue
            run.held = budget.reserve_tokens
            run.remaining = max(0, run.limit - used)
            return budget
        if first_call:
            account = self._account(run.user_id)
            raise TokenLimitExceeded(
                account=account, reason=self._refusal(request, account.remaining)
            )
        return None

    def _refusal(self, request: ModelRequest, remaining: int) -> LimitReason:
        """Why the first call does not fit: a minimal request (same system prompt and tools, the
        conversation reduced to one short message) that would fit means a shorter message goes
        through. The local bound alone decides, so a refusal costs no extra model call; near the
        limit it overcounts and says "spent" where a one-word message might just fit.
        """
        minimal = replace(request, messages=(Message.text("user", MINIMAL_MESSAGE),))
        if self._budget(minimal, remaining, ask_count=False) is not None:
            return "message_too_long"
        return "allowance_spent"

    def _settle(self, run: _Run, reply: ModelReply, now: datetime) -> None:
        usage = reply.usage if reply.usage.steps else replace(reply.usage, steps=1)
        settlement = settle(run.held, usage.total_tokens)
        if settlement.release:
            self.store.release(run.user_id, run.request_id, settlement.release)
        run.held = 0
        run.remaining += settlement.release
        if settlement.extra:
            run.remaining = max(0, run.remaining - self._charge_extra(run, settlement.extra))
        cost = self.prices.cost(self.settings.model, usage, now)
        run.usage += usage
        run.pico_usd += cost.pico_usd
        run.price_version = cost.price_version
        run.model = reply.model or self.settings.model

    def _charge_extra(self, run: _Run, extra: int) -> int:
        """Charge usage the provider reported beyond the reservation, never past the limit."""
        try:
            self.store.reserve(run.user_id, run.request_id, extra, run.limit)
        except LimitReached:
            room = self._account(run.user_id).remaining
            part = min(extra, room)
            if part <= 0:
                return 0
            try:
                self.store.reserve(run.user_id, run.request_id, part, run.limit)
            except LimitReached:
                return 0
            return part
        return extra

    def _run_tools(self, run: _Run, reply: ModelReply) -> tuple[Block, ...]:
        results: list[Block] = []
        for call in reply.tool_uses:
            results.append(self._run_tool(run.user_id, call))
        return tuple(results)

    def _run_tool(self, user_id: str, call: ToolUseBlock) -> ToolResultBlock:
        tool = self.tools.get(call.name)
        if tool is None:
            content = json.dumps({"error": f"unknown tool {call.name!r}"})
            return ToolResultBlock(call.id, content, is_error=True)
        return ToolResultBlock(call.id, json.dumps(tool.run(user_id)))

    # -- outcomes ------------------------------------------------------------------------------

    def _record(self, run: _Run, now: datetime) -> ChatReply:
        """Settle the ledger entry with the reply, which a retry with the same id replays."""
        reply = ChatReply(
            content="\n\n".join(run.texts),
            model=run.model or self.settings.model,
            stop_reason=run.stop_reason,
            truncated=run.truncated,
            usage=run.usage,
            cost_micro_usd=pico_to_micro_usd(run.pico_usd),
        )
        self.store.update_ledger(
            run.request_id,
            {
                "status": LedgerStatus.SETTLED,
                "model": reply.model,
                "usage": reply.usage,
                "cost_micro_usd": reply.cost_micro_usd,
                "price_version": run.price_version,
                "reply": reply_record(reply),
                "updated_at": now,
            },
        )
        return reply

    def _abandon(self, run: _Run, now: datetime) -> None:
        """After a failure: give back what is held and keep only completed steps charged.

        Best effort: whatever this cannot undo, the cron reclaims from the still-reserved entry.
        """
        with contextlib.suppress(MeteringError):
            if run.held:
                self.store.release(run.user_id, run.request_id, run.held)
                run.held = 0
            if run.usage.steps == 0:
                # Nothing charged: forget the request so that a retry with its id can run.
                self.store.discard_ledger(run.request_id)
                return
            self.store.update_ledger(
                run.request_id,
                {
                    "status": LedgerStatus.FAILED,
                    "model": run.model or self.settings.model,
                    "usage": run.usage,
                    "cost_micro_usd": pico_to_micro_usd(run.pico_usd),
                    "price_version": run.price_version,
                    "updated_at": now,
                },
            )

    def _account(self, user_id: str) -> Account:
        account = self.store.get_account(user_id)
        if account is None:
            raise MeteringError(f"account of {user_id} vanished")
        return account
