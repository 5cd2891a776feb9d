"""The metered chat: a bounded tool loop in which every model call is reserved, streamed, capped
and settled, and can be cut by a Stop or its deadline at any moment.

Written against the ports only (``UsageStore``, ``ModelClient``); ``now`` and the monotonic clock
are passed in.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from .account import Account
from .alert_service import AlertOutcome, Alerts
from .alerts import due as alert_due
from .errors import (
    AlreadyExists,
    InFlightLimitReached,
    InvalidRequest,
    LimitReached,
    LimitReason,
    MeteringError,
    RateLimited,
    RequestInProgress,
    TokenLimitExceeded,
    UpstreamError,
    UpstreamUnavailable,
)
from .ledger import LedgerEntry, LedgerPatch, LedgerStatus
from .model import (
    STOP_MAX_TOKENS,
    STOP_TOOL_USE,
    Block,
    Message,
    ModelReply,
    ModelRequest,
    StreamedCall,
    TextBlock,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    request_input_bound,
)
from .plans import PlanCatalog
from .ports import ModelClient, Notifier, UsageStore
from .pricing import PriceTable, pico_to_micro_usd
from .reservation import CallBudget, budget_call, input_upper_bound
from .service import get_or_create_account
from .tokens import TokenUsage
from .turns import Turn, TurnPatch, TurnStatus
from .wire import Json, usage_stats

# Attempts to reserve a call when concurrent requests keep taking the room it was planned from.
RESERVE_ATTEMPTS = 3
# The shortest message a user could still send: what "a shorter message would fit" is tried with.
MINIMAL_MESSAGE = "hi"

# The cap on requests per minute counts the requests started in this sliding window.
RATE_WINDOW = timedelta(minutes=1)
# When a user at the cap of turns in flight may try again. A slot frees when one of their running
# turns ends, which nobody can foresee; most replies end within seconds, and a client that waits
# this long between tries costs the store one refused request per try.
IN_FLIGHT_RETRY_SECONDS = 2

# Why a reply ended early, where the provider's own stop reasons do not say it.
STOPPED_BY_USER = "stopped"
CUT_BY_DEADLINE = "deadline"
CUT_BY_PROVIDER = "interrupted"  # the stream ended without message_stop (lost, error event)


@dataclass(frozen=True, slots=True)
class ChatSettings:
    model: str
    max_tokens: int
    min_output_tokens: int
    system_prompt: str
    max_steps: int
    # The longest one model call may stream; past it the call is cut and charged like a Stop.
    call_deadline_seconds: float = 60.0
    # How often a streaming turn writes its text and looks for a Stop.
    progress_interval_seconds: float = 0.25
    # Per-user caps, 0 for none: the user's requests in flight at once (strict, counted by the
    # store in the change that opens a request), and requests started per minute (counted just
    # before: concurrent requests may pass it by at most the cap in flight).
    max_turns_in_flight: int = 0
    max_requests_per_minute: int = 0


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated conversation: plain text turns, the last from the user. With a
    ``request_id`` the request is a turn its user can follow and stop."""

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
    estimated: bool = False
    status: TurnStatus = TurnStatus.COMPLETED


@dataclass(frozen=True, slots=True)
class ChatResult:
    request_id: str
    reply: ChatReply
    # The account as this request left it: read before it, plus its own charge.
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
    """What a ledger entry keeps of its reply beyond its own columns: how it ended, never its
    text (that is its user's turn row)."""
    record = {"stop_reason": reply.stop_reason, "truncated": reply.truncated}
    return json.dumps(record, separators=(",", ":"))


