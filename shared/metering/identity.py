"""Who is calling: the user id verified from the execution's JWT, never taken from a header."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from .errors import Forbidden, Unauthenticated
from .ports import IdentityVerifier

JWT_HEADER = "x-appwrite-user-jwt"
USER_ID_HEADER = "x-appwrite-user-id"
# A bearer credential's syntax (RFC 6750 token68), which every JWT has. Anything else cannot be
# valid and could not even be sent on as a header: refused here as 401, not failed upstream.
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*")
# How long a warm instance trusts a JWT it has verified, so also how long a JWT whose session was
# revoked may still be accepted there. Appwrite mints a JWT per execution (the same one within a
# second), so repeats come close together: 5 s keeps every hit the former 60 s had on that traffic
# (benchmarks/identity_cache.py) with a twelfth of the window. docs/security.md has the trade-off.
JWT_CACHE_SECONDS = 5.0


def caller_id(headers: Mapping[str, str], verifier: IdentityVerifier) -> str:
    """The verified user id of an execution.

    ``x-appwrite-user-id`` is only a hint (a caller of createExecution can forge it); when present
    it must agree with the user the JWT belongs to.
    """
    jwt = headers.get(JWT_HEADER, "").strip()
    if not jwt:
        raise Unauthenticated("sign in to use this function")
    if not _TOKEN68.fullmatch(jwt):
        raise Unauthenticated("the session is invalid or expired")
    user_id = verifier.verify(jwt)
    hint = headers.get(USER_ID_HEADER, "").strip()
    if hint and hint != user_id:
        raise Forbidden("the user id does not match the signed-in user")
    return user_id


class CachedVerifier:
    """Remembers verified JWTs for ``ttl_seconds``, keyed by their hash, so that warm executions
    skip the identity round trip. Failures are never cached; a TTL of 0 asks every time."""

    def __init__(
        self,
        verifier: IdentityVerifier,
        *,
        ttl_seconds: float = JWT_CACHE_SECONDS,
        max_entries: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._verifier = verifier
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def ttl_seconds(self) -> float:
        return self._ttl

    def verify(self, jwt: str) -> str:
        key = hashlib.sha256(jwt.encode("utf-8", "surrogatepass")).hexdigest()
        now = self._clock()
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None and cached[1] > now:
                return cached[0]
            self._entries.pop(key, None)
        user_id = self._verifier.verify(jwt)
        if self._ttl <= 0:
            return user_id
        with self._lock:
            self._entries[key] = (user_id, now + self._ttl)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return user_id
