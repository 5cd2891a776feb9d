"""Copy shared/metering into each function's src/ (the copy the Appwrite CLI packs).

``--check`` exits 1 when any vendored copy differs from the source instead of writing.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "shared" / "metering"
FUNCTIONS = ROOT / "functions"
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


def vendored_copies() -> list[Path]:
    return sorted(path / "src" / "metering" for path in FUNCTIONS.iterdir() if path.is_dir())


def differs(left: Path, right: Path) -> bool:
    if not right.is_dir():
        return True
    comparison = filecmp.dircmp(left, right, ignore=["__pycache__"])
    return _differs(comparison)


def _differs(comparison: filecmp.dircmp[str]) -> bool:
    if comparison.left_only or comparison.right_only or comparison.funny_files:
        return True
    _, mismatch, errors = filecmp.cmpfiles(
        comparison.left, comparison.right, comparison.common_files, shallow=False
    )
    if mismatch or errors:
        return True
    return any(_differs(sub) for sub in comparison.subdirs.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="report drift, change nothing")
    args = parser.parse_args(argv)
    stale = [copy for copy in vendored_copies() if differs(SOURCE, copy)]
    if args.check:
        for copy in stale:
            print(f"stale vendored copy: {copy.relative_to(ROOT)}", file=sys.stderr)
        return 1 if stale else 0
    for copy in stale:
        replace_tree(copy)
        print(f"vendored shared/metering -> {copy.relative_to(ROOT)}")
    return 0


def replace_tree(copy: Path) -> None:
    """Swap in a fresh copy with renames, so a reader never sees a half-written package."""
    fresh = copy.with_name(f".metering-new-{os.getpid()}")
    retired = copy.with_name(f".metering-old-{os.getpid()}")
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.copytree(SOURCE, fresh, ignore=IGNORED)
    if copy.exists():
        copy.rename(retired)
    fresh.rename(copy)
    shutil.rmtree(retired, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
