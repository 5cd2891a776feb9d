"""The commands of ``python -m tools.admin``: one module each, named in ``tools.admin.COMMANDS``."""
