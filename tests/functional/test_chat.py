"""The chat function end to end through ``main(context)``: SQLite store, Account API and
Anthropic faked at their HTTP edges."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from metering.chat import recorded_reply
from metering.ledger import LedgerStatus
from metering.wire import chat_message

from tests.strategies import json_values
from tests.support.anthropic_fake import (
    MODEL,
    Failure,
    FakeAnthropic,
    Raise,
    connection_refused,
    text_reply,
    timeout,
    tool_use_reply,
)
from tests.support.builders import charge
from tests.support.function_harness import NOW, Harness, running

STARTER = 50_000


@pytest.fixture
def chat(tmp_path: Path) -> Iterator[Harness]:
    with running("chat", tmp_path / "metering.sqlite3") as harness:
        yield harness


def ask(text: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


def near_the_limit(chat: Harness, left: int, counted: int) -> None:
    """alice on Starter with ``left`` tokens to go, and every request's exact count ``counted``."""
    chat.seed("alice", used=STARTER - left)
    chat.model.count_tokens = lambda body: counted


def test_a_reply_is_charged_and_answered_in_the_contract_shape(chat: Harness) -> None:
    """200 with the message, its usage and cost, and UsageStats that already include it; the
    turn row holds the text."""
    chat.seed("alice")
    chat.model.then(text_reply("Hi! How can I help?", input_tokens=420, output_tokens=12))

    result = chat.call(ask(requestId="req-happy-1"), user="alice")

    assert result.status_code == 200, result.body
    body = result.json()
    assert set(body) == {"message", "usage"}
    message = body["message"]
    assert message == {
        "role": "assistant",
        "content": "Hi! How can I help?",
        "model": MODEL,
        "stopReason": "end_turn",
        "truncated": False,
        "usage": {
            "inputTokens": 420,
            "cacheCreationInputTokens": 0,
            "cacheReadInputTokens": 0,
            "outputTokens": 12,
            "totalTokens": 432,
            "steps": 1,
            # $3 / MTok input, $15 / MTok output
            "costUsd": (420 * 3 + 12 * 15) / 1e6,
        },
        "estimated": False,
    }
    stats = body["usage"]
    assert stats["userId"] == "alice"
    assert stats["tokens"]["used"] == 432
    assert stats["tokens"]["remaining"] == STARTER - 432
    assert chat.used("alice") == 432
    entry = chat.store().get_ledger("req-happy-1")
    assert entry is not None
    assert entry.status is LedgerStatus.SETTLED
    assert (entry.usage.total_tokens, entry.usage.steps, entry.cost_micro_usd) == (432, 1, 1440)
    assert entry.price_version == "2026-11-01"
    # The entry keeps how the reply ended, its turn the text: together they rebuild the message.
    assert json.loads(entry.reply) == {"stop_reason": "end_turn", "truncated": False}
    turn = chat.store().get_turn("req-happy-1")
    assert turn is not None
    assert (turn.status.value, turn.content) == ("completed", "Hi! How can I help?")
    assert chat_message(recorded_reply(entry, turn)) == message


def test_the_request_sent_to_the_model_carries_the_configuration(chat: Harness) -> None:
    """Model, system prompt, the usage tool and the conversation reach the provider, streamed."""
    chat.seed("alice")
    chat.model.then(text_reply("Sure."))
    conversation = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "What plan am I on?"},
        ]
    }

    assert chat.call(conversation, user="alice").status_code == 200

    [sent] = chat.model.requests
    assert sent["stream"] is True
    assert sent["model"] == MODEL
    assert sent["max_tokens"] == 1024
    assert "get_my_usage" in sent["system"][0]["text"]
    assert [tool["name"] for tool in sent["tools"]] == ["get_my_usage"]
    assert [(m["role"], m["content"][0]["text"]) for m in sent["messages"]] == [
        ("user", "Hi"),
        ("assistant", "Hello!"),
        ("user", "What plan am I on?"),
    ]


