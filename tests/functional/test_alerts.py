"""Usage alerts through the chat over the embedded store: exactly once when 32 requests cross a
threshold together, re-armed by a reset, retried after a failed email, no store call below
75 %; through ``main(context)``: the chat's wiring and the usage answer's notices."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from metering.account import Account, Level, new_account, plan_reset
from metering.alert_service import AlertState
from metering.alerts import Email, Notice
from metering.chat import ChatRequest, ChatService, ChatSettings
from metering.errors import StoreError, UpstreamUnavailable
from metering.model import (
    Message,
    ModelReply,
    ModelRequest,
    StreamedCall,
    StreamSink,
    TextBlock,
    request_input_bound,
)
from metering.plans import load_default_plans
from metering.pricing import load_default_prices
from metering.tokens import TokenUsage

from localruntime.loader import bootstrap_of
from localruntime.sqlite_store import SQLiteStore
from tests.support.anthropic_fake import text_reply
from tests.support.builders import charge
from tests.support.function_harness import NOW, Harness, base_environment, running
from tests.support.recording import Recording
from tests.support.threads import run_together

NOVEMBER = datetime(2026, 11, 1, tzinfo=UTC)
DECEMBER = datetime(2026, 12, 1, tzinfo=UTC)
JANUARY = datetime(2027, 1, 1, tzinfo=UTC)
IN_DECEMBER = datetime(2026, 12, 10, 12, tzinfo=UTC)
SETTINGS = ChatSettings(
    model="claude-sonnet-5-5",
    max_tokens=1024,
    min_output_tokens=16,
    system_prompt="Be brief.",
    max_steps=1,
)
# Each request is charged 60 tokens: 50 in, 10 out.
CHARGE = 60
_ids = itertools.count()


@dataclass
class Mailbox:
    """A ``Notifier`` with state: what was sent, by message id as Appwrite keeps it, how many
    of the next sends fail, and how long each send takes."""

    sent: list[Email] = field(default_factory=list)
    failures: int = 0
    attempts: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send_email(self, email: Email) -> None:
        time.sleep(self.seconds)
        with self._lock:
            self.attempts += 1
            if self.failures:
                self.failures -= 1
                raise UpstreamUnavailable("the mail provider is down")
            if all(sent.message_id != email.message_id for sent in self.sent):
                self.sent.append(email)


@dataclass
class Model:
    """Answers every call with 50 input and 10 output tokens; ``fill`` bills the whole
    reservation instead (the input bound and ``max_tokens``). With ``together`` set, no call
    answers before that many are in flight."""

    together: threading.Barrier | None = None
    fill: bool = False

    def stream(
        self, request: ModelRequest, sink: StreamSink, deadline_seconds: float
    ) -> StreamedCall:
        if self.together is not None:
            self.together.wait(timeout=60)
        usage = TokenUsage(input_tokens=50, output_tokens=10, steps=1)
        if self.fill:
            usage = TokenUsage(request_input_bound(request), 0, 0, request.max_tokens, steps=1)
        sink.text("Fine.")
        reply = ModelReply((TextBlock("Fine."),), "end_turn", usage, request.model)
        return StreamedCall(reply, cut=False, output_reported=True)

    def count_tokens(self, request: ModelRequest) -> int:
        return 50


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(str(tmp_path / "metering.sqlite3"))


def seed(store: SQLiteStore, used: int, *, limit: int = 10_000, sent: int = 0) -> Account:
    """alice on a ``limit``-token plan in November with ``used`` tokens and alerts up to
    ``sent`` already sent."""
    account = new_account("alice", load_default_plans().get("starter"), NOW)
    values = {"max_tokens_per_month": limit, "current_tokens_used": used}
    account = store.create_account(replace(account, **values))
    if sent:
        store.mark_alert_sent("alice", account.period_start, sent)
    return account


def service(store: Any, mailbox: Mailbox | None, model: Model | None = None) -> ChatService:
    return ChatService(
        store=store,
        model=model or Model(),
        plans=load_default_plans(),
        prices=load_default_prices(),
        settings=SETTINGS,
        new_request_id=lambda: f"req-{next(_ids)}",
        monotonic=time.monotonic,
        notifier=mailbox,
    )


def ask() -> ChatRequest:
    return ChatRequest((Message.text("user", "How am I doing?"),))


def account_of(store: SQLiteStore) -> Account:
    account = store.get_account("alice")
    assert account is not None
    return account


def notices(store: SQLiteStore, period: datetime = NOVEMBER) -> list[tuple[int, Level]]:
    return [(notice.threshold, notice.level) for notice in store.list_notices("alice", period)]


# -- exactly once ------------------------------------------------------------------------------


def test_32_requests_crossing_90_at_once_send_one_email_and_one_notice(
    store: SQLiteStore,
) -> None:
    """All 32 are in flight before any settles, and each one's own charge takes it past 90 %:
    each asks (or, settling after the winner marked the account, need not), and one claim
    wins."""
    seed(store, 899_950, limit=1_000_000, sent=75)
    # A slow send keeps the winner from marking the account before the others have asked.
    mailbox = Mailbox(seconds=0.5)
    chat = service(store, mailbox, Model(together=threading.Barrier(32)))
    outcomes: list[AlertState | None] = []

    def one() -> None:
        result = chat.handle("alice", ask(), NOW)
        assert result.account.current_tokens_used >= 900_000
        outcomes.append(result.alert.state if result.alert else None)

    run_together([one] * 32)

    assert account_of(store).current_tokens_used == 899_950 + 32 * CHARGE
    assert len(outcomes) == 32
    assert outcomes.count(AlertState.SENT) == 1
    assert set(outcomes) <= {AlertState.SENT, AlertState.DONE, AlertState.IN_PROGRESS, None}
    assert outcomes.count(AlertState.IN_PROGRESS) > 1
    assert [email.subject for email in mailbox.sent] == ["You have used 90 % of your tokens"]
    assert mailbox.attempts == 1
    assert notices(store) == [(90, Level.CRITICAL)]
    assert account_of(store).alert_threshold_sent == 90
    # Once marked, the next request does not even ask.
    assert service(store, mailbox).handle("alice", ask(), NOW).alert is None


def test_crossing_thresholds_one_by_one_sends_each_once(store: SQLiteStore) -> None:
    """75, then 90, then 100 %: three notices and three emails, each once, newest first."""
    seed(store, 0)
    mailbox = Mailbox()
    states = []
    # Usage before each request; the last one uses all that is left.
    for used, fill in ((7_450, False), (8_950, False), (9_800, True)):
        charge_alice(store, used - account_of(store).current_tokens_used)
        chat = service(store, mailbox, Model(fill=fill))
        result = chat.handle("alice", ask(), NOW)
        assert result.alert is not None
        states.append((result.alert.threshold, result.alert.state))

    assert states == [(75, AlertState.SENT), (90, AlertState.SENT), (100, AlertState.SENT)]
    assert account_of(store).current_tokens_used == 10_000
    assert [email.subject for email in mailbox.sent] == [
        "You have used 75 % of your tokens",
        "You have used 90 % of your tokens",
        "You have used all of your tokens",
    ]
    assert notices(store) == [(100, Level.EXCEEDED), (90, Level.CRITICAL), (75, Level.WARNING)]


def charge_alice(store: SQLiteStore, tokens: int) -> None:
    """Put ``tokens`` on alice's counter through a settled request of its own."""
    if tokens > 0:
        charge(store, "alice", f"charge-{next(_ids)}", tokens, NOW)


