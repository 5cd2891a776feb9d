"""``Notifier`` on Appwrite Messaging (SDK 27): an email to an Appwrite user by user id, sent
under the caller's message id so that a resend is refused by the server, not delivered twice.
"""

from __future__ import annotations

from collections.abc import Callable

from appwrite.client import Client
from appwrite.exception import AppwriteException
from appwrite.services.messaging import Messaging

from ..alerts import Email
from ..config import StoreSettings
from ..errors import ConfigurationError, UpstreamError, UpstreamUnavailable
from ..ports import Notifier

# The notifier of one execution, from the execution's own `x-appwrite-key` (None without one).
NotifierOpener = Callable[[str | None], Notifier]

# Appwrite's answer when a message with this id exists: the email was sent (or is being sent).
ALREADY_EXISTS = "message_already_exists"
# Rate limited: like the server's own failures (5xx), something a later attempt may get past.
_RATE_LIMITED = 429


class AppwriteMessaging:
    """``POST /v1/messaging/messages/email`` with ``users: [userId]``; Appwrite resolves the
    user's email target and delivers through the project's email provider."""

    def __init__(self, messaging: Messaging) -> None:
        self._messaging = messaging

    @classmethod
    def connect(cls, endpoint: str, project_id: str, api_key: str) -> AppwriteMessaging:
        if not endpoint:
            # The SDK would otherwise talk to Appwrite Cloud.
            raise ConfigurationError("no Appwrite endpoint configured")
        client = Client()
        try:
            client.set_endpoint(endpoint)
        except AppwriteException as exc:
            raise ConfigurationError(f"invalid Appwrite endpoint: {exc.message}") from exc
        client.set_project(project_id)
        client.set_key(api_key)
        return cls(Messaging(client))

    def send_email(self, email: Email) -> None:
        try:
            self._messaging.create_email(
                message_id=email.message_id,
                subject=email.subject,
                content=email.content,
                users=[email.user_id],
                html=False,
            )
        except AppwriteException as exc:
            if exc.type == ALREADY_EXISTS:
                return
            # No status (0): the server was not reached, or its answer could not be read.
            code = exc.code if isinstance(exc.code, int) else 0
            if code < 400 or code == _RATE_LIMITED or code >= 500:
                raise UpstreamUnavailable(f"sending an email failed ({code})") from exc
            raise UpstreamError(f"sending an email was refused: {code} {exc.type}") from exc
        except Exception as exc:
            # The SDK's own parsing of an unexpected answer fails outside AppwriteException.
            raise UpstreamUnavailable("sending an email failed: unreadable answer") from exc


def notifier_opener(settings: StoreSettings, notifier: Notifier | None = None) -> NotifierOpener:
    """How a function opens its notifier: ``notifier`` when one is given (a test's fake), else
    Appwrite Messaging at the function's own endpoint, with ``APPWRITE_API_KEY`` when configured
    or the execution's dynamic key (which carries the function's ``messages.write`` scope)."""
    if notifier is not None:
        return lambda _execution_key: notifier
    return lambda execution_key: _OnFirstEmail(settings, execution_key)


class _OnFirstEmail:
    """Connects when an email is sent, which almost no execution does: a missing key then fails
    that email only (the alert is retried later), never the request that raised it."""

    def __init__(self, settings: StoreSettings, execution_key: str | None) -> None:
        self._settings = settings
        self._key = settings.appwrite_api_key.value or execution_key

    def send_email(self, email: Email) -> None:
        if not self._key:
            raise ConfigurationError("no APPWRITE_API_KEY and no x-appwrite-key header")
        settings = self._settings
        messaging = AppwriteMessaging.connect(
            settings.appwrite_endpoint, settings.appwrite_project_id, self._key
        )
        messaging.send_email(email)
