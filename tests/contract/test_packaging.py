"""Each function deploys from its folder alone: packed as the CLI packs it, installed into a fresh
virtual environment, imported as open-runtimes imports it and run with a fake context."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.packaging import ROOT, function_config, pack, packed_names, unpack
from tools import vendor
from tools.deploy import install_cli

# Appwrite's runtime is python-3.12: use it when this machine has it.
PYENV_312 = Path("/root/.pyenv/versions/3.12.1/bin/python3.12")
INTERPRETER = str(PYENV_312) if PYENV_312.exists() else sys.executable

# open-runtimes keeps its own modules beside the function: bare imports of these names collide.
RUNTIME_MODULES = ("config", "server", "logger", "types_runtime")

DRIVER = """
import json, os, sys
sys.path.insert(0, os.getcwd())
from fake_context import RuntimeContext, RuntimeRequest, execute
from function.src.main import main

case = json.loads(sys.argv[1])
request = RuntimeRequest(method=case["method"], path=case.get("path", "/"),
                         headers=case["headers"], body=case["body"].encode())
result = execute(main, RuntimeContext(req=request))
print(json.dumps({"status": result.status_code, "body": result.body.decode(),
                  "modules": sorted(m for m in sys.modules if m.split(".")[0] in
                                    ("anthropic", "stripe", "appwrite", "pydantic"))}))
"""

# One request per function that needs no outside system: each is refused before any I/O.
CASES = {
    "chat": (
        {"method": "POST", "headers": {"content-type": "application/json"}, "body": "{}"},
        401,
    ),
    "usage": ({"method": "GET", "headers": {}, "body": ""}, 401),
    "stripe-webhook": ({"method": "POST", "headers": {}, "body": "{}"}, 400),
    "monthly-reset-cron": (
        {"method": "POST", "headers": {"x-appwrite-trigger": "http"}, "body": ""},
        403,
    ),
    "billing": ({"method": "GET", "path": "/plans", "headers": {}, "body": ""}, 401),
}

ENVIRONMENT = {
    "APPWRITE_FUNCTION_API_ENDPOINT": "http://127.0.0.1:9/v1",
    "APPWRITE_FUNCTION_PROJECT_ID": "packaging-test",
    "ANTHROPIC_API_KEY": "sk-test-packaging",
    "STRIPE_WEBHOOK_SECRET": "whsec_packaging_test",
    "STRIPE_SECRET_KEY": "sk_test_packaging",
    "BILLING_RETURN_URL": "http://127.0.0.1:9/",
    "PATH": "/usr/bin:/bin",
}


@pytest.mark.slow
@pytest.mark.parametrize("function_id", list(CASES), ids=list(CASES))
def test_function_deploys_from_its_folder_alone(function_id: str, tmp_path: Path) -> None:
    """The packed folder installs and runs with nothing from the repository beside it."""
    config = function_config(function_id)
    assert config["runtime"] == "python-3.12"
    names = unpack(pack(function_id), tmp_path / "function")
    assert "src/main.py" in names
    assert "requirements.txt" in names
    assert f"wheels/{vendor.WHEEL}" in names, "domain not vendored: run make vendor"
    assert not any("__pycache__" in name for name in names)

    for module in RUNTIME_MODULES:
        (tmp_path / f"{module}.py").write_text("raise ImportError('runtime module shadowed')\n")
    shutil.copy(ROOT / "localruntime" / "context.py", tmp_path / "fake_context.py")
    (tmp_path / "driver.py").write_text(DRIVER)

    venv = tmp_path / "venv"
    subprocess.run([INTERPRETER, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        # Appwrite's build runs `pip install -r requirements.txt` in the function's folder.
        [str(venv / "bin" / "pip"), "install", "--quiet", "-r", "requirements.txt"],
        cwd=tmp_path / "function",
        check=True,
    )
    request, expected_status = CASES[function_id]
    completed = subprocess.run(
        [str(venv / "bin" / "python"), "driver.py", json.dumps(request)],
        cwd=tmp_path,
        env=ENVIRONMENT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    outcome = json.loads(completed.stdout.strip().splitlines()[-1])
    assert outcome["status"] == expected_status, outcome
    assert json.loads(outcome["body"])["error"]["code"]
    if function_id != "chat":
        assert not any(name.startswith("anthropic") for name in outcome["modules"])


def test_vendored_wheels_match_the_source() -> None:
    """No function ships a domain that drifted from shared/metering (make vendor builds them)."""
    assert vendor.main(["--check"]) == 0


def test_a_stale_or_unlisted_wheel_is_reported(tmp_path: Path) -> None:
    """The check compares the wheel's files with the source: one changed byte is drift."""
    folder = tmp_path / "usage"
    shutil.copytree(ROOT / "functions" / "usage", folder)
    expected = vendor.source_digests()
    assert vendor.problems(folder, expected) == []
    drifted = dict(expected)
    drifted["metering/plans.py"] = "0" * 64
    assert vendor.problems(folder, drifted) == [
        "usage/wheels/metering-1.0.0-py3-none-any.whl is stale"
    ]
    (folder / "requirements.txt").write_text("appwrite==27.0.0\n")
    assert vendor.problems(folder, expected) == [
        f"usage/requirements.txt does not list {vendor.REQUIREMENT}"
    ]