# -- what it costs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("used", "sent"),
    [
        pytest.param(100, 0, id="below-75"),
        pytest.param(7_000, 0, id="just-below-75"),
        pytest.param(8_000, 75, id="above-75-already-sent"),
        pytest.param(9_500, 90, id="above-90-already-sent"),
    ],
)
def test_a_request_with_no_alert_due_makes_the_same_store_calls_as_without_alerts(
    tmp_path: Path, used: int, sent: int
) -> None:
    """The check starts from the account the request read, plus its charge: no store call is
    added."""
    calls = []
    for mailbox in (None, Mailbox()):
        store = SQLiteStore(str(tmp_path / f"{mailbox is not None}.sqlite3"))
        seed(store, used, sent=sent)
        recording = Recording(store)
        result = service(recording, mailbox).handle("alice", ask(), NOW)
        assert result.alert is None
        calls.append(recording.calls)

    assert calls[0] == calls[1]
    assert "claim_event" not in calls[1]


def test_an_alert_costs_a_read_a_claim_a_notice_a_mark_and_a_completion(
    store: SQLiteStore,
) -> None:
    """What the one request that crosses a threshold adds to its store calls: the account as
    stored once it settled, then the alert's own calls."""
    seed(store, 7_480)
    recording = Recording(store)

    service(recording, Mailbox()).handle("alice", ask(), NOW)

    alert_calls = recording.calls[recording.calls.index("settle") + 1 :]
    assert alert_calls == [
        "get_account",
        "claim_event",
        "create_notice",
        "mark_alert_sent",
        "complete_event",
    ]


