"""Identity through the Appwrite Account API: a JWT in, the verified user id out."""

from __future__ import annotations

from appwrite.client import Client
from appwrite.exception import AppwriteException
from appwrite.services.account import Account

from ..config import StoreSettings
from ..errors import Unauthenticated, UpstreamUnavailable
from ..identity import CachedVerifier
from ..ports import IdentityVerifier

_UNAUTHORIZED = 401


class AppwriteAccountVerifier:
    """Asks ``GET /account`` as the JWT's user; Appwrite answers 401 for a bad or expired JWT."""

    def __init__(self, endpoint: str, project_id: str) -> None:
        self._endpoint = endpoint
        self._project_id = project_id

    def verify(self, jwt: str) -> str:
        # A client per call: the JWT is per user, and a shared client would carry it over.
        client = Client().set_endpoint(self._endpoint).set_project(self._project_id).set_jwt(jwt)
        try:
            user = Account(client).get()
        except AppwriteException as exc:
            if exc.code == _UNAUTHORIZED:
                raise Unauthenticated("the session is invalid or expired") from exc
            raise UpstreamUnavailable(f"identity check failed ({exc.code})") from exc
        except Exception as exc:
            # The SDK's own parsing of an unexpected answer fails outside AppwriteException.
            raise UpstreamUnavailable("identity check failed: unreadable answer") from exc
        user_id = getattr(user, "id", "")
        if not isinstance(user_id, str) or not user_id:
            raise UpstreamUnavailable("identity check answered without a user id")
        return user_id


def caller_verifier(settings: StoreSettings, verifier: IdentityVerifier | None) -> CachedVerifier:
    """How a function checks its caller's JWT: ``verifier`` (a test's) or the Appwrite project's
    Account API, behind the cache that spares a warm execution the round trip."""
    identity = verifier or AppwriteAccountVerifier(
        settings.appwrite_endpoint, settings.appwrite_project_id
    )
    return CachedVerifier(identity)