def test_every_step_of_the_tool_loop_is_charged(chat: Harness) -> None:
    """totalTokens sums input, cache writes, cache reads and output over both model calls."""
    chat.seed("alice")
    chat.model.then(
        tool_use_reply(
            "get_my_usage", input_tokens=400, output_tokens=40, cache_write_1h=100, cache_read=50
        ),
        text_reply("You have used 590 tokens.", input_tokens=600, output_tokens=30, cache_read=400),
    )

    result = chat.call(ask("How much have I used?"), user="alice")

    assert result.status_code == 200, result.body
    message = result.json()["message"]
    step_one = 400 + 100 + 50 + 40
    step_two = 600 + 400 + 30
    assert message["usage"]["totalTokens"] == step_one + step_two
    assert message["usage"]["steps"] == 2
    assert message["usage"]["inputTokens"] == 1000
    assert message["usage"]["cacheCreationInputTokens"] == 100
    assert message["usage"]["cacheReadInputTokens"] == 450
    assert message["usage"]["outputTokens"] == 70
    # 1-hour cache writes at $6 / MTok, cache reads at $0.30 / MTok
    cost_micro = (400 * 3 + 100 * 6 + 50 * 0.3 + 40 * 15) + (600 * 3 + 400 * 0.3 + 30 * 15)
    assert message["usage"]["costUsd"] == pytest.approx(cost_micro / 1e6)
    assert message["content"] == "Let me look that up.\n\nYou have used 590 tokens."
    assert message["stopReason"] == "end_turn"
    assert chat.used("alice") == step_one + step_two
    assert result.json()["usage"]["tokens"]["used"] == step_one + step_two


def test_the_usage_tool_runs_server_side_and_its_result_goes_back_to_the_model(
    chat: Harness,
) -> None:
    """The second call carries a tool_result with the caller's live usage after step one."""
    chat.seed("alice", used=1_000)
    chat.model.then(
        tool_use_reply("get_my_usage", input_tokens=400, output_tokens=40), text_reply("Done.")
    )

    assert chat.call(ask("Usage?"), user="alice").status_code == 200

    second = chat.model.requests[1]
    assistant, tool_turn = second["messages"][-2:]
    assert assistant["role"] == "assistant"
    assert assistant["content"][-1]["type"] == "tool_use"
    [result] = tool_turn["content"]
    assert result["type"] == "tool_result"
    assert result["tool_use_id"] == assistant["content"][-1]["id"]
    stats = json.loads(result["content"])
    assert stats["userId"] == "alice"
    assert stats["tokens"]["used"] == 1_000 + 440


def test_an_unknown_tool_gets_an_error_result_and_the_loop_goes_on(chat: Harness) -> None:
    """A tool the server does not have answers is_error, and the model gets to reply."""
    chat.seed("alice")
    chat.model.then(tool_use_reply("delete_everything"), text_reply("I cannot do that."))

    result = chat.call(ask(), user="alice")

    assert result.status_code == 200
    tool_result = chat.model.requests[1]["messages"][-1]["content"][0]
    assert tool_result["is_error"] is True
    assert "unknown tool" in tool_result["content"]


def test_the_loop_stops_at_the_configured_bound_with_tools_switched_off(
    tmp_path: Path,
) -> None:
    """With CHAT_MAX_STEPS=2 the second call may not use tools, so the reply always ends."""
    with running("chat", tmp_path / "m.sqlite3", {"CHAT_MAX_STEPS": "2"}) as chat:
        chat.seed("alice")
        chat.model.then(tool_use_reply("get_my_usage"), text_reply("Final answer."))

        result = chat.call(ask(), user="alice")

        assert result.status_code == 200
        assert len(chat.model.requests) == 2
        assert chat.model.requests[0]["tool_choice"] == {"type": "auto"}
        assert chat.model.requests[1]["tool_choice"] == {"type": "none"}
        assert result.json()["message"]["usage"]["steps"] == 2


def test_at_the_limit_the_answer_is_429_with_usage_and_nothing_changes(chat: Harness) -> None:
    """A user with nothing left gets 429 token_limit_exceeded; no model call, no stored change."""
    chat.seed("alice", used=STARTER)
    before = chat.snapshot()

    result = chat.call(ask(requestId="req-limit"), user="alice")

    assert result.status_code == 429
    body = result.json()
    assert body["error"]["code"] == "token_limit_exceeded"
    assert body["usage"]["level"] == "exceeded"
    assert body["usage"]["tokens"]["remaining"] == 0
    assert body["error"]["details"] == [{"reason": "allowance_spent", "remaining": 0}]
    assert chat.model.requests == []
    assert chat.snapshot() == before


def test_near_the_limit_the_exact_count_decides_and_a_refusal_changes_nothing(
    chat: Harness,
) -> None:
    """When the local bound does not fit, the free count is asked; too little room is a 429."""
    near_the_limit(chat, left=100, counted=95)
    before = chat.snapshot()

    result = chat.call(ask(), user="alice")

    assert result.status_code == 429
    assert result.json()["error"]["details"] == [{"reason": "allowance_spent", "remaining": 100}]
    assert len(chat.model.count_requests) == 1
    assert chat.model.requests == []
    assert chat.snapshot() == before


