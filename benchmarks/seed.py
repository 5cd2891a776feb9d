"""The baseline: the seed's naive metering, on the same stores and the same model as ours.

Read the usage, refuse at the limit, call the model, then add the tokens with a read-then-write
increment (read ``currentTokensUsed``, write it back plus the tokens). No reservation, no ledger,
no stream: the seed waits for the whole reply.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from appwrite.client import Client
from appwrite.query import Query
from appwrite.services.tables_db import TablesDB
from metering.adapters.anthropic_model import AnthropicModel
from metering.chat import ChatRequest, ChatSettings
from metering.config import Secret, StoreSettings
from metering.model import (
    STOP_TOOL_USE,
    Block,
    Message,
    ModelReply,
    ModelRequest,
    TextBlock,
    ToolResultBlock,
    ToolSpec,
)
from metering.ports import ModelClient
from metering.settings import (
    CHAT_MAX_TOKENS,
    CHAT_MIN_OUTPUT_TOKENS,
    CHAT_MODEL,
    CHAT_SYSTEM_PROMPT,
)


class SeedModel(Protocol):
    """The seed's model client: one blocking call that returns the whole reply."""

    def complete(self, request: ModelRequest) -> ModelReply: ...


class _Whole:
    """A sink that takes every event and never cuts: what waiting for the whole reply is."""

    def text(self, delta: str) -> None:
        pass

    def tool_input(self, delta: str) -> None:
        pass

    def should_stop(self) -> bool:
        return False


@dataclass(frozen=True)
class Unstreamed:
    """The seed's blocking call on top of a streaming ``ModelClient`` (the same fake model and
    latency as ours): it reads the stream to its end and returns the reply."""

    model: ModelClient
    deadline_seconds: float = 60.0

    def complete(self, request: ModelRequest) -> ModelReply:
        return self.model.stream(request, _Whole(), self.deadline_seconds).reply


@dataclass(frozen=True)
class SeedUsage:
    row_id: str
    used: int
    limit: int


class SeedStore(Protocol):
    """The three row operations the seed's flow makes."""

    def read_usage(self, user_id: str) -> SeedUsage:
        """The user's row, found by ``userId``."""

    def read_used(self, row_id: str) -> int:
        """``currentTokensUsed`` of the row, read again just before the write."""

    def write_used(self, row_id: str, used: int) -> None:
        """Overwrite ``currentTokensUsed``."""


class SeedSQLite:
    """The seed's operations as plain statements on the SQLite store's file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            connection.execute("PRAGMA busy_timeout = 30000")
            self._local.connection = connection
        return connection

    def read_usage(self, user_id: str) -> SeedUsage:
        row = (
            self._connection()
            .execute(
                "SELECT id, currentTokensUsed, maxTokensPerMonth + addonTokens + topupTokens"
                " FROM subscriptions WHERE userId = ?",
                (user_id,),
            )
            .fetchone()
        )
        return SeedUsage(row_id=row[0], used=row[1], limit=row[2])

    def read_used(self, row_id: str) -> int:
        row = (
            self._connection()
            .execute("SELECT currentTokensUsed FROM subscriptions WHERE id = ?", (row_id,))
            .fetchone()
        )
        return int(row[0])

    def write_used(self, row_id: str, used: int) -> None:
        self._connection().execute(
            "UPDATE subscriptions SET currentTokensUsed = ? WHERE id = ?", (used, row_id)
        )


class SeedAppwrite:
    """The seed's operations as TablesDB calls: list by ``userId``, get, update."""

    def __init__(self, settings: StoreSettings, api_key: str) -> None:
        client = Client()
        client.set_endpoint(settings.appwrite_endpoint)
        client.set_project(settings.appwrite_project_id)
        client.set_key(api_key)
        self._db = TablesDB(client)
        self._database = settings.database_id
        self._table = settings.subscriptions_table

    def read_usage(self, user_id: str) -> SeedUsage:
        result = self._db.list_rows(
            self._database, self._table, [Query.equal("userId", user_id), Query.limit(1)]
        )
        row = _document(result.rows[0])
        limit = sum(
            int(row.get(column) or 0)
            for column in ("maxTokensPerMonth", "addonTokens", "topupTokens")
        )
        return SeedUsage(str(row["$id"]), int(row.get("currentTokensUsed") or 0), limit)

    def read_used(self, row_id: str) -> int:
        row = _document(self._db.get_row(self._database, self._table, row_id))
        return int(row.get("currentTokensUsed") or 0)

    def write_used(self, row_id: str, used: int) -> None:
        self._db.update_row(self._database, self._table, row_id, {"currentTokensUsed": used})


def _document(row: Any) -> dict[str, Any]:
    """The columns of an SDK row model plus its id."""
    data = dict(row.data) if isinstance(row.data, dict) else {}
    data["$id"] = row.id
    return data


@dataclass(frozen=True)
class SeedResult:
    status: int  # 200, or 429 when the usage read was already at the limit
    charged: int  # tokens this request believes it added to the counter
    steps: int


