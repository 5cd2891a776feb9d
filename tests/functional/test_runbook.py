"""docs/operations.md names every log event the functions emit: each `log.note` finding and each
`<function>.<outcome>` line their handlers answer with."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
NOTE = re.compile(r"""log\.note\(\s*["']([a-z_.]+)["']""")
SERVE = re.compile(r"""serve\(\s*context,\s*["']([a-z_.-]+)["']""")
OUTCOME = re.compile(r"""outcome=["']([a-z_]+)["']""")


def test_every_note_is_in_the_runbook() -> None:
    """A finding line an operator greps for has a row saying what to do."""
    sources = [*ROOT.glob("functions/*/src/*.py"), *(ROOT / "shared" / "metering").rglob("*.py")]
    notes = {name for path in sources for name in NOTE.findall(path.read_text(encoding="utf-8"))}
    assert notes, "no log.note found: the pattern is stale"
    assert sorted(name for name in notes if f"`{name}`" not in RUNBOOK) == []


def test_every_outcome_line_is_in_the_runbook() -> None:
    """Each function's outcomes, and its `rejected` and `failed` lines, are named."""
    missing = []
    for folder in sorted((ROOT / "functions").iterdir()):
        main = folder / "src" / "main.py"
        if not main.is_file():
            continue
        name = SERVE.search(main.read_text(encoding="utf-8"))
        assert name, f"{main} does not serve through metering.edge"
        handlers = "".join(path.read_text(encoding="utf-8") for path in folder.glob("src/*.py"))
        outcomes = {*OUTCOME.findall(handlers), "rejected", "failed"}
        if name.group(1) == "stripe.webhook":
            outcomes = {"<outcome>", "invalid", "rejected", "failed"}
        missing += [
            f"{name.group(1)}.{outcome}"
            for outcome in sorted(outcomes)
            if f"{name.group(1)}.{outcome}" not in RUNBOOK
        ]
    assert missing == []
