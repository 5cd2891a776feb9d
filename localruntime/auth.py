"""Users, sessions and JWTs of the local Appwrite surface, kept in one SQLite file.

Passwords are stored as scrypt hashes and session secrets as SHA-256 digests; JWTs are HS256 tokens
signed with a key generated once per data folder, bound to the session they were minted for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .wire import AppwriteError, invalid_param

SESSION_LIFETIME = timedelta(days=365)
JWT_DEFAULT_SECONDS = 900
JWT_MAX_SECONDS = 3600
DYNAMIC_KEY_SECONDS = 900
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_CUSTOM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,35}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    password TEXT NOT NULL,
    createdAt REAL NOT NULL,
    passwordUpdatedAt REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    userId TEXT NOT NULL REFERENCES users (id),
    secretHash TEXT NOT NULL UNIQUE,
    ip TEXT NOT NULL,
    createdAt REAL NOT NULL,
    expiresAt REAL NOT NULL
);
"""

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def unique_id() -> str:
    """A 20-character id shaped like Appwrite's ``ID.unique()``: time-ordered hex plus entropy."""
    micros = time.time_ns() // 1000
    return f"{micros:013x}"[-13:] + secrets.token_hex(4)[:7]


@dataclass(frozen=True)
class User:
    id: str
    email: str
    name: str
    created_at: datetime
    password_updated_at: datetime


@dataclass(frozen=True)
class Session:
    id: str
    user_id: str
    ip: str
    created_at: datetime
    expires_at: datetime