def test_a_message_too_long_for_what_is_left_is_a_429_that_says_so(chat: Harness) -> None:
    """2,000 tokens left and a message that needs more: the 429 says a shorter one would fit."""
    near_the_limit(chat, left=2_000, counted=5_000)
    before = chat.snapshot()

    result = chat.call(ask("Please read this carefully. " * 400), user="alice")

    assert result.status_code == 429
    body = result.json()
    assert body["error"]["code"] == "token_limit_exceeded"
    assert body["error"]["details"] == [{"reason": "message_too_long", "remaining": 2_000}]
    assert body["usage"]["tokens"]["remaining"] == 2_000
    assert len(chat.model.count_requests) == 1
    assert chat.model.requests == []
    assert chat.snapshot() == before


def test_near_the_limit_max_tokens_is_capped_and_a_cut_reply_says_truncated(
    chat: Harness,
) -> None:
    """100 tokens left, 30 of input: max_tokens becomes 70, the reply is cut there, truncated."""
    near_the_limit(chat, left=100, counted=30)
    chat.model.then(text_reply("A very long answer " * 50, input_tokens=30, output_tokens=500))

    result = chat.call(ask(), user="alice")

    assert result.status_code == 200, result.body
    assert chat.model.requests[0]["max_tokens"] == 70
    message = result.json()["message"]
    assert (message["truncated"], message["stopReason"]) == (True, "max_tokens")
    assert message["usage"]["totalTokens"] == 100
    assert chat.used("alice") == STARTER
    assert result.json()["usage"]["level"] == "exceeded"


def test_a_reply_cut_by_the_configured_max_tokens_is_not_called_truncated(
    chat: Harness,
) -> None:
    """Only the cap makes a reply 'truncated'; the operator's own max_tokens does not."""
    chat.seed("alice")
    chat.model.then(text_reply("Long " * 100, input_tokens=30, output_tokens=5_000))

    message = chat.call(ask(), user="alice").json()["message"]

    assert (message["stopReason"], message["truncated"]) == ("max_tokens", False)
    assert message["usage"]["outputTokens"] == 1024


def test_the_loop_stopped_by_the_limit_charges_the_done_steps_and_says_truncated(
    chat: Harness,
) -> None:
    """After a tool call, too little room for the next call ends the request truncated."""
    chat.seed("alice", used=STARTER - 500)
    # After the first call 60 tokens are left; the second call's 50 leave less than the
    # minimal output (CHAT_MIN_OUTPUT_TOKENS, 16).
    chat.model.count_tokens = lambda body: 50 if len(body["messages"]) > 1 else 30
    chat.model.then(tool_use_reply("get_my_usage", input_tokens=400, output_tokens=40))

    result = chat.call(ask(), user="alice")

    assert result.status_code == 200, result.body
    message = result.json()["message"]
    assert message["truncated"] is True
    assert message["usage"]["steps"] == 1
    assert chat.used("alice") == STARTER - 500 + 440
    assert len(chat.model.requests) == 1


FAILURES = [
    pytest.param(Failure(429), 503, id="429-rate-limited"),
    pytest.param(Failure(500), 503, id="500-server-error"),
    pytest.param(Failure(529), 503, id="529-overloaded"),
    pytest.param(Raise(timeout), 503, id="timeout"),
    pytest.param(Raise(connection_refused), 503, id="connection-error"),
    pytest.param(Failure(400), 502, id="400-refused"),
    pytest.param(Failure(401), 502, id="401-bad-key"),
]


@pytest.mark.parametrize(("failure", "status"), FAILURES)
def test_a_failing_first_call_releases_the_hold_and_leaves_only_its_failed_turn(
    chat: Harness, failure: Failure | Raise, status: int
) -> None:
    """502/503 with a JSON error; counter and ledger as before, the turn says failed, and the
    request id is free for a retry."""
    chat.seed("alice", used=123)
    chat.model.then(failure, text_reply("Second try.", input_tokens=50, output_tokens=5))
    before = chat.snapshot()

    result = chat.call(ask(requestId="req-fails"), user="alice")

    assert result.status_code == status
    error = result.json()["error"]
    assert error["code"] == ("upstream_unavailable" if status == 503 else "upstream_error")
    assert "fake" not in error["message"]
    after = chat.snapshot()
    assert {t: rows for t, rows in after.items() if t != "turns"} == {
        t: rows for t, rows in before.items() if t != "turns"
    }
    assert chat.used("alice") == 123
    turn = chat.store().get_turn("req-fails")
    assert turn is not None
    assert (turn.status.value, turn.usage.total_tokens) == ("failed", 0)
    retried = chat.call(ask(requestId="req-fails"), user="alice")
    assert retried.status_code == 200, retried.body
    assert chat.used("alice") == 123 + 55


