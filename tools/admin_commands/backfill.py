"""Fill what rows that predate their columns read as NULL (counters 0, the plan's allowance, the
default plan), give subscriptions rows their user's read permission (as new rows get it), and copy
a former stripe_events table into claims. A second run changes nothing."""

from __future__ import annotations

import argparse

from metering.plans import load_default_plans

from tools.admin_commands.context import Context
from tools.admin_commands.migrate import Migration, add_schema_arguments
from tools.schema import load_schema


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_schema_arguments(parser, "count the rows to fix and copy, change nothing")


def run(args: argparse.Namespace, context: Context) -> int:
    migration = Migration(context.schema_admin(), load_schema(args.schema), context)
    migration.backfill(load_default_plans(), dry_run=args.dry_run)
    return 0
