"""`python -m tools.admin doctor` against the emulated Appwrite and a Stripe faked at HTTP: the
server's version, the schema and the CLI's push plan, the functions' scopes and variables, and
the webhook endpoint's events; one line per check and exit 1 on any problem."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from metering.adapters.stripe_events import parse_command
from metering.billing import Ignore
from metering.plans import load_default_plans

from localruntime.loader import bootstrap_of, load_function
from tests.support.appwrite_admin_emulator import AppwriteAdminEmulator, remote_environ
from tests.support.stripe_api import API, API_KEY
from tests.support.stripe_events import fixture_names, load_event
from tests.support.stripe_webhook_endpoints_fake import FakeWebhookEndpoints, endpoint_object
from tools import admin
from tools.admin_commands import doctor
from tools.schema import APPWRITE_JSON

REPOSITORY: dict[str, Any] = json.loads(APPWRITE_JSON.read_text(encoding="utf-8"))
WEBHOOK_URL = "https://stripe-webhook.example.appwrite.run/"
# What each function needs to start, with valid values (the Appwrite variables are set by it).
VALUES = {
    "ANTHROPIC_API_KEY": "sk-ant-doctor-test",
    "STRIPE_WEBHOOK_SECRET": "whsec_doctor_test",
    "STRIPE_SECRET_KEY": "sk_test_doctor",
    "BILLING_RETURN_URL": "https://app.example/",
}
APPWRITE_VARIABLES = {
    "APPWRITE_FUNCTION_API_ENDPOINT": "http://127.0.0.1:9/v1",
    "APPWRITE_FUNCTION_PROJECT_ID": "doctor-test",
}


def small_document() -> dict[str, Any]:
    """The repository's functions with one table that states what the server answers (a string
    column's `encrypt`), so that a freshly migrated project matches it exactly."""
    document = copy.deepcopy(REPOSITORY)
    document["tables"] = [
        {
            "$id": "accounts",
            "$permissions": [],
            "databaseId": "koffers_db",
            "name": "accounts",
            "enabled": True,
            "rowSecurity": False,
            "columns": [
                {"key": "userId", "type": "string", "size": 36, "required": True,
                 "array": False, "default": None, "encrypt": False},
                {"key": "used", "type": "integer", "required": False, "array": False,
                 "min": 0, "max": 2**63 - 1, "default": 0},
            ],
            "indexes": [
                {"key": "userId_unique", "type": "unique", "status": "available",
                 "columns": ["userId"], "orders": ["ASC"]},
            ],
        }
    ]  # fmt: skip
    return document


