"""Each function deploys from its folder alone: packed as the CLI packs it, installed into a fresh
virtual environment, imported as open-runtimes imports it and run with a fake context."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.packaging import ROOT, function_config, pack, unpack
from tools import vendor

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
request = RuntimeRequest(method=case["method"], path="/", headers=case["headers"],
                         body=case["body"].encode())
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
}

ENVIRONMENT = {
    "APPWRITE_FUNCTION_API_ENDPOINT": "http://127.0.0.1:9/v1",
    "APPWRITE_FUNCTION_PROJECT_ID": "packaging-test",
    "ANTHROPIC_API_KEY": "sk-test-packaging",
    "STRIPE_WEBHOOK_SECRET": "whsec_packaging_test",
    "PATH": "/usr/bin:/bin",
}


@pytest.fixture(scope="module")
def vendored() -> None:
    vendor.main([])


@pytest.mark.slow
@pytest.mark.parametrize("function_id", list(CASES), ids=list(CASES))
def test_function_deploys_from_its_folder_alone(
    function_id: str, vendored: None, tmp_path: Path
) -> None:
    """The packed folder installs and runs with nothing from the repository beside it."""
    config = function_config(function_id)
    assert config["runtime"] == "python-3.12"
    names = unpack(pack(function_id), tmp_path / "function")
    assert "src/main.py" in names
    assert "requirements.txt" in names
    assert any(name.startswith("src/metering/") for name in names), "domain not vendored"
    assert not any("__pycache__" in name for name in names)

    for module in RUNTIME_MODULES:
        (tmp_path / f"{module}.py").write_text("raise ImportError('runtime module shadowed')\n")
    shutil.copy(ROOT / "localruntime" / "context.py", tmp_path / "fake_context.py")
    (tmp_path / "driver.py").write_text(DRIVER)

    venv = tmp_path / "venv"
    subprocess.run([INTERPRETER, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "-r", "function/requirements.txt"],
        cwd=tmp_path,
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


def test_vendored_copies_match_the_source(vendored: None) -> None:
    """No function ships a domain that drifted from shared/metering."""
    assert vendor.main(["--check"]) == 0
