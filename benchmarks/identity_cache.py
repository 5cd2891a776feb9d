"""The JWT verification cache: Account API calls and identity latency per request with the former
60 s cache, the present bound (``JWT_CACHE_SECONDS``) and no cache, against how long each lets a
revoked session's JWT keep working on a warm instance.

Traffic runs on a simulated clock through the real ``CachedVerifier``; JWTs are minted as
Appwrite mints them, one per execution, identical for one session within the same second. The
cost of one verification is measured: the real Appwrite SDK's ``GET /account`` against the fake
Account API (tests/support/identity.py) at the HTTP edge, plus ``ROUND_TRIP_MS`` of network.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import responses
from metering.adapters.appwrite_account import AppwriteAccountVerifier
from metering.identity import JWT_CACHE_SECONDS, CachedVerifier

from benchmarks.common import ROUND_TRIP_MS, Table, ratio
from tests.support.identity import ENDPOINT, PROJECT_ID, FakeAccounts

FORMER_TTL_SECONDS = 60.0
CACHES: tuple[tuple[str, float], ...] = (
    ("60 s (former)", FORMER_TTL_SECONDS),
    (f"{JWT_CACHE_SECONDS:g} s (now)", JWT_CACHE_SECONDS),
    ("none", 0.0),
)


@dataclass(frozen=True)
class Workload:
    """What one warm instance of a function sees of its users over ``minutes``."""

    name: str
    # Offsets (seconds) of one user action's executions, from the action's start.
    action: tuple[float, ...]
    # Seconds between a user's actions.
    every: float
    # One JWT for the whole run (a caller that holds one), instead of one per execution.
    reused_jwt: bool = False


WORKLOADS = (
    Workload("a message every 10 s", (0.0,), 10.0),
    Workload("send, Stop, read back (0.4 s, 1.2 s) every 10 s", (0.0, 0.4, 1.2), 10.0),
    Workload("a burst of 3 within 0.2 s every 5 s", (0.0, 0.1, 0.2), 5.0),
    Workload("one JWT reused, a request every second (worst case)", (0.0,), 1.0, reused_jwt=True),
)


@dataclass(frozen=True)
class Traffic:
    workload: str
    cache: str
    ttl: float
    requests: int
    verifications: int

    @property
    def per_request(self) -> float:
        return self.verifications / self.requests


@dataclass(frozen=True)
class Measured:
    traffic: list[Traffic]
    verify_ms: float  # one Account API call through the SDK, in process (no network)
    hit_ms: float  # one answer from the cache

    @property
    def call_ms(self) -> float:
        """One verification as a function pays it: the SDK's work and the network's."""
        return self.verify_ms + ROUND_TRIP_MS

    def identity_ms(self, traffic: Traffic) -> float:
        hits = traffic.requests - traffic.verifications
        return (traffic.verifications * self.call_ms + hits * self.hit_ms) / traffic.requests


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _CountingAccounts:
    def __init__(self) -> None:
        self.calls = 0

    def verify(self, jwt: str) -> str:
        self.calls += 1
        return jwt.partition(".")[0]


def simulate(workload: Workload, ttl: float, *, users: int, minutes: float, seed: int) -> Traffic:
    """Every execution of ``users`` following ``workload`` on one instance, in time order."""
    rng = random.Random(seed)
    executions: list[tuple[float, str]] = []
    for user in range(users):
        start = rng.uniform(0, workload.every)
        while start < minutes * 60:
            executions += [(start + offset, f"user-{user}") for offset in workload.action]
            start += workload.every
    executions.sort()
    clock, accounts = _Clock(), _CountingAccounts()
    verifier = CachedVerifier(accounts, ttl_seconds=ttl, clock=clock)
    for at, session in executions:
        clock.now = at
        minted = 0 if workload.reused_jwt else int(at)
        verifier.verify(f"{session}.{minted}")
    cache = next(name for name, seconds in CACHES if seconds == ttl)
    return Traffic(workload.name, cache, ttl, len(executions), accounts.calls)


def _per_call_ms(call: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(repeat):
            call()
        samples.append((time.perf_counter() - began) * 1000 / repeat)
    return statistics.median(samples)


def verification_costs(repeat: int) -> tuple[float, float]:
    """(one SDK verification, one cache hit) in milliseconds."""
    accounts = FakeAccounts()
    jwt = accounts.issue("alice")
    sdk = AppwriteAccountVerifier(ENDPOINT, PROJECT_ID)
    with responses.RequestsMock() as mock:
        accounts.register(mock)
        verify_ms = _per_call_ms(lambda: sdk.verify(jwt), repeat)
    cached = CachedVerifier(_CountingAccounts())
    cached.verify("alice.0")
    hit_ms = _per_call_ms(lambda: cached.verify("alice.0"), repeat * 100)
    return verify_ms, hit_ms


def measure(users: int = 20, minutes: float = 10.0, repeat: int = 200, seed: int = 7) -> Measured:
    traffic = [
        simulate(workload, ttl, users=users, minutes=minutes, seed=seed)
        for workload in WORKLOADS
        for _, ttl in CACHES
    ]
    verify_ms, hit_ms = verification_costs(repeat)
    return Measured(traffic, verify_ms, hit_ms)


def render(measured: Measured) -> str:
    table = Table(
        [
            "workload",
            "cache",
            "verifications / request",
            "identity ms / request",
            "calls vs 60 s",
            "calls vs none",
            "revoked JWT accepted for",
        ]
    )
    former = {t.workload: t for t in measured.traffic if t.ttl == FORMER_TTL_SECONDS}
    uncached = {t.workload: t for t in measured.traffic if t.ttl == 0}
    for traffic in measured.traffic:
        table.add(
            traffic.workload,
            traffic.cache,
            f"{traffic.per_request:.3f}",
            f"{measured.identity_ms(traffic):.2f}",
            ratio(traffic.verifications, former[traffic.workload].verifications),
            ratio(traffic.verifications, uncached[traffic.workload].verifications),
            f"up to {traffic.ttl:g} s" if traffic.ttl else "0 s",
        )
    notes = (
        f"One verification: {measured.verify_ms:.2f} ms in process (the Appwrite SDK's"
        f" `GET /account`, faked at HTTP) + {ROUND_TRIP_MS:g} ms of network ="
        f" {measured.call_ms:.1f} ms; a cache hit: {measured.hit_ms * 1000:.1f} µs"
        f" ({ratio(measured.call_ms, measured.hit_ms)} cheaper). Ratios divide the row's"
        " verifications by the 60 s or uncached row's; below 1.00x is fewer calls."
    )
    return f"{table.render()}\n\n{notes}"


def run(quick: bool) -> str:
    if quick:
        return render(measure(users=5, minutes=2, repeat=50))
    return render(measure())