def variables_for(document: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {
        entry["$id"]: {name: VALUES[name] for name in doctor.required_variables(entry["$id"])}
        for entry in document["functions"]
    }


class Project:
    """A migrated, deployed project and a Stripe account, both faked at HTTP."""

    def __init__(self, tmp_path: Path, emulator: AppwriteAdminEmulator) -> None:
        self.emulator = emulator
        self.document = small_document()
        self.schema = tmp_path / "appwrite.json"
        self.schema.write_text(json.dumps(self.document))
        self.stripe = FakeWebhookEndpoints(
            endpoints=[endpoint_object(WEBHOOK_URL, doctor.WEBHOOK_EVENTS)]
        )
        self.environ = remote_environ(emulator, STRIPE_SECRET_KEY=API_KEY, STRIPE_API_BASE=API)

    def run(self, *args: str) -> tuple[int, list[str]]:
        out = io.StringIO()
        code = admin.main(
            [*args[:1], "--schema", str(self.schema), *args[1:]],
            environ=self.environ,
            out=out,
            err=out,
            sleep=lambda _: None,
        )
        return code, out.getvalue().splitlines()


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    emulator = AppwriteAdminEmulator(processing_polls=0)
    built = Project(tmp_path, emulator)
    with emulator.running(built.stripe):
        assert built.run("migrate")[0] == 0
        emulator.deploy(built.document, variables_for(built.document))
        yield built


def checks(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(("ok", "PROBLEM"))]


def problems(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("PROBLEM")]


def test_a_healthy_project_passes_every_check(project: Project) -> None:
    """Supported server, complete schema, nothing for the CLI to change, the functions as
    appwrite.json declares them with their variables, the endpoint sending every event."""
    code, lines = project.run("doctor")
    assert code == 0, "\n".join(lines)
    assert problems(lines) == []
    found = "\n".join(checks(lines))
    for expected in (
        "server: Appwrite 1.9.1: supported",
        "schema: every table, column and index",
        "appwrite push tables: would delete, recreate or change nothing",
        "runtimes: python-3.12 offered",
        "function chat: runtime, scopes and execute as in appwrite.json",
        "function billing: variables set (BILLING_RETURN_URL, STRIPE_SECRET_KEY)",
        f"stripe: endpoint {WEBHOOK_URL} sends every event the webhook handles",
    ):
        assert expected in found
    assert lines[-1] == "doctor: no problems"


@pytest.mark.parametrize(
    ("version", "verdict"),
    [
        ("1.8.0", "refused: serves a row's locking read from the document cache"),
        ("1.8.7", "refused: serves a row's locking read"),
        ("1.7.4", "refused: has no TablesDB API"),
        ("1.9.0", "supported"),
        ("2.5.1", "supported"),
    ],
    ids=["1.8.0", "1.8.7", "1.7", "1.9.0", "later"],
)
def test_the_server_version_is_classified(version: str, verdict: str) -> None:
    """The 1.8 line and older are refused with the reason; 1.9 and later are supported."""
    supported, line = doctor.classify(version)
    assert supported is verdict.startswith("supported")
    assert verdict in line


def test_an_unsafe_server_is_a_problem(project: Project) -> None:
    """A 1.8 server fails the doctor, naming the unsafe bounded increment."""
    project.emulator.version = "1.8.3"
    code, lines = project.run("doctor")
    assert code == 1
    assert problems(lines)[0].startswith("PROBLEM  server: Appwrite 1.8.3: refused")
    assert "hard cap" in problems(lines)[0]


def test_a_missing_column_and_a_lower_case_index_order_are_problems(project: Project) -> None:
    """The schema check names the column to create; the push check names the index the CLI
    would delete and recreate because its orders read `asc`."""
    table = project.emulator.table("accounts")
    del table.columns["used"]
    table.indexes["userId_unique"].orders = ["asc"]
    code, lines = project.run("doctor")
    assert code == 1
    text = "\n".join(lines)
    assert "create column accounts.used (integer)" in text
    assert "recreating index accounts.userId_unique: orders changed from asc to ASC" in text


def test_a_database_the_file_does_not_list_is_a_problem(project: Project) -> None:
    """`push tables --force` deletes every database appwrite.json does not list: said loudly."""
    project.emulator.databases["app_data"] = copy.copy(project.emulator.databases["koffers_db"])
    project.emulator.databases["app_data"].id = "app_data"
    code, lines = project.run("doctor")
    assert code == 1
    assert "deleting database app_data" in "\n".join(lines)


def test_function_settings_and_variables_are_checked(project: Project) -> None:
    """Scopes that differ, a required variable unset and a variable no function reads are
    problems; an optional one unset is said on the ok line."""
    chat = project.emulator.functions["chat"]
    chat.scopes = ["rows.read"]
    del project.emulator.functions["stripe-webhook"].variables["STRIPE_WEBHOOK_SECRET"]
    project.emulator.functions["usage"].variables["CHAT_MODLE"] = "x"
    code, lines = project.run("doctor")
    assert code == 1
    text = "\n".join(lines)
    assert "PROBLEM  function chat: settings differ" in text
    assert "STRIPE_WEBHOOK_SECRET is required and not set" in text
    assert "CHAT_MODLE is read by no function (a typo?)" in text
    assert "monthly-reset-cron: variables set (none) (STRIPE_SECRET_KEY unset" in text


def test_a_function_not_deployed_is_a_problem(project: Project) -> None:
    """A function of appwrite.json missing from the project is named."""
    del project.emulator.functions["billing"]
    code, lines = project.run("doctor")
    assert code == 1
    assert "PROBLEM  function billing: not deployed (run make deploy)" in lines


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        (
            [endpoint_object(WEBHOOK_URL, ["invoice.paid", "checkout.session.completed"])],
            "does not send 8 event(s)",
        ),
        ([endpoint_object(WEBHOOK_URL, ["*"])], None),
        ([endpoint_object(WEBHOOK_URL, ["*"], status="disabled")], "no enabled webhook endpoint"),
        ([], "no enabled webhook endpoint"),
    ],
    ids=["missing-events", "all-events", "disabled", "none"],
)
def test_the_webhook_endpoint_sends_every_event_the_webhook_handles(
    project: Project, endpoints: list[dict[str, Any]], expected: str | None
) -> None:
    """An enabled endpoint must send every handled event (or `*`); which are missing is said."""
    project.stripe.endpoints = endpoints
    code, lines = project.run("doctor")
    stripe_lines = [line for line in checks(lines) if " stripe:" in line]
    if expected is None:
        assert code == 0
        assert stripe_lines[0].startswith("ok")
    else:
        assert code == 1
        assert expected in stripe_lines[0]


