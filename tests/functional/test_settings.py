"""Every setting is declared once, and each declaration names exactly the readers that read it."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from dotenv import dotenv_values
from metering import settings as declared
from metering.config import EnvReader
from metering.settings import FUNCTIONS, LOCAL_RUNTIME, MIGRATE, Setting

from localruntime import settings as runtime
from localruntime.loader import bootstrap_of, load_function
from localruntime.settings import RuntimeSettings
from tools.settings_table import all_settings

ROOT = Path(__file__).resolve().parents[2]
APPWRITE = {
    "APPWRITE_FUNCTION_API_ENDPOINT": "http://127.0.0.1:9/v1",
    "APPWRITE_FUNCTION_PROJECT_ID": "settings-test",
}
# What each function needs to build at all, besides Appwrite's own variables.
REQUIRED = {
    "chat": {"ANTHROPIC_API_KEY": "sk-ant-settings-test"},
    "usage": {},
    "stripe-webhook": {"STRIPE_WEBHOOK_SECRET": "whsec_settings_test"},
    "monthly-reset-cron": {},
    "billing": {"STRIPE_SECRET_KEY": "sk_test_settings", "BILLING_RETURN_URL": "https://a.test/"},
}
# EnvReader's methods that take a variable's name rather than its declaration.
BY_NAME = {"text", "optional", "secret", "integer", "number", "choice", "flag"}


class Recording(Mapping[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.looked_up: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.looked_up.add(name)
        return self.values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def names_used_by(reader: str) -> set[str]:
    return {setting.name for setting in all_settings() if reader in setting.used_by}


def test_every_name_is_declared_once_under_its_own_name() -> None:
    """One declaration per variable, bound to a module attribute of the same name."""
    names = [setting.name for setting in all_settings()]
    assert len(names) == len(set(names))
    for module in (declared, runtime):
        for setting in module.DECLARED:
            assert getattr(module, setting.name) is setting


def test_the_readers_are_the_functions_of_appwrite_json_the_migration_and_the_runtime() -> None:
    document = json.loads((ROOT / "appwrite.json").read_text(encoding="utf-8"))
    assert {entry["$id"] for entry in document["functions"]} == set(FUNCTIONS)
    readers = {reader for setting in all_settings() for reader in setting.used_by}
    assert readers == {*FUNCTIONS, MIGRATE, LOCAL_RUNTIME}


def test_the_local_runtime_declares_only_what_it_alone_reads() -> None:
    """Its own declarations are its own; the functions' it reads are declared with theirs."""
    assert all(setting.used_by == (LOCAL_RUNTIME,) for setting in runtime.DECLARED)


@pytest.mark.parametrize("function_id", FUNCTIONS)
def test_each_function_reads_exactly_the_settings_declared_for_it(function_id: str) -> None:
    """``used_by`` is what the function's wiring looks up, no more and no less."""
    load_function(function_id)
    environ = Recording({**APPWRITE, **REQUIRED[function_id]})

    bootstrap_of(function_id).build(environ)

    assert environ.looked_up == names_used_by(function_id)


def test_the_local_runtime_reads_exactly_the_settings_declared_for_it() -> None:
    environ = Recording({})

    RuntimeSettings.read(environ)

    assert environ.looked_up == names_used_by(LOCAL_RUNTIME)


def test_the_migration_reads_exactly_the_settings_declared_for_it() -> None:
    from tools.migrate import MigrateSettings

    environ = Recording({"APPWRITE_ENDPOINT": "http://a.test/v1", "APPWRITE_PROJECT_ID": "p"})

    with pytest.raises(Exception, match="APPWRITE_API_KEY"):
        MigrateSettings.read(EnvReader(environ))

    assert environ.looked_up == names_used_by(MIGRATE)


def _reads_by_name(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in BY_NAME
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "env"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def test_a_variable_read_by_its_name_is_declared() -> None:
    """No source reads a variable the declarations (and so the READMEs) do not know."""
    sources = [
        *ROOT.glob("functions/*/src/*.py"),
        *(ROOT / "shared" / "metering").rglob("*.py"),
        *(ROOT / "localruntime").glob("*.py"),
        *(ROOT / "tools").glob("*.py"),
    ]
    known = {setting.name for setting in all_settings()}
    unknown = [
        f"{path.relative_to(ROOT)}:{line} {name}"
        for path in sources
        for line, name in _reads_by_name(path)
        if name not in known
    ]
    assert unknown == []


def _env_example() -> dict[str, str]:
    values = dotenv_values(ROOT / ".env.example")
    return {name: value or "" for name, value in values.items()}


def test_every_name_in_env_example_is_declared_for_the_local_runtime() -> None:
    """.env.example lists the local runtime's settings: all of them, and nothing else."""
    assert set(_env_example()) == names_used_by(LOCAL_RUNTIME)


def test_env_example_shows_the_defaults() -> None:
    """Copied to .env unchanged, it configures exactly what an empty environment does."""
    assert RuntimeSettings.read(_env_example()) == RuntimeSettings.read({})


def _as_written(setting: Setting[Any]) -> str:
    if setting.kind == "flag":
        return "true" if setting.default else "false"
    if setting.kind == "number":
        return f"{setting.default:g}"
    return str(setting.default)


def test_env_example_shows_each_declared_plain_default() -> None:
    """Where a declaration has a plain default, .env.example writes that very value."""
    by_name = {setting.name: setting for setting in all_settings()}
    for name, value in _env_example().items():
        setting = by_name[name]
        if setting.kind in ("text", "integer", "number", "flag") and not setting.required:
            assert value == _as_written(setting), name
