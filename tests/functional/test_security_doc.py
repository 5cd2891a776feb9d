"""docs/security.md stays honest: every test it names as a proof is collected by pytest."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from localruntime.loader import ROOT

DOC = ROOT / "docs" / "security.md"
NODE_ID = re.compile(r"`(tests/[\w/]+\.py::\w+)`")


def named_tests() -> list[str]:
    return sorted(set(NODE_ID.findall(DOC.read_text(encoding="utf-8"))))


def test_the_page_names_a_proof_for_each_threat() -> None:
    text = DOC.read_text(encoding="utf-8")
    threats = [line for line in text.splitlines() if line.startswith("## ")]
    assert len(threats) == 6
    sections = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    assert all(NODE_ID.search(section) for section in sections)


@pytest.mark.slow
def test_every_test_the_page_names_is_collected() -> None:
    """Collected by node id in a fresh pytest, so a renamed or deleted test fails here."""
    ids = named_tests()
    assert len(ids) > 30
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *ids],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    found = {line.split("[")[0] for line in collected.stdout.splitlines() if "::" in line}
    assert set(ids) <= found, sorted(set(ids) - found)
