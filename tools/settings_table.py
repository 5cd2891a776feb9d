"""Write the settings tables of README.md and each functions/<id>/README.md from declarations.

``python -m tools.settings_table`` rewrites them; ``--check`` changes nothing, exits 1 if stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from metering import settings as functions
from metering.settings import FUNCTIONS, MIGRATE, Setting

from localruntime import settings as runtime

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- settings table: written by `python -m tools.settings_table` from the declarations -->"
END = "<!-- end of settings table -->"


def all_settings() -> tuple[Setting[Any], ...]:
    """The functions' and tools' declarations, then the local runtime's own."""
    return functions.DECLARED + runtime.DECLARED


def shown_default(setting: Setting[Any]) -> str:
    if setting.shown_default is not None:
        return setting.shown_default
    if setting.required:
        return "required"
    default = setting.default
    if setting.kind in ("optional", "secret"):
        return "unset"
    if setting.kind == "flag":
        return "`true`" if default else "`false`"
    if setting.kind in ("integer", "number"):
        return _number(default)
    return f"`{default}`"


def meaning(setting: Setting[Any]) -> str:
    """The help, then in brackets the default and what a value must be."""
    facts = [shown_default(setting)]
    low, high = setting.minimum, setting.maximum
    if setting.kind in ("integer", "number"):
        if high is not None:
            facts.append(f"{_number(low)} to {_number(high)}")
        elif low:
            facts.append(f"at least {_number(low)}")
    elif setting.kind == "choice":
        facts.append("one of " + ", ".join(f"`{choice}`" for choice in setting.choices))
    return f"{setting.help} [{'; '.join(facts)}]"


def used_by(setting: Setting[Any]) -> str:
    readers = list(setting.used_by)
    labels: list[str] = []
    if all(function in readers for function in FUNCTIONS):
        labels.append("all functions")
        readers = [reader for reader in readers if reader not in FUNCTIONS]
    labels.extend(f"`{reader}`" if reader == MIGRATE else reader for reader in readers)
    return ", ".join(labels)


def table(settings: Iterable[Setting[Any]], *, with_readers: bool) -> str:
    header = ["variable", "used by", "meaning"] if with_readers else ["variable", "meaning"]
    lines = [_row(header), _row(["---"] * len(header))]
    for setting in settings:
        cells = [f"`{setting.name}`", meaning(setting)]
        if with_readers:
            cells.insert(1, used_by(setting))
        lines.append(_row(cells))
    return "\n".join(lines) + "\n"


def function_ids(root: Path = ROOT) -> dict[str, Path]:
    """Each function ``appwrite.json`` declares, by id, with its folder."""
    document = json.loads((root / "appwrite.json").read_text(encoding="utf-8"))
    return {entry["$id"]: root / entry["path"] for entry in document["functions"]}


def tables(root: Path = ROOT) -> dict[Path, str]:
    """What each README's table should be: every setting in the repository's README, the
    settings a function reads in that function's README."""
    wanted = {root / "README.md": table(all_settings(), with_readers=True)}
    for function_id, folder in function_ids(root).items():
        read_by_it = [s for s in all_settings() if function_id in s.used_by]
        wanted[folder / "README.md"] = table(read_by_it, with_readers=False)
    return wanted


def with_table(document: str, new_table: str) -> str:
    """``document`` with the text between the markers replaced by ``new_table``."""
    start = document.find(BEGIN)
    end = document.find(END)
    if start < 0 or end < start:
        raise ValueError("no settings table markers")
    return document[: start + len(BEGIN)] + "\n" + new_table + document[end:]


def main(argv: Sequence[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.settings_table", description=__doc__)
    parser.add_argument("--check", action="store_true", help="report stale tables, write nothing")
    args = parser.parse_args(argv)
    stale: list[Path] = []
    for path, new_table in tables(root).items():
        current = path.read_text(encoding="utf-8")
        try:
            wanted = with_table(current, new_table)
        except ValueError:
            print(f"{path.relative_to(root)}: no settings table markers", file=sys.stderr)
            return 1
        if wanted == current:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(wanted, encoding="utf-8")
    for path in stale:
        verb = "is stale (run python -m tools.settings_table)" if args.check else "written"
        print(f"{path.relative_to(root)}: {verb}", file=sys.stderr)
    return 1 if args.check and stale else 0


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


if __name__ == "__main__":
    sys.exit(main())
