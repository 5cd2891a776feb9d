"""The local runtime's life: settings, restarts over the same data, the sync time limit, the
schedule of the cron, and leaving the process environment as it found it."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from metering.errors import ConfigurationError
from metering.ports import AccountQuery

from localruntime.__main__ import banner
from localruntime.__main__ import main as cli_main
from localruntime.cron import CronExpression, Scheduler
from localruntime.functions import ExecutionRecord, FunctionSpec, Outcome
from localruntime.server import Runtime
from localruntime.settings import DEV_WEBHOOK_SECRET, RuntimeSettings
from localruntime.sqlite_store import SQLiteStore
from tests.support.runtime import ECHO_SOURCE, AppwriteHttp, Execution, running, write_function

# -- settings ----------------------------------------------------------------------------------


def test_settings_default_to_a_local_offline_setup() -> None:
    settings = RuntimeSettings.read({})
    assert (settings.host, settings.port, settings.data_dir) == ("127.0.0.1", 8000, Path("data"))
    assert settings.offline_model
    assert settings.stripe_webhook_secret.value == DEV_WEBHOOK_SECRET
    assert settings.sync_timeout_seconds == 30.0
    assert settings.cron_schedule is None


def test_every_settings_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigurationError) as raised:
        RuntimeSettings.read(
            {"PORT": "http", "CRON_SCHEDULE": "every hour", "EXECUTION_TIMEOUT_SECONDS": "0"}
        )
    message = raised.value.message
    assert "PORT" in message
    assert "CRON_SCHEDULE" in message
    assert "EXECUTION_TIMEOUT_SECONDS" in message


def test_secrets_do_not_show_in_the_settings_repr() -> None:
    settings = RuntimeSettings.read(
        {"ANTHROPIC_API_KEY": "sk-ant-secret", "STRIPE_SECRET_KEY": "sk_x"}
    )
    assert "sk-ant-secret" not in repr(settings)
    assert "sk_x" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ("offline-local-key", "http://127.0.0.1:8000/_offline/anthropic")),
        ({"ANTHROPIC_API_KEY": "sk-ant-1"}, ("sk-ant-1", None)),
        (
            {"ANTHROPIC_API_KEY": "sk-ant-1", "ANTHROPIC_BASE_URL": "https://proxy.test"},
            ("sk-ant-1", "https://proxy.test"),
        ),
    ],
    ids=["offline", "key", "key-and-base-url"],
)
def test_the_chat_gets_the_model_key_and_base_url(
    env: dict[str, str], expected: tuple[str, str | None]
) -> None:
    function_env = Runtime(RuntimeSettings.read(env), functions={}).function_environment()
    assert (function_env["ANTHROPIC_API_KEY"], function_env.get("ANTHROPIC_BASE_URL")) == expected


def test_the_cli_refuses_bad_settings(tmp_path: Path) -> None:
    assert cli_main(["--port", "70000", "--env-file", str(tmp_path / "missing.env")]) == 2


# -- restarts ----------------------------------------------------------------------------------


def test_demo_accounts_are_created_once_and_keep_later_changes(tmp_path: Path) -> None:
    with running(tmp_path, functions={}) as first:
        demos = {demo.email for demo in first.demo_accounts}
        assert "starter@local.test" in banner(first)
    store = SQLiteStore(str(tmp_path / "metering.sqlite3"))
    store.update_account("local-starter", {"plan": "pro", "max_tokens_per_month": 200_000})
    with running(tmp_path, functions={}) as second:
        assert {demo.email for demo in second.demo_accounts} == demos
        client = AppwriteHttp(second.base_url)
        assert client.log_in("starter@local.test", "local-demo-password").status_code == 201
    account = store.get_account("local-starter")
    assert account is not None
    assert (account.plan, account.max_tokens_per_month) == ("pro", 200_000)
    page = store.list_accounts(AccountQuery(), 100, None)
    assert len(page.items) == len(demos)


def test_a_session_survives_a_restart(tmp_path: Path) -> None:
    with running(tmp_path, functions={}) as first:
        client = AppwriteHttp(first.base_url)
        user_id = client.sign_up_and_log_in("keep@example.test")
        cookie = client.http.cookies["a_session_local"]
    with running(tmp_path, functions={}) as second:
        again = AppwriteHttp(second.base_url)
        again.http.cookies.set("a_session_local", cookie)
        assert again.call("GET", "/account").json()["$id"] == user_id


def test_the_runtime_never_writes_the_process_environment(tmp_path: Path) -> None:
    """Functions are configured with a mapping: the process environment stays as it was."""
    before = dict(os.environ)
    with running(tmp_path) as runtime:
        assert runtime.runner.main_of(runtime.specs["usage"])
        assert dict(os.environ) == before
    assert dict(os.environ) == before


def test_a_port_in_use_fails_the_start_and_changes_nothing(tmp_path: Path) -> None:
    with running(tmp_path / "first", functions={}) as first:
        taken = RuntimeSettings.read({"PORT": str(first.port), "DATA_DIR": str(tmp_path / "b")})
        environ = dict(os.environ)
        with pytest.raises(OSError, match=r"."):
            Runtime(taken, functions={}).start()
        assert dict(os.environ) == environ
        assert requests.get(first.base_url + "/config.json", timeout=30).status_code == 200


# -- the synchronous limit ---------------------------------------------------------------------


def test_an_execution_past_the_sync_limit_fails_with_408(tmp_path: Path) -> None:
    folder = write_function(tmp_path / "functions", "probe-slow", ECHO_SOURCE)
    functions = {"probe-slow": FunctionSpec("probe-slow", folder, ("any",))}
    env = {"EXECUTION_TIMEOUT_SECONDS": "0.3"}
    with running(tmp_path / "data", functions=functions, env=env) as runtime:
        client = AppwriteHttp(runtime.base_url)
        execution = Execution(client.execute("probe-slow", path="/?sleep=3").json())
        assert (execution["status"], execution.status_code) == ("failed", 408)
        domain = requests.get(runtime.base_url + "/functions/probe-slow/?sleep=3", timeout=30)
        assert domain.status_code == 408


# -- the schedule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "after", "due"),
    [
        ("0 * * * *", "2026-05-01T10:00", "2026-05-01T11:00"),
        ("0 * * * *", "2026-05-01T10:59:59", "2026-05-01T11:00"),
        ("*/15 * * * *", "2026-05-01T10:16", "2026-05-01T10:30"),
        ("5,35 2-4 * * *", "2026-05-01T04:40", "2026-05-02T02:05"),
        ("0 0 1 * *", "2026-12-15T00:00", "2027-01-01T00:00"),
        ("0 9 * * mon", "2026-05-01T00:00", "2026-05-04T09:00"),
        ("0 0 29 feb *", "2026-03-01T00:00", "2028-02-29T00:00"),
        ("0 0 13 * 5", "2026-05-01T01:00", "2026-05-08T00:00"),
        ("0 0 * * 7", "2026-05-01T00:00", "2026-05-03T00:00"),
    ],
    ids=["hourly", "hourly-edge", "step", "lists-ranges", "new-year", "weekday-name",
         "leap-day", "day-or-weekday", "sunday-as-7"],
)  # fmt: skip
def test_cron_expressions_find_the_next_minute(expression: str, after: str, due: str) -> None:
    utc = datetime.fromisoformat(after).replace(tzinfo=UTC)
    assert CronExpression.parse(expression).next_after(utc) == datetime.fromisoformat(due).replace(
        tzinfo=UTC
    )


@pytest.mark.parametrize(
    "expression", ["* * * *", "60 * * * *", "*/0 * * * *", "a * * * *", "5-1 * * * *"]
)
def test_malformed_cron_expressions_are_refused(expression: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        CronExpression.parse(expression)


def test_the_scheduler_runs_at_start_and_then_when_due() -> None:
    """With a clock that is always one minute before the next run, runs follow each other."""
    runs: list[int] = []
    third = threading.Event()

    def job() -> None:
        runs.append(len(runs))
        if len(runs) == 3:
            third.set()

    scheduler = Scheduler(
        CronExpression.parse("* * * * *"),
        job,
        clock=lambda: datetime(2026, 5, 1, 10, 0, 59, 999999, tzinfo=UTC),
    )
    scheduler.start()
    assert third.wait(timeout=30)
    scheduler.stop()
    assert runs[:3] == [0, 1, 2]


def test_the_cron_function_runs_at_start_with_the_schedule_trigger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_function(tmp_path / "functions", "monthly-reset-cron", ECHO_SOURCE)
    spec = FunctionSpec("monthly-reset-cron", folder, (), "0 * * * *")
    with running(tmp_path / "data", functions={spec.id: spec}) as runtime:
        assert runtime.cron_schedule == "0 * * * *"
        records: list[ExecutionRecord] = []
        ran = threading.Event()
        run = runtime.api.run

        def observed(record: ExecutionRecord) -> Outcome:
            outcome = run(record)
            records.append(record)
            ran.set()
            return outcome

        monkeypatch.setattr(runtime.api, "run", observed)
        runtime.start_cron()
        assert ran.wait(timeout=30), "the cron did not run at start"
        record = records[0]
        headers = dict(record.invocation.headers)
        assert (record.invocation.trigger, headers["x-appwrite-trigger"]) == (
            "schedule",
            "schedule",
        )
        assert (headers["x-appwrite-user-id"], headers["x-appwrite-user-jwt"]) == ("", "")
        assert record.outcome is not None
        assert record.outcome.status_code == 201
