"""The Appwrite Messaging adapter against Messaging's wire format (``responses`` at the HTTP
edge, the real SDK above it): the request ``createEmail`` sends, and each kind of answer."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import responses
from metering.adapters.appwrite_messaging import AppwriteMessaging, notifier_opener
from metering.alerts import Email
from metering.config import Secret, StoreSettings
from metering.errors import ConfigurationError, UpstreamError, UpstreamUnavailable

ENDPOINT = "http://appwrite.messaging.test/v1"
PROJECT = "project-1"
KEY = "execution-key"
EMAILS = f"{ENDPOINT}/messaging/messages/email"
EMAIL = Email(
    message_id="h0123456789abcdef0123456789abcdef0",
    user_id="user-1",
    subject="You have used 90 % of your tokens",
    content="You have used 90 % of this period's tokens.",
)


def message_document(body: dict[str, Any]) -> dict[str, Any]:
    """Appwrite's Message model for a created email, as the server answers it (201)."""
    return {
        "$id": body["messageId"],
        "$createdAt": "2026-11-28T12:00:00.000+00:00",
        "$updatedAt": "2026-11-28T12:00:00.000+00:00",
        "providerType": "email",
        "topics": [],
        "users": body.get("users", []),
        "targets": [],
        "scheduledAt": None,
        "deliveredAt": None,
        "deliveryErrors": [],
        "deliveredTotal": 0,
        "data": {
            "subject": body["subject"],
            "content": body["content"],
            "html": body.get("html", False),
            "cc": [],
            "bcc": [],
            "attachments": [],
        },
        "status": "processing",
    }


def error(status: int, error_type: str, message: str) -> tuple[int, dict[str, str], str]:
    body = {"message": message, "code": status, "type": error_type, "version": "1.8.0"}
    return status, {"Content-Type": "application/json"}, json.dumps(body)


def messaging() -> AppwriteMessaging:
    return AppwriteMessaging.connect(ENDPOINT, PROJECT, KEY)


@responses.activate
def test_an_email_is_created_for_the_user_with_the_callers_message_id() -> None:
    """POST /messaging/messages/email: the id, subject, plain content and ``users: [id]``,
    with the project and the key; the 201 Message is accepted."""
    seen: list[Any] = []

    def created(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        seen.append(request)
        body = json.loads(request.body or b"{}")
        headers = {"Content-Type": "application/json"}
        return 201, headers, json.dumps(message_document(body))

    responses.add_callback(responses.POST, EMAILS, callback=created)

    messaging().send_email(EMAIL)

    (request,) = seen
    assert json.loads(request.body) == {
        "messageId": EMAIL.message_id,
        "subject": EMAIL.subject,
        "content": EMAIL.content,
        "users": ["user-1"],
        "html": False,
    }
    assert request.headers["X-Appwrite-Project"] == PROJECT
    assert request.headers["X-Appwrite-Key"] == KEY
    assert request.headers["content-type"] == "application/json"


@responses.activate
def test_an_id_already_sent_is_not_an_error() -> None:
    """409 message_already_exists: an earlier attempt got through, so this one is done."""
    responses.add_callback(
        responses.POST,
        EMAILS,
        callback=lambda _: error(
            409, "message_already_exists", "Message with the requested ID already exists."
        ),
    )

    messaging().send_email(EMAIL)

    assert len(responses.calls) == 1


@pytest.mark.parametrize(
    ("status", "error_type", "raised"),
    [
        pytest.param(500, "general_unknown", UpstreamUnavailable, id="500"),
        pytest.param(503, "general_service_disabled", UpstreamUnavailable, id="503-disabled"),
        pytest.param(429, "general_rate_limit_exceeded", UpstreamUnavailable, id="429"),
        pytest.param(401, "general_unauthorized_scope", UpstreamError, id="401-missing-scope"),
        pytest.param(400, "message_missing_target", UpstreamError, id="400-no-target"),
    ],
)
def test_other_answers_are_domain_errors(
    status: int, error_type: str, raised: type[Exception]
) -> None:
    """Server failures and rate limits may pass later; refusals are the project's to fix."""
    with responses.RequestsMock() as mock:
        mock.add_callback(
            responses.POST, EMAILS, callback=lambda _: error(status, error_type, "no")
        )
        with pytest.raises(raised):
            messaging().send_email(EMAIL)


@responses.activate
def test_an_unreachable_server_is_upstream_unavailable() -> None:
    """A connection error surfaces as the domain's retryable error, not the SDK's."""
    responses.add(responses.POST, EMAILS, body=requests.ConnectionError("refused"))

    with pytest.raises(UpstreamUnavailable):
        messaging().send_email(EMAIL)


@responses.activate
def test_an_unreadable_answer_is_upstream_unavailable() -> None:
    """A 201 that is not a Message fails the SDK's parsing; that is no success."""
    responses.add(responses.POST, EMAILS, json={"$id": 7, "users": "nobody"}, status=201)

    with pytest.raises(UpstreamUnavailable):
        messaging().send_email(EMAIL)


def settings(api_key: str = "") -> StoreSettings:
    return StoreSettings(
        appwrite_endpoint=ENDPOINT,
        appwrite_project_id=PROJECT,
        appwrite_api_key=Secret(api_key),
        database_id="koffers_db",
        subscriptions_table="subscriptions",
        usage_events_table="usage_events",
        claims_table="claims",
    )


@pytest.mark.parametrize(
    ("api_key", "execution_key", "sent_with"),
    [
        pytest.param("", "dynamic-key", "dynamic-key", id="execution-key"),
        pytest.param("static-key", "dynamic-key", "static-key", id="static-key-first"),
    ],
)
def test_the_opener_uses_the_static_key_else_the_executions(
    api_key: str, execution_key: str, sent_with: str
) -> None:
    """Like the store: APPWRITE_API_KEY when configured, else the execution's dynamic key."""
    with responses.RequestsMock() as mock:
        mock.add_callback(
            responses.POST,
            EMAILS,
            callback=lambda request: (
                201,
                {"Content-Type": "application/json"},
                json.dumps(message_document(json.loads(request.body))),
            ),
        )
        notifier_opener(settings(api_key))(execution_key).send_email(EMAIL)

        assert mock.calls[0].request.headers["X-Appwrite-Key"] == sent_with


def test_without_any_key_only_sending_fails() -> None:
    """Opening costs nothing and cannot fail; the email without a key is a configuration error."""
    notifier = notifier_opener(settings())(None)

    with responses.RequestsMock(), pytest.raises(ConfigurationError, match="APPWRITE_API_KEY"):
        notifier.send_email(EMAIL)


def test_an_injected_notifier_is_used_as_it_is() -> None:
    """Tests and the local runtime pass their own notifier through ``configure``."""
    sent: list[Email] = []

    class Fake:
        def send_email(self, email: Email) -> None:
            sent.append(email)

    fake = Fake()
    notifier_opener(settings(), fake)("key").send_email(EMAIL)

    assert sent == [EMAIL]