# -- a reset re-arms ---------------------------------------------------------------------------


def test_after_a_reset_the_same_threshold_is_sent_again_for_the_new_period(
    store: SQLiteStore,
) -> None:
    """90 % in November, the renewal to December, 90 % again: a second email and notice."""
    seed(store, 8_980, sent=75)
    mailbox = Mailbox()
    chat = service(store, mailbox)
    assert chat.handle("alice", ask(), NOW).alert is not None
    november = account_of(store)
    reset = plan_reset(november, DECEMBER, JANUARY, IN_DECEMBER)
    assert reset is not None
    assert store.apply_reset(reset, november.period_start) is not None
    assert account_of(store).alert_threshold_sent == 0

    charge_alice(store, 8_980)
    result = chat.handle("alice", ask(), IN_DECEMBER)

    assert result.alert is not None
    assert (result.alert.threshold, result.alert.state) == (90, AlertState.SENT)
    assert [email.subject for email in mailbox.sent] == ["You have used 90 % of your tokens"] * 2
    assert len({email.message_id for email in mailbox.sent}) == 2
    assert notices(store, NOVEMBER) == [(90, Level.CRITICAL)]
    assert notices(store, DECEMBER) == [(90, Level.CRITICAL)]


# -- failures ----------------------------------------------------------------------------------


def test_a_failed_email_releases_the_claim_and_a_later_request_sends_it(
    store: SQLiteStore,
) -> None:
    """The request is answered anyway; the next one sends the email; the notice stays one."""
    seed(store, 8_980, sent=75)
    mailbox = Mailbox(failures=1)
    chat = service(store, mailbox)

    first = chat.handle("alice", ask(), NOW)

    assert first.reply.content == "Fine."
    assert first.alert is not None
    assert (first.alert.state, first.alert.error) == (AlertState.FAILED, "UpstreamUnavailable")
    assert mailbox.sent == []
    assert notices(store) == [(90, Level.CRITICAL)]
    assert account_of(store).alert_threshold_sent == 75

    second = chat.handle("alice", ask(), NOW)

    assert second.alert is not None
    assert second.alert.state is AlertState.SENT
    assert [email.subject for email in mailbox.sent] == ["You have used 90 % of your tokens"]
    assert notices(store) == [(90, Level.CRITICAL)]
    assert account_of(store).alert_threshold_sent == 90
    assert chat.handle("alice", ask(), NOW).alert is None


class FailingOnce:
    """The store, failing the first call of ``method``."""

    def __init__(self, inner: SQLiteStore, method: str) -> None:
        self._inner = inner
        self._method = method
        self._failed = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name != self._method:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self._failed:
                self._failed = True
                raise StoreError(f"injected fault in {name}")
            return attribute(*args, **kwargs)

        return call


@pytest.mark.parametrize(
    ("method", "then"),
    [
        # Before the email: the claim is released and the next request sends it.
        ("create_notice", AlertState.SENT),
        # After the email: the next request sends it again under the same id, which the
        # provider refuses as a duplicate, then marks it.
        ("mark_alert_sent", AlertState.SENT),
        # Marked but not completed: the marker already keeps the next request from asking.
        ("complete_event", None),
    ],
)
def test_a_store_fault_while_alerting_answers_the_chat_and_no_alert_is_lost_or_doubled(
    store: SQLiteStore, method: str, then: AlertState | None
) -> None:
    """A store failure at any alert step leaves the reply charged and answered; in the end
    there is one notice and one email, and the account says 90 % was sent."""
    seed(store, 8_980, sent=75)
    mailbox = Mailbox()
    flaky = FailingOnce(store, method)

    first = service(flaky, mailbox).handle("alice", ask(), NOW)
    second = service(flaky, mailbox).handle("alice", ask(), NOW)

    assert first.alert is not None
    assert first.alert.state is AlertState.FAILED
    assert account_of(store).current_tokens_used == 8_980 + 2 * CHARGE
    assert (second.alert.state if second.alert else None) is then
    assert len(mailbox.sent) == 1
    assert notices(store) == [(90, Level.CRITICAL)]
    assert account_of(store).alert_threshold_sent == 90


# -- through main(context) ---------------------------------------------------------------------


