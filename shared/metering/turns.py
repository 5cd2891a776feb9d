"""A streamed turn: the row its user reads while the reply streams, then its final state.

The turn's text belongs to its user's row; the ledger keeps the accounting. A Stop is a row of
its own that only the stop path writes, so that the streaming execution's rewrites of the turn
row can never lose it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TypedDict

from .tokens import TokenUsage


class TurnStatus(StrEnum):
    PENDING = "pending"  # claimed, no text yet
    STREAMING = "streaming"  # text arriving
    COMPLETED = "completed"
    STOPPED = "stopped"  # cut by the user's Stop (or the per-call deadline): charged what ran
    FAILED = "failed"  # the provider refused, or the execution died and the cron settled it

    @property
    def final(self) -> bool:
        return self in (TurnStatus.COMPLETED, TurnStatus.STOPPED, TurnStatus.FAILED)


@dataclass(frozen=True, slots=True)
class Turn:
    request_id: str
    user_id: str
    status: TurnStatus
    created_at: datetime
    updated_at: datetime
    content: str = ""
    model: str = ""
    stop_reason: str = ""
    truncated: bool = False
    # Settled steps only: what the turn has been charged so far (all of it once final).
    usage: TokenUsage = TokenUsage()  # noqa: RUF009 -- immutable, safe to share
    cost_micro_usd: int = 0
    # True when some output was measured from the text received (a cut before the final usage).
    estimated: bool = False


class TurnPatch(TypedDict, total=False):
    """Fields of a turn its streaming execution (or the cron, for a dead one) sets."""

    status: TurnStatus
    content: str
    model: str
    stop_reason: str
    truncated: bool
    usage: TokenUsage
    cost_micro_usd: int
    estimated: bool
    updated_at: datetime
