"""Run every benchmark (or those named) and print one markdown report: ``python -m benchmarks``."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from collections.abc import Callable

from benchmarks import (
    cold_start,
    concurrency,
    cron_cost,
    first_token,
    identity_cache,
    progress_writes,
    prompt_caching,
    stop_latency,
    store_calls,
    webhooks,
)
from tools import vendor

BENCHMARKS: dict[str, tuple[str, Callable[[bool], str]]] = {
    "store_calls": ("Store calls and HTTP requests per chat request", store_calls.run),
    "first_token": ("Metering before the first streamed token", first_token.run),
    "progress_writes": ("Progress writes per second of streaming", progress_writes.run),
    "stop_latency": ("Stop latency and overcharge", stop_latency.run),
    "concurrency": (
        "Overshoot and lost updates with 8, 32 and 128 requests in flight, over HTTP",
        concurrency.run,
    ),
    "webhooks": ("Webhook events per second", webhooks.run),
    "cold_start": ("Cold start: import time of each function", cold_start.run),
    "cron_cost": ("Cron cost at 1 %, 10 % and 100 % due", cron_cost.run),
    "identity_cache": ("Identity verification cache", identity_cache.run),
    "prompt_caching": ("Prompt caching", prompt_caching.run),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repetitions")
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)}"
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    # The cold-start benchmark imports the functions' vendored copies: make them current.
    with contextlib.redirect_stdout(sys.stderr):
        vendor.main([])
    print(f"# Benchmarks{' (quick)' if args.quick else ''}\n")
    print(
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()},"
        f" {os.cpu_count()} CPUs.\n"
    )
    started = time.perf_counter()
    for name in names:
        title, run = BENCHMARKS[name]
        began = time.perf_counter()
        report = run(args.quick)
        print(
            f"## {name}: {title}\n\n{report}\n\n_{time.perf_counter() - began:.1f} s_\n", flush=True
        )
    print(f"_Total: {time.perf_counter() - started:.1f} s_")
    return 0


if __name__ == "__main__":
    sys.exit(main())
