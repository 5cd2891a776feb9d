"""A chat request that straddles a period reset, through the chat function on both stores: the
reset lands at each moment of a two-step tool loop, applied by another execution (the cron or
the webhook). Every token the request was charged is counted in the new period, on the counter
and in the ledger alike, and the old period keeps what had ended in it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from metering.account import new_account
from metering.adapters.appwrite_store import AppwriteStore
from metering.plans import load_default_plans
from metering.ports import UsageStore
from metering.timeutil import month_start, next_month_start

from localruntime.sqlite_store import SQLiteStore
from tests.support.anthropic_fake import text_reply, tool_use_reply
from tests.support.appwrite_emulator import AppwriteEmulator
from tests.support.builders import charge, reset_now
from tests.support.function_harness import NOW, Harness, running
from tests.support.recording import Recording
from tools.schema import load_schema

USER = "alice"
EARLIER = 1_200  # what alice used this period before the request
STEPS = (
    tool_use_reply("get_my_usage", {}, input_tokens=400, output_tokens=30),
    text_reply("You have plenty left.", input_tokens=480, output_tokens=20),
)
CHARGED = 400 + 30 + 480 + 20
THIS_PERIOD = month_start(NOW)
NEXT_PERIOD = next_month_start(NOW)


class ResettingStore(Recording):
    """The chat's store; right after its first call of ``after``, another execution moves the
    user's account to the next period."""

    def __init__(self, inner: UsageStore, other: Callable[[], UsageStore], after: str) -> None:
        super().__init__(inner)
        self.other = other
        self.after = after
        self.reset_at: int | None = None

    def _run(
        self, name: str, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = method(*args, **kwargs)
        if name == self.after and self.reset_at is None:
            self.reset_at = len(self.calls)
            end = next_month_start(NEXT_PERIOD)
            reset_now(self.other(), USER, NEXT_PERIOD, end)
        return result


# The chat function's harness, a way to open another store on the same data, and the chat's own.
Chat = tuple[Harness, Callable[[], UsageStore], ResettingStore]


@contextmanager
def sqlite_chat(tmp_path: Path, after: str) -> Iterator[Chat]:
    path = tmp_path / "metering.sqlite3"

    def fresh() -> UsageStore:
        return SQLiteStore(str(path))

    store = ResettingStore(fresh(), fresh, after)
    with running("chat", path, store=store) as harness:
        yield harness, fresh, store


@contextmanager
def appwrite_chat(tmp_path: Path, after: str) -> Iterator[Chat]:
    emulator = AppwriteEmulator(load_schema())

    def fresh() -> UsageStore:
        return AppwriteStore.connect(emulator.store_settings(), emulator.api_key)

    environment = {
        "APPWRITE_FUNCTION_API_ENDPOINT": emulator.endpoint,
        "APPWRITE_FUNCTION_PROJECT_ID": emulator.project_id,
    }
    store = ResettingStore(fresh(), fresh, after)
    # The emulator routes last, so that it answers every Appwrite request, the JWT's too.
    with (
        running("chat", tmp_path / "unused.sqlite3", environment, store=store) as harness,
        emulator.running(),
    ):
        emulator.register_user(harness.jwt(USER), USER)
        yield harness, fresh, store


CHATS = {"sqlite": sqlite_chat, "appwrite": appwrite_chat}


@pytest.mark.parametrize("backend", sorted(CHATS))
@pytest.mark.parametrize(
    "after",
    [
        pytest.param("get_account", id="after-the-chat-read-the-account"),
        pytest.param("open_request", id="after-the-request-opened"),
        pytest.param("settle", id="after-the-first-step-settled"),
        pytest.param("hold", id="after-the-second-step-held"),
    ],
)
def test_a_request_straddling_a_reset_is_counted_whole_in_the_new_period(
    tmp_path: Path, backend: str, after: str
) -> None:
    with CHATS[backend](tmp_path, after) as (chat, fresh, chat_store):
        store = fresh()
        store.create_account(new_account(USER, load_default_plans().get("starter"), NOW))
        charge(store, USER, "earlier", EARLIER, NOW)
        chat.model.then(*STEPS)

        result = chat.call(
            {"messages": [{"role": "user", "content": "How much is left?"}]}, user=USER
        )

        assert result.status_code == 200, result.body
        account = store.get_account(USER)
        assert account is not None
        assert account.period_start == NEXT_PERIOD
        assert (account.current_tokens_used, account.lifetime_tokens_used) == (CHARGED, EARLIER)
        assert store.ledger_total(USER, NEXT_PERIOD) == CHARGED
        assert store.ledger_total(USER, THIS_PERIOD) == EARLIER
        # The reset landed inside the request, before its last store call.
        assert chat_store.reset_at is not None
        assert chat_store.reset_at < len(chat_store.calls)
