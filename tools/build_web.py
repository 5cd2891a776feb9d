"""Build the static chat page's assets (filled in by the web page work)."""

from __future__ import annotations

import sys


def main() -> int:
    return 0


if __name__ == "__main__":
    sys.exit(main())
