"""Sending the usage alert an account has newly reached: its in-app notice and its email, once
per threshold and period through ``claims.run_once``; written against the ports.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from .account import Account
from .alerts import Notice, alert_key, due, notice_email, threshold_notice
from .claims import Claim, Done, run_once
from .codec import row_key
from .errors import MeteringError
from .ports import ClaimOutcome, Notifier, UsageStore

# The act is idempotent (the notice and the email are keyed on one id), so a worker that died
# mid-alert may be taken over: at worst the takeover finds both already there. Longer than an
# execution may run.
ALERT_LEASE = timedelta(minutes=2)


class AlertState(StrEnum):
    SENT = "sent"  # this call stored the notice and sent the email
    DONE = "done"  # another request had sent it
    IN_PROGRESS = "in_progress"  # another request is sending it
    FAILED = "failed"  # not sent; the claim was released, so a later request sends it


@dataclass(frozen=True, slots=True)
class AlertOutcome:
    """What one request did about the alert it found due, for its log line."""

    threshold: int
    state: AlertState
    error: str = ""


_STATES = {
    ClaimOutcome.CLAIMED: AlertState.SENT,
    ClaimOutcome.DONE: AlertState.DONE,
    ClaimOutcome.IN_PROGRESS: AlertState.IN_PROGRESS,
}


class Alerts:
    def __init__(self, store: UsageStore, notifier: Notifier) -> None:
        self.store = store
        self.notifier = notifier

    def after_usage(self, account: Account, now: datetime) -> AlertOutcome | None:
        """Send the alert ``account`` (as read after its usage changed) has newly reached, if
        any. Costs no store call when none is due. Never raises a domain error: the usage it
        follows is charged and answered whatever happens to the alert."""
        threshold = due(account)
        if threshold is None:
            return None
        key = alert_key(account.user_id, account.period_start, threshold)
        notice = threshold_notice(account, threshold, now, row_key(key))
        claim = Claim(key=key, kind="alert", object_id=account.user_id, lease=ALERT_LEASE)
        try:
            once = run_once(self.store, claim, now, lambda: self._send(notice))
        except MeteringError as exc:
            return AlertOutcome(threshold, AlertState.FAILED, type(exc).__name__)
        return AlertOutcome(threshold, _STATES[once.state])

    def _send(self, notice: Notice) -> Done[None]:
        # The notice first: it is what the page shows, and it stays if the email fails.
        self.store.create_notice(notice)
        self.notifier.send_email(notice_email(notice))
        self.store.mark_alert_sent(notice.user_id, notice.period_start, notice.threshold)
        return Done(None, f"sent {notice.threshold}")
