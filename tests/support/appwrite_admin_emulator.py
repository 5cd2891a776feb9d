"""The emulated Appwrite with what the operator's commands read beyond the tables: the server's
version (``GET /v1/health/version``, public), the databases' listing, the functions with their
scopes and variables, and the runtimes the server offers. Column documents carry ``encrypt``,
as the real server's do (its string column model defaults it to false)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import responses
from requests import PreparedRequest

from tests.support.appwrite_emulator import ApiError, AppwriteEmulator, Call, Response
from tools.schema import Schema, load_schema

# What Appwrite Cloud's line answers; the doctor's tests set others.
SUPPORTED_VERSION = "1.9.1"
STRING_TYPES = frozenset({"string", "varchar", "text", "mediumtext", "longtext"})


@dataclass
class EmulatedFunction:
    """A function as ``GET /v1/functions/{id}`` answers it, with its variables."""

    id: str
    runtime: str = "python-3.12"
    execute: list[str] = field(default_factory=list)
    scopes: list[str] = field(default_factory=list)
    schedule: str = ""
    timeout: int = 15
    entrypoint: str = "src/main.py"
    commands: str = "pip install -r requirements.txt"
    variables: dict[str, str] = field(default_factory=dict)

    def document(self, now: str) -> dict[str, Any]:
        return {
            "$id": self.id,
            "$createdAt": now,
            "$updatedAt": now,
            "execute": self.execute,
            "name": self.id,
            "description": "",
            "enabled": True,
            "live": True,
            "logging": True,
            "runtime": self.runtime,
            "deploymentRetention": 0,
            "deploymentId": "",
            "deploymentCreatedAt": "",
            "latestDeploymentId": "",
            "latestDeploymentCreatedAt": "",
            "latestDeploymentStatus": "",
            "scopes": self.scopes,
            "vars": self.variable_documents(now),
            "events": [],
            "schedule": self.schedule,
            "timeout": self.timeout,
            "entrypoint": self.entrypoint,
            "commands": self.commands,
            "version": "v5",
            "installationId": "",
            "providerRepositoryId": "",
            "providerBranch": "",
            "providerRootDirectory": "",
            "providerSilentMode": False,
            "providerBranches": [],
            "providerPaths": [],
            "buildSpecification": "s-1vcpu-512mb",
            "runtimeSpecification": "s-1vcpu-512mb",
            "emailEnabled": False,
        }

    def variable_documents(self, now: str) -> list[dict[str, Any]]:
        # Secret variables' values are never answered; these are all secret, as keys should be.
        return [
            {
                "$id": f"var_{key.lower()}",
                "$createdAt": now,
                "$updatedAt": now,
                "key": key,
                "description": "",
                "value": "",
                "secret": True,
                "resourceType": "function",
                "resourceId": self.id,
            }
            for key in sorted(self.variables)
        ]


class AppwriteAdminEmulator(AppwriteEmulator):
    """``AppwriteEmulator`` plus the routes the operator's commands read."""

    def __init__(
        self, schema: Schema | None = None, *, version: str = SUPPORTED_VERSION, **options: Any
    ) -> None:
        super().__init__(schema, **options)
        self.version = version
        self.functions: dict[str, EmulatedFunction] = {}
        self.runtimes: list[str] = ["python-3.12", "node-22"]

    def deploy(
        self, document: Mapping[str, Any], variables: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        """Create the functions of an ``appwrite.json`` document as a push would, with the
        given variables per function id."""
        for entry in document.get("functions", []):
            function_id = str(entry["$id"])
            self.functions[function_id] = EmulatedFunction(
                id=function_id,
                runtime=str(entry.get("runtime", "")),
                execute=list(entry.get("execute", [])),
                scopes=list(entry.get("scopes", [])),
                schedule=str(entry.get("schedule", "")),
                timeout=int(entry.get("timeout", 15)),
                entrypoint=str(entry.get("entrypoint", "")),
                commands=str(entry.get("commands", "")),
                variables=dict((variables or {}).get(function_id, {})),
            )

    @contextmanager
    def running(self, *fakes: Any) -> Iterator[AppwriteAdminEmulator]:
        """Route every request to ``endpoint`` here, and those of ``fakes`` (objects with a
        ``register(mock)``, such as a fake Stripe) to them, while the block runs."""
        mock = responses.RequestsMock(assert_all_requests_are_fired=False)
        pattern = re.compile(re.escape(self.endpoint) + r"(/.*)?$")
        for method in (responses.GET, responses.POST, responses.PATCH, responses.PUT):
            mock.add_callback(method, pattern, callback=self.handle)
        mock.add_callback(responses.DELETE, pattern, callback=self.handle)
        for fake in fakes:
            fake.register(mock)
        with mock:
            yield self

    def handle(self, request: PreparedRequest) -> Response:
        method = (request.method or "GET").upper()
        path = unquote(urlsplit(request.url or "").path)[len(self._base_path) :]
        headers = {key.lower(): str(value) for key, value in request.headers.items()}
        try:
            if path == "/health/version" and method == "GET":
                # Public: the CLI's `appwrite client --endpoint` asks it with no key.
                self.calls.append(Call(method, path))
                return self._json(200, {"version": self.version})
            if path.startswith("/functions") and method == "GET":
                self.calls.append(Call(method, path))
                self._authorize(headers)
                return self._json(200, self._functions(path))
            if path == "/tablesdb" and method == "GET":
                self.calls.append(Call(method, path))
                self._authorize(headers)
                databases = [database.document() for database in self.databases.values()]
                return self._json(200, {"total": len(databases), "databases": databases})
        except ApiError as error:
            body = {
                "message": error.message,
                "code": error.status,
                "type": error.error_type,
                "version": self.version,
            }
            return self._json(error.status, body)
        status, response_headers, body = super().handle(request)
        return status, response_headers, _with_encrypt(body)

    def _functions(self, path: str) -> dict[str, Any]:
        parts = [part for part in path.split("/") if part][1:]
        now = self._now()
        if not parts:
            documents = [function.document(now) for function in self.functions.values()]
            return {"total": len(documents), "functions": documents}
        if parts == ["runtimes"]:
            runtimes = [_runtime(key) for key in self.runtimes]
            return {"total": len(runtimes), "runtimes": runtimes}
        function = self.functions.get(parts[0])
        if function is None:
            raise ApiError(404, "function_not_found", "Function with the requested ID not found.")
        if parts[1:] == []:
            return function.document(now)
        if parts[1:] == ["variables"]:
            documents = function.variable_documents(now)
            return {"total": len(documents), "variables": documents}
        raise ApiError(404, "general_route_not_found", "The requested route was not found.")


def _runtime(key: str) -> dict[str, Any]:
    name, _, version = key.partition("-")
    return {
        "$id": key,
        "key": name,
        "name": name.capitalize(),
        "version": version,
        "base": f"openruntimes/{name}:v5-{version}",
        "image": f"openruntimes/{name}:v5-{version}",
        "logo": f"{name}.png",
        "supports": ["amd64"],
    }


def _with_encrypt(body: str) -> str:
    """The body with ``encrypt: false`` on every string column document that lacks it."""
    if '"type"' not in body:
        return body
    try:
        parsed = json.loads(body)
    except json.JSONDecodeError:
        return body
    return json.dumps(_mark(parsed))


def _mark(value: Any) -> Any:
    if isinstance(value, list):
        return [_mark(item) for item in value]
    if not isinstance(value, dict):
        return value
    marked = {key: _mark(item) for key, item in value.items()}
    is_column = "key" in marked and "status" in marked and "columns" not in marked
    if is_column and marked.get("type") in STRING_TYPES:
        marked.setdefault("encrypt", False)
    return marked


@contextmanager
def emulated_admin_appwrite(
    schema: Schema | None = None, **options: Any
) -> Iterator[AppwriteAdminEmulator]:
    """An admin emulator with the repository's schema applied, routed while the block runs."""
    emulator = AppwriteAdminEmulator(schema or load_schema(), **options)
    with emulator.running():
        yield emulator


def remote_environ(emulator: AppwriteEmulator, **extra: str) -> dict[str, str]:
    """The environment an operator sets to point the commands at ``emulator``'s project."""
    return {
        "APPWRITE_ENDPOINT": emulator.endpoint,
        "APPWRITE_PROJECT_ID": emulator.project_id,
        "APPWRITE_API_KEY": emulator.api_key,
        **extra,
    }