def seed_chat(
    store: SeedStore,
    model: SeedModel,
    settings: ChatSettings,
    user_id: str,
    request: ChatRequest,
    *,
    tool: ToolSpec | None = None,
) -> SeedResult:
    """One chat request the seed's way (the tool, when given, reads the usage row)."""
    usage = store.read_usage(user_id)
    if usage.used >= usage.limit:
        return SeedResult(status=429, charged=0, steps=0)
    conversation = list(request.messages)
    charged = 0
    for step in range(settings.max_steps):
        last = step == settings.max_steps - 1
        reply = model.complete(
            ModelRequest(
                model=settings.model,
                system=settings.system_prompt,
                messages=tuple(conversation),
                max_tokens=settings.max_tokens,
                tools=(tool,) if tool is not None else (),
                tool_choice="none" if last else "auto",
            )
        )
        tokens = reply.usage.total_tokens
        # The race: another request may write between this read and the write below.
        current = store.read_used(usage.row_id)
        store.write_used(usage.row_id, current + tokens)
        charged += tokens
        if reply.stop_reason != STOP_TOOL_USE or not reply.tool_uses or last or tool is None:
            return SeedResult(status=200, charged=charged, steps=step + 1)
        said = tuple(b for b in reply.blocks if not isinstance(b, TextBlock) or b.text)
        conversation.append(Message(role="assistant", blocks=said))
        results: list[Block] = []
        for call in reply.tool_uses:
            now = store.read_usage(user_id)
            content = json.dumps({"used": now.used, "limit": now.limit})
            results.append(ToolResultBlock(call.id, content))
        conversation.append(Message(role="user", blocks=tuple(results)))
    return SeedResult(status=200, charged=charged, steps=settings.max_steps)


# -- the seed's flow as a function the local runtime serves ---------------------------------------

_BOOTSTRAP = """
ENVIRON = {}


def configure(environ=None, **overrides):
    ENVIRON.clear()
    ENVIRON.update(environ or {})
"""

_MAIN = """
from benchmarks.seed import serve_seed

from .bootstrap import ENVIRON

TARGET = {target!r}


def main(context):
    return serve_seed(context, ENVIRON, TARGET)
"""


def write_seed_function(folder: Path, function_id: str, target: Mapping[str, str]) -> Path:
    """A function folder whose ``main`` runs ``seed_chat`` for the caller, on the store ``target``
    names (``{"sqlite": path}`` or the emulator's ``endpoint``, ``project`` and ``key``), with the
    model the runtime gives the chat (its ``ANTHROPIC_*`` variables)."""
    source = folder / function_id / "src"
    source.mkdir(parents=True, exist_ok=True)
    (source / "bootstrap.py").write_text(_BOOTSTRAP, encoding="utf-8")
    (source / "main.py").write_text(_MAIN.format(target=dict(target)), encoding="utf-8")
    return folder / function_id


_wired: dict[tuple[str, ...], tuple[SeedStore, SeedModel, ChatSettings]] = {}
_wiring = threading.Lock()


def serve_seed(context: Any, environ: Mapping[str, str], target: Mapping[str, str]) -> Any:
    """One execution of the seed's chat: the caller from Appwrite's header, the body's messages,
    the answer as the seed gave it (200 with the tokens it added, or 429)."""
    store, model, settings = _wire(environ, target)
    user_id = context.req.headers.get("x-appwrite-user-id", "")
    body = json.loads(context.req.body_text or "{}")
    messages = tuple(Message.text(m["role"], m["content"]) for m in body.get("messages", []))
    result = seed_chat(store, model, settings, user_id, ChatRequest(messages=messages))
    if result.status == 429:
        return context.res.json({"error": {"code": "token_limit_exceeded"}}, 429)
    return context.res.json({"message": {"usage": {"totalTokens": result.charged}}}, 200)


def _wire(
    environ: Mapping[str, str], target: Mapping[str, str]
) -> tuple[SeedStore, SeedModel, ChatSettings]:
    """Once per cold start, as the seed's module-level clients were."""
    key = (environ.get("ANTHROPIC_BASE_URL", ""), *sorted(target.values()))
    with _wiring:
        wired = _wired.get(key)
        if wired is None:
            store: SeedStore
            if "sqlite" in target:
                store = SeedSQLite(target["sqlite"])
            else:
                settings = StoreSettings(
                    appwrite_endpoint=target["endpoint"],
                    appwrite_project_id=target["project"],
                    appwrite_api_key=Secret(target["key"]),
                    database_id=target["database"],
                    subscriptions_table=target["table"],
                    usage_events_table="",
                    claims_table="",
                )
                store = SeedAppwrite(settings, target["key"])
            model = AnthropicModel.connect(
                environ["ANTHROPIC_API_KEY"],
                base_url=environ.get("ANTHROPIC_BASE_URL"),
                max_retries=0,
            )
            chat = ChatSettings(
                model=environ.get("CHAT_MODEL", CHAT_MODEL.default),
                max_tokens=int(environ.get("CHAT_MAX_TOKENS", CHAT_MAX_TOKENS.default)),
                min_output_tokens=CHAT_MIN_OUTPUT_TOKENS.default,
                system_prompt=environ.get("CHAT_SYSTEM_PROMPT", CHAT_SYSTEM_PROMPT.default),
                max_steps=1,
            )
            wired = _wired[key] = (store, Unstreamed(model), chat)
        return wired
