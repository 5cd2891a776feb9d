"""Session-wide setup: every test runs against freshly vendored function copies."""

from __future__ import annotations

from tools import vendor


def pytest_configure() -> None:
    # Functions import their own vendored copy of shared/metering, as when deployed.
    vendor.main([])
