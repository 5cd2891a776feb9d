"""Many chat requests of one user in flight at once through the local runtime: the hard cap holds
and every token charged is a token some answered request reports."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from metering.plans import load_default_plans
from metering.service import get_or_create_account

from localruntime.server import Runtime
from localruntime.sqlite_store import SQLiteStore
from tests.support.runtime import AppwriteHttp, project_functions, running

IN_FLIGHT = 40
# Each reservation holds the input bound plus CHAT_MAX_TOKENS (1024): a handful fit at once, and
# the 40 replies (about 300 tokens each) would need more than the whole allowance.
LIMIT = 6_000
QUESTION = "Tell me something about budgeting for a small household, in a few sentences. " * 5


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    # The cap is on tokens here: every one of the 40 may be in flight at once.
    caps = {"CHAT_MAX_TURNS_IN_FLIGHT": "0", "CHAT_MAX_REQUESTS_PER_MINUTE": "0"}
    with running(
        tmp_path_factory.mktemp("concurrency"), functions=project_functions(), env=caps, warm=True
    ) as started:
        yield started


def test_forty_chats_in_flight_never_pass_the_limit_and_charge_what_they_report(
    runtime: Runtime,
) -> None:
    client = AppwriteHttp(runtime.base_url)
    user_id = client.sign_up_and_log_in("many@example.test")
    store = SQLiteStore(str(runtime.metering_path))
    get_or_create_account(store, load_default_plans(), user_id, datetime.now(UTC))
    store.update_account(user_id, {"plan": "starter", "max_tokens_per_month": LIMIT})
    cookie = client.http.cookies["a_session_local"]
    start = threading.Barrier(IN_FLIGHT)

    def chat(index: int) -> dict[str, Any]:
        body = {"messages": [{"role": "user", "content": f"{QUESTION} ({index})"}]}
        start.wait()
        response = requests.post(
            f"{runtime.base_url}/v1/functions/chat/executions",
            json={"body": json.dumps(body), "async": False, "path": "/", "method": "POST"},
            headers={"X-Appwrite-Project": "local", "Cookie": f"a_session_local={cookie}"},
            timeout=120,
        )
        assert response.status_code == 201, response.text
        execution: dict[str, Any] = response.json()
        return execution

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        executions = list(pool.map(chat, range(IN_FLIGHT)))

    statuses = [execution["responseStatusCode"] for execution in executions]
    bodies = [json.loads(execution["responseBody"]) for execution in executions]
    answered = [body for status, body in zip(statuses, bodies, strict=True) if status == 200]
    assert set(statuses) == {200, 429}, statuses
    for status, body in zip(statuses, bodies, strict=True):
        if status == 429:
            assert body["error"]["code"] == "token_limit_exceeded"
    account = store.get_account(user_id)
    assert account is not None
    charged = sum(body["message"]["usage"]["totalTokens"] for body in answered)
    assert account.current_tokens_used == charged
    assert account.current_tokens_used <= LIMIT
