"""Appwrite's Account API at the HTTP edge: ``GET /v1/account`` answers the JWT's user or 401.

Served through ``responses`` so the unchanged Appwrite SDK (and its parsing) runs.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import responses
from requests import PreparedRequest

ENDPOINT = "http://appwrite.identity.test/v1"
PROJECT_ID = "identity-test"
SERVER_VERSION = "1.9.5"


def user_document(
    user_id: str, stamp: str = "2026-11-01T09:00:00.000+00:00", name: str = "", email: str = ""
) -> dict[str, Any]:
    """Appwrite's User document, every timestamp ``stamp``; name and email follow the id unless
    given."""
    return {
        "$id": user_id,
        "$createdAt": stamp,
        "$updatedAt": stamp,
        "name": name or f"User {user_id}",
        "registration": stamp,
        "status": True,
        "labels": [],
        "passwordUpdate": stamp,
        "email": email or f"{user_id}@example.test",
        "phone": "",
        "emailVerification": True,
        "phoneVerification": False,
        "mfa": False,
        "prefs": {},
        "targets": [],
        "accessedAt": stamp,
    }


@dataclass
class FakeAccounts:
    """JWTs issued here are valid; any other JWT gets Appwrite's 401 ``user_jwt_invalid``."""

    endpoint: str = ENDPOINT
    users: dict[str, str] = field(default_factory=dict)
    calls: int = 0
    # Set to a status to make every call fail with it (an Appwrite outage).
    failing_status: int | None = None

    def issue(self, user_id: str) -> str:
        jwt = "eyJ" + secrets.token_urlsafe(24)
        self.users[jwt] = user_id
        return jwt

    def register(self, mock: responses.RequestsMock) -> None:
        mock.add_callback(
            responses.GET,
            f"{self.endpoint}/account",
            callback=self._account,
            content_type="application/json",
        )

    def _account(self, request: PreparedRequest) -> tuple[int, dict[str, str], str]:
        self.calls += 1
        headers: dict[str, str] = {}
        if self.failing_status is not None:
            return self.failing_status, headers, _error(self.failing_status, "general_unknown")
        if request.headers.get("X-Appwrite-Project") != PROJECT_ID:
            return 404, headers, _error(404, "project_not_found")
        user_id = self.users.get(str(request.headers.get("X-Appwrite-JWT", "")))
        if user_id is None:
            return 401, headers, _error(401, "user_jwt_invalid")
        return 200, headers, json.dumps(user_document(user_id))


def _error(status: int, error_type: str) -> str:
    return json.dumps(
        {
            "message": f"fake {error_type}",
            "code": status,
            "type": error_type,
            "version": SERVER_VERSION,
        }
    )
