"""The README's walk-through works as written: its marked block runs in bash, unchanged, against
a local runtime started as `make dev` starts it (on a free port, which `BASE` names)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.runtime import running

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BLOCK = re.compile(r"<!-- (walkthrough(?::start)?)\b[^>]*-->\n```sh\n(.*?)```", re.DOTALL)


def marked_blocks() -> dict[str, str]:
    """The README's fenced blocks marked for the walk-through, by marker."""
    return dict(BLOCK.findall(README.read_text(encoding="utf-8")))


def test_the_walkthrough_starts_with_make_dev() -> None:
    """The block the test stands in for is the clone and `make dev`, and nothing else."""
    start = marked_blocks()["walkthrough:start"].splitlines()
    assert start[-1] == "make dev"
    assert start[0].startswith("git clone ")


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    """Sign-up, a purchase on the local checkout, a chat, a simulated renewal and the report,
    each command exiting 0 (bash -e, curl -f)."""
    commands = marked_blocks()["walkthrough"]
    data = tmp_path / "data"
    with running(data, warm=True) as runtime:
        environ = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("APPWRITE_", "STRIPE_", "ANTHROPIC_"))
        }
        environ.update(BASE=runtime.base_url, DATA_DIR=str(data))
        completed = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", commands],
            cwd=ROOT,
            env=environ,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    output = completed.stdout
    assert '"topupTokens":25000' in output, "the pack bought on the checkout is credited"
    assert "invoice.payment_succeeded" in output
    assert '"plan":"starter"' in output
    assert '"used":0' in output, "the renewal reset the period"