# -- what the CLI leaves out ---------------------------------------------------------------------

# The CLI's own matcher (the `ignore` package it packs with) over the same files, as its
# functionsCreateDeployment does: `.appwrite`, then the ignore list or else the .gitignore.
CLI_FILTER = """
const ignore = require(require.resolve("ignore", { paths: [process.argv[1]] }));
const { files, rules } = JSON.parse(require("fs").readFileSync(0, "utf8"));
const ignorer = ignore();
ignorer.add(".appwrite");
ignorer.add(rules);
process.stdout.write(JSON.stringify(files.filter((file) => !ignorer.ignores(file))));
"""


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "fn"
    for name in (
        "src/main.py",
        "src/__pycache__/main.cpython-312.pyc",
        "wheels/metering-1.0.0-py3-none-any.whl",
        "notes.log",
        "secret.env",
        ".appwrite/cache",
        ".gitignore",
    ):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("x")
    (folder / ".gitignore").write_text("secret.env\n")
    return folder


@pytest.mark.parametrize(
    ("ignore", "packed"),
    [
        (
            ["__pycache__", "*.log"],
            [".gitignore", "secret.env", "src/main.py", "wheels/metering-1.0.0-py3-none-any.whl"],
        ),
        (
            None,
            [
                ".gitignore",
                "notes.log",
                "src/__pycache__/main.cpython-312.pyc",
                "src/main.py",
                "wheels/metering-1.0.0-py3-none-any.whl",
            ],
        ),
        (
            [],
            [
                ".gitignore",
                "notes.log",
                "secret.env",
                "src/__pycache__/main.cpython-312.pyc",
                "src/main.py",
                "wheels/metering-1.0.0-py3-none-any.whl",
            ],
        ),
    ],
    ids=["ignore-list-not-gitignore", "gitignore-without-list", "empty-list-still-replaces"],
)
def test_a_folder_is_packed_with_its_ignore_list_or_its_gitignore_never_both(
    tmp_path: Path, ignore: list[str] | None, packed: list[str]
) -> None:
    """The ignore list replaces the folder's .gitignore, the repository's never applies (the
    wheels it ignores ship), `.appwrite` never ships; and the CLI's own matcher agrees."""
    folder = _folder(tmp_path)
    assert packed_names(folder, ignore) == packed
    cli = install_cli()
    gitignore = (folder / ".gitignore").read_text().splitlines()
    files = sorted(
        path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()
    )
    completed = subprocess.run(
        ["node", "-e", CLI_FILTER, str(cli)],
        input=json.dumps({"files": files, "rules": gitignore if ignore is None else ignore}),
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(completed.stdout) == packed
