"""Who the caller is: the JWT decides, the user-id header is only a hint, verifications cache."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from metering.errors import Forbidden, Unauthenticated, UpstreamUnavailable
from metering.identity import CachedVerifier, caller_id


@dataclass
class CountingVerifier:
    users: dict[str, str]
    calls: list[str] = field(default_factory=list)
    outage: bool = False

    def verify(self, jwt: str) -> str:
        self.calls.append(jwt)
        if self.outage:
            raise UpstreamUnavailable("identity down")
        if jwt not in self.users:
            raise Unauthenticated("bad jwt")
        return self.users[jwt]


@dataclass
class Clock:
    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-appwrite-user-jwt": "jwt-a"}, "alice"),
        ({"x-appwrite-user-jwt": "jwt-a", "x-appwrite-user-id": "alice"}, "alice"),
        ({"x-appwrite-user-jwt": " jwt-a ", "x-appwrite-user-id": ""}, "alice"),
    ],
    ids=["jwt-only", "matching-hint", "blank-hint"],
)
def test_the_verified_jwt_names_the_caller(headers: dict[str, str], expected: str) -> None:
    """The id comes from the verifier; an absent or matching hint is accepted."""
    assert caller_id(headers, CountingVerifier({"jwt-a": "alice"})) == expected


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-appwrite-user-id": "alice"}, {"x-appwrite-user-jwt": "  "}],
    ids=["nothing", "hint-only", "blank-jwt"],
)
def test_without_a_jwt_the_caller_is_unauthenticated(headers: dict[str, str]) -> None:
    """No JWT, no identity: the user-id header alone never authenticates."""
    verifier = CountingVerifier({"jwt-a": "alice"})

    with pytest.raises(Unauthenticated):
        caller_id(headers, verifier)

    assert verifier.calls == []


def test_a_hint_naming_someone_else_is_forbidden() -> None:
    """A forged x-appwrite-user-id (createExecution lets callers send one) is refused."""
    headers = {"x-appwrite-user-jwt": "jwt-a", "x-appwrite-user-id": "victim"}

    with pytest.raises(Forbidden):
        caller_id(headers, CountingVerifier({"jwt-a": "alice"}))


def test_a_verified_jwt_is_remembered_until_the_ttl_passes() -> None:
    """Within 60 s the same JWT costs no second call; after it, it is verified again."""
    inner, clock = CountingVerifier({"jwt-a": "alice"}), Clock()
    cached = CachedVerifier(inner, ttl_seconds=60, clock=clock)

    assert cached.verify("jwt-a") == "alice"
    clock.now += 59
    assert cached.verify("jwt-a") == "alice"
    assert len(inner.calls) == 1
    clock.now += 2
    assert cached.verify("jwt-a") == "alice"
    assert len(inner.calls) == 2


def test_failures_are_never_cached() -> None:
    """A JWT refused once is asked about again; an outage does not stick either."""
    inner = CountingVerifier({}, outage=True)
    cached = CachedVerifier(inner, clock=Clock())

    with pytest.raises(UpstreamUnavailable):
        cached.verify("jwt-a")
    inner.outage = False
    with pytest.raises(Unauthenticated):
        cached.verify("jwt-a")
    inner.users["jwt-a"] = "alice"
    assert cached.verify("jwt-a") == "alice"
    assert len(inner.calls) == 3


def test_the_cache_is_bounded_and_forgets_the_oldest_first() -> None:
    """Past max_entries the least recently verified JWT is dropped."""
    inner = CountingVerifier({f"jwt-{i}": f"user-{i}" for i in range(4)})
    cached = CachedVerifier(inner, max_entries=2, clock=Clock())

    for jwt in ("jwt-0", "jwt-1", "jwt-2"):
        cached.verify(jwt)
    cached.verify("jwt-2")
    cached.verify("jwt-0")

    assert inner.calls == ["jwt-0", "jwt-1", "jwt-2", "jwt-0"]
