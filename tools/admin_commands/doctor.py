"""Check that the target can run the functions safely: the server's version, the schema against
appwrite.json (and what `appwrite push tables` would change), the functions' scopes and
variables, and, with STRIPE_SECRET_KEY, the webhook endpoint's events. One line per check; exits
1 when any check found a problem."""

from __future__ import annotations

import argparse
import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metering import settings as declared
from metering.adapters.stripe_events import CHECKOUT_TYPES, PAID_INVOICE_TYPES
from metering.config import EnvReader
from metering.errors import ConfigurationError, MeteringError, StoreError

from tools import vendor
from tools.admin_commands.context import Context, RemoteSettings
from tools.schema import APPWRITE_JSON, Schema, parse_schema
from tools.schema_admin import (
    AppwriteSchemaAdmin,
    SchemaAdmin,
    SQLiteSchemaAdmin,
    cli_push_plan,
    missing_steps,
)

# The events the webhook acts on (metering.adapters.stripe_events `_command`); any other type is
# answered 200 and ignored, so an endpoint that does not send one of these loses its effect.
WEBHOOK_EVENTS: tuple[str, ...] = (
    *CHECKOUT_TYPES,
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    *PAID_INVOICE_TYPES,
    "invoice.payment_failed",
    "charge.refunded",
    "charge.dispute.closed",
)

# Variables a function refuses to start without beyond those declared required for every reader:
# billing cannot price or sell anything without the Stripe key the others can do without.
ALSO_REQUIRED: Mapping[str, tuple[str, ...]] = {"billing": ("STRIPE_SECRET_KEY",)}
# Missing, these change what a function does without stopping it: said, not counted as problems.
RECOMMENDED: Mapping[str, Mapping[str, str]] = {
    "stripe-webhook": {"STRIPE_SECRET_KEY": "events whose plan is only on the product fail"},
    "monthly-reset-cron": {"STRIPE_SECRET_KEY": "missed renewals are not looked up"},
}
APPWRITE_SETS = "set by Appwrite"


@dataclass(frozen=True)
class Release:
    """A line of server releases and what the functions can expect of it."""

    first: tuple[int, int]
    supported: bool
    why: str


# Ordered by first version; a server belongs to the last line whose first version it reaches.
RELEASES = (
    Release((0, 0), False, "has no TablesDB API (/v1/tablesdb arrived in 1.8.0)"),
    Release(
        (1, 8),
        False,
        "serves a row's locking read from the document cache, so increment_row_column checks "
        "its max against a stale value (and a NULL min drops the guard): the hard cap on tokens "
        "does not hold under concurrent requests",
    ),
    Release(
        (1, 9),
        True,
        "the line Appwrite Cloud runs, whose API (response format 2.5.x) the pinned SDKs speak",
    ),
)
VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


def classify(version: str) -> tuple[bool, str]:
    """Whether a server reporting ``version`` is supported, and why (for the check's line)."""
    match = VERSION.match(version.strip())
    if match is None:
        return False, f"server version {version!r} is not a version number"
    found = (int(match.group(1)), int(match.group(2)))
    release = [line for line in RELEASES if found >= line.first][-1]
    verdict = "supported" if release.supported else "refused"
    return release.supported, f"Appwrite {version}: {verdict}: {release.why}"


def required_variables(function_id: str) -> set[str]:
    """The variables without which ``function_id`` refuses to start."""
    declared_required = {
        setting.name
        for setting in declared.DECLARED
        if function_id in setting.used_by
        and setting.required
        and setting.shown_default != APPWRITE_SETS
    }
    return declared_required | set(ALSO_REQUIRED.get(function_id, ()))


def known_variables() -> set[str]:
    return {setting.name for setting in declared.DECLARED}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--schema",
        type=Path,
        default=APPWRITE_JSON,
        metavar="FILE",
        help="the appwrite.json to check against (default: the repository's)",
    )
    parser.add_argument(
        "--webhook-url",
        metavar="URL",
        help="the Stripe endpoint to check (default: every enabled endpoint must pass)",
    )


@dataclass
class Report:
    """Says each check's line; ``problems`` counts the failed ones."""

    context: Context
    problems: int = 0

    def ok(self, what: str) -> None:
        self._line(f"ok       {what}")

    def problem(self, what: str, details: Iterable[str] = ()) -> None:
        self.problems += 1
        self._line(f"PROBLEM  {what}")
        for detail in details:
            self._line(f"           - {detail}")

    def check(self, what: str, probe: Callable[[], None]) -> None:
        """Run one check; a failure to ask (refused key, unreachable server) is its problem."""
        try:
            probe()
        except MeteringError as error:
            self.problem(f"{what}: {error.message}")

    def _line(self, line: str) -> None:
        self.context.say(line)


