"""tools/build_web.py: when npm runs, how the SDK becomes one ES module, what gets deployed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tools import build_web

FAKE_IIFE = """(function (exports) {
    'use strict';
    class Client { constructor() { this.kind = 'client'; } }
    exports.Account = class Account {};
    exports.AppwriteException = class AppwriteException extends Error {};
    exports.Client = Client;
    exports.Functions = class Functions {};
    exports.ID = { unique: () => 'x' };
})(this.Appwrite = this.Appwrite || {});
"""


def make_web(tmp_path: Path, pin: str = "28.0.0", installed: str | None = "28.0.0") -> Path:
    web = tmp_path / "web"
    web.mkdir()
    manifest = {"name": "page", "dependencies": {"appwrite": pin}}
    (web / "package.json").write_text(json.dumps(manifest))
    (web / "package-lock.json").write_text("{}")
    if installed is not None:
        package = web / "node_modules" / "appwrite"
        package.mkdir(parents=True)
        (package / "package.json").write_text(json.dumps({"version": installed}))
        (web / "node_modules" / ".package-lock.json").write_text("{}")
    return web


def age(path: Path, seconds: int) -> None:
    stat = path.stat()
    os.utime(path, (stat.st_atime - seconds, stat.st_mtime - seconds))


def test_fresh_install_needs_no_npm(tmp_path: Path) -> None:
    """node_modules newer than the lock, with the pinned version, is up to date."""
    web = make_web(tmp_path)
    age(web / "package.json", 60)
    age(web / "package-lock.json", 60)
    assert not build_web.needs_install(web)


@pytest.mark.parametrize(
    ("installed", "stale_lock"),
    [(None, False), ("27.0.0", False), ("28.0.0", True)],
    ids=["no-node-modules", "other-version-installed", "lock-newer-than-install"],
)
def test_missing_or_outdated_install_needs_npm(
    tmp_path: Path, installed: str | None, stale_lock: bool
) -> None:
    """A missing install, a different installed version or a newer lock file triggers npm."""
    web = make_web(tmp_path, installed=installed)
    if installed is not None and not stale_lock:
        age(web / "package.json", 60)
        age(web / "package-lock.json", 60)
    if stale_lock:
        age(web / "node_modules" / ".package-lock.json", 60)
    assert build_web.needs_install(web)


def test_a_version_range_is_refused(tmp_path: Path) -> None:
    """The SDK must be pinned exactly: a range would let builds differ."""
    web = make_web(tmp_path, pin="^28.0.0")
    with pytest.raises(build_web.BuildError, match="exact version"):
        build_web.needs_install(web)


def test_sdk_module_exports_every_name_and_leaves_globals_alone(tmp_path: Path) -> None:
    """The wrapped build is an ES module exporting the SDK's names, without a global Appwrite."""
    node = shutil.which("node")
    assert node is not None, "node is needed to build the page"
    module = tmp_path / "appwrite.mjs"
    module.write_text(build_web.sdk_module(FAKE_IIFE, "28.0.0"))
    probe = (
        "const m = await import(process.argv[1]);"
        "console.log(JSON.stringify([Object.keys(m).sort(), new m.Client().kind,"
        " typeof globalThis.Appwrite]));"
    )
    result = subprocess.run(
        [node, "--input-type=module", "-e", probe, module.as_uri()],
        capture_output=True,
        text=True,
        check=True,
    )
    names, kind, global_type = json.loads(result.stdout)
    assert names == ["Account", "AppwriteException", "Client", "Functions", "ID", "default"]
    assert kind == "client"
    assert global_type == "undefined"


def test_a_build_without_a_needed_export_fails(tmp_path: Path) -> None:
    """A changed SDK layout stops the build instead of shipping a page that cannot log in."""
    with pytest.raises(build_web.BuildError, match="Functions"):
        build_web.sdk_module(FAKE_IIFE.replace("exports.Functions", "exports.Other"), "x")


def test_assemble_copies_only_what_a_static_host_serves(tmp_path: Path) -> None:
    """--out gets the page, its modules, the vendored SDK and config.json; nothing else."""
    web = make_web(tmp_path)
    for name in ("index.html", "app.js", "styles.css", "favicon.svg", "config.json", "README.md"):
        (web / name).write_text(name)
    (web / "vendor").mkdir()
    (web / "vendor" / "appwrite.js").write_text("sdk")
    out = tmp_path / "dist"
    (out / "old").mkdir(parents=True)
    build_web.assemble(web, out)
    copied = sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file())
    assert copied == [
        "app.js",
        "config.json",
        "favicon.svg",
        "index.html",
        "styles.css",
        "vendor/appwrite.js",
    ]


def test_assemble_refuses_a_folder_inside_the_page(tmp_path: Path) -> None:
    """Deploying into web/ itself would copy the page into itself."""
    web = make_web(tmp_path)
    with pytest.raises(build_web.BuildError, match="outside"):
        build_web.assemble(web, web / "dist")