def recorded_reply(entry: LedgerEntry, turn: Turn | None) -> ChatReply:
    """The reply a settled entry recorded, its text from the request's turn."""
    record = json.loads(entry.reply) if entry.reply else {}
    # Entries settled before turns existed hold their text (and camelCase keys) themselves.
    content = turn.content if turn is not None else record.get("content", "")
    return ChatReply(
        content=content,
        model=entry.model,
        stop_reason=record.get("stop_reason", record.get("stopReason", "")),
        truncated=bool(record.get("truncated", False)),
        usage=entry.usage,
        cost_micro_usd=entry.cost_micro_usd,
        estimated=entry.estimated,
        status=turn.status if turn is not None else TurnStatus.COMPLETED,
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
    account: Account
    remaining: int
    conversation: list[Message]
    # Only a request with an id its user knows has a turn row to follow and stop.
    has_turn: bool
    usage: TokenUsage = TokenUsage()  # noqa: RUF009 -- immutable
    pico_usd: int = 0
    price_version: str = ""
    model: str = ""
    held: int = 0
    texts: list[str] = field(default_factory=list)
    stop_reason: str = ""
    truncated: bool = False
    estimated: bool = False
    status: TurnStatus = TurnStatus.COMPLETED
    stopped: bool = False

    @property
    def content(self) -> str:
        return "\n\n".join(text for text in self.texts if text)


class _Progress:
    """The stream's sink: collects what arrives, writes the turn's text every interval, and
    learns of a Stop where it writes (from the row only the stop path writes)."""

    def __init__(self, service: ChatService, run: _Run, now: datetime) -> None:
        self.service = service
        self.run = run
        self.now = now
        self.text_received = ""
        self.tool_input_received = ""
        self.started = self.last_check = service.monotonic()
        self.written = run.content

    def text(self, delta: str) -> None:
        self.text_received += delta

    def tool_input(self, delta: str) -> None:
        self.tool_input_received += delta

    def should_stop(self) -> bool:
        if self.run.stopped:
            return True
        if not self.run.has_turn:
            return False
        now = self.service.monotonic()
        if now - self.last_check < self.service.settings.progress_interval_seconds:
            return False
        self.last_check = now
        self.flush()
        self.run.stopped = self.service.stop_requested(self.run)
        return self.run.stopped

    def flush(self) -> None:
        """Write the text so far, if it grew; progress is best effort, the final state is not."""
        content = "\n\n".join(t for t in (*self.run.texts, self.text_received) if t)
        if content == self.written:
            return
        patch: TurnPatch = {
            "status": TurnStatus.STREAMING,
            "content": content,
            "updated_at": self.now,
        }
        with contextlib.suppress(MeteringError):
            self.service.store.update_turn(self.run.request_id, patch)
            self.written = content


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
        monotonic: Callable[[], float],
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
        self.monotonic = monotonic
        default_tools = (usage_tool(store),)
        self.tools = dict(tools) if tools is not None else {t.spec.name: t for t in default_tools}

    def handle(self, user_id: str, request: ChatRequest, now: datetime) -> ChatResult:
        account = get_or_create_account(self.store, self.plans, user_id, now)
        run = _Run(
            user_id=user_id,
            request_id=request.request_id or self.new_request_id(),
            account=account,
            remaining=account.remaining,
            conversation=list(request.messages),
            has_turn=request.request_id is not None,
        )
        first = self._request(run, step=0)
        # Decided before anything is written: a refused request leaves no trace.
        budget = self._budget(first, run.remaining)
        if budget is None:
            # A retry of a request that used the last of the allowance still gets its answer.
            if request.request_id is not None and self.store.get_ledger(run.request_id):
                return self._replay(run, run.request_id)
            raise TokenLimitExceeded(account=account, reason=self._refusal(first, run.remaining))
        try:
            self._check_pace(user_id, now)
            budget = self._open(run, first, budget, now)
        except AlreadyExists:
            # The id has an entry: a retry (or a concurrent twin) answers as the first did.
            return self._replay(run, run.request_id)
        except RateLimited:
            # A retry of a request that already ran is no new request: it gets its answer.
            if request.request_id is not None and self.store.get_ledger(run.request_id):
                return self._replay(run, run.request_id)
            raise
        try:
            self._loop(run, first, budget, now)
        except BaseException:
            self._abandon(run, now)
            raise
        reply = self._reply(run)
        used = run.account.current_tokens_used + run.usage.total_tokens
        after = replace(run.account, current_tokens_used=used)
        if self.alerts is not None and alert_due(after) is not None:
            # Decided on what is stored, read once the request settled. Requests that cross a
            # threshold together mostly see each other's holds in the figures they start from;
            # one that saw none leaves the alert to the user's next request.
            after = self._account(run.user_id)
        result = ChatResult(run.request_id, reply, after)
        if self.alerts is not None:
            result = replace(result, alert=self.alerts.after_usage(after, now))
        return result

    # -- idempotency ---------------------------------------------------------------------------

    def _replay(self, run: _Run, request_id: str) -> ChatResult:
        """The first answer again; the account as read for this request, moments ago."""
        user_id = run.user_id
        entry = self.store.get_ledger(request_id)
        if entry is None or entry.user_id != user_id:
            raise InvalidRequest("requestId is already in use; send a new one")
        if entry.status is LedgerStatus.RESERVED:
            raise RequestInProgress("a request with this requestId is still running")
        if entry.status is not LedgerStatus.SETTLED:
            raise InvalidRequest("the request with this requestId did not complete; send a new one")
        reply = recorded_reply(entry, self.store.get_turn(request_id))
        return ChatResult(request_id, reply, run.account, replayed=True)

    # -- the user's pace -----------------------------------------------------------------------

    def _check_pace(self, user_id: str, now: datetime) -> None:
        """``RateLimited`` when the user started the cap's worth of requests in the last minute
        (one exactly a minute old has left it). One query, skipped without a cap. Requests
        checked at the same moment all pass, so the cap in flight bounds how far they can
        overshoot it."""
        cap = self.settings.max_requests_per_minute
        if cap == 0:
            return
        starts = self.store.request_starts(user_id, now - RATE_WINDOW, cap)
        wait = pace_wait(starts, cap, now)
        if wait is not None:
            raise RateLimited(
                f"At most {cap} messages a minute; try again in {wait} s",
                retry_after=wait,
                reason="requests_per_minute",
                limit=cap,
            )

    def _open(
        self, run: _Run, request: ModelRequest, budget: CallBudget, now: datetime
    ) -> CallBudget:
        """Claim the request id and hold the first call's budget: one atomic change that creates
        the ledger entry (and the turn) and raises the counter. Re-plans from the fresh balance
        when concurrent requests took the room; ``AlreadyExists`` when the id is taken,
        ``RateLimited`` when the user has the cap's worth of requests in flight."""
        cap = self.settings.max_turns_in_flight
        for _ in range(RESERVE_ATTEMPTS):
            entry = LedgerEntry(
                request_id=run.request_id,
                user_id=run.user_id,
                status=LedgerStatus.RESERVED,
                model=self.settings.model,
                period_start=run.account.period_start,
                created_at=now,
                updated_at=now,
                held_tokens=budget.reserve_tokens,
            )
            turn = self._new_turn(run, now) if run.has_turn else None
            try:
                self.store.open_request(
                    entry, run.account.limit, turn, max_in_flight=cap if cap else None
                )
            except InFlightLimitReached:
                raise RateLimited(
                    f"{cap} messages are being answered already; send this one when one ends",
                    retry_after=IN_FLIGHT_RETRY_SECONDS,
                    reason="turns_in_flight",
                    limit=cap,
                ) from None
            except LimitReached:
                fresh = self._account(run.user_id)
                run.account, run.remaining = fresh, fresh.remaining
                smaller = self._budget(request, fresh.remaining)
                if smaller is None:
                    raise TokenLimitExceeded(
                        account=fresh, reason=self._refusal(request, fresh.remaining)
                    ) from None
                budget = smaller
                continue
            self._held(run, budget)
            return budget
        account = self._account(run.user_id)
        raise TokenLimitExceeded(account=account, reason=self._refusal(request, account.remaining))

    def _new_turn(self, run: _Run, now: datetime) -> Turn:
        return Turn(
            request_id=run.request_id,
            user_id=run.user_id,
            status=TurnStatus.PENDING,
            created_at=now,
            updated_at=now,
            model=self.settings.model,
        )

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self, run: _Run, first: ModelRequest, budget: CallBudget, now: datetime) -> None:
        request = first
        for step in range(self.settings.max_steps):
            if step > 0:
                # No further model call once the user stopped the turn.
                if self.stop_requested(run):
                    run.stopped = True
                    return self._finish(run, now)
                request = self._request(run, step)
                next_budget = self._budget(request, run.remaining)
                if next_budget is None or not self._hold(run, next_budget):
                    run.truncated = True
                    return self._finish(run, now)
                budget = next_budget
            sink = _Progress(self, run, now)
            call = self.model.stream(
                replace(request, max_tokens=budget.max_tokens),
                sink,
                self.settings.call_deadline_seconds,
            )
            usage = self._charge(run, request, budget, call, sink)
            reply = call.reply
            if reply.text:
                run.texts.append(reply.text)
            run.stop_reason = reply.stop_reason
            run.model = reply.model or self.settings.model
            if call.cut:
                # Not `truncated`, which means cut by the cap: the stop reason says why.
                run.stop_reason = self._cut_reason(run, sink)
            elif reply.stop_reason == STOP_MAX_TOKENS and budget.capped:
                run.truncated = True
            last = step == self.settings.max_steps - 1
            more = reply.stop_reason == STOP_TOOL_USE and bool(reply.tool_uses)
            if call.cut or not more or last:
                return self._settle(run, usage, now, final=True)
            self._settle(run, usage, now, final=False)
            if self.stop_requested(run):
                run.stopped = True
                return self._finish(run, now)
            # The provider refuses empty text blocks when they are sent back.
            said = tuple(b for b in reply.blocks if not isinstance(b, TextBlock) or b.text)
            run.conversation.append(Message(role="assistant", blocks=said))
            run.conversation.append(Message(role="user", blocks=self._run_tools(run, reply)))
        return None

    def _cut_reason(self, run: _Run, sink: _Progress) -> str:
        if run.stopped:
            return STOPPED_BY_USER
        if self.monotonic() - sink.started >= self.settings.call_deadline_seconds:
            return CUT_BY_DEADLINE
        return CUT_BY_PROVIDER

    def stop_requested(self, run: _Run) -> bool:
        """Whether the user stopped the turn; a failed look-up is no Stop (the next one asks)."""
        if not run.has_turn:
            return False
        try:
            return self.store.stop_requested(run.request_id)
        except MeteringError:
            return False

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

    def _hold(self, run: _Run, budget: CallBudget) -> bool:
        """Hold a later step's budget; False when concurrent requests took the room."""
        try:
            self.store.hold(run.user_id, run.request_id, budget.reserve_tokens, run.account.limit)
        except LimitReached:
            return False
        self._held(run, budget)
        return True

    @staticmethod
    def _held(run: _Run, budget: CallBudget) -> None:
        run.held = budget.reserve_tokens
        run.remaining = max(0, run.remaining - budget.reserve_tokens)

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

    # -- charging ------------------------------------------------------------------------------

    def _charge(
        self,
        run: _Run,
        request: ModelRequest,
        budget: CallBudget,
        call: StreamedCall,
        sink: _Progress,
    ) -> TokenUsage:
        """What the call is charged: its usage as reported, the output measured when the call
        was cut before its final count; never more than the call's reservation."""
        usage = call.reply.usage if call.reply.usage.steps else replace(call.reply.usage, steps=1)
        if call.cut and not call.output_reported:
            output = self._measure_output(request, sink, budget.max_tokens)
            usage = replace(usage, output_tokens=output)
            run.estimated = True
        return _within(usage, budget.reserve_tokens)

    def _measure_output(self, request: ModelRequest, sink: _Progress, max_tokens: int) -> int:
        """The output of a cut call, from what was received: the provider's free count of the
        prompt with and without the partial turn; the local bound when it cannot count."""
        partial = (sink.text_received + sink.tool_input_received).rstrip()
        if not partial:
            return 0
        with_partial = replace(
            request,
            messages=(*request.messages, Message.text("assistant", partial)),
        )
        try:
            measured = self.model.count_tokens(with_partial) - self.model.count_tokens(request)
        except (UpstreamError, UpstreamUnavailable):
            measured = input_upper_bound((partial,), 0)
        return max(0, min(measured, max_tokens))

    def _settle(self, run: _Run, usage: TokenUsage, now: datetime, *, final: bool) -> None:
        """Put the step on the ledger and give back the unused hold, in one atomic change; the
        last step also records how the request ended."""
        release = max(0, run.held - usage.total_tokens)
        cost = self.prices.cost(self.settings.model, usage, now)
        run.usage += usage
        run.pico_usd += cost.pico_usd
        run.price_version = cost.price_version
        if final:
            run.status = TurnStatus.STOPPED if run.stopped else TurnStatus.COMPLETED
        self._write_settlement(run, release, now, final=final)
        run.remaining += release
        run.held = 0

    def _finish(self, run: _Run, now: datetime) -> None:
        """End the request after its last settled step (stopped, or out of room)."""
        run.status = TurnStatus.STOPPED if run.stopped else TurnStatus.COMPLETED
        if run.stopped:
            run.stop_reason = STOPPED_BY_USER
        self._write_settlement(run, run.held, now, final=True)
        run.held = 0

    def _write_settlement(self, run: _Run, release: int, now: datetime, *, final: bool) -> None:
        patch: LedgerPatch = {
            "held_tokens": 0,
            "model": run.model or self.settings.model,
            "usage": run.usage,
            "cost_micro_usd": pico_to_micro_usd(run.pico_usd),
            "price_version": run.price_version,
            "estimated": run.estimated,
            "updated_at": now,
        }
        turn: TurnPatch | None = None
        if final:
            patch["status"] = LedgerStatus.SETTLED
            patch["reply"] = reply_record(self._reply(run))
        if run.has_turn:
            turn = self._turn_patch(run, now, run.status if final else TurnStatus.STREAMING)
        self.store.settle(run.user_id, run.request_id, release, patch, turn)

    def _turn_patch(self, run: _Run, now: datetime, status: TurnStatus) -> TurnPatch:
        return {
            "status": status,
            "content": run.content,
            "model": run.model or self.settings.model,
            "stop_reason": run.stop_reason,
            "truncated": run.truncated,
            "usage": run.usage,
            "cost_micro_usd": pico_to_micro_usd(run.pico_usd),
            "estimated": run.estimated,
            "updated_at": now,
        }

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

    def _reply(self, run: _Run) -> ChatReply:
        return ChatReply(
            content=run.content,
            model=run.model or self.settings.model,
            stop_reason=run.stop_reason,
            truncated=run.truncated,
            usage=run.usage,
            cost_micro_usd=pico_to_micro_usd(run.pico_usd),
            estimated=run.estimated,
            status=run.status,
        )

    def _abandon(self, run: _Run, now: datetime) -> None:
        """After a failure: give back what the entry still holds and keep only settled steps
        charged. The stored entry decides, not this execution's figures: a change may have
        committed although its answer was lost.

        Best effort: whatever this cannot undo, the cron reclaims from the still-reserved entry.
        """
        run.status = TurnStatus.FAILED
        with contextlib.suppress(MeteringError):
            entry = self.store.get_ledger(run.request_id)
            if entry is None or entry.status is not LedgerStatus.RESERVED:
                return
            turn: TurnPatch | None = None
            if run.has_turn:
                turn = {
                    "status": TurnStatus.FAILED,
                    "content": run.content,
                    "usage": entry.usage,
                    "cost_micro_usd": entry.cost_micro_usd,
                    "estimated": entry.estimated,
                    "updated_at": now,
                }
            if entry.usage.steps == 0:
                # Nothing charged: forget the request so that a retry with its id can run.
                self.store.discard_request(run.user_id, run.request_id, entry.held_tokens, turn)
                return
            patch: LedgerPatch = {
                "status": LedgerStatus.FAILED,
                "held_tokens": 0,
                "updated_at": now,
            }
            self.store.settle(run.user_id, run.request_id, entry.held_tokens, patch, turn)

    def _account(self, user_id: str) -> Account:
        account = self.store.get_account(user_id)
        if account is None:
            raise MeteringError(f"account of {user_id} vanished")
        return account


