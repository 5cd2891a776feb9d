"""Token metering for a Claude chat: the pure domain, its ports and its adapters.

One import identity everywhere: the repository installs this package editable, and each function
lists the wheel ``make vendor`` builds from it in its ``requirements.txt``.
"""
