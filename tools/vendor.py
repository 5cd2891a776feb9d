"""Build ``shared/`` into the ``metering`` wheel each function installs from its own folder.

Each function's ``requirements.txt`` lists ``./wheels/<wheel>``, so the folder the Appwrite CLI
packs deploys alone, and every process (function, local runtime, tests) imports one ``metering``.
``--check`` exits 1, changing nothing, when a function's wheel is missing, stale or not listed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "shared"
SOURCE = PACKAGE / "metering"
WHEEL = "metering-1.0.0-py3-none-any.whl"
REQUIREMENT = f"./wheels/{WHEEL}"


def function_folders(root: Path = ROOT) -> list[Path]:
    """The folder of every function ``appwrite.json`` declares: the one list of functions."""
    document = json.loads((root / "appwrite.json").read_text(encoding="utf-8"))
    return [root / entry["path"] for entry in document["functions"]]


def source_digests(source: Path = SOURCE) -> dict[str, str]:
    """What the wheel must hold: every file of the package, by its path inside the wheel."""
    return {
        f"metering/{path.relative_to(source).as_posix()}": _digest(path.read_bytes())
        for path in sorted(source.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def wheel_digests(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as archive:
        return {
            name: _digest(archive.read(name))
            for name in archive.namelist()
            if name.startswith("metering/")
        }


def problems(folder: Path, expected: dict[str, str]) -> list[str]:
    """Why ``folder`` would not deploy the current package (empty when it would)."""
    found: list[str] = []
    wheel = folder / "wheels" / WHEEL
    requirements = (folder / "requirements.txt").read_text(encoding="utf-8").splitlines()
    if REQUIREMENT not in (line.strip() for line in requirements):
        found.append(f"{folder.name}/requirements.txt does not list {REQUIREMENT}")
    if not wheel.is_file():
        found.append(f"{folder.name} has no {WHEEL}")
    elif wheel_digests(wheel) != expected:
        found.append(f"{folder.name}/wheels/{WHEEL} is stale")
    return found


def build_wheel(destination: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(destination),
            str(PACKAGE),
        ],
        check=True,
    )
    return destination / WHEEL


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="report stale wheels, change nothing")
    args = parser.parse_args(argv)
    expected = source_digests()
    folders = function_folders()
    stale = {folder: problems(folder, expected) for folder in folders}
    stale = {folder: found for folder, found in stale.items() if found}
    if args.check:
        for found in stale.values():
            for problem in found:
                print(problem, file=sys.stderr)
        return 1 if stale else 0
    if not stale:
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        wheel = build_wheel(Path(scratch))
        for folder in stale:
            (folder / "wheels").mkdir(exist_ok=True)
            # Copied under a temporary name and renamed: a reader never sees half a wheel.
            partial = folder / "wheels" / f".{WHEEL}.partial"
            shutil.copyfile(wheel, partial)
            partial.replace(folder / "wheels" / WHEEL)
            print(f"vendored shared/ -> {(folder / 'wheels' / WHEEL).relative_to(ROOT)}")
    return 0


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


if __name__ == "__main__":
    sys.exit(main())
