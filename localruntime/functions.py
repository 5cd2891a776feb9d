"""The functions the runtime serves and how one execution runs: Appwrite's headers, a cold start
per runtime, the synchronous time limit, and the execution object clients read."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from metering.ports import UsageStore

from . import loader
from .context import RuntimeContext, RuntimeRequest, RuntimeResult, execute
from .wire import Headers, timestamp

LOG_TAIL = 4000


@dataclass(frozen=True)
class FunctionSpec:
    id: str
    folder: Path
    execute: tuple[str, ...] = ("users",)
    schedule: str | None = None

    def allows(self, user_id: str | None) -> bool:
        """Appwrite's execute permission check for a caller (None: a guest)."""
        roles = {"any"} | ({"users", f"user:{user_id}"} if user_id else {"guests"})
        return bool(roles & set(self.execute))


def discover(root: Path, functions_dir: Path) -> dict[str, FunctionSpec]:
    """Every function ``appwrite.json`` declares (the one list of the functions) whose folder in
    ``functions_dir`` has a ``src/main.py``, with its settings from there."""
    manifest = root / "appwrite.json"
    if not manifest.is_file():
        return {}
    document = json.loads(manifest.read_text(encoding="utf-8"))
    specs: dict[str, FunctionSpec] = {}
    for entry in document.get("functions", []):
        if not isinstance(entry, dict) or not isinstance(entry.get("$id"), str):
            continue
        function_id: str = entry["$id"]
        # The loader imports a function from the folder named after its id.
        folder = functions_dir / function_id
        if not (folder / "src" / "main.py").is_file():
            continue
        execute = entry.get("execute", FunctionSpec.execute)
        schedule = entry.get("schedule") or None
        specs[function_id] = FunctionSpec(
            function_id, folder, tuple(str(role) for role in execute), schedule
        )
    return dict(sorted(specs.items()))


@dataclass(frozen=True)
class Invocation:
    """One execution as the function will see it (headers already final)."""

    execution_id: str
    function_id: str
    trigger: str
    method: str
    path: str  # with the query string
    headers: Headers
    body: bytes
    user_id: str | None = None


@dataclass(frozen=True)
class Outcome:
    status_code: int
    body: bytes
    headers: dict[str, str]
    logs: list[str]
    errors: list[str]
    duration: float
    timed_out: bool = False


def appwrite_headers(
    *, trigger: str, user_id: str, jwt: str, key: str, execution_id: str, client_ip: str
) -> Headers:
    """The headers Appwrite adds to every execution."""
    return [
        ("x-appwrite-trigger", trigger),
        ("x-appwrite-user-id", user_id),
        ("x-appwrite-user-jwt", jwt),
        ("x-appwrite-key", key),
        ("x-appwrite-execution-id", execution_id),
        ("x-appwrite-client-ip", client_ip),
        ("x-appwrite-country-code", ""),
        ("x-appwrite-continent-code", ""),
        ("x-appwrite-continent-eu", "false"),
    ]


def first_wins(headers: Headers) -> dict[str, str]:
    """Lower-case the keys; of duplicates the first one stays, as in the real runtime."""
    merged: dict[str, str] = {}
    for key, value in headers:
        merged.setdefault(key.lower(), value)
    return merged