@pytest.mark.parametrize(("failure", "status"), FAILURES)
def test_a_failure_after_a_completed_step_charges_that_step_only(
    chat: Harness, failure: Failure | Raise, status: int
) -> None:
    """The finished tool step stays charged, the failed call's hold is released; ledger entry
    and turn say failed."""
    chat.seed("alice")
    chat.model.then(tool_use_reply("get_my_usage", input_tokens=400, output_tokens=40), failure)

    result = chat.call(ask(requestId="req-half"), user="alice")

    assert result.status_code == status
    assert chat.used("alice") == 440
    entry = chat.store().get_ledger("req-half")
    assert entry is not None
    assert entry.status is LedgerStatus.FAILED
    assert (entry.usage.total_tokens, entry.usage.steps, entry.held_tokens) == (440, 1, 0)
    turn = chat.store().get_turn("req-half")
    assert turn is not None
    assert (turn.status.value, turn.usage.total_tokens) == ("failed", 440)


def test_a_retry_with_the_same_request_id_is_charged_once_and_answers_the_same(
    chat: Harness,
) -> None:
    """The second POST with the same requestId replays the stored reply; no model call."""
    chat.seed("alice")
    chat.model.then(text_reply("Only once.", input_tokens=50, output_tokens=5))

    first = chat.call(ask(requestId="req-dup"), user="alice")
    second = chat.call(ask(requestId="req-dup"), user="alice")

    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["message"] == first.json()["message"]
    assert second.body == first.body
    assert len(chat.model.requests) == 1
    assert chat.used("alice") == 55
    assert second.json()["usage"]["tokens"]["used"] == 55
    [first_line, second_line] = [json.loads(line) for line in first.logs + second.logs]
    assert (first_line["event"], second_line["event"]) == ("chat.completed", "chat.replayed")


def test_a_replayed_tool_loop_cut_by_the_cap_answers_the_same_body(chat: Harness) -> None:
    """Joined texts, cache tokens, cost, stop reason and truncated all come back unchanged."""
    near_the_limit(chat, left=1_200, counted=30)
    chat.model.then(
        tool_use_reply("get_my_usage", input_tokens=400, output_tokens=40, cache_write_1h=100),
        text_reply("Ünïcode <b>answer</b> " * 40, input_tokens=30, output_tokens=900),
    )

    first = chat.call(ask(requestId="req-cut"), user="alice")
    second = chat.call(ask(requestId="req-cut"), user="alice")

    assert (first.status_code, second.status_code) == (200, 200), first.body
    message = first.json()["message"]
    assert (message["truncated"], message["stopReason"], message["usage"]["steps"]) == (
        True,
        "max_tokens",
        2,
    )
    assert second.body == first.body
    assert len(chat.model.requests) == 2


def test_a_request_id_still_running_is_answered_409(chat: Harness) -> None:
    """A retry while the original is in flight does not run a second time."""
    chat.seed("alice")
    charge(chat.store(), "alice", "req-busy", 100, NOW, settled=False)
    before = chat.snapshot()

    result = chat.call(ask(requestId="req-busy"), user="alice")

    assert result.status_code == 409
    assert chat.model.requests == []
    assert chat.snapshot() == before


def test_a_request_id_of_another_user_is_refused_without_leaking_its_reply(
    chat: Harness,
) -> None:
    """Bob cannot replay (or block) with Alice's requestId: 400, no reply, nothing charged."""
    chat.seed("alice")
    chat.seed("bob")
    chat.model.then(text_reply("Alice's secret answer."))
    assert chat.call(ask(requestId="req-shared"), user="alice").status_code == 200
    before = chat.snapshot()

    result = chat.call(ask(requestId="req-shared"), user="bob")

    assert result.status_code == 400
    assert "secret" not in result.body.decode()
    assert chat.snapshot() == before


