"""The soak's length: ``--soak-seconds=N`` (or ``SOAK_SECONDS``) runs the long, time-limited form
of tests/functional/test_soak.py instead of the short one ``make test`` runs."""

from __future__ import annotations

import os

import pytest

# The summary line of each soak run, written at the end of the session's report.
SOAK_SUMMARIES = pytest.StashKey[list[str]]()
# What the long form may take beyond its own limit: starting, the last turns, the end checks.
SOAK_MARGIN_SECONDS = 300


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-seconds",
        type=float,
        default=None,
        help="run the long soak for this many seconds (default: $SOAK_SECONDS, else the short one)",
    )


def soak_seconds(config: pytest.Config) -> float | None:
    given = config.getoption("--soak-seconds")
    if given is None and os.environ.get("SOAK_SECONDS"):
        given = float(os.environ["SOAK_SECONDS"])
    return given if given else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seconds = soak_seconds(config)
    if seconds is None:
        return
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(pytest.mark.timeout(seconds + SOAK_MARGIN_SECONDS))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in terminalreporter.config.stash.get(SOAK_SUMMARIES, []):
        terminalreporter.write_line(line)