class FunctionRunner:
    """Loads each function once (its cold start) and runs executions with the sync time limit."""

    def __init__(
        self,
        specs: Mapping[str, FunctionSpec],
        *,
        host: str,
        port: int,
        timeout: float,
        environ: Mapping[str, str] | None = None,
        store: UsageStore | None = None,
    ) -> None:
        self.specs = specs
        self._environ = dict(environ or {})
        self._store = store
        self._host = host
        self._port = port
        self._timeout = timeout
        self._mains: dict[str, Callable[[RuntimeContext], Any]] = {}
        self._load_lock = threading.Lock()
        self._function_locks: dict[str, threading.Lock] = {}

    def cold_reset(self) -> None:
        """Forget every loaded function: the next execution imports it afresh."""
        with self._load_lock:
            self._mains.clear()
            for function_id in self.specs:
                loader.unload_function(function_id)

    def main_of(self, spec: FunctionSpec) -> Callable[[RuntimeContext], Any]:
        # One lock per function: a slow cold start of one does not hold up the others.
        with self._load_lock:
            lock = self._function_locks.setdefault(spec.id, threading.Lock())
        with lock:
            main = self._mains.get(spec.id)
            if main is None:
                module = loader.load_function(spec.id, spec.folder.parent)
                if (spec.folder / "src" / "bootstrap.py").is_file():
                    overrides = {} if self._store is None else {"store": self._store}
                    loader.bootstrap_of(spec.id).configure(self._environ, **overrides)
                main = module.main
                self._mains[spec.id] = main
            return main

    def run(self, invocation: Invocation) -> Outcome:
        spec = self.specs[invocation.function_id]
        parts = urlsplit(invocation.path)
        request = RuntimeRequest(
            method=invocation.method,
            path=parts.path or "/",
            headers=first_wins(invocation.headers),
            body=invocation.body,
            query_string=parts.query,
            host=self._host,
            port=self._port,
        )
        context = RuntimeContext(req=request)
        started = time.monotonic()
        results: list[RuntimeResult] = []

        def work() -> None:
            try:
                results.append(execute(self.main_of(spec), context))
            except Exception as exc:  # noqa: BLE001 -- an import error is the function's crash
                context.error(f"{type(exc).__name__}: {exc}")

        worker = threading.Thread(target=work, name=f"exec-{invocation.execution_id}", daemon=True)
        worker.start()
        # Like Appwrite, stop waiting at the limit; the code itself may keep running.
        worker.join(self._timeout)
        duration = time.monotonic() - started
        if worker.is_alive():
            message = f"Synchronous function execution timed out after {self._timeout:g} seconds."
            return Outcome(408, b"", {}, list(context.logs), [message], duration, timed_out=True)
        if not results:
            return Outcome(500, b"", {}, context.logs, context.errors, duration)
        result = results[0]
        return Outcome(
            result.status_code, result.body, result.headers, result.logs, result.errors, duration
        )


@dataclass
class ExecutionRecord:
    """What ``GET /v1/functions/{id}/executions/{executionId}`` answers."""

    invocation: Invocation
    client_headers: Headers
    created_at: datetime
    updated_at: datetime
    status: str = "waiting"
    outcome: Outcome | None = None
    permissions: list[str] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        outcome = self.outcome
        invocation = self.invocation
        return {
            "$id": invocation.execution_id,
            "$createdAt": timestamp(self.created_at),
            "$updatedAt": timestamp(self.updated_at),
            "$permissions": self.permissions,
            "functionId": invocation.function_id,
            "resourceId": invocation.function_id,
            "resourceType": "functions",
            "deploymentId": "local",
            "trigger": invocation.trigger,
            "status": self.status,
            "requestMethod": invocation.method,
            "requestPath": invocation.path,
            "requestHeaders": [{"name": k, "value": v} for k, v in self.client_headers],
            "responseStatusCode": outcome.status_code if outcome else 0,
            "responseBody": outcome.body.decode("utf-8", "replace") if outcome else "",
            "responseHeaders": [
                {"name": k, "value": v} for k, v in (outcome.headers if outcome else {}).items()
            ],
            # Appwrite shows logs only to API keys; clients get empty strings. The console has them.
            "logs": "",
            "errors": "",
            "duration": round(outcome.duration, 4) if outcome else 0.0,
            "scheduledAt": None,
        }


class ExecutionLog:
    """The most recent executions, for the ``GET`` routes (memory only, bounded)."""

    def __init__(self, capacity: int = 1000) -> None:
        self._records: OrderedDict[str, ExecutionRecord] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def add(self, record: ExecutionRecord) -> None:
        with self._lock:
            self._records[record.invocation.execution_id] = record
            while len(self._records) > self._capacity:
                self._records.popitem(last=False)

    def get(self, execution_id: str) -> ExecutionRecord | None:
        with self._lock:
            return self._records.get(execution_id)

    def of_function(self, function_id: str) -> list[ExecutionRecord]:
        """Oldest first: what a function was sent, in order (the webhook's deliveries)."""
        with self._lock:
            return [r for r in self._records.values() if r.invocation.function_id == function_id]

    def of_user(self, function_id: str, user_id: str) -> list[ExecutionRecord]:
        with self._lock:
            return [
                r
                for r in self._records.values()
                if r.invocation.function_id == function_id and r.invocation.user_id == user_id
            ]


def console_lines(function_id: str, outcome: Outcome) -> list[str]:
    """The function's log and error lines for the console (the tail, as Appwrite keeps)."""
    lines = [f"[{function_id}] {line}" for line in outcome.logs]
    lines += [f"[{function_id}] ERROR {line}" for line in outcome.errors]
    text = "\n".join(lines)
    return text[-LOG_TAIL:].splitlines() if text else []
