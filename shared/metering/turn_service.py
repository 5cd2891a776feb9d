"""Reading and stopping a user's turn, written against the store port; the clock and the wait
are passed in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from .account import Account
from .errors import MeteringError, PathNotFound
from .ports import UsageStore
from .turns import Turn

# How often a Stop looks whether the streaming execution has settled the turn.
STOP_POLL_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class TurnView:
    turn: Turn
    account: Account
    # True when a Stop was asked and the turn has not settled yet.
    stopping: bool = False


class TurnService:
    def __init__(
        self,
        store: UsageStore,
        *,
        monotonic: Callable[[], float],
        sleep: Callable[[float], None],
        stop_wait_seconds: float,
    ) -> None:
        self.store = store
        self.monotonic = monotonic
        self.sleep = sleep
        self.stop_wait_seconds = stop_wait_seconds

    def read(self, user_id: str, request_id: str) -> TurnView:
        return TurnView(self._own_turn(user_id, request_id), self._account(user_id))

    def stop(self, user_id: str, request_id: str, now: datetime) -> TurnView:
        """Ask the turn to stop (idempotent), then wait a little for its execution to settle it:
        the answer then holds what it was charged."""
        turn = self._own_turn(user_id, request_id)
        if not turn.status.final:
            self.store.request_stop(request_id, user_id, now)
            waited_until = self.monotonic() + self.stop_wait_seconds
            while not turn.status.final and self.monotonic() < waited_until:
                self.sleep(STOP_POLL_SECONDS)
                turn = self._own_turn(user_id, request_id)
        return TurnView(turn, self._account(user_id), stopping=not turn.status.final)

    def _own_turn(self, user_id: str, request_id: str) -> Turn:
        turn = self.store.get_turn(request_id)
        if turn is None or turn.user_id != user_id:
            raise PathNotFound("no turn with this requestId")
        return turn

    def _account(self, user_id: str) -> Account:
        account = self.store.get_account(user_id)
        if account is None:
            raise MeteringError(f"account of {user_id} vanished")
        return account