@pytest.fixture
def chat_function(tmp_path: Path) -> Iterator[tuple[Harness, Mailbox]]:
    """The chat function over the SQLite file, with its notifier replaced by a mailbox."""
    path = tmp_path / "metering.sqlite3"
    mailbox = Mailbox()
    with running("chat", path) as harness:
        bootstrap_of("chat").configure(
            base_environment(path),
            clock=lambda: NOW,
            store=harness.store(),
            anthropic_http_client=harness.model.client(),
            notifier=mailbox,
        )
        yield harness, mailbox


def chat_once(harness: Harness) -> Any:
    body = {"messages": [{"role": "user", "content": "Hi"}]}
    harness.model.then(text_reply("Hello.", input_tokens=50, output_tokens=10))
    return harness.call(body, user="alice")


def test_the_chat_function_sends_the_alert_and_logs_it(
    chat_function: tuple[Harness, Mailbox],
) -> None:
    """Through ``main``: the answer is the usual 200, the email went out, the log says so."""
    harness, mailbox = chat_function
    harness.seed("alice", used=44_990)  # 50,000 tokens: 60 more is 90 %

    result = chat_once(harness)

    assert result.status_code == 200, result.body
    assert result.json()["usage"]["level"] == "critical"
    assert [email.user_id for email in mailbox.sent] == ["alice"]
    line = json.loads(result.logs[-1])
    assert (line["event"], line["alert"], line["alertState"]) == ("chat.completed", 90, "sent")


def test_a_failed_alert_is_a_log_line_of_its_own_and_the_answer_is_200(
    chat_function: tuple[Harness, Mailbox],
) -> None:
    """The operator sees which alert a later request has to retry."""
    harness, mailbox = chat_function
    mailbox.failures = 1
    harness.seed("alice", used=44_990)

    result = chat_once(harness)

    assert result.status_code == 200, result.body
    lines = [json.loads(line) for line in result.logs]
    failed = [line for line in lines if line["event"] == "alert.failed"]
    assert failed == [
        {
            "event": "alert.failed",
            "userId": "alice",
            "threshold": 90,
            "error": "UpstreamUnavailable",
        }
    ]


def test_without_a_key_the_email_fails_alone_and_the_chat_answers(tmp_path: Path) -> None:
    """The default notifier (Appwrite Messaging) needs a key; without one only the alert fails."""
    path = tmp_path / "metering.sqlite3"
    with running("chat", path) as harness:
        harness.seed("alice", used=44_990)

        result = chat_once(harness)

    assert result.status_code == 200, result.body
    line = json.loads(result.logs[-1])
    assert (line["alert"], line["alertState"]) == (90, "failed")
    store = SQLiteStore(str(path))
    account = store.get_account("alice")
    assert account is not None
    assert [n.threshold for n in store.list_notices("alice", account.period_start)] == [90]


@pytest.fixture
def usage_function(tmp_path: Path) -> Iterator[Harness]:
    with running("usage", tmp_path / "metering.sqlite3") as harness:
        yield harness


def test_the_usage_answer_carries_the_callers_notices_of_the_period(
    usage_function: Harness,
) -> None:
    """Newest first, in the contract's shape; not another user's, not last period's."""
    harness = usage_function
    account = harness.seed("alice", used=46_000)
    harness.seed("bob", used=46_000)
    store = harness.store()
    october = datetime(2026, 10, 1, tzinfo=UTC)
    for user, period, threshold, at in (
        ("alice", account.period_start, 75, datetime(2026, 11, 20, tzinfo=UTC)),
        ("alice", account.period_start, 90, datetime(2026, 11, 27, tzinfo=UTC)),
        ("alice", october, 100, datetime(2026, 10, 30, tzinfo=UTC)),
        ("bob", account.period_start, 90, datetime(2026, 11, 27, tzinfo=UTC)),
    ):
        level = {75: Level.WARNING, 90: Level.CRITICAL, 100: Level.EXCEEDED}[threshold]
        notice_id = f"{user}-{threshold}-{period.month}"
        store.create_notice(Notice(notice_id, user, threshold, level, f"{threshold} %", period, at))

    stats = harness.call(method="GET", user="alice").json()

    assert stats["notices"] == [
        {
            "id": "alice-90-11",
            "threshold": 90,
            "level": "critical",
            "message": "90 %",
            "createdAt": "2026-11-27T00:00:00.000Z",
        },
        {
            "id": "alice-75-11",
            "threshold": 75,
            "level": "warning",
            "message": "75 %",
            "createdAt": "2026-11-20T00:00:00.000Z",
        },
    ]
