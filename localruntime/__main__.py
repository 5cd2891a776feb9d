"""``python -m localruntime``: serve everything on one port until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from metering.errors import ConfigurationError

from .server import Runtime
from .settings import RuntimeSettings, load_environment


def banner(runtime: Runtime) -> str:
    settings = runtime.settings
    url = runtime.base_url
    if settings.offline_model:
        model = "OFFLINE (built-in deterministic model; set ANTHROPIC_API_KEY for Claude)"
    else:
        model = "Anthropic API" + (
            f" at {settings.anthropic_base_url}" if settings.anthropic_base_url else ""
        )
    secret = settings.stripe_webhook_secret.value if settings.webhook_secret_is_default else "(set)"
    if runtime.stripe is not None:
        stripe_api = (
            f"LOCAL test Stripe at {runtime.stripe_base_url}: no money moves\n"
            "                  (test checkout and portal pages; STRIPE_SECRET_KEY for an account)"
        )
    else:
        given = runtime.environ.get("STRIPE_API_BASE")
        stripe_api = "Stripe API" + (f" at {given}" if given else "") + " (STRIPE_SECRET_KEY set)"
    lines = [
        "",
        f"  Local runtime on {url}",
        f"    page          {url}/",
        f"    Appwrite API  {url}/v1  (project id: local)",
        f"    functions     {', '.join(sorted(runtime.specs)) or '(none found)'}",
        f"    webhook       {url}/functions/stripe-webhook",
        f"    data          {runtime.data_dir}",
        f"    model         {model}",
        f"    webhook secret {secret}",
        f"    stripe        {stripe_api}",
        f"    outbox        {url}/outbox  (the emails the functions send)",
        f"    cron          {runtime.cron_schedule or 'no schedule'} (ran once at start)",
        "",
        f"  Demo accounts (password: {settings.demo_password.value}):",
    ]
    lines += [
        f"    {demo.email:<24} {demo.plan:<9} {demo.tokens_per_month:>9,} tokens/month"
        f"   user id {demo.user_id}"
        for demo in runtime.demo_accounts
    ]
    if runtime.stripe is not None:
        lines += ["", "  To buy a plan: log in, choose one, press Pay on the test checkout page."]
    lines += [
        "",
        "  Sample Stripe events, signed with the webhook secret, for a user:",
        f"    .venv/bin/python -m tools.stripe_events subscribe --user local-demo --plan pro"
        f" --url {url}/functions/stripe-webhook",
        "    (scenarios: subscribe, renew, change-plan, topup, cancel; --help for options)",
        "  Or forward real test-mode events:",
        f"    stripe listen --forward-to {url}/functions/stripe-webhook",
        "",
        "  Ctrl-C to stop.",
        "",
    ]
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localruntime", description=__doc__)
    parser.add_argument("--port", type=int, help="port to listen on (default: PORT or 8000)")
    parser.add_argument("--host", help="address to bind (default: HOST or 127.0.0.1)")
    parser.add_argument("--env-file", type=Path, default=Path(".env"), help="optional .env file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    environ = dict(load_environment(args.env_file))
    if args.port is not None:
        environ["PORT"] = str(args.port)
    if args.host:
        environ["HOST"] = args.host
    try:
        settings = RuntimeSettings.read(environ)
    except ConfigurationError as error:
        print(f"localruntime: {error.message}", file=sys.stderr)
        return 2
    runtime = Runtime(settings, environ=environ)
    try:
        runtime.start()
    except OSError as error:
        print(
            f"localruntime: cannot start on {settings.host}:{settings.port}: {error}",
            file=sys.stderr,
        )
        return 1
    print(banner(runtime), flush=True)
    # A service manager's stop (SIGTERM) gets the same clean shutdown as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        runtime.warm_up()
        runtime.start_cron()
        runtime.wait()
    except KeyboardInterrupt:
        print("\nStopping...", flush=True)
    except ConfigurationError as error:
        print(f"localruntime: {error.message}", file=sys.stderr)
        return 2
    finally:
        runtime.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
