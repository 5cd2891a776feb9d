"""A bounded soak through the local runtime on loopback: users chatting, stopping turns, buying
packs and plans, renewing and being reset by the cron, with store and model faults injected at
random (tests/support/soak.py). The short form runs in ``make test``; ``--soak-seconds=N`` (or
``SOAK_SECONDS``) runs the long one, and ``SOAK_SEED`` another seed."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from metering.ports import UsageStore

from tests.conftest import SOAK_SUMMARIES, soak_seconds
from tests.support.soak import SoakPlan, emulated_store, run_soak, soak_runtime

pytestmark = [pytest.mark.slow, pytest.mark.soak]


@contextmanager
def sqlite() -> Iterator[None]:
    yield None  # the runtime's own store


STORES: dict[str, Callable[[], AbstractContextManager[UsageStore | None]]] = {
    "sqlite": sqlite,
    "appwrite-emulator": emulated_store,
}


@pytest.mark.parametrize("backend", list(STORES))
def test_the_soak_keeps_every_counter_on_its_ledger_and_every_page_informed(
    tmp_path: Path, pytestconfig: pytest.Config, backend: str
) -> None:
    """Counter equals ledger and nothing is held for every user, every 5xx is an injected
    fault's, every turn is final and its page received its final state: on the runtime's
    SQLite, and on TablesDB (emulated, over HTTP)."""
    seed = int(os.environ["SOAK_SEED"]) if os.environ.get("SOAK_SEED") else None
    seconds = soak_seconds(pytestconfig)
    plan = SoakPlan.short(seed) if seconds is None else SoakPlan.long(seconds, seed)

    with STORES[backend]() as store, soak_runtime(tmp_path / "data", plan, store) as rig:
        report = run_soak(rig, plan)

    # Shown after the run, passed or not (tests/conftest.py).
    pytestconfig.stash.setdefault(SOAK_SUMMARIES, []).append(report.summary())
    assert not report.problems, "\n".join([report.summary(), *report.problems])
    # The soak did what it is for: turns ran and ended, money moved, faults were injected.
    assert report.turn_outcomes["completed"] > 0
    assert report.purchases > 0
    assert report.cron_runs > 0
    assert sum(report.faults.values()) > 0
