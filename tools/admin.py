"""The operator's commands, against the local SQLite store by default, or against the Appwrite
project that APPWRITE_ENDPOINT, APPWRITE_PROJECT_ID and APPWRITE_API_KEY name (from the
environment or .env, as for make dev).

    python -m tools.admin <command> [--help]
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn, TextIO

ROOT = Path(__file__).resolve().parent.parent
# The single source of the domain package, as the tests and the local runtime use it.
if str(ROOT / "shared") not in sys.path:
    sys.path.append(str(ROOT / "shared"))

from metering.errors import MeteringError  # noqa: E402

from localruntime.settings import load_environment  # noqa: E402
from tools.admin_commands.context import Context  # noqa: E402

PROG = "python -m tools.admin"

# Each command is a module of tools/admin_commands exposing `add_arguments(parser)` and
# `run(args, context) -> int`; its docstring's first sentence is its help line.
COMMANDS: dict[str, str] = {
    "migrate": "tools.admin_commands.migrate",
    "backfill": "tools.admin_commands.backfill",
    "doctor": "tools.admin_commands.doctor",
    "report": "tools.admin_commands.report",
    "grant": "tools.admin_commands.grant",
    "set-plan": "tools.admin_commands.set_plan",
    "reset": "tools.admin_commands.reset",
    "reconcile": "tools.admin_commands.reconcile",
}


class Parser(argparse.ArgumentParser):
    """argparse writing to the run's own streams, and refusing bad input in one line."""

    # (stdout, stderr): set on the subclass ``bound_parser`` makes for one run.
    streams: tuple[TextIO, TextIO] = (sys.stdout, sys.stderr)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            out, err = self.streams
            (err if file is sys.stderr else out).write(message)


def bound_parser(out: TextIO, err: TextIO) -> type[Parser]:
    """The parser class of one run: every (sub)parser writes to its streams."""
    return type("BoundParser", (Parser,), {"streams": (out, err)})


def first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence (not the one in ``appwrite.json``)."""
    match = re.match(r"(.+?\.)(\s|$)", text)
    return match.group(1) if match else text


def command_module(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name])


def build_parser(out: TextIO, err: TextIO) -> Parser:
    parser_class = bound_parser(out, err)
    parser = parser_class(prog=PROG, description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw progress bars on stderr (default: when stderr is a terminal)",
    )
    subparsers = parser.add_subparsers(
        dest="command",
        metavar="<command>",
        required=True,
        parser_class=parser_class,
    )
    for name in COMMANDS:
        module = command_module(name)
        summary = " ".join((module.__doc__ or name).split())
        sub = subparsers.add_parser(name, help=first_sentence(summary), description=summary)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    sleep: Callable[[float], None] | None = None,
) -> int:
    """Run one command; 0 on success, 1 when it failed or found problems, 2 for bad arguments."""
    stdout = out or sys.stdout
    stderr = err or sys.stderr
    parser = build_parser(stdout, stderr)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    environment = dict(load_environment(Path(".env"))) if environ is None else environ
    options: dict[str, Any] = {"progress": args.progress}
    if sleep is not None:
        options["sleep"] = sleep
    context = Context(environment, stdout, stderr, **options)
    try:
        code: int = args.run(args, context)
    except MeteringError as error:
        stderr.write(f"{PROG} {args.command}: error: {error.message}\n")
        return 1
    except KeyboardInterrupt:
        stderr.write(f"{PROG} {args.command}: interrupted\n")
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
