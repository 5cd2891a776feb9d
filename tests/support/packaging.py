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


def ignore_spec(folder: Path, ignore: list[str]) -> pathspec.GitIgnoreSpec:
    """The CLI skips what the function's ``ignore`` lists plus its folder's own .gitignore."""
    lines = list(ignore)
    gitignore = folder / ".gitignore"
    if gitignore.is_file():
        lines += gitignore.read_text(encoding="utf-8").splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines)


def pack(function_id: str) -> bytes:
    """A gzipped tarball of the function folder, as uploaded by ``appwrite push functions``."""
    config = function_config(function_id)
    folder = ROOT / config["path"]
    spec = ignore_spec(folder, config.get("ignore", []))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder).as_posix()
            if path.is_file() and not spec.match_file(relative):
                archive.add(path, arcname=relative)
    return buffer.getvalue()


def unpack(archive: bytes, destination: Path) -> list[str]:
    destination.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(destination, filter="data")
        return tar.getnames()