def run(args: argparse.Namespace, context: Context) -> int:
    document = _document(args.schema)
    schema = parse_schema(document)
    report = Report(context)
    context.say(f"target: {context.where}")
    remote = context.remote
    if remote is None:
        _local_checks(report, context, schema)
    else:
        _remote_checks(report, remote, schema, document)
    _stripe_check(report, context.environ, args.webhook_url)
    verdict = f"{report.problems} problem(s)" if report.problems else "no problems"
    context.say(f"doctor: {verdict}")
    return 1 if report.problems else 0


def _document(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigurationError(f"{path} is not a JSON object")
    return loaded


# -- the local runtime ---------------------------------------------------------------------------


def _local_checks(report: Report, context: Context, schema: Schema) -> None:
    report.ok("server: the local runtime (make dev) has no Appwrite version to check")
    path = context.sqlite_path
    if not path.exists():
        report.problem(
            f"schema: no store at {path} yet (make dev or `python -m tools.admin migrate` makes it)"
        )
    else:
        report.check("schema", lambda: _schema_check(report, SQLiteSchemaAdmin(path), schema))
    expected = vendor.source_digests()
    for folder in vendor.function_folders():
        found = vendor.problems(folder, expected)
        if found:
            report.problem(
                f"function {folder.name}: its wheel is stale or missing (make vendor)", found
            )
        else:
            report.ok(f"function {folder.name}: vendored from shared/metering")


# -- an Appwrite project -------------------------------------------------------------------------


def _remote_checks(
    report: Report, remote: RemoteSettings, schema: Schema, document: Mapping[str, Any]
) -> None:
    from appwrite.client import Client
    from appwrite.services.functions import Functions
    from metering.adapters.appwrite_store import call

    client = Client()
    call("setting the Appwrite endpoint", lambda: client.set_endpoint(remote.endpoint))
    client.set_project(remote.project_id)
    client.set_key(remote.api_key.value)
    safe = False

    def version() -> None:
        nonlocal safe
        answer = call(
            "reading the server version",
            lambda: client.call("get", "/health/version", {"accept": "application/json"}),
        )
        safe, line = classify(str(answer.get("version", "")))
        if safe:
            report.ok(f"server: {line}")
        else:
            report.problem(f"server: {line}")

    report.check("server", version)
    admin = AppwriteSchemaAdmin.connect(remote.endpoint, remote.project_id, remote.api_key.value)
    report.check("schema", lambda: _schema_check(report, admin, schema))
    report.check("appwrite push tables", lambda: _push_check(report, admin, schema, document))
    functions = Functions(client)
    report.check("runtimes", lambda: _runtime_check(report, functions, document, call))
    for entry in document.get("functions", []):
        function_id = str(entry["$id"])
        report.check(
            f"function {function_id}",
            functools.partial(_function_check, report, functions, entry, call),
        )


def _schema_check(report: Report, admin: SchemaAdmin, schema: Schema) -> None:
    steps = missing_steps(schema, admin.existing(schema))
    counts = (
        f"{len(schema.tables)} tables, {sum(len(t.columns) for t in schema.tables)} columns, "
        f"{sum(len(t.indexes) for t in schema.tables)} indexes"
    )
    if steps:
        report.problem(
            f"schema: {len(steps)} missing of appwrite.json (run `python -m tools.admin migrate`)",
            [step.describe() for step in steps],
        )
    else:
        report.ok(f"schema: every table, column and index of appwrite.json exists ({counts})")


def _push_check(
    report: Report, admin: AppwriteSchemaAdmin, schema: Schema, document: Mapping[str, Any]
) -> None:
    remote = admin.remote_schema(database.id for database in schema.databases)
    changes = [change for change in cli_push_plan(document, remote) if change.action != "adding"]
    if not changes:
        report.ok("appwrite push tables: would delete, recreate or change nothing")
        return
    destructive = [change for change in changes if change.destructive]
    what = f"{len(destructive)} destructive of {len(changes)} change(s)"
    report.problem(
        f"appwrite push tables --force would make {what}",
        [change.describe().replace("\n", "; ") for change in changes],
    )


def _runtime_check(
    report: Report, functions: Any, document: Mapping[str, Any], call: Callable[..., Any]
) -> None:
    offered = {runtime.id for runtime in call("listing runtimes", functions.list_runtimes).runtimes}
    wanted = sorted({str(entry.get("runtime")) for entry in document.get("functions", [])})
    missing = [runtime for runtime in wanted if runtime not in offered]
    if missing:
        report.problem(
            f"runtimes: the server does not offer {', '.join(missing)} "
            "(self-hosted: add it to _APP_FUNCTIONS_RUNTIMES)"
        )
    else:
        report.ok(f"runtimes: {', '.join(wanted)} offered")


def _function_check(
    report: Report, functions: Any, entry: Mapping[str, Any], call: Callable[..., Any]
) -> None:
    from appwrite.exception import AppwriteException

    function_id = str(entry["$id"])
    try:
        found = functions.get(function_id)
    except AppwriteException as exc:
        if exc.code == 404:
            report.problem(f"function {function_id}: not deployed (run make deploy)")
            return
        raise StoreError(f"reading function {function_id} failed: {exc.code} {exc.type}") from exc
    differences = []
    for key in ("scopes", "execute"):
        remote_value, local_value = sorted(getattr(found, key)), sorted(entry.get(key, []))
        if remote_value != local_value:
            differences.append(f"{key} are {remote_value}, appwrite.json says {local_value}")
    if found.runtime != entry.get("runtime"):
        differences.append(f"runtime is {found.runtime}, appwrite.json says {entry.get('runtime')}")
    if differences:
        report.problem(f"function {function_id}: settings differ (run make deploy)", differences)
    else:
        report.ok(f"function {function_id}: runtime, scopes and execute as in appwrite.json")
    listed = call(
        f"listing variables of {function_id}", lambda: functions.list_variables(function_id)
    )
    _variables_check(report, function_id, {variable.key for variable in listed.variables})


def _variables_check(report: Report, function_id: str, names: set[str]) -> None:
    missing = sorted(required_variables(function_id) - names)
    unknown = sorted(names - known_variables())
    notes = [
        f"{name} unset: {effect}"
        for name, effect in RECOMMENDED.get(function_id, {}).items()
        if name not in names
    ]
    details = [f"{name} is required and not set" for name in missing]
    details += [f"{name} is read by no function (a typo?)" for name in unknown]
    if details:
        report.problem(f"function {function_id}: variables", details)
        return
    suffix = f" ({'; '.join(notes)})" if notes else ""
    report.ok(
        f"function {function_id}: variables set ({', '.join(sorted(names)) or 'none'}){suffix}"
    )


# -- Stripe --------------------------------------------------------------------------------------


def _stripe_check(report: Report, environ: Mapping[str, str], webhook_url: str | None) -> None:
    env = EnvReader(environ)
    key = env.read(declared.STRIPE_SECRET_KEY)
    base = env.read(declared.STRIPE_API_BASE)
    if not key:
        report.ok("stripe: STRIPE_SECRET_KEY not set, the webhook endpoint was not checked")
        return
    import stripe

    options: dict[str, Any] = {"max_network_retries": 0}
    if base:
        options["base_addresses"] = {"api": base}
    client = stripe.StripeClient(key.value, **options)
    try:
        endpoints = list(client.v1.webhook_endpoints.list(params={"limit": 100}).auto_paging_iter())
    except stripe.StripeError as error:
        report.problem(f"stripe: cannot list webhook endpoints: {error.user_message or error}")
        return
    _endpoint_check(report, [endpoint.to_dict() for endpoint in endpoints], webhook_url)


def _endpoint_check(
    report: Report, endpoints: Sequence[Mapping[str, Any]], webhook_url: str | None
) -> None:
    if webhook_url is not None:
        chosen = [
            e for e in endpoints if str(e.get("url", "")).rstrip("/") == webhook_url.rstrip("/")
        ]
        if not chosen:
            report.problem(f"stripe: no webhook endpoint at {webhook_url}")
            return
    else:
        chosen = [e for e in endpoints if e.get("status") == "enabled"]
        if not chosen:
            report.problem("stripe: no enabled webhook endpoint (see docs/stripe-setup.md)")
            return
    for endpoint in chosen:
        label = f"stripe: endpoint {endpoint.get('url')}"
        if endpoint.get("status") != "enabled":
            report.problem(f"{label} is {endpoint.get('status')}")
            continue
        enabled = set(endpoint.get("enabled_events") or [])
        missing = [] if "*" in enabled else [e for e in WEBHOOK_EVENTS if e not in enabled]
        if missing:
            report.problem(f"{label} does not send {len(missing)} event(s)", missing)
        else:
            report.ok(f"{label} sends every event the webhook handles ({len(WEBHOOK_EVENTS)})")
