"""Reservation arithmetic for the hard cap: estimate, reserve, cap ``max_tokens``, settle."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Any byte-level BPE token covers at least one UTF-8 byte, so the byte count bounds the token
# count from above; the fixed overheads cover the role and framing tokens of the Messages API.
PER_MESSAGE_OVERHEAD_TOKENS = 8
PER_REQUEST_OVERHEAD_TOKENS = 16


def input_upper_bound(texts: Iterable[str], messages: int) -> int:
    """A safe upper bound on the input tokens of a request made of ``texts``."""
    body = sum(len(text.encode("utf-8")) for text in texts)
    return body + messages * PER_MESSAGE_OVERHEAD_TOKENS + PER_REQUEST_OVERHEAD_TOKENS


@dataclass(frozen=True, slots=True)
class CallBudget:
    """What one model call may use: reserve ``reserve_tokens``, send ``max_tokens``."""

    input_tokens: int
    max_tokens: int
    capped: bool

    @property
    def reserve_tokens(self) -> int:
        return self.input_tokens + self.max_tokens


def budget_call(
    remaining: int, input_tokens: int, configured_max_tokens: int, min_output_tokens: int
) -> CallBudget | None:
    """The largest call that fits in ``remaining``, or None when not even a minimal one does."""
    room_for_output = remaining - input_tokens
    if room_for_output < max(1, min_output_tokens):
        return None
    max_tokens = min(configured_max_tokens, room_for_output)
    return CallBudget(
        input_tokens=input_tokens,
        max_tokens=max_tokens,
        capped=max_tokens < configured_max_tokens,
    )


@dataclass(frozen=True, slots=True)
class Settlement:
    """How a reservation turns into a charge: ``release`` goes back, ``extra`` is charged on top."""

    charged: int
    release: int
    extra: int


def settle(reserved: int, actual: int) -> Settlement:
    """Settle ``reserved`` against the ``actual`` total of the call.

    With a safe input bound and a capped ``max_tokens`` the actual never exceeds the reservation;
    if a provider ever reports more, the excess is ``extra`` and the caller charges it bounded by
    the limit, so the cap still holds.
    """
    if actual <= reserved:
        return Settlement(charged=actual, release=reserved - actual, extra=0)
    return Settlement(charged=actual, release=0, extra=actual - reserved)
