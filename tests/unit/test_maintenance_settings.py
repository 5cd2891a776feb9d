"""The cron's settings: defaults, bounds, and every problem reported at once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from metering import settings as declared
from metering.config import EnvReader
from metering.errors import ConfigurationError
from metering.maintenance import MaintenanceSettings


def test_defaults_are_six_hours_grace_fifteen_minutes_ttl_pages_of_100_and_240_s() -> None:
    settings = MaintenanceSettings.read(EnvReader({}))

    assert settings == MaintenanceSettings(
        grace=timedelta(hours=6),
        reservation_ttl=timedelta(minutes=15),
        page_size=100,
        time_budget=timedelta(seconds=240),
    )


def test_values_come_from_the_injected_mapping() -> None:
    env = EnvReader(
        {
            "CRON_GRACE_SECONDS": "60",
            "CRON_RESERVATION_TTL_SECONDS": "120",
            "CRON_PAGE_SIZE": "7",
            "CRON_TIME_BUDGET_SECONDS": "30",
        }
    )

    settings = MaintenanceSettings.read(env)

    assert (settings.grace, settings.reservation_ttl) == (
        timedelta(minutes=1),
        timedelta(minutes=2),
    )
    assert (settings.page_size, settings.time_budget) == (7, timedelta(seconds=30))


def test_invalid_values_are_reported_together() -> None:
    env = EnvReader(
        {
            "CRON_PAGE_SIZE": "0",
            "CRON_TIME_BUDGET_SECONDS": "soon",
            "CRON_RESERVATION_TTL_SECONDS": "5",
        }
    )
    MaintenanceSettings.read(env)

    with pytest.raises(ConfigurationError) as raised:
        env.finish()

    message = str(raised.value)
    for name in ("CRON_PAGE_SIZE", "CRON_TIME_BUDGET_SECONDS", "CRON_RESERVATION_TTL_SECONDS"):
        assert name in message


def test_the_dataclass_defaults_are_the_declared_ones() -> None:
    """Code that builds MaintenanceSettings() directly runs as an unconfigured cron would."""
    assert MaintenanceSettings() == MaintenanceSettings.read(EnvReader({}))
    assert MaintenanceSettings().grace == timedelta(seconds=declared.CRON_GRACE_SECONDS.default)


def test_reconciliation_keeps_a_quarter_of_the_budget_unless_told_otherwise() -> None:
    """The share the Stripe look-ups leave to reconciliation: 25 % by default, 0 to 90."""
    assert MaintenanceSettings.read(EnvReader({})).reconcile_share_percent == 25
    told = EnvReader({"CRON_RECONCILE_SHARE_PERCENT": "40"})
    assert MaintenanceSettings.read(told).reconcile_share_percent == 40
    too_much = EnvReader({"CRON_RECONCILE_SHARE_PERCENT": "95"})
    MaintenanceSettings.read(too_much)
    with pytest.raises(ConfigurationError, match="CRON_RECONCILE_SHARE_PERCENT"):
        too_much.finish()
