"""Token metering for a Claude chat: the pure domain, its ports and its adapters.

Everything under this package imports its siblings relatively, so the same code runs as the
top-level package ``metering`` and vendored inside a function as ``function.src.metering``.
"""