def test_without_a_jwt_the_answer_is_401_and_nothing_is_stored(chat: Harness) -> None:
    """No x-appwrite-user-jwt: unauthenticated, even with a user id header."""
    before = chat.snapshot()

    result = chat.call(ask(), headers={"x-appwrite-user-id": "alice"})

    assert result.status_code == 401
    assert result.json()["error"]["code"] == "unauthenticated"
    assert chat.snapshot() == before
    assert chat.accounts.calls == 0


def test_an_invalid_jwt_is_401(chat: Harness) -> None:
    """Appwrite's 401 for the JWT becomes unauthenticated."""
    before = chat.snapshot()

    result = chat.call(ask(), headers={"x-appwrite-user-jwt": "eyJforged"})

    assert result.status_code == 401
    assert chat.snapshot() == before


def test_a_forged_user_id_header_is_403(chat: Harness) -> None:
    """A user-id header naming someone other than the JWT's user is forbidden."""
    chat.seed("victim", used=7)
    before = chat.snapshot()
    jwt = chat.jwt("attacker")

    result = chat.call(ask(), headers={"x-appwrite-user-jwt": jwt, "x-appwrite-user-id": "victim"})

    assert result.status_code == 403
    assert result.json()["error"]["code"] == "forbidden"
    assert chat.snapshot() == before
    assert chat.model.requests == []


def test_an_identity_outage_is_503_not_401(chat: Harness) -> None:
    """When Appwrite cannot answer, the caller is told to retry rather than to sign in."""
    chat.accounts.failing_status = 500

    result = chat.call(ask(), user="alice")

    assert result.status_code == 503


def test_a_verified_jwt_is_reused_within_the_cache_bound(chat: Harness) -> None:
    """Warm executions with the same JWT cost one Account API call, not one each."""
    chat.seed("alice")
    chat.model.then(text_reply("One."), text_reply("Two."))

    chat.call(ask(), user="alice")
    chat.call(ask(), user="alice")

    assert chat.accounts.calls == 1


def test_a_first_time_user_gets_a_demo_account(chat: Harness) -> None:
    """First touch creates the Demo row (30 tokens), which cannot afford a call: 429."""
    result = chat.call(ask(), user="newcomer")

    assert result.status_code == 429
    assert result.json()["usage"]["plan"] == "demo"
    account = chat.store().get_account("newcomer")
    assert account is not None
    assert account.current_tokens_used == 0


def _messages(count: int) -> list[dict[str, str]]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": f"turn {i}"} for i in range(count - 1)] + [
        {"role": "user", "content": "last"}
    ]


BAD_BODIES = [
    pytest.param(b"{", 400, id="truncated-json"),
    pytest.param(b"not json", 400, id="not-json"),
    pytest.param(b"", 400, id="empty"),
    pytest.param(b"null", 400, id="null"),
    pytest.param(b"[]", 400, id="array"),
    pytest.param(b'{"messages": "hi"}', 400, id="messages-not-a-list"),
    pytest.param(b'{"messages": []}', 400, id="no-messages"),
    pytest.param(b'{"messages": [{"role": "system", "content": "x"}]}', 400, id="bad-role"),
    pytest.param(b'{"messages": [{"role": "user", "content": 5}]}', 400, id="content-number"),
    pytest.param(b'{"messages": [{"role": "user", "content": "  \\n "}]}', 400, id="blank"),
    pytest.param(b'{"messages": [{"role": "user"}]}', 400, id="no-content"),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}',
        400,
        id="last-from-assistant",
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "a"}], "model": "x"}', 400, id="extra-field"
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "a"}], "requestId": "a b"}',
        400,
        id="request-id-pattern",
    ),
    pytest.param(json.dumps(ask(requestId="x" * 37)).encode(), 400, id="request-id-too-long"),
    pytest.param(b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, id="non-utf8"),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, id="lone-surrogate"
    ),
    pytest.param(json.dumps(ask("x" * 300_000)).encode(), 413, id="body-too-large"),
    pytest.param(json.dumps({"messages": _messages(51)}).encode(), 413, id="too-many-messages"),
    pytest.param(json.dumps(ask("y" * 20_001)).encode(), 413, id="message-too-long"),
]