def test_the_endpoint_named_is_the_one_checked_across_pages(project: Project) -> None:
    """--webhook-url picks one endpoint, found past the first page of the listing."""
    others = [endpoint_object(f"https://other{n}.example/", ["*"]) for n in range(120)]
    project.stripe.endpoints = [*others, endpoint_object(WEBHOOK_URL, ["invoice.paid"])]
    code, lines = project.run("doctor", "--webhook-url", WEBHOOK_URL)
    assert code == 1
    assert f"PROBLEM  stripe: endpoint {WEBHOOK_URL} does not send 9 event(s)" in lines
    assert len(project.stripe.pages) == 2


def test_a_refused_stripe_key_is_a_problem_line(project: Project) -> None:
    """Stripe's 401 is one problem line, not a traceback; the other checks still run."""
    project.environ["STRIPE_SECRET_KEY"] = "sk_test_wrong"
    code, lines = project.run("doctor")
    assert code == 1
    assert problems(lines) == [
        "PROBLEM  stripe: cannot list webhook endpoints: Invalid API Key provided"
    ]


def test_without_a_stripe_key_the_endpoint_is_not_checked(project: Project) -> None:
    """No STRIPE_SECRET_KEY: an ok line says the endpoint was not checked; Stripe is not asked."""
    del project.environ["STRIPE_SECRET_KEY"]
    code, lines = project.run("doctor")
    assert code == 0
    assert (
        "ok       stripe: STRIPE_SECRET_KEY not set, the webhook endpoint was not checked" in lines
    )
    assert project.stripe.pages == []


def test_the_doctor_reads_only(project: Project) -> None:
    """Whatever it finds, the doctor writes nothing to the project."""
    project.emulator.table("accounts").indexes["userId_unique"].orders = ["asc"]
    project.emulator.calls.clear()
    project.run("doctor")
    assert project.emulator.writes() == []


@pytest.mark.parametrize("name", fixture_names(), ids=fixture_names())
def test_the_required_events_are_those_the_webhook_acts_on(name: str) -> None:
    """An event type is required of the endpoint exactly when the webhook's adapter does
    something with it (every fixture type but the ignored ones)."""
    event = load_event(name)
    if event.get("object") != "event":
        assert event["type"] not in doctor.WEBHOOK_EVENTS
        return
    acted = not isinstance(parse_command(event, load_default_plans()), Ignore)
    assert (event["type"] in doctor.WEBHOOK_EVENTS) is acted


@pytest.mark.parametrize("function_id", [f["$id"] for f in REPOSITORY["functions"]])
def test_the_required_variables_are_exactly_what_each_function_needs_to_start(
    function_id: str,
) -> None:
    """Each function builds with the doctor's required variables and fails without any one."""
    load_function(function_id)
    required = doctor.required_variables(function_id)
    complete = {**APPWRITE_VARIABLES, **{name: VALUES[name] for name in required}}
    bootstrap_of(function_id).build(complete)
    for name in required:
        with pytest.raises(Exception, match=name):
            bootstrap_of(function_id).build({k: v for k, v in complete.items() if k != name})
