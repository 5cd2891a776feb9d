"""Webhook events per second: the stripe-webhook function through ``main(context)`` (verify the
signature, claim the event id, apply it), with every event delivered twice, against verifying
the signature alone (the floor any handler pays), on SQLite and on the TablesDB emulation."""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import stripe
from metering.adapters.appwrite_store import AppwriteStore
from metering.ports import UsageStore

from benchmarks.common import CallCounter, CountingProxy, Table, ratio
from localruntime.context import execute
from localruntime.sqlite_store import SQLiteStore
from tests.support.appwrite_emulator import emulated_appwrite
from tests.support.stripe_events import (
    SECRET,
    encode,
    load_app,
    load_event,
    retarget,
    sign,
    unload_app,
    webhook_context,
)

FUNCTION = "stripe-webhook"
TOPUP_TOKENS = 25_000
VERIFY_ONLY = "verify only (floor)"
OURS_FIRST = "ours: first delivery (verify, claim, apply)"
OURS_DUPLICATE = "ours: duplicate (verify, claim refused)"
OURS_MIXED = "ours: shuffled, half duplicates"


@dataclass(frozen=True)
class Delivery:
    payload: bytes
    user_id: str


@dataclass(frozen=True)
class Throughput:
    backend: str
    flow: str
    deliveries: int
    seconds: float
    store_calls: int
    answered_200: int
    # Top-up tokens the users hold after the run over what one application per event gives.
    credited: int
    expected: int

    @property
    def per_second(self) -> float:
        return self.deliveries / self.seconds if self.seconds else 0.0


def events(users: int, prefix: str) -> list[Delivery]:
    """One top-up checkout per user, each with its own event, session and payment."""
    template = load_event("checkout.session.completed.topup")
    out = []
    for n in range(users):
        user_id = f"{prefix}-{n}"
        event = retarget(
            template,
            user_id=user_id,
            customer_id=f"cus_{prefix}{n}",
            session_id=f"cs_test_{prefix}{n}",
            payment_intent=f"pi_{prefix}{n}",
            topup_tokens=TOPUP_TOKENS,
            created=int(time.time()),
        )
        out.append(Delivery(encode(event), user_id))
    return out


def _signed(deliveries: list[Delivery]) -> list[tuple[bytes, str]]:
    # Signed before the clock starts: Stripe signs, the function only verifies.
    return [(d.payload, sign(d.payload)) for d in deliveries]


def _verify_only(deliveries: list[Delivery], backend: str) -> Throughput:
    signed = _signed(deliveries)
    began = time.perf_counter()
    for payload, signature in signed:
        stripe.WebhookSignature.verify_header(payload.decode("utf-8"), signature, SECRET, 300)
        json.loads(payload)
    seconds = time.perf_counter() - began
    return Throughput(backend, VERIFY_ONLY, len(signed), seconds, 0, len(signed), 0, 0)


def _deliver(
    main: Callable[..., Any],
    counter: CallCounter,
    store: UsageStore,
    deliveries: list[Delivery],
    *,
    backend: str,
    flow: str,
    users: set[str],
) -> Throughput:
    signed = _signed(deliveries)
    contexts = [webhook_context(payload, signature=signature) for payload, signature in signed]
    before = counter.total
    began = time.perf_counter()
    answers = [execute(main, context).status_code for context in contexts]
    seconds = time.perf_counter() - began
    calls = counter.total - before
    credited = 0
    for user_id in users:
        account = store.get_account(user_id)
        credited += account.topup_tokens if account is not None else 0
    return Throughput(
        backend=backend,
        flow=flow,
        deliveries=len(signed),
        seconds=seconds,
        store_calls=calls,
        answered_200=answers.count(200),
        credited=credited,
        expected=TOPUP_TOKENS * len(users),
    )


@contextmanager
def _sqlite() -> Iterator[UsageStore]:
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as folder:
        yield SQLiteStore(str(Path(folder) / "metering.sqlite3"))


@contextmanager
def _appwrite() -> Iterator[UsageStore]:
    with emulated_appwrite() as emulator:
        yield AppwriteStore.connect(emulator.store_settings(), emulator.api_key)


def _environ() -> dict[str, str]:
    return {
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "APPWRITE_FUNCTION_API_ENDPOINT": "http://127.0.0.1:9/v1",
        "APPWRITE_FUNCTION_PROJECT_ID": "bench",
    }


def measure(users: int = 300, seed: int = 11) -> list[Throughput]:
    """Per store: verify only; ``users`` first deliveries; the same events again (duplicates);
    then fresh events shuffled with a duplicate each, on a store that has seen none of them."""
    results: list[Throughput] = []
    for backend, opened in (("SQLite", _sqlite), ("Appwrite emulator", _appwrite)):
        with opened() as store:
            counter = CallCounter()
            proxy = cast(UsageStore, CountingProxy(store, counter))
            main = load_app(FUNCTION, _environ(), store=proxy)
            try:
                first = events(users, f"u{backend[0]}")
                results.append(_verify_only(first, backend))
                mixed = events(users // 2, f"m{backend[0]}")
                doubled = mixed + mixed
                random.Random(seed).shuffle(doubled)
                for deliveries, flow, of in (
                    (first, OURS_FIRST, first),
                    (first, OURS_DUPLICATE, first),
                    (doubled, OURS_MIXED, mixed),
                ):
                    users_of = {d.user_id for d in of}
                    results.append(
                        _deliver(
                            main,
                            counter,
                            store,
                            deliveries,
                            backend=backend,
                            flow=flow,
                            users=users_of,
                        )
                    )
            finally:
                unload_app(FUNCTION)
    return results


def render(results: list[Throughput]) -> str:
    table = Table(
        [
            "store",
            "flow",
            "deliveries",
            "events/s",
            "ms per event",
            "store calls per event",
            "200s",
            "top-up tokens credited / once per event",
            "floor / this (events/s)",
        ]
    )
    floors = {r.backend: r for r in results if r.flow == VERIFY_ONLY}
    for r in results:
        floor = floors[r.backend]
        table.add(
            r.backend,
            r.flow,
            r.deliveries,
            round(r.per_second, 1),
            round(1000 * r.seconds / r.deliveries, 2) if r.deliveries else 0.0,
            "-" if r.flow == VERIFY_ONLY else round(r.store_calls / r.deliveries, 2),
            r.answered_200,
            "-" if r.flow == VERIFY_ONLY else ratio(r.credited, r.expected),
            ratio(floor.per_second, r.per_second),
        )
    heading = (
        "Each event a top-up Checkout Session completed for its own user"
        f" ({TOPUP_TOKENS:,} tokens), signed with stripe-python's signer before the clock starts"
        " and delivered one after another, as Stripe delivers to one endpoint. The floor verifies"
        " the signature and parses the body (`stripe.WebhookSignature.verify_header`,"
        " `json.loads`), what the function's adapter does before anything else; ours is the"
        " function's `main(context)`: verify, claim the event id, apply, complete the claim."
        " Credited / once per event is 1.00x when no duplicate was applied twice. On the"
        " emulator there is no simulated network delay."
    )
    return heading + "\n\n" + table.render()


def run(quick: bool) -> str:
    return render(measure(users=40 if quick else 300))
