"""Pack a function folder the way the Appwrite CLI does, and run it the way open-runtimes does."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pathspec

ROOT = Path(__file__).resolve().parents[2]


def function_config(function_id: str) -> dict[str, Any]:
    config = json.loads((ROOT / "appwrite.json").read_text(encoding="utf-8"))
    for function in config["functions"]:
        if function["$id"] == function_id:
            return dict(function)
    raise KeyError(function_id)


def ignore_spec(folder: Path, ignore: list[str] | None) -> pathspec.GitIgnoreSpec:
    """What the CLI leaves out of a function's archive: ``.appwrite``, then the function's
    ``ignore`` list when it has one, else its folder's own .gitignore; never both, and never the
    repository's .gitignore (appwrite-cli 12.0.1, lib/commands/functions.js,
    ``functionsCreateDeployment``: ``if (resourceConfig.ignore) ignorer.add(...) else if
    (fs.existsSync(path.join(code, '.gitignore'))) ignorer.add(...)``)."""
    lines = [".appwrite"]
    gitignore = folder / ".gitignore"
    # JavaScript's truthiness: an empty list still replaces the .gitignore.
    if ignore is not None:
        lines += ignore
    elif gitignore.is_file():
        lines += gitignore.read_text(encoding="utf-8").splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines)


def packed_names(folder: Path, ignore: list[str] | None) -> list[str]:
    """The files of ``folder`` the CLI packs, relative to it."""
    spec = ignore_spec(folder, ignore)
    return [
        path.relative_to(folder).as_posix()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not spec.match_file(path.relative_to(folder).as_posix())
    ]


def pack(function_id: str) -> bytes:
    """A gzipped tarball of the function folder, as uploaded by ``appwrite push functions``."""
    config = function_config(function_id)
    folder = ROOT / config["path"]
    names = packed_names(folder, config.get("ignore"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in names:
            archive.add(folder / name, arcname=name)
    return buffer.getvalue()


def unpack(archive: bytes, destination: Path) -> list[str]:
    destination.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(destination, filter="data")
        return tar.getnames()