def pace_wait(starts: Sequence[datetime], cap: int, now: datetime) -> int | None:
    """Whole seconds until a request may start under a cap of ``cap`` a minute, given the
    starts of the user's newest requests (at most ``cap``, later than a minute ago); None when
    one may start now. Once the oldest of the newest ``cap`` starts leaves the window, fewer than
    ``cap`` remain in it."""
    if cap == 0 or len(starts) < cap:
        return None
    oldest = sorted(starts, reverse=True)[cap - 1]
    wait = (oldest + RATE_WINDOW - now).total_seconds()
    # Another instance's clock may run ahead; never more than the window itself.
    return max(1, min(math.ceil(wait), int(RATE_WINDOW.total_seconds())))


def _within(usage: TokenUsage, reserved: int) -> TokenUsage:
    """``usage`` cut down to ``reserved`` tokens, output first: a call is never charged more
    than it held (the safe input bound makes this a no-op unless a provider overreports)."""
    excess = usage.total_tokens - reserved
    if excess <= 0:
        return usage
    output_cut = min(excess, usage.output_tokens)
    input_cut = min(excess - output_cut, usage.input_tokens)
    return replace(
        usage,
        output_tokens=usage.output_tokens - output_cut,
        input_tokens=usage.input_tokens - input_cut,
    )
