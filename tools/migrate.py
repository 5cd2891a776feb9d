"""``python -m tools.migrate migrate|backfill ...``: the former entry of the schema commands,
kept so that existing runbooks work; it runs ``python -m tools.admin`` (see that module)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tools.admin import main as admin_main
from tools.admin_commands.context import RemoteSettings

# What this entry reads: the project's three variables (see shared/metering/settings.py).
MigrateSettings = RemoteSettings


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] not in ("migrate", "backfill"):
        sys.stderr.write("usage: python -m tools.migrate migrate|backfill [--dry-run]\n")
        return 2
    return admin_main(arguments)


if __name__ == "__main__":
    sys.exit(main())