class AuthStore:
    """Thread-safe: one connection guarded by a lock (every operation is a few rows)."""

    def __init__(self, path: Path, clock: Clock = utc_now) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._clock = clock
        self._signing_key = self._key("jwtSigningKey")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- users ---------------------------------------------------------------------------------

    def create_user(self, user_id: str, email: str, password: str, name: str) -> User:
        """Sign up; raises Appwrite's 400 and 409 errors for bad or duplicate input."""
        user_id = unique_id() if user_id == "unique()" else user_id
        if not _CUSTOM_ID.match(user_id):
            raise invalid_param(
                "userId",
                "Parameter must contain at most 36 chars. Valid chars are a-z, A-Z, 0-9, period, "
                "hyphen, and underscore. Can't start with a special char",
            )
        email = email.strip().lower()
        if not _EMAIL.match(email) or len(email) > 255:
            raise invalid_param("email", "Value must be a valid email address")
        if not 8 <= len(password) <= 256:
            raise invalid_param("password", "Password must be between 8 and 256 characters long.")
        if len(name) > 128:
            raise invalid_param("name", "Value must be a valid string and no longer than 128 chars")
        hashed = hash_password(password)
        now = self._clock().timestamp()
        with self._transaction() as db:
            clash = db.execute(
                "SELECT 1 FROM users WHERE id = ? OR email = ?", (user_id, email)
            ).fetchone()
            if clash:
                raise AppwriteError(
                    409,
                    "user_already_exists",
                    "A user with the same id, email, or phone already exists in this project.",
                )
            db.execute(
                "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)",
                (user_id, email, name, hashed, now, now),
            )
        user = self.user(user_id)
        assert user is not None
        return user

    def user(self, user_id: str) -> User | None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT id, email, name, createdAt, passwordUpdatedAt FROM users WHERE id = ?",
                (user_id,),
            ).fetchone()
        return None if row is None else _user(row)

    def user_by_email(self, email: str) -> User | None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT id, email, name, createdAt, passwordUpdatedAt FROM users WHERE email = ?",
                (email.strip().lower(),),
            ).fetchone()
        return None if row is None else _user(row)

    # -- sessions ------------------------------------------------------------------------------

    def create_session(self, email: str, password: str, ip: str) -> tuple[Session, str]:
        """Log in: the new session and its secret (the cookie value); 401 on bad credentials."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT id, password FROM users WHERE email = ?", (email.strip().lower(),)
            ).fetchone()
        # Hash even for an unknown email so that timing does not reveal which emails exist.
        stored = row[1] if row else _DUMMY_HASH
        if not verify_password(password, stored) or row is None:
            raise AppwriteError(
                401,
                "user_invalid_credentials",
                "Invalid credentials. Please check the email and password.",
            )
        secret = secrets.token_hex(32)
        now = self._clock()
        session = Session(unique_id(), row[0], ip, now, now + SESSION_LIFETIME)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?)",
                (
                    session.id,
                    session.user_id,
                    _digest(secret),
                    ip,
                    now.timestamp(),
                    session.expires_at.timestamp(),
                ),
            )
        return session, secret

    def session_by_secret(self, secret: str) -> Session | None:
        return self._session("secretHash", _digest(secret))

    def session(self, session_id: str) -> Session | None:
        return self._session("id", session_id)

    def delete_session(self, session_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def delete_sessions(self, user_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM sessions WHERE userId = ?", (user_id,))

    def _session(self, column: str, value: str) -> Session | None:
        with self._transaction() as db:
            row = db.execute(
                f"SELECT id, userId, ip, createdAt, expiresAt FROM sessions WHERE {column} = ?",
                (value,),
            ).fetchone()
        if row is None:
            return None
        session = Session(row[0], row[1], row[2], _at(row[3]), _at(row[4]))
        return session if session.expires_at > self._clock() else None

    # -- JWTs and dynamic keys -----------------------------------------------------------------

    def mint_jwt(self, session: Session, seconds: int = JWT_DEFAULT_SECONDS) -> str:
        now = int(self._clock().timestamp())
        claims = {"userId": session.user_id, "sessionId": session.id, "iat": now}
        return self._sign({**claims, "exp": now + seconds})

    def verify_jwt(self, token: str) -> Session:
        """The live session a JWT was minted for; 401 ``user_jwt_invalid`` otherwise."""
        claims = self._verify(token)
        session = None
        if claims is not None and isinstance(claims.get("sessionId"), str):
            session = self.session(claims["sessionId"])
        if session is None or claims is None or session.user_id != claims.get("userId"):
            raise AppwriteError(
                401,
                "user_jwt_invalid",
                "Failed to verify JWT. Invalid token: Expired or invalid signature",
            )
        return session

    def dynamic_key(self, function_id: str, execution_id: str) -> str:
        """A per-execution key shaped like Appwrite's dynamic keys (a signed, expiring token)."""
        now = int(self._clock().timestamp())
        claims = {"projectId": "local", "functionId": function_id, "executionId": execution_id}
        return "dynamic_" + self._sign({**claims, "iat": now, "exp": now + DYNAMIC_KEY_SECONDS})

    def _sign(self, claims: dict[str, Any]) -> str:
        header = _b64(json.dumps({"typ": "JWT", "alg": "HS256"}).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{payload}".encode()
        signature = hmac.new(self._signing_key, signing_input, hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(signature)}"

    def _verify(self, token: str) -> dict[str, Any] | None:
        parts = token.split(".")
        if len(parts) != 3:
            return None
        signing_input = f"{parts[0]}.{parts[1]}".encode()
        expected = hmac.new(self._signing_key, signing_input, hashlib.sha256).digest()
        try:
            valid = hmac.compare_digest(expected, _unb64(parts[2]))
            claims = json.loads(_unb64(parts[1])) if valid else None
        except ValueError:
            return None
        if not isinstance(claims, dict):
            return None
        expires = claims.get("exp")
        if not isinstance(expires, int) or expires <= self._clock().timestamp():
            return None
        return claims

    # -- plumbing ------------------------------------------------------------------------------

    def _key(self, name: str) -> bytes:
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES (?, ?)", (name, secrets.token_hex(32)))
                row = db.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()
        return bytes.fromhex(row[0])

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    scheme, salt, digest = stored.split("$")
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), dklen=32, **_SCRYPT)
    return hmac.compare_digest(candidate, bytes.fromhex(digest))


_DUMMY_HASH = "scrypt$" + "00" * 16 + "$" + "00" * 32


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _user(row: tuple[Any, ...]) -> User:
    return User(row[0], row[1], row[2], _at(row[3]), _at(row[4]))


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64") from exc
