"""How long a warm instance keeps trusting a JWT it verified: a revoked session stops working
within the bound, and the functions' verifier is built with that bound."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from metering.adapters.appwrite_account import caller_verifier
from metering.config import EnvReader, StoreSettings
from metering.errors import Unauthenticated
from metering.identity import JWT_CACHE_SECONDS, CachedVerifier

from benchmarks import identity_cache


@dataclass
class Sessions:
    """An Account API whose sessions can be revoked: a revoked JWT is refused from then on."""

    users: dict[str, str]
    calls: list[str] = field(default_factory=list)

    def verify(self, jwt: str) -> str:
        self.calls.append(jwt)
        if jwt not in self.users:
            raise Unauthenticated("the session is invalid or expired")
        return self.users[jwt]


@dataclass
class Clock:
    now: float = 5_000.0

    def __call__(self) -> float:
        return self.now


def test_the_bound_is_a_few_seconds() -> None:
    """What docs/security.md promises: a revoked session's JWT works for at most 5 s per warm
    instance (it was 60 s)."""
    assert 0 < JWT_CACHE_SECONDS <= 5


def test_a_revoked_session_is_refused_once_the_bound_has_passed() -> None:
    sessions, clock = Sessions({"jwt-a": "alice"}), Clock()
    cached = CachedVerifier(sessions, clock=clock)
    assert cached.verify("jwt-a") == "alice"

    del sessions.users["jwt-a"]  # the user logs out; the JWT's session is gone
    clock.now += JWT_CACHE_SECONDS + 0.001

    with pytest.raises(Unauthenticated):
        cached.verify("jwt-a")
    assert sessions.calls == ["jwt-a", "jwt-a"]


def test_within_the_bound_a_repeated_jwt_costs_no_call() -> None:
    """The point of the cache: the same JWT again (the platform mints one per execution, the
    same within a second) is answered from memory."""
    sessions, clock = Sessions({"jwt-a": "alice"}), Clock()
    cached = CachedVerifier(sessions, clock=clock)
    cached.verify("jwt-a")
    clock.now += JWT_CACHE_SECONDS * 0.9
    assert cached.verify("jwt-a") == "alice"
    assert sessions.calls == ["jwt-a"]


@pytest.mark.parametrize("ttl", [0.0, -1.0], ids=["zero", "negative"])
def test_a_cache_of_no_duration_asks_every_time(ttl: float) -> None:
    sessions, clock = Sessions({"jwt-a": "alice"}), Clock()
    cached = CachedVerifier(sessions, ttl_seconds=ttl, clock=clock)
    for _ in range(3):
        cached.verify("jwt-a")
    assert len(sessions.calls) == 3


def test_the_functions_verifier_uses_the_bound() -> None:
    """chat, usage and billing all build their verifier here."""
    env = EnvReader(
        {
            "APPWRITE_FUNCTION_API_ENDPOINT": "http://appwrite.test/v1",
            "APPWRITE_FUNCTION_PROJECT_ID": "p",
        }
    )
    settings = StoreSettings.read(env)
    env.finish()
    verifier = caller_verifier(settings, Sessions({}))
    assert verifier.ttl_seconds == JWT_CACHE_SECONDS


def test_the_bound_keeps_every_hit_of_per_execution_jwts() -> None:
    """The trade-off docs/security.md states, on benchmarks/identity_cache.py's traffic: with a
    JWT minted per execution (Appwrite's way) the bound verifies exactly as often as the former
    60 s did, and fewer times than no cache where a session's executions come close together;
    only a JWT held and reused for long costs more calls."""
    per_execution = [w for w in identity_cache.WORKLOADS if not w.reused_jwt]
    for workload in per_execution:
        now, former, none = (
            identity_cache.simulate(workload, ttl, users=3, minutes=1, seed=1)
            for ttl in (JWT_CACHE_SECONDS, identity_cache.FORMER_TTL_SECONDS, 0.0)
        )
        assert now.verifications == former.verifications <= none.verifications
    bursty = identity_cache.WORKLOADS[2]
    burst = identity_cache.simulate(bursty, JWT_CACHE_SECONDS, users=3, minutes=1, seed=1)
    assert burst.per_request < 0.5
    reused = next(w for w in identity_cache.WORKLOADS if w.reused_jwt)
    held = identity_cache.simulate(reused, JWT_CACHE_SECONDS, users=1, minutes=1, seed=1)
    assert held.verifications == pytest.approx(60 / JWT_CACHE_SECONDS, abs=1)
