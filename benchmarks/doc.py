"""Put a report of ``python -m benchmarks`` into docs/benchmarks.md: each block between
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` becomes that benchmark's tables from the
report, the machine line and total time too; the prose around them stays as written.

    make bench   (runs `python -m benchmarks | tee .bench/report.md`, then this on it)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from benchmarks import ROOT

DOC = ROOT / "docs" / "benchmarks.md"
_SECTION = re.compile(
    r"^## (?P<name>\w+): .*?\n\n(?P<body>.*?)\n\n_(?P<seconds>[\d.]+) s_\n", re.S | re.M
)
_BLOCK = re.compile(r"(<!-- bench:(?P<name>\w+) -->\n)(?:.*?\n)?(<!-- /bench:(?P=name) -->)", re.S)


def sections(report: str) -> dict[str, str]:
    """Each benchmark's body in the report, by name; ``machine`` is the run's environment."""
    found = {m["name"]: m["body"].strip() for m in _SECTION.finditer(report)}
    machine = re.search(r"^Python .*$", report, re.M)
    total = re.search(r"^_Total: (?P<seconds>[\d.]+) s_$", report, re.M)
    if machine and total:
        found["machine"] = f"{machine.group(0)} Total: {total['seconds']} s."
    return found


def update(doc: str, report: str) -> tuple[str, list[str]]:
    """``doc`` with every marked block replaced; also the names the report had no section for."""
    bodies = sections(report)
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in bodies:
            missing.append(name)
            return match.group(0)
        return match.group(1) + bodies[name] + "\n" + match.group(3)

    return _BLOCK.sub(replace, doc), missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.doc", description=__doc__)
    parser.add_argument("report", type=Path, help="the markdown `python -m benchmarks` printed")
    parser.add_argument("--doc", type=Path, default=DOC, help="the page to update")
    args = parser.parse_args(argv)
    text, missing = update(args.doc.read_text(encoding="utf-8"), args.report.read_text("utf-8"))
    args.doc.write_text(text, encoding="utf-8")
    if missing:
        print(f"not in the report, left as they were: {', '.join(missing)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