@pytest.mark.parametrize(("raw", "status"), BAD_BODIES)
def test_bad_bodies_get_a_json_4xx_and_change_nothing(
    chat: Harness, raw: bytes, status: int
) -> None:
    """Malformed, mistyped, oversized or undecodable bodies: clear 4xx, no call, no state."""
    chat.seed("alice")
    before = chat.snapshot()

    result = chat.call(raw, user="alice")

    assert result.status_code == status, result.body
    error = result.json()["error"]
    assert error["code"] == ("payload_too_large" if status == 413 else "invalid_request")
    assert chat.model.requests == []
    assert chat.snapshot() == before


def test_validation_details_name_the_field_without_echoing_the_input(chat: Harness) -> None:
    """details carry loc and msg; the rejected value never comes back."""
    chat.seed("alice")
    raw = b'{"messages": [{"role": "SECRET-ROLE-VALUE", "content": "x"}]}'

    error = chat.call(raw, user="alice").json()["error"]

    assert error["details"] == [
        {"loc": "messages.0.role", "msg": "Input should be 'user' or 'assistant'"}
    ]
    assert "SECRET-ROLE-VALUE" not in json.dumps(error)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_methods_other_than_post_are_400(chat: Harness, method: str) -> None:
    """Only POST runs a chat; anything else is a JSON invalid_request, never a 5xx."""
    chat.seed("alice")
    before = chat.snapshot()

    result = chat.call(ask(), user="alice", method=method)

    assert result.status_code == 400
    assert chat.snapshot() == before


def test_log_lines_carry_ids_and_counts_but_never_the_conversation(chat: Harness) -> None:
    """One structured line per outcome, without prompt or reply text."""
    chat.seed("alice")
    chat.model.then(text_reply("PRIVATE-REPLY", input_tokens=40, output_tokens=2))

    result = chat.call(ask("PRIVATE-PROMPT", requestId="req-log"), user="alice")

    [line] = [json.loads(log) for log in result.logs]
    assert line["event"] == "chat.completed"
    assert (line["userId"], line["requestId"], line["totalTokens"]) == ("alice", "req-log", 42)
    assert "PRIVATE" not in " ".join(result.logs + result.errors)
    assert chat.jwt("alice") not in " ".join(result.logs + result.errors)


def test_the_ledger_reconciles_with_the_counter_after_every_outcome(chat: Harness) -> None:
    """Settled, failed-after-a-step and refused requests leave ledger total == counter."""
    chat.seed("alice")
    chat.model.then(
        text_reply("Fine.", input_tokens=60, output_tokens=9),
        tool_use_reply("get_my_usage", input_tokens=400, output_tokens=40),
        text_reply("Done.", input_tokens=500, output_tokens=7, cache_read=20),
        tool_use_reply("get_my_usage", input_tokens=410, output_tokens=41),
        Failure(529),
        Failure(500),
    )

    statuses = [chat.call(ask(), user="alice").status_code for _ in range(4)]

    assert statuses == [200, 200, 503, 503]
    account = chat.store().get_account("alice")
    assert account is not None
    assert account.current_tokens_used == 69 + 440 + 527 + 451
    assert chat.store().ledger_total("alice", account.period_start) == (account.current_tokens_used)


_json_values = json_values()
_messages_like = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", ""]), "content": _json_values}
    ),
    max_size=4,
)
_bodies = st.one_of(
    st.binary(max_size=200),
    _json_values.map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries(
        {"messages": _messages_like},
        optional={"requestId": st.text(max_size=40), "extra": _json_values},
    ).map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries(
        {
            "messages": st.lists(
                st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=30)}),
                min_size=1,
                max_size=3,
            )
        },
        optional={"requestId": st.from_regex(r"\A[A-Za-z0-9._-]{1,36}\Z")},
    ).map(lambda value: json.dumps(value).encode()),
)


def test_any_body_gets_a_2xx_or_4xx_and_never_a_5xx(tmp_path: Path) -> None:
    """Fuzzed bytes and JSON through main: the answer is JSON and never a server error."""
    model = FakeAnthropic(default=text_reply("ok", input_tokens=30, output_tokens=2))
    with running("chat", tmp_path / "fuzz.sqlite3", model=model) as chat:
        chat.seed("alice", plan="business")

        @settings(max_examples=120, deadline=None, database=None)
        @given(raw=_bodies, method=st.sampled_from(["POST", "POST", "POST", "GET"]))
        def check(raw: bytes, method: str) -> None:
            result = chat.call(raw, user="alice", method=method)
            assert result.status_code < 500, (raw, result.body, result.errors)
            body = result.json()
            assert isinstance(body, dict)
            if result.status_code >= 400:
                assert body["error"]["code"]

        check()
