"""The local runtime's Messaging over HTTP: the real Appwrite SDK sends and lists emails in
Appwrite's wire format, the operator reads them on ``/outbox``, and a chat crossing 90 % lands
its alert there; bad calls are refused as Appwrite refuses them and store nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from appwrite.client import Client
from appwrite.query import Query
from appwrite.services.messaging import Messaging
from metering.adapters.appwrite_messaging import AppwriteMessaging
from metering.alerts import Email
from metering.plans import load_default_plans
from metering.service import get_or_create_account

from localruntime.server import Runtime
from localruntime.sqlite_store import SQLiteStore
from tests.support.runtime import AppwriteHttp, project_functions, running
from tests.support.stripe_events import hold

KEY = "a-function-execution-key"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    # No Anthropic key: the chat talks to the built-in offline model.
    data = tmp_path_factory.mktemp("outbox") / "data"
    with running(data, functions=project_functions(), warm=True) as started:
        yield started


def messaging(runtime: Runtime) -> Messaging:
    """The SDK's Messaging service as a function holds it: the runtime's endpoint, a key."""
    client = Client().set_endpoint(f"{runtime.base_url}/v1").set_project("local").set_key(KEY)
    return Messaging(client)


def signed_up(runtime: Runtime) -> tuple[AppwriteHttp, str, str]:
    client = AppwriteHttp(runtime.base_url)
    address = f"alerts-{uuid.uuid4().hex[:10]}@example.test"
    return client, client.sign_up_and_log_in(address), address


def email(user_id: str, subject: str = "You have used 90 % of your tokens", **fields: Any) -> Email:
    values = {
        "message_id": f"m{uuid.uuid4().hex[:20]}",
        "user_id": user_id,
        "subject": subject,
        "content": "You have used 90 % of this period's tokens.",
        **fields,
    }
    return Email(**values)


def outbox_page(runtime: Runtime) -> str:
    response = requests.get(f"{runtime.base_url}/outbox", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    return response.text


def post_email(runtime: Runtime, body: dict[str, Any], key: str | None = KEY) -> requests.Response:
    headers = {"X-Appwrite-Project": "local", "content-type": "application/json"}
    if key:
        headers["X-Appwrite-Key"] = key
    return requests.post(
        f"{runtime.base_url}/v1/messaging/messages/email",
        data=json.dumps(body),
        headers=headers,
        timeout=30,
    )


def test_an_email_sent_with_the_sdk_is_delivered_to_the_users_address(runtime: Runtime) -> None:
    """The adapter's createEmail gets Appwrite's Message back; the list and the page show it."""
    _, user_id, address = signed_up(runtime)
    sent = email(user_id)

    AppwriteMessaging(messaging(runtime)).send_email(sent)

    listed = messaging(runtime).list_messages(queries=[Query.limit(5000)])
    (message,) = [m for m in listed.messages if m.id == sent.message_id]
    assert (message.providertype, message.users, message.status.value) == (
        "email",
        [user_id],
        "sent",
    )
    assert (message.deliveredtotal, message.deliveryerrors) == (1, [])
    assert message.data["subject"] == sent.subject
    assert message.data["to"] == [address]
    assert listed.total >= 1
    page = outbox_page(runtime)
    assert address in page
    assert sent.subject in page


def test_the_page_and_the_newest_first_list_put_the_latest_email_on_top(runtime: Runtime) -> None:
    """The operator reads the outbox newest first; the REST list honours orderDesc."""
    _, user_id, _ = signed_up(runtime)
    notifier = AppwriteMessaging(messaging(runtime))
    older, newer = email(user_id, "Older subject"), email(user_id, "Newer subject")
    notifier.send_email(older)
    notifier.send_email(newer)

    page = outbox_page(runtime)
    listed = messaging(runtime).list_messages(
        queries=[Query.order_desc("$createdAt"), Query.limit(2)]
    )

    assert page.index("Newer subject") < page.index("Older subject")
    assert [m.id for m in listed.messages] == [newer.message_id, older.message_id]


def test_the_same_message_id_twice_is_one_email(runtime: Runtime) -> None:
    """The server answers 409 message_already_exists; the adapter takes that as sent."""
    _, user_id, _ = signed_up(runtime)
    sent = email(user_id)
    notifier = AppwriteMessaging(messaging(runtime))
    notifier.send_email(sent)

    notifier.send_email(sent)
    again = post_email(
        runtime,
        {"messageId": sent.message_id, "subject": "s", "content": "c", "users": [user_id]},
    )

    assert (again.status_code, again.json()["type"]) == (409, "message_already_exists")
    listed = messaging(runtime).list_messages(queries=[Query.limit(5000)])
    assert [m.id for m in listed.messages].count(sent.message_id) == 1


def test_content_is_shown_as_text_on_the_page(runtime: Runtime) -> None:
    """Markup in an email is escaped: the page never runs what a message says."""
    _, user_id, _ = signed_up(runtime)
    AppwriteMessaging(messaging(runtime)).send_email(
        email(user_id, content="<script>alert(1)</script> & more")
    )

    page = outbox_page(runtime)

    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page


def call(message_id: str, **changes: object) -> dict[str, Any]:
    """A createEmail body with ``message_id``; ``changes`` set fields, ``None`` drops one."""
    body: dict[str, Any] = {"messageId": message_id, "subject": "s", "content": "c", "users": ["u"]}
    body.update(changes)
    return {name: value for name, value in body.items() if value is not None}


@pytest.mark.parametrize(
    ("body", "key", "status", "error_type"),
    [
        pytest.param(call("m-ok-1"), None, 401, "general_unauthorized_scope", id="no-key"),
        pytest.param(
            call("m-ok-2", subject=None), KEY, 400, "general_argument_invalid", id="no-subject"
        ),
        pytest.param(
            call("m-ok-3", users=None), KEY, 400, "message_missing_target", id="no-recipient"
        ),
        pytest.param(call("_bad id"), KEY, 400, "general_argument_invalid", id="bad-id"),
        pytest.param(
            call("m-ok-4", subject="s" * 999),
            KEY,
            400,
            "general_argument_invalid",
            id="subject-too-long",
        ),
        pytest.param(
            call("m-ok-5", users="u"), KEY, 400, "general_argument_invalid", id="users-not-a-list"
        ),
    ],
)
def test_bad_calls_are_refused_as_appwrite_refuses_them_and_store_nothing(
    runtime: Runtime, body: dict[str, Any], key: str | None, status: int, error_type: str
) -> None:
    """Appwrite's error document and status; the outbox is unchanged."""
    before = runtime.outbox.messages()

    response = post_email(runtime, body, key)

    assert response.status_code == status
    assert set(response.json()) == {"message", "code", "type", "version"}
    assert response.json()["type"] == error_type
    assert runtime.outbox.messages() == before


def test_listing_without_a_key_is_refused(runtime: Runtime) -> None:
    """The REST list is for keys (a function's, a tool's), like Appwrite's."""
    response = requests.get(f"{runtime.base_url}/v1/messaging/messages", timeout=30)

    assert (response.status_code, response.json()["type"]) == (401, "general_unauthorized_scope")


def test_a_chat_crossing_90_percent_lands_its_alert_in_the_outbox_and_the_usage_answer(
    runtime: Runtime,
) -> None:
    """End to end through createExecution: the chat sends the email with its execution key,
    the user's address gets it, and the page's usage answer carries the notice."""
    client, user_id, address = signed_up(runtime)
    store = SQLiteStore(str(runtime.metering_path))
    get_or_create_account(store, load_default_plans(), user_id, datetime.now(UTC))
    store.update_account(user_id, {"plan": "starter", "max_tokens_per_month": 100_000})
    hold(store, user_id, f"seed-{uuid.uuid4().hex[:12]}", 89_990, datetime.now(UTC))

    chat = client.execution("chat", {"messages": [{"role": "user", "content": "Hi there"}]})

    assert chat.status_code == 200, chat["responseBody"]
    assert chat.body["usage"]["level"] == "critical"
    mine = [m for m in runtime.outbox.messages() if m["users"] == [user_id]]
    assert [m["data"]["subject"] for m in mine] == ["You have used 90 % of your tokens"]
    assert mine[0]["data"]["to"] == [address]
    assert address in outbox_page(runtime)
    usage = client.execution("usage", method="GET").body
    assert [(n["threshold"], n["level"]) for n in usage["notices"]] == [(90, "critical")]
    assert usage["notices"][0]["id"] == mine[0]["$id"]


def test_the_outbox_survives_a_restart(tmp_path: Path) -> None:
    """It is a file in the data folder: stopping the runtime loses no email."""
    data = tmp_path / "data"
    with running(data, functions={}) as first:
        _, user_id, _ = signed_up(first)
        sent = email(user_id, "Kept across restarts")
        AppwriteMessaging(messaging(first)).send_email(sent)

    with running(data, functions={}) as second:
        assert "Kept across restarts" in outbox_page(second)
        assert [m["$id"] for m in second.outbox.messages()] == [sent.message_id]
