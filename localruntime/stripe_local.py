"""A local Stripe for ``make dev``: the API calls the functions make, answered in Stripe's wire
format, a test checkout page and a portal page, and the signed events a payment produces,
delivered to the webhook in the order Stripe sends them."""

from __future__ import annotations

import base64
import binascii
import calendar
import copy
import html
import json
import logging
import operator
import re
import secrets
import sqlite3
import string
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import stripe
from metering.plans import PlanCatalog

from .wire import Headers, Reply, Request, json_reply

log = logging.getLogger("localruntime")

PREFIX = "/_stripe"
CURRENCY = "usd"
# Fixed local prices in cents; a plan or pack added to plans.json later is priced by its size.
PLAN_AMOUNTS = {"starter": 900, "pro": 2900, "business": 9900}
TOPUP_AMOUNTS = {"topup_25k": 500, "topup_100k": 1500}
SESSION_SECONDS = 24 * 3600
API_VERSION: str = stripe.api_version
PORTAL_CONFIGURATION = "bpc_local"
WEBHOOK_USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
# A delivery not answered with a 2xx is tried again at once, this many times in all, waiting a
# little longer before each: a webhook down for longer leaves the event pending.
DELIVERY_ATTEMPTS = 3
DELIVERY_RETRY_SECONDS = 0.05
# Idempotency keys remembered: Stripe keeps them 24 h; a local run needs only the recent ones.
IDEMPOTENCY_CAPACITY = 1000
GRANTING = ("active", "trialing", "past_due")
# The multiplication sign Stripe writes between quantity and name on invoice lines.
TIMES = "\u00d7"

Json = dict[str, Any]
# POSTs one event body with its Stripe-Signature header to the webhook: (status, body).
Deliver = Callable[[bytes, str], tuple[int, bytes]]
Handler = Callable[..., Json]

_PAGE = string.Template(Path(__file__).with_name("stripe_page.html").read_text("utf-8"))
_ALPHANUMERIC = string.ascii_letters + string.digits
_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")
_INDEX = re.compile(r"[0-9]+")
_INTEGER = re.compile(r"-?[0-9]{1,18}")
_PAGE_PATH = re.compile(r"/(?P<kind>checkout|portal)/(?P<id>[A-Za-z0-9_]+)(?:/(?P<action>[a-z]+))?")
# Checkout Session parameters Stripe accepts; those this Stripe reads are validated, the others
# (presentation, tax, promotion codes) change nothing here.
_CHECKOUT_PARAMS = frozenset({
    "adaptive_pricing", "after_expiration", "allow_promotion_codes", "automatic_tax",
    "billing_address_collection", "branding_settings", "cancel_url", "client_reference_id",
    "consent_collection", "currency", "custom_fields", "custom_text", "customer",
    "customer_creation", "customer_email", "customer_update", "discounts", "expires_at",
    "invoice_creation", "line_items", "locale", "metadata", "mode", "name_collection",
    "optional_items", "origin_context", "payment_intent_data", "payment_method_collection",
    "payment_method_configuration", "payment_method_options", "payment_method_types",
    "permissions", "phone_number_collection", "redirect_on_completion", "return_url",
    "saved_payment_method_options", "setup_intent_data", "shipping_address_collection",
    "shipping_options", "submit_type", "subscription_data", "success_url", "tax_id_collection",
    "ui_mode", "wallet_options",
})  # fmt: skip
_PAGING = frozenset({"limit", "starting_after", "ending_before"})
_PORTAL_FLOWS = (
    "payment_method_update",
    "subscription_cancel",
    "subscription_update",
    "subscription_update_confirm",
)


def _new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))


# -- errors --------------------------------------------------------------------------------------


class StripeApiError(Exception):
    """An API error as Stripe answers it: ``{"error": {"type", "message", "code", "param"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = error_type

    def body(self) -> Json:
        error: Json = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        return {"error": error}


def _invalid(message: str, param: str | None = None, code: str | None = None) -> StripeApiError:
    return StripeApiError(400, message, code=code, param=param)


def _no_such(kind: str, object_id: str, param: str = "id", status: int = 404) -> StripeApiError:
    return StripeApiError(
        status, f"No such {kind}: '{object_id}'", code="resource_missing", param=param
    )


# -- form encoding -------------------------------------------------------------------------------


def parse_params(pairs: Iterable[tuple[str, str]]) -> Json:
    """Stripe's form encoding to nested values: ``a[b][0][c]=v``, ``a[]=v`` appends; a mapping
    whose keys are all indexes is a list (but for metadata, whose keys are the caller's)."""
    root: Json = {}
    for key, value in pairs:
        match = _KEY.fullmatch(key)
        if match is None:
            raise _invalid(f"Invalid parameter name: {key[:80]}", key[:80])
        path = [match.group(1), *_SEGMENT.findall(match.group(2))]
        node = root
        for depth, raw in enumerate(path):
            segment = raw or str(len(node))
            if depth == len(path) - 1:
                if isinstance(node.get(segment), dict):
                    raise _invalid(f"Invalid parameter: {key[:80]} is also an object", key[:80])
                node[segment] = value
                break
            child = node.setdefault(segment, {})
            if not isinstance(child, dict):
                raise _invalid(f"Invalid parameter: {key[:80]} is also a value", key[:80])
            node = child
    listed = _lists(root, None)
    assert isinstance(listed, dict)
    return listed


def _lists(value: Any, key: str | None) -> Any:
    if not isinstance(value, dict):
        return value
    converted = {k: _lists(v, k) for k, v in value.items()}
    if key != "metadata" and converted and all(_INDEX.fullmatch(k) for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def _name(where: str, key: str) -> str:
    return f"{where}[{key}]" if where else key


def _fields(*keys: str) -> dict[str, Callable[[Json], Any]]:
    """List filters that each match the object's top-level field of the same name."""
    return {key: operator.itemgetter(key) for key in keys}


def _only(params: Mapping[str, Any], allowed: Iterable[str], where: str = "") -> None:
    known = set(allowed)
    for key in params:
        if key not in known:
            name = _name(where, key)
            raise _invalid(f"Received unknown parameter: {name}", name, "parameter_unknown")


def _string(
    params: Mapping[str, Any],
    key: str,
    where: str = "",
    *,
    required: bool = False,
    max_length: int = 5000,
) -> str | None:
    """A string parameter; empty is unset, as in Stripe's encoding."""
    value, name = params.get(key), _name(where, key)
    if value is None or value == "":
        if required:
            raise _invalid(f"Missing required param: {name}.", name, "parameter_missing")
        return None
    if not isinstance(value, str):
        raise _invalid(f"Invalid string: {name} must be a string", name)
    if len(value) > max_length:
        raise _invalid(
            f"Invalid string: {value[:20]}...; must be at most {max_length} characters",
            name,
            "string_too_long",
        )
    return value


def _integer(
    params: Mapping[str, Any], key: str, where: str = "", *, minimum: int, maximum: int
) -> int | None:
    text, name = _string(params, key, where), _name(where, key)
    if text is None:
        return None
    if not _INTEGER.fullmatch(text):
        raise _invalid(f"Invalid integer: {text[:40]}", name, "parameter_invalid_integer")
    value = int(text)
    if not minimum <= value <= maximum:
        raise _invalid(f"Invalid {name}: must be between {minimum} and {maximum}", name)
    return value


def _boolean(params: Mapping[str, Any], key: str) -> bool | None:
    text = _string(params, key)
    if text is None:
        return None
    if text not in ("true", "false"):
        raise _invalid(f"Invalid boolean: {text[:40]}", key)
    return text == "true"


def _mapping(params: Mapping[str, Any], key: str, where: str = "") -> Json:
    value, name = params.get(key), _name(where, key)
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise _invalid(f"Invalid object: {name} must be an object", name)
    return value


def _array(params: Mapping[str, Any], key: str, where: str = "") -> list[Any]:
    value, name = params.get(key), _name(where, key)
    if value is None or value == "":
        return []
    if not isinstance(value, list):
        raise _invalid(f"Invalid array: {name} must be an array", name)
    return value


def _strings(params: Mapping[str, Any], key: str) -> list[str]:
    values = _array(params, key)
    if not all(isinstance(value, str) for value in values):
        raise _invalid(f"Invalid array: {key} must be an array of strings", key)
    return [str(value) for value in values if value]


def _metadata(params: Mapping[str, Any], where: str = "") -> dict[str, str]:
    name = _name(where, "metadata")
    raw = _mapping(params, "metadata", where)
    if len(raw) > 50:
        raise _invalid(f"Invalid {name}: at most 50 keys", name)
    metadata: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            raise _invalid(f"Invalid {name}[{key[:40]}]: must be a string", name)
        if len(key) > 40 or len(value) > 500:
            raise _invalid(f"Invalid {name}: keys up to 40, values up to 500 characters", name)
        if value:
            metadata[key] = value
    return metadata


def _url(params: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = _string(params, key, required=required, max_length=5000)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _invalid("Not a valid URL", key, "url_invalid")
    return value


def _request_params(request: Request) -> Json:
    try:
        pairs = parse_qsl(request.query_string, keep_blank_values=True)
        if request.method == "POST" and request.body:
            pairs += parse_qsl(request.body.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        raise _invalid("Invalid request: the body must be form-encoded UTF-8") from None
    return parse_params(pairs)


# -- storage -------------------------------------------------------------------------------------


class _Objects:
    """Every object by id, as JSON in SQLite under the data folder, so that a restart keeps the
    customers and subscriptions the accounts are linked to. ``private`` holds what a session
    was created with but Stripe does not show (its line items, subscription metadata)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS objects (id TEXT PRIMARY KEY, kind TEXT NOT NULL,"
            " seq INTEGER NOT NULL, body TEXT NOT NULL, private TEXT NOT NULL DEFAULT '{}')"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS objects_by_kind ON objects (kind, seq)")
        self._lock = threading.Lock()

    def put(self, obj: Json, private: Json | None = None) -> None:
        body = json.dumps(obj, separators=(",", ":"))
        with self._lock:
            self._db.execute(
                "INSERT INTO objects (id, kind, seq, body, private) VALUES"
                " (?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM objects), ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET body = excluded.body,"
                " private = CASE WHEN ? THEN excluded.private ELSE objects.private END",
                (obj["id"], obj["object"], body, json.dumps(private or {}), private is not None),
            )

    def get(self, object_id: str, kind: str | None = None) -> Json | None:
        with self._lock:
            row = self._db.execute(
                "SELECT kind, body FROM objects WHERE id = ?", (object_id,)
            ).fetchone()
        if row is None or (kind is not None and row[0] != kind):
            return None
        found: Json = json.loads(row[1])
        return found

    def private(self, object_id: str) -> Json:
        with self._lock:
            row = self._db.execute(
                "SELECT private FROM objects WHERE id = ?", (object_id,)
            ).fetchone()
        found: Json = json.loads(row[0]) if row else {}
        return found

    def all(self, kind: str) -> list[Json]:
        """Newest first, as Stripe lists."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM objects WHERE kind = ? ORDER BY seq DESC", (kind,)
            ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- the local Stripe ------------------------------------------------------------------------------


class LocalStripe:
    """The API under ``<base>/v1``, the pages under ``<base>/checkout/<id>`` and
    ``<base>/portal/<id>``; ``base_url`` is where the runtime serves it."""

    def __init__(
        self,
        *,
        path: Path,
        plans: PlanCatalog,
        base_url: str,
        webhook_secret: str,
        deliver: Deliver,
        clock: Callable[[], datetime],
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._objects = _Objects(path)
        self._plans = plans
        self._secret = webhook_secret
        self._deliver_one = deliver
        self._clock = clock
        # State changes and API answers; the webhook calls back into the API while events are
        # delivered, so delivery holds only its own lock (which keeps events in order).
        self._lock = threading.RLock()
        self._delivery_lock = threading.Lock()
        self._idempotent: OrderedDict[str, tuple[str, Reply]] = OrderedDict()
        get = self._retriever
        self._routes = [
            _route("GET", "/v1/prices", self.list_prices),
            _route("GET", "/v1/prices/{id}", get("price")),
            _route("GET", "/v1/products", self.list_products),
            _route("GET", "/v1/products/{id}", get("product")),
            _route("POST", "/v1/customers", self.create_customer),
            _route("GET", "/v1/customers", self.list_customers),
            _route("GET", "/v1/customers/{id}", get("customer")),
            _route("POST", "/v1/checkout/sessions", self.create_checkout_session),
            _route("GET", "/v1/checkout/sessions", self.list_checkout_sessions),
            _route("GET", "/v1/checkout/sessions/{id}", get("checkout.session")),
            _route("GET", "/v1/checkout/sessions/{id}/line_items", self.list_session_line_items),
            _route("POST", "/v1/billing_portal/sessions", self.create_portal_session),
            _route("GET", "/v1/subscriptions", self.list_subscriptions),
            _route("GET", "/v1/subscriptions/{id}", get("subscription")),
            _route("GET", "/v1/invoices", self.list_invoices),
            _route("GET", "/v1/invoices/{id}", get("invoice")),
            _route("GET", "/v1/payment_intents/{id}", get("payment_intent")),
            _route("GET", "/v1/charges", self.list_charges),
            _route("GET", "/v1/charges/{id}", get("charge")),
            _route("GET", "/v1/events", self.list_events),
            _route("GET", "/v1/events/{id}", get("event")),
        ]
        self._sync_catalog()

    def close(self) -> None:
        self._objects.close()

    def _now(self) -> int:
        return int(self._clock().timestamp())

    def handle(self, request: Request, path: str) -> Reply:
        """A request under the prefix; ``path`` is what follows it."""
        if path == "/v1" or path.startswith("/v1/"):
            return self._api(request, path)
        if path in ("", "/"):
            return self._index_page(request)
        page = _PAGE_PATH.fullmatch(path)
        if page is None:
            return _page(404, "Not found", "<h1>Not found</h1><p>No such page.</p>")
        if page["kind"] == "checkout":
            return self._checkout_page(request, page["id"], page["action"])
        return self._portal_page(request, page["id"], page["action"])

    # -- the API -------------------------------------------------------------------------------

    def _api(self, request: Request, path: str) -> Reply:
        key = request.header("idempotency-key") if request.method == "POST" else None
        with self._lock:
            try:
                _authenticate(request)
                handler, ids = self._route(request.method, path)
                params = _request_params(request)
                fingerprint = f"{request.method} {path} {json.dumps(params, sort_keys=True)}"
                replay = self._replay(key, fingerprint)
                if replay is not None:
                    return _api_headers(replay, request, key, replayed=True)
                expand = _strings(params, "expand")
                params.pop("expand", None)
                reply = json_reply(200, self._expand(handler(params, **ids), expand))
                if key:
                    self._idempotent[key] = (fingerprint, reply)
                    while len(self._idempotent) > IDEMPOTENCY_CAPACITY:
                        self._idempotent.popitem(last=False)
            except StripeApiError as error:
                reply = json_reply(error.status, error.body())
            return _api_headers(reply, request, key)

    def _replay(self, key: str | None, fingerprint: str) -> Reply | None:
        """The first answer to a POST retried with its idempotency key (the SDK retries so)."""
        if not key or key not in self._idempotent:
            return None
        first, reply = self._idempotent[key]
        if first != fingerprint:
            raise StripeApiError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key[:80]}' if you meant to "
                "execute a different request.",
                error_type="idempotency_error",
            )
        return reply

    def _route(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        trimmed = path.rstrip("/")
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(trimmed)
            if match and route_method == method:
                return handler, match.groupdict()
        raise StripeApiError(
            404,
            f"Unrecognized request URL ({method}: {trimmed[:200]}). Please see "
            "https://stripe.com/docs or we can help at https://support.stripe.com/.",
        )

    def _retriever(self, kind: str) -> Handler:
        def retrieve(params: Json, object_id: str) -> Json:
            _only(params, ())
            return self._fetch(kind, object_id)

        return retrieve

    def _fetch(self, kind: str, object_id: str, param: str = "id", status: int = 404) -> Json:
        found = self._objects.get(object_id, kind)
        if found is None:
            raise _no_such(kind, object_id, param, status)
        return found

    def _expand(self, obj: Json, paths: list[str]) -> Json:
        result = copy.deepcopy(obj)
        for path in paths:
            segments = path.split(".")
            if len([s for s in segments if s != "data"]) > 4:
                raise _invalid("You cannot expand more than 4 levels of a property", "expand")
            self._expand_path(result, segments)
        return result

    def _expand_path(self, node: Any, segments: list[str]) -> None:
        if not segments or node is None:
            return
        head, rest = segments[0], segments[1:]
        if isinstance(node, dict) and node.get("object") == "list" and head == "data":
            for item in node.get("data", []):
                self._expand_path(item, rest)
            return
        session = isinstance(node, dict) and node.get("object") == "checkout.session"
        if session and head == "line_items" and not isinstance(node.get("line_items"), dict):
            # Not a field of the session until expanded, as on Stripe.
            node["line_items"] = self._line_items_list(node["id"])
        if not isinstance(node, dict) or head not in node:
            raise _invalid(f"This property cannot be expanded ({head[:80]}).", "expand")
        value = node[head]
        if isinstance(value, str):
            target = self._objects.get(value)
            if target is None:
                raise _invalid(f"This property cannot be expanded ({head[:80]}).", "expand")
            node[head] = value = target
        self._expand_path(value, rest)

    def _listing(self, url: str, items: list[Json], params: Json) -> Json:
        limit = _integer(params, "limit", minimum=1, maximum=100) or 10
        after, before = _string(params, "starting_after"), _string(params, "ending_before")
        if after and before:
            raise _invalid(
                "You may only specify one of these parameters: ending_before, starting_after."
            )
        start, end = 0, len(items)
        cursor = after or before
        if cursor is not None:
            ids = [item["id"] for item in items]
            if cursor not in ids:
                name = "starting_after" if after else "ending_before"
                raise _no_such("object", cursor, name, 400)
            if after:
                start = ids.index(cursor) + 1
            else:
                end = ids.index(cursor)
                start = max(0, end - limit)
        # Going back (`ending_before`), "more" are the newer ones before this page.
        more = start > 0 if before else start + limit < end
        page = items[start : min(end, start + limit)]
        return {"object": "list", "data": page, "has_more": more, "url": url}

    def _list_where(
        self, kind: str, url: str, params: Json, fields: Mapping[str, Callable[[Json], Any]]
    ) -> Json:
        """A page of the objects of ``kind`` whose fields equal every filter given, the filters
        being ``fields``' keys, read in their order; an unset filter lets every object pass."""
        _only(params, {*fields, *_PAGING})
        wanted = [(read, _string(params, key)) for key, read in fields.items()]
        items = [
            item
            for item in self._objects.all(kind)
            if all(value in (None, read(item)) for read, value in wanted)
        ]
        return self._listing(url, items, params)

    # prices and products

    def list_prices(self, params: Json) -> Json:
        _only(params, {"active", "currency", "lookup_keys", "product", "type", *_PAGING})
        active, lookup_keys = _boolean(params, "active"), _strings(params, "lookup_keys")
        if len(lookup_keys) > 10:
            raise _invalid("Invalid lookup_keys: at most 10", "lookup_keys")
        kind, product = _string(params, "type"), _string(params, "product")
        currency = _string(params, "currency")
        if kind not in (None, "one_time", "recurring"):
            raise _invalid("Invalid type: must be one of one_time, recurring", "type")
        prices = [
            price
            for price in self._objects.all("price")
            if (active is None or price["active"] == active)
            and (not lookup_keys or price["lookup_key"] in lookup_keys)
            and kind in (None, price["type"])
            and product in (None, price["product"])
            and currency in (None, price["currency"])
        ]
        return self._listing("/v1/prices", prices, params)

    def list_products(self, params: Json) -> Json:
        _only(params, {"active", "ids", *_PAGING})
        active, ids = _boolean(params, "active"), _strings(params, "ids")
        products = [
            product
            for product in self._objects.all("product")
            if (active is None or product["active"] == active) and (not ids or product["id"] in ids)
        ]
        return self._listing("/v1/products", products, params)

    # customers

    def create_customer(self, params: Json) -> Json:
        _only(params, {"description", "email", "metadata", "name", "phone"})
        customer = self._new_customer(
            email=_string(params, "email", max_length=512),
            name=_string(params, "name", max_length=256),
            metadata=_metadata(params),
        )
        customer["description"] = _string(params, "description", max_length=350)
        customer["phone"] = _string(params, "phone", max_length=20)
        self._objects.put(customer)
        return customer

    def list_customers(self, params: Json) -> Json:
        return self._list_where("customer", "/v1/customers", params, _fields("email"))

    def _new_customer(
        self, *, email: str | None, name: str | None = None, metadata: Json | None = None
    ) -> Json:
        customer: Json = {
            "id": _new_id("cus_", 14),
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": self._now(),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "discount": None,
            "email": email,
            "invoice_prefix": _new_id("", 8).upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": metadata or {},
            "name": name,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        self._objects.put(customer)
        return customer

    # checkout sessions

    def create_checkout_session(self, params: Json) -> Json:
        _only(params, _CHECKOUT_PARAMS)
        mode = _string(params, "mode", required=True)
        if mode not in ("payment", "subscription", "setup"):
            raise _invalid("Invalid mode: must be one of payment, setup, or subscription", "mode")
        if mode == "setup":
            raise _invalid("The local Stripe takes payment and subscription sessions only", "mode")
        if _string(params, "ui_mode") not in (None, "hosted"):
            raise _invalid("The local Stripe serves hosted Checkout pages only", "ui_mode")
        success_url = _url(params, "success_url", required=True)
        cancel_url = _url(params, "cancel_url")
        customer_id = _string(params, "customer")
        customer_email = _string(params, "customer_email", max_length=800)
        if customer_id and customer_email:
            raise _invalid(
                "You may only specify one of these parameters: customer, customer_email."
            )
        customer = self._fetch("customer", customer_id, "customer", 400) if customer_id else None
        creation = _string(params, "customer_creation")
        if creation is not None and mode != "payment":
            raise _invalid(
                "`customer_creation` can only be used in `payment` mode.", "customer_creation"
            )
        if creation not in (None, "always", "if_required"):
            raise _invalid("Invalid customer_creation: must be always or if_required")
        if creation is not None and customer is not None:
            raise _invalid(
                "You may only specify one of these parameters: customer, customer_creation."
            )
        subscription_data = _mapping(params, "subscription_data")
        if subscription_data and mode != "subscription":
            raise _invalid(
                f"You can not pass `subscription_data` in `{mode}` mode.", "subscription_data"
            )
        intent_data = _mapping(params, "payment_intent_data")
        if intent_data and mode != "payment":
            raise _invalid(
                f"You can not pass `payment_intent_data` in `{mode}` mode.",
                "payment_intent_data",
            )
        client_reference_id = _string(params, "client_reference_id", max_length=200)
        metadata = _metadata(params)
        subscription_metadata = _metadata(subscription_data, "subscription_data")
        intent_metadata = _metadata(intent_data, "payment_intent_data")
        now = self._now()
        expires_at = _integer(
            params,
            "expires_at",
            minimum=now + 30 * 60,
            maximum=now + SESSION_SECONDS,
        )
        line_items = self._session_line_items(params, mode)
        session_id = _new_id("cs_test_", 58)
        total = sum(item["amount_total"] for item in line_items)
        session = {
            "id": session_id,
            "object": "checkout.session",
            "after_expiration": None,
            "allow_promotion_codes": None,
            "amount_subtotal": total,
            "amount_total": total,
            "automatic_tax": {"enabled": False, "liability": None, "status": None},
            "billing_address_collection": None,
            "cancel_url": cancel_url,
            "client_reference_id": client_reference_id,
            "client_secret": None,
            "consent": None,
            "consent_collection": None,
            "created": now,
            "currency": CURRENCY,
            "custom_fields": [],
            "custom_text": {
                "after_submit": None,
                "shipping_address": None,
                "submit": None,
                "terms_of_service_acceptance": None,
            },
            "customer": customer["id"] if customer else None,
            "customer_creation": (creation or "if_required") if mode == "payment" else None,
            "customer_details": None,
            "customer_email": customer_email,
            "discounts": [],
            "expires_at": expires_at or now + SESSION_SECONDS,
            "invoice": None,
            "invoice_creation": None,
            "livemode": False,
            "locale": _string(params, "locale"),
            "metadata": metadata,
            "mode": mode,
            "payment_intent": None,
            "payment_link": None,
            "payment_method_collection": "always" if mode == "subscription" else "if_required",
            "payment_method_types": ["card"],
            "payment_status": "unpaid",
            "phone_number_collection": {"enabled": False},
            "recovered_from": None,
            "setup_intent": None,
            "shipping_address_collection": None,
            "shipping_cost": None,
            "shipping_options": [],
            "status": "open",
            "submit_type": None,
            "subscription": None,
            "success_url": success_url,
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": "hosted",
            "url": f"{self.base_url}/checkout/{session_id}",
        }
        self._objects.put(
            session,
            {
                "line_items": line_items,
                "subscription_metadata": subscription_metadata,
                "payment_intent_metadata": intent_metadata,
            },
        )
        return session

    def _session_line_items(self, params: Json, mode: str) -> list[Json]:
        entries = _array(params, "line_items")
        if not entries:
            raise _invalid("Missing required param: line_items.", "line_items", "parameter_missing")
        items: list[Json] = []
        for index, entry in enumerate(entries):
            where = f"line_items[{index}]"
            if not isinstance(entry, dict):
                raise _invalid(f"Invalid object: {where} must be an object", where)
            _only(entry, {"price", "quantity", "adjustable_quantity", "tax_rates"}, where)
            price_id = _string(entry, "price", where, required=True)
            assert price_id is not None
            price = self._fetch("price", price_id, f"{where}[price]", 400)
            if not price["active"]:
                raise _invalid(
                    "The price specified is inactive. This field only accepts active prices.",
                    f"{where}[price]",
                )
            quantity = _integer(entry, "quantity", where, minimum=1, maximum=999_999)
            if quantity is None:
                raise _invalid(
                    f"Quantity is required. Add `quantity` to `{where}`",
                    f"{where}[quantity]",
                    "parameter_missing",
                )
            recurring = price["type"] == "recurring"
            if mode == "payment" and recurring:
                raise _invalid(
                    "You specified `payment` mode but passed a recurring price. Either switch "
                    "to `subscription` mode or use only one-time prices.",
                    f"{where}[price]",
                )
            if mode == "subscription" and not recurring:
                raise _invalid(
                    "The local Stripe takes only recurring prices in `subscription` mode.",
                    f"{where}[price]",
                )
            product = self._fetch("product", price["product"])
            amount = price["unit_amount"] * quantity
            items.append(
                {
                    "id": _new_id("li_"),
                    "object": "item",
                    "amount_discount": 0,
                    "amount_subtotal": amount,
                    "amount_tax": 0,
                    "amount_total": amount,
                    "currency": price["currency"],
                    "description": product["name"],
                    "price": price,
                    "quantity": quantity,
                }
            )
        return items

    def list_checkout_sessions(self, params: Json) -> Json:
        fields = _fields("customer", "payment_intent", "status", "subscription")
        return self._list_where("checkout.session", "/v1/checkout/sessions", params, fields)

    def list_session_line_items(self, params: Json, object_id: str) -> Json:
        _only(params, _PAGING)
        self._fetch("checkout.session", object_id)
        items = self._line_items_list(object_id)["data"]
        return self._listing(f"/v1/checkout/sessions/{object_id}/line_items", items, params)

    def _line_items_list(self, session_id: str) -> Json:
        items = self._objects.private(session_id).get("line_items", [])
        return {
            "object": "list",
            "data": items,
            "has_more": False,
            "url": f"/v1/checkout/sessions/{session_id}/line_items",
        }

    # the portal

    def create_portal_session(self, params: Json) -> Json:
        _only(
            params,
            {"configuration", "customer", "flow_data", "locale", "on_behalf_of", "return_url"},
        )
        customer_id = _string(params, "customer", required=True)
        assert customer_id is not None
        self._fetch("customer", customer_id, "customer", 400)
        return_url = _url(params, "return_url")
        if return_url is None:
            raise _invalid(
                "The local portal has no default return URL: pass `return_url`.",
                "return_url",
                "parameter_missing",
            )
        configuration = _string(params, "configuration") or PORTAL_CONFIGURATION
        if configuration != PORTAL_CONFIGURATION:
            raise _no_such("billing_portal.configuration", configuration, "configuration", 400)
        flow = self._portal_flow(_mapping(params, "flow_data"), customer_id)
        portal_id = _new_id("bps_")
        portal = {
            "id": portal_id,
            "object": "billing_portal.session",
            "configuration": configuration,
            "created": self._now(),
            "customer": customer_id,
            "flow": flow,
            "livemode": False,
            "locale": _string(params, "locale"),
            "on_behalf_of": None,
            "return_url": return_url,
            "url": f"{self.base_url}/portal/{portal_id}",
        }
        self._objects.put(portal)
        return portal

    def _portal_flow(self, flow: Json, customer_id: str) -> Json | None:
        """A deep link into the portal: its subscription must be the customer's and running.
        The local portal shows every action on one page, so the link only has to be valid."""
        if not flow:
            return None
        _only(flow, {"after_completion", "type", *_PORTAL_FLOWS}, "flow_data")
        kind = _string(flow, "type", "flow_data", required=True)
        if kind not in _PORTAL_FLOWS:
            raise _invalid(f"Invalid flow_data[type]: must be one of {', '.join(_PORTAL_FLOWS)}")
        if kind != "payment_method_update":
            where = f"flow_data[{kind}]"
            details = _mapping(flow, str(kind), "flow_data")
            subscription_id = str(_string(details, "subscription", where, required=True))
            subscription = self._fetch(
                "subscription", subscription_id, f"{where}[subscription]", 400
            )
            if subscription["customer"] != customer_id or subscription["status"] not in GRANTING:
                raise _invalid(
                    f"The subscription {subscription_id} cannot be changed in a portal session "
                    f"of {customer_id}.",
                    f"{where}[subscription]",
                )
        return {"after_completion": {"type": "portal_homepage"}, **flow}

    # subscriptions, invoices, payments, events

    def list_subscriptions(self, params: Json) -> Json:
        _only(params, {"customer", "price", "status", *_PAGING})
        customer, price = _string(params, "customer"), _string(params, "price")
        status = _string(params, "status")

        def wanted(subscription: Json) -> bool:
            if status == "all":
                shown = True
            elif status == "ended":
                shown = subscription["status"] in ("canceled", "incomplete_expired")
            elif status is None:
                shown = subscription["status"] != "canceled"
            else:
                shown = subscription["status"] == status
            prices = {item["price"]["id"] for item in subscription["items"]["data"]}
            return (
                shown
                and customer in (None, subscription["customer"])
                and (price is None or price in prices)
            )

        subscriptions = [s for s in self._objects.all("subscription") if wanted(s)]
        return self._listing("/v1/subscriptions", subscriptions, params)

    def list_invoices(self, params: Json) -> Json:
        fields = {
            **_fields("customer", "status"),
            "subscription": lambda invoice: invoice["parent"]["subscription_details"][
                "subscription"
            ],
        }
        return self._list_where("invoice", "/v1/invoices", params, fields)

    def list_charges(self, params: Json) -> Json:
        fields = _fields("customer", "payment_intent")
        return self._list_where("charge", "/v1/charges", params, fields)

    def list_events(self, params: Json) -> Json:
        _only(params, {"delivery_success", "type", "types", *_PAGING})
        kind, kinds = _string(params, "type"), _strings(params, "types")
        delivered = _boolean(params, "delivery_success")
        events = [
            event
            for event in self._objects.all("event")
            if kind in (None, event["type"])
            and (not kinds or event["type"] in kinds)
            and (delivered is None or (event["pending_webhooks"] == 0) == delivered)
        ]
        return self._listing("/v1/events", events, params)

    # -- the catalogue -------------------------------------------------------------------------

    def _sync_catalog(self) -> None:
        """A product and a price for every plan one can buy (all but the default one) and every
        top-up pack, keyed by their ids; prices of entries gone from the plans file go inactive."""
        monthly = {"interval": "month", "interval_count": 1, "meter": None,
                   "trial_period_days": None, "usage_type": "licensed"}  # fmt: skip
        sold: dict[str, tuple[str, str, int, Json | None, dict[str, str]]] = {}
        for plan in self._plans.plans.values():
            if plan.id == self._plans.default_id:
                continue
            amount = PLAN_AMOUNTS.get(plan.id, _plan_amount(plan.tokens_per_month))
            metadata = {"plan": plan.id, "tokens_per_month": str(plan.tokens_per_month)}
            description = f"{plan.tokens_per_month:,} tokens a month"
            sold[plan.id] = (plan.name, description, amount, monthly, metadata)
        for pack in self._plans.topups:
            amount = TOPUP_AMOUNTS.get(pack.id, _pack_amount(pack.tokens))
            metadata = {"topup_tokens": str(pack.tokens)}
            sold[pack.id] = (pack.name, f"{pack.tokens:,} tokens, once", amount, None, metadata)
        now = self._now()
        with self._lock:
            for price in self._objects.all("price"):
                if price["lookup_key"] not in sold and price["active"]:
                    self._objects.put({**price, "active": False})
            for key, (name, description, amount, recurring, metadata) in sold.items():
                product_id, price_id = f"prod_local_{key}", f"price_local_{key}"
                old = self._objects.get(price_id) or {}
                created = old.get("created", now)
                self._objects.put(
                    _product(
                        product_id=product_id,
                        price_id=price_id,
                        name=name,
                        description=description,
                        created=created,
                        now=now,
                    )
                )
                self._objects.put(
                    _price(
                        price_id=price_id,
                        product_id=product_id,
                        lookup_key=key,
                        name=name,
                        amount=amount,
                        recurring=recurring,
                        metadata=metadata,
                        created=created,
                    )
                )

    def _price_of(self, lookup_key: str) -> Json | None:
        return next(
            (
                p
                for p in self._objects.all("price")
                if p["lookup_key"] == lookup_key and p["active"]
            ),
            None,
        )

    def _plan_ids(self) -> list[str]:
        return [p.id for p in self._plans.plans.values() if p.id != self._plans.default_id]

    # -- payments and their events -------------------------------------------------------------

    def _event(self, kind: str, obj: Json, previous: Json | None = None) -> Json:
        data: Json = {"object": copy.deepcopy(obj)}
        if previous is not None:
            data["previous_attributes"] = previous
        event = {
            "id": _new_id("evt_"),
            "object": "event",
            "api_version": API_VERSION,
            "created": self._now(),
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": _new_id("req_", 14), "idempotency_key": None},
            "type": kind,
        }
        self._objects.put(event)
        return event

    def _complete(self, session: Json) -> list[Json]:
        """Pay an open session: its customer, subscription and first invoice, or its payment;
        the events in the order Stripe sends them."""
        private = self._objects.private(session["id"])
        now = self._now()
        customer_id = session["customer"]
        if customer_id is None and (
            session["mode"] == "subscription" or session["customer_creation"] == "always"
        ):
            customer_id = self._new_customer(email=session["customer_email"])["id"]
        customer = self._objects.get(customer_id, "customer") if customer_id else None
        email = customer["email"] if customer else session["customer_email"]
        session.update(
            status="complete",
            payment_status="paid",
            customer=customer_id,
            url=None,
            customer_details={
                "address": None,
                "email": email,
                "name": customer["name"] if customer else None,
                "phone": None,
                "tax_exempt": "none",
                "tax_ids": [],
            },
        )
        if session["mode"] == "payment":
            intent = self._new_payment(
                customer_id, session["amount_total"], private.get("payment_intent_metadata", {})
            )
            session["payment_intent"] = intent["id"]
            self._objects.put(session)
            return [self._event("checkout.session.completed", session)]
        assert customer_id is not None
        subscription = self._new_subscription(
            customer_id, private["line_items"], private.get("subscription_metadata", {}), now
        )
        lines = [
            self._item_line(subscription, item, item["price"]["unit_amount"] * item["quantity"])
            for item in subscription["items"]["data"]
        ]
        invoice = self._new_invoice(subscription, "subscription_create", lines, (now, now))
        subscription["latest_invoice"] = invoice["id"]
        self._objects.put(subscription)
        session.update(subscription=subscription["id"], invoice=invoice["id"])
        self._objects.put(session)
        return [
            self._event("checkout.session.completed", session),
            self._event("customer.subscription.created", subscription),
            self._event("invoice.paid", invoice),
            self._event("invoice.payment_succeeded", invoice),
        ]

    def _new_subscription(
        self, customer_id: str, line_items: list[Json], metadata: dict[str, str], now: int
    ) -> Json:
        subscription_id = _new_id("sub_")
        end = _one_month_after(now)
        items = [
            {
                "id": _new_id("si_", 14),
                "object": "subscription_item",
                "billing_thresholds": None,
                "created": now,
                "current_period_end": end,
                "current_period_start": now,
                "discounts": [],
                "metadata": {},
                "plan": _legacy_plan(line["price"]),
                "price": line["price"],
                "quantity": line["quantity"],
                "subscription": subscription_id,
                "tax_rates": [],
            }
            for line in line_items
        ]
        return {
            "id": subscription_id,
            "object": "subscription",
            "application": None,
            "application_fee_percent": None,
            "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
            "billing_cycle_anchor": now,
            "billing_cycle_anchor_config": None,
            "billing_mode": {"type": "classic"},
            "billing_thresholds": None,
            "cancel_at": None,
            "cancel_at_period_end": False,
            "canceled_at": None,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "collection_method": "charge_automatically",
            "created": now,
            "currency": CURRENCY,
            "customer": customer_id,
            "days_until_due": None,
            "default_payment_method": _new_id("pm_"),
            "default_source": None,
            "default_tax_rates": [],
            "description": None,
            "discounts": [],
            "ended_at": None,
            "items": {
                "object": "list",
                "data": items,
                "has_more": False,
                "total_count": len(items),
                "url": f"/v1/subscription_items?subscription={subscription_id}",
            },
            "latest_invoice": None,
            "livemode": False,
            "metadata": metadata,
            "next_pending_invoice_item_invoice": None,
            "on_behalf_of": None,
            "pause_collection": None,
            "pending_invoice_item_interval": None,
            "pending_setup_intent": None,
            "pending_update": None,
            "schedule": None,
            "start_date": now,
            "status": "active",
            "test_clock": None,
            "transfer_data": None,
            "trial_end": None,
            "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
            "trial_start": None,
        }

    def _item_line(
        self,
        subscription: Json,
        item: Json,
        amount: int,
        *,
        price: Json | None = None,
        start: int | None = None,
        description: str | None = None,
    ) -> Json:
        """An invoice line for a subscription item: its period's charge, or (``start`` given)
        a proration from then to the period's end."""
        price = price or item["price"]
        proration = start is not None
        product = self._objects.get(price["product"], "product") or {}
        name = product.get("name", price["product"])
        unit = _money(price["unit_amount"], price["currency"])
        return {
            "id": _new_id("il_"),
            "object": "line_item",
            "amount": amount,
            "currency": price["currency"],
            "description": description or f"{item['quantity']} {TIMES} {name} (at {unit} / month)",
            "discount_amounts": [],
            "discountable": not proration,
            "discounts": [],
            "invoice": None,
            "livemode": False,
            "metadata": {},
            "parent": {
                "invoice_item_details": None,
                "subscription_item_details": {
                    "invoice_item": _new_id("ii_") if proration else None,
                    "proration": proration,
                    "proration_details": {"credited_items": None},
                    "subscription": subscription["id"],
                    "subscription_item": item["id"],
                },
                "type": "subscription_item_details",
            },
            "period": {
                "end": item["current_period_end"],
                "start": start if start is not None else item["current_period_start"],
            },
            "pretax_credit_amounts": [],
            "pricing": {
                "price_details": {"price": price["id"], "product": price["product"]},
                "type": "price_details",
                "unit_amount_decimal": str(price["unit_amount"]),
            },
            "quantity": item["quantity"],
            "taxes": [],
        }

    def _new_invoice(
        self, subscription: Json, reason: str, lines: list[Json], period: tuple[int, int]
    ) -> Json:
        """A paid invoice of ``subscription``; ``period`` is the invoice's own (empty on the
        first one: its lines carry the service period)."""
        invoice_id = _new_id("in_")
        now = self._now()
        customer = self._objects.get(subscription["customer"], "customer") or {}
        count = len(self._objects.all("invoice")) + 1
        for line in lines:
            line["invoice"] = invoice_id
        total = sum(line["amount"] for line in lines)
        invoice = {
            "id": invoice_id,
            "object": "invoice",
            "account_country": "US",
            "account_name": "Local Stripe",
            "account_tax_ids": None,
            "amount_due": total,
            "amount_overpaid": 0,
            "amount_paid": total,
            "amount_remaining": 0,
            "amount_shipping": 0,
            "application": None,
            "attempt_count": 1,
            "attempted": True,
            "auto_advance": False,
            "automatic_tax": {
                "disabled_reason": None,
                "enabled": False,
                "liability": None,
                "provider": None,
                "status": None,
            },
            "automatically_finalizes_at": None,
            "billing_reason": reason,
            "collection_method": "charge_automatically",
            "created": now,
            "currency": subscription["currency"],
            "custom_fields": None,
            "customer": subscription["customer"],
            "customer_address": None,
            "customer_email": customer.get("email"),
            "customer_name": customer.get("name"),
            "customer_phone": None,
            "customer_shipping": None,
            "customer_tax_exempt": "none",
            "customer_tax_ids": [],
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [],
            "description": None,
            "discounts": [],
            "due_date": None,
            "effective_at": now,
            "ending_balance": 0,
            "footer": None,
            "from_invoice": None,
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "issuer": {"type": "self"},
            "last_finalization_error": None,
            "latest_revision": None,
            "lines": {
                "object": "list",
                "data": lines,
                "has_more": False,
                "total_count": len(lines),
                "url": f"/v1/invoices/{invoice_id}/lines",
            },
            "livemode": False,
            "metadata": {},
            "next_payment_attempt": None,
            "number": f"LOCAL-{count:04d}",
            "on_behalf_of": None,
            "parent": {
                "quote_details": None,
                "subscription_details": {
                    "metadata": dict(subscription["metadata"]),
                    "subscription": subscription["id"],
                },
                "type": "subscription_details",
            },
            "period_end": period[1],
            "period_start": period[0],
            "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0,
            "receipt_number": None,
            "rendering": None,
            "shipping_cost": None,
            "shipping_details": None,
            "starting_balance": 0,
            "statement_descriptor": None,
            "status": "paid",
            "status_transitions": {
                "finalized_at": now,
                "marked_uncollectible_at": None,
                "paid_at": now,
                "voided_at": None,
            },
            "subtotal": total,
            "subtotal_excluding_tax": total,
            "test_clock": None,
            "total": total,
            "total_discount_amounts": [],
            "total_excluding_tax": total,
            "total_pretax_credit_amounts": [],
            "total_taxes": [],
            "webhooks_delivered_at": now,
        }
        self._objects.put(invoice)
        return invoice

    def _new_payment(self, customer_id: str | None, amount: int, metadata: Json) -> Json:
        now = self._now()
        intent_id, charge_id, method = _new_id("pi_"), _new_id("ch_"), _new_id("pm_")
        charge = {
            "id": charge_id,
            "object": "charge",
            "amount": amount,
            "amount_captured": amount,
            "amount_refunded": 0,
            "balance_transaction": None,
            "captured": True,
            "created": now,
            "currency": CURRENCY,
            "customer": customer_id,
            "description": None,
            "disputed": False,
            "livemode": False,
            "metadata": dict(metadata),
            "paid": True,
            "payment_intent": intent_id,
            "payment_method": method,
            "receipt_url": None,
            "refunded": False,
            "status": "succeeded",
        }
        intent = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": amount,
            "canceled_at": None,
            "capture_method": "automatic_async",
            "confirmation_method": "automatic",
            "created": now,
            "currency": CURRENCY,
            "customer": customer_id,
            "description": None,
            "latest_charge": charge_id,
            "livemode": False,
            "metadata": dict(metadata),
            "payment_method": method,
            "payment_method_types": ["card"],
            "status": "succeeded",
        }
        self._objects.put(charge)
        self._objects.put(intent)
        return intent

    def _current_subscription(self, customer_id: str) -> Json | None:
        return next(
            (
                s
                for s in self._objects.all("subscription")
                if s["customer"] == customer_id and s["status"] in GRANTING
            ),
            None,
        )

    def _plan_item(self, subscription: Json) -> Json | None:
        plans = self._plan_ids()
        return next(
            (i for i in subscription["items"]["data"] if i["price"]["lookup_key"] in plans), None
        )

    def _change_plan(self, subscription: Json, price: Json) -> list[Json]:
        """The item's price changes at once with prorations invoiced at once: the update, then
        for a dearer price the paid invoice of the difference for the rest of the period."""
        item = self._plan_item(subscription)
        assert item is not None
        now = self._now()
        previous = {"items": copy.deepcopy(subscription["items"])}
        old = item["price"]
        item.update(price=price, plan=_legacy_plan(price))
        events = [self._event("customer.subscription.updated", subscription, previous)]
        if price["unit_amount"] > old["unit_amount"]:
            start, end = item["current_period_start"], item["current_period_end"]
            left = max(0.0, min(1.0, (end - now) / max(1, end - start)))
            after = datetime.fromtimestamp(now, UTC).strftime("%d %b %Y")
            quantity = item["quantity"]
            credit = -round(old["unit_amount"] * quantity * left)
            charge = round(price["unit_amount"] * quantity * left)
            old_name = self._product_name(old)
            new_name = self._product_name(price)
            lines = [
                self._item_line(
                    subscription,
                    item,
                    credit,
                    price=old,
                    start=now,
                    description=f"Unused time on {quantity} {TIMES} {old_name} after {after}",
                ),
                self._item_line(
                    subscription,
                    item,
                    charge,
                    start=now,
                    description=f"Remaining time on {quantity} {TIMES} {new_name} after {after}",
                ),
            ]
            invoice = self._new_invoice(subscription, "subscription_update", lines, (now, now))
            subscription["latest_invoice"] = invoice["id"]
            events += [
                self._event("invoice.paid", invoice),
                self._event("invoice.payment_succeeded", invoice),
            ]
        self._objects.put(subscription)
        return events

    def _renew(self, subscription: Json) -> list[Json]:
        """The next period at once, as a Stripe test clock brings it: the period moves on, then
        the cycle's invoice is paid (its own period is the one that ended)."""
        previous = {"items": copy.deepcopy(subscription["items"])}
        items = subscription["items"]["data"]
        ended = (items[0]["current_period_start"], items[0]["current_period_end"])
        for item in items:
            start = item["current_period_end"]
            item.update(current_period_start=start, current_period_end=_one_month_after(start))
        events = [self._event("customer.subscription.updated", subscription, previous)]
        lines = [
            self._item_line(subscription, item, item["price"]["unit_amount"] * item["quantity"])
            for item in items
        ]
        invoice = self._new_invoice(subscription, "subscription_cycle", lines, ended)
        subscription["latest_invoice"] = invoice["id"]
        self._objects.put(subscription)
        return [
            *events,
            self._event("invoice.paid", invoice),
            self._event("invoice.payment_succeeded", invoice),
        ]

    def _cancel(self, subscription: Json) -> list[Json]:
        now = self._now()
        subscription.update(
            status="canceled",
            canceled_at=now,
            ended_at=now,
            cancellation_details={
                "comment": None,
                "feedback": None,
                "reason": "cancellation_requested",
            },
        )
        self._objects.put(subscription)
        return [self._event("customer.subscription.deleted", subscription)]

    def _product_name(self, price: Json) -> str:
        product = self._objects.get(price["product"], "product") or {}
        return str(product.get("name", price["product"]))

    def _deliver_with_retries(
        self, event: Json, payload: bytes, signature: str
    ) -> tuple[int, bytes]:
        """Stripe retries a delivery that was not answered with a 2xx (for up to three days);
        the local one retries at once, a few times, so that the next event still comes after."""
        status, body = 0, b""
        for attempt in range(DELIVERY_ATTEMPTS):
            if attempt:
                time.sleep(DELIVERY_RETRY_SECONDS * attempt)
            try:
                status, body = self._deliver_one(payload, signature)
            except Exception:
                log.exception("local stripe: delivering %s %s failed", event["type"], event["id"])
                status, body = 0, b""
            if 200 <= status < 300:
                break
        return status, body

    def _deliver(self, events: list[Json]) -> None:
        """POST each event, signed, to the webhook, one after the other; a delivery that fails
        leaves the event pending (``pending_webhooks``), as Stripe shows it."""
        for event in events:
            payload = json.dumps(event, indent=2).encode("utf-8")
            signature: str = stripe.WebhookSignature.generate_signature_header(
                payload.decode("utf-8"), self._secret, self._now()
            )
            status, body = self._deliver_with_retries(event, payload, signature)
            if 200 <= status < 300:
                with self._lock:
                    self._objects.put({**event, "pending_webhooks": 0})
                log.info("local stripe: %s %s delivered", event["type"], event["id"])
            else:
                answer = body.decode("utf-8", "replace")[:300]
                log.warning(
                    "local stripe: %s %s answered %d %s", event["type"], event["id"], status, answer
                )

    # -- the pages ------------------------------------------------------------------------------

    def _checkout_page(self, request: Request, session_id: str, action: str | None) -> Reply:
        with self._lock:
            session = self._objects.get(session_id, "checkout.session")
            expired = session is not None and self._now() >= session["expires_at"]
            if session is not None and expired and session["status"] == "open":
                session.update(status="expired", url=None)
                self._objects.put(session)
        if session is None:
            return _missing_session("checkout", session_id)
        refused = _page_route(request, action, ("pay", "cancel"))
        if refused is not None:
            return refused
        if action is None:
            return self._checkout_view(session)
        if action == "cancel":
            # Stripe only sends the buyer back: the session stays open until it expires.
            if session["cancel_url"]:
                return _redirect(session["cancel_url"])
            return _page(
                200, "Payment cancelled", "<h1>Payment cancelled</h1><p>Nothing was charged.</p>"
            )
        with self._delivery_lock:
            with self._lock:
                session = self._objects.get(session_id, "checkout.session")
                assert session is not None
                status = session["status"]
                events = self._complete(session) if status == "open" else []
            self._deliver(events)
        if status == "expired":
            return _page(410, "Checkout session expired", _EXPIRED)
        # Paid now, or already (a second press of Pay): back to the merchant either way.
        return _redirect(session["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id))

    def _checkout_view(self, session: Json) -> Reply:
        if session["status"] == "expired":
            return _page(410, "Checkout session expired", _EXPIRED)
        success = session["success_url"].replace("{CHECKOUT_SESSION_ID}", session["id"])
        if session["status"] == "complete":
            return _page(
                200,
                "Payment complete",
                "<h1>Payment complete</h1><p>This test payment is done.</p>"
                f'<p><a href="{_text(success)}">Back to the site</a></p>',
            )
        items = self._objects.private(session["id"]).get("line_items", [])
        rows = []
        for item in items:
            price = item["price"]
            product = self._objects.get(price["product"], "product") or {}
            every = " per month" if price["type"] == "recurring" else ""
            rows.append(
                "<li><span><strong>"
                f"{_text(item['description'])}</strong>"
                f"{f' {TIMES} ' + str(item['quantity']) if item['quantity'] != 1 else ''}<br>"
                f'<span class="muted">{_text(product.get("description") or "")}</span></span>'
                f"<span>{_money(item['amount_total'], item['currency'])}{every}</span></li>"
            )
        total = _money(session["amount_total"], session["currency"])
        subscription = session["mode"] == "subscription"
        cancel = (
            f'<form method="post" action="{PREFIX}/checkout/{session["id"]}/cancel">'
            '<button type="submit" class="secondary" data-testid="checkout-cancel">'
            "Cancel</button></form>"
        )
        content = (
            f"<h1>{'Subscribe' if subscription else 'Pay'}</h1>"
            '<p class="muted">Local Stripe checkout: no card is asked for and nothing is '
            "charged. Pay sends the webhook the events a real payment sends.</p>"
            f'<h2 id="summary">Order summary</h2><ul aria-labelledby="summary">{"".join(rows)}</ul>'
            f'<p class="total"><span>Total due today</span>'
            f'<span data-testid="checkout-total">{total}</span></p>'
            f'<form method="post" action="{PREFIX}/checkout/{session["id"]}/pay">'
            f'<button type="submit" data-testid="checkout-pay">'
            f"Pay {total}</button></form>"
            f"{cancel}"
        )
        return _page(200, f"Pay {total} (test)", content, banner="Test payment — no money moves")

    def _portal_page(self, request: Request, portal_id: str, action: str | None) -> Reply:
        portal = self._objects.get(portal_id, "billing_portal.session")
        if portal is None:
            return _missing_session("portal", portal_id)
        refused = _page_route(request, action, ("plan", "renew", "cancel"))
        if refused is not None:
            return refused
        if action is None:
            return self._portal_view(portal)
        form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        with self._delivery_lock:
            with self._lock:
                subscription = self._current_subscription(portal["customer"])
                if subscription is None or self._plan_item(subscription) is None:
                    return _page(409, "No subscription", _NO_SUBSCRIPTION)
                if action == "cancel":
                    events = self._cancel(subscription)
                elif action == "renew":
                    events = self._renew(subscription)
                else:
                    wanted = form.get("plan", "")
                    price = self._price_of(wanted) if wanted in self._plan_ids() else None
                    current = self._plan_item(subscription)
                    if price is None or current is None or current["price"]["id"] == price["id"]:
                        return _page(
                            400,
                            "Not a plan to change to",
                            "<h1>Not a plan to change to</h1>"
                            f'<p><a href="{PREFIX}/portal/{portal_id}">Back</a></p>',
                        )
                    events = self._change_plan(subscription, price)
            self._deliver(events)
        return _redirect(portal["return_url"])

    def _portal_view(self, portal: Json) -> Reply:
        back = (
            f'<p><a href="{_text(portal["return_url"])}" data-testid="portal-return">'
            "Return to the site</a></p>"
        )
        subscription = self._current_subscription(portal["customer"])
        item = self._plan_item(subscription) if subscription else None
        banner = "Test mode — no money moves"
        if subscription is None or item is None:
            return _page(200, "Billing", f"{_NO_SUBSCRIPTION}{back}", banner=banner)
        current = item["price"]
        renews = datetime.fromtimestamp(item["current_period_end"], UTC).strftime("%d %B %Y")
        choices = []
        for plan_id in self._plan_ids():
            price = self._price_of(plan_id)
            if price is None or price["id"] == current["id"]:
                continue
            choices.append(
                f'<button type="submit" name="plan" value="{_text(plan_id)}" class="secondary"'
                f' data-testid="portal-plan-{_text(plan_id)}">'
                f"Switch to {_text(self._product_name(price))}"
                f" — {_money(price['unit_amount'], price['currency'])} per month</button>"
            )
        content = (
            "<h1>Manage your subscription</h1>"
            '<p class="muted">Local Stripe customer portal: changes apply at once and are '
            "sent to the webhook as Stripe sends them (a dearer plan is charged pro rata).</p>"
            '<h2 id="current">Current plan</h2>'
            f'<p aria-labelledby="current" data-testid="portal-current-plan">'
            f"<strong>{_text(self._product_name(current))}</strong>, "
            f"{_money(current['unit_amount'], current['currency'])} per month,"
            f" renews on {renews}</p>"
            '<h2 id="change">Change plan</h2>'
            f'<form method="post" action="{PREFIX}/portal/{portal["id"]}/plan" class="choices"'
            f' aria-labelledby="change">{"".join(choices)}</form>'
            '<h2 id="renew">Renewal</h2>'
            f'<form method="post" action="{PREFIX}/portal/{portal["id"]}/renew"'
            ' aria-labelledby="renew"><button type="submit" class="secondary"'
            ' data-testid="portal-renew">Renew now (start the next period, as a test clock'
            " would)</button></form>"
            '<h2 id="cancel">Cancel</h2>'
            f'<form method="post" action="{PREFIX}/portal/{portal["id"]}/cancel"'
            ' aria-labelledby="cancel"><button type="submit" class="danger"'
            ' data-testid="portal-cancel">Cancel subscription now</button></form>'
            f"{back}"
        )
        return _page(200, "Manage your subscription (test)", content, banner=banner)

    def _index_page(self, request: Request) -> Reply:
        if request.method not in ("GET", "HEAD"):
            return _not_allowed("GET")
        rows = []
        for event in self._objects.all("event")[:50]:
            when = datetime.fromtimestamp(event["created"], UTC).strftime("%Y-%m-%d %H:%M:%S")
            state = "delivered" if event["pending_webhooks"] == 0 else "not delivered"
            rows.append(
                f'<li><span>{_text(event["type"])}<br><code class="muted">{_text(event["id"])}'
                f"</code></span><span>{when}<br>{state}</span></li>"
            )
        listing = "".join(rows) or "<li>No events yet.</li>"
        content = (
            "<h1>Local Stripe</h1>"
            f'<p class="muted">API at <code>{_text(self.base_url)}/v1</code>; the newest events '
            "sent to the stripe-webhook function:</p>"
            f"<ul>{listing}</ul>"
        )
        return _page(200, "Local Stripe", content, banner="Test mode — no money moves")


# -- wire helpers ----------------------------------------------------------------------------------


Route = tuple[str, re.Pattern[str], Handler]


def _route(method: str, template: str, handler: Handler) -> Route:
    """``{id}`` in ``template`` is the object id the handler gets as ``object_id``."""
    return method, re.compile(template.replace("{id}", "(?P<object_id>[^/]+)")), handler


def _authenticate(request: Request) -> None:
    scheme, _, credential = (request.header("authorization") or "").partition(" ")
    key = ""
    if scheme.lower() == "bearer":
        key = credential.strip()
    elif scheme.lower() == "basic":
        try:
            key = base64.b64decode(credential.strip()).decode("utf-8").partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            key = ""
    if not key:
        raise StripeApiError(
            401,
            "You did not provide an API key. You need to provide your API key in the "
            "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
            "YOUR_SECRET_KEY').",
        )
    if not key.startswith(("sk_test_", "rk_test_")):
        shown = key[:8] + "*" * max(0, len(key) - 12) + key[-4:] if len(key) > 12 else "****"
        raise StripeApiError(
            401, f"Invalid API Key provided: {shown} (the local Stripe takes test keys only)"
        )


def _api_headers(reply: Reply, request: Request, key: str | None, replayed: bool = False) -> Reply:
    headers: Headers = [
        *(h for h in reply.headers if h[0] not in ("Request-Id", "Idempotent-Replayed")),
        ("Request-Id", _new_id("req_", 14)),
        ("Stripe-Version", request.header("stripe-version") or API_VERSION),
        ("Cache-Control", "no-cache, no-store"),
    ]
    if key:
        headers.append(("Idempotency-Key", key))
    if replayed:
        headers.append(("Idempotent-Replayed", "true"))
    return Reply(reply.status, reply.body, headers)


def _one_month_after(stamp: int) -> int:
    """The same time next month, clamped to its last day, as Stripe bills monthly prices."""
    moment = datetime.fromtimestamp(stamp, UTC)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


def _plan_amount(tokens: int) -> int:
    return max(100, round(tokens * 900 / 50_000 / 100) * 100)


def _pack_amount(tokens: int) -> int:
    return max(100, round(tokens / 5_000) * 100)


def _product(
    *, product_id: str, price_id: str, name: str, description: str, created: int, now: int
) -> Json:
    return {
        "id": product_id,
        "object": "product",
        "active": True,
        "created": created,
        "default_price": price_id,
        "description": description,
        "images": [],
        "livemode": False,
        "marketing_features": [],
        "metadata": {},
        "name": name,
        "package_dimensions": None,
        "shippable": None,
        "statement_descriptor": None,
        "tax_code": None,
        "type": "service",
        "unit_label": None,
        "updated": now,
        "url": None,
    }


def _price(
    *,
    price_id: str,
    product_id: str,
    lookup_key: str,
    name: str,
    amount: int,
    recurring: Json | None,
    metadata: dict[str, str],
    created: int,
) -> Json:
    return {
        "id": price_id,
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "created": created,
        "currency": CURRENCY,
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": lookup_key,
        "metadata": metadata,
        "nickname": f"{name} monthly" if recurring else name,
        "product": product_id,
        "recurring": recurring,
        "tax_behavior": "unspecified",
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "recurring" if recurring else "one_time",
        "unit_amount": amount,
        "unit_amount_decimal": str(amount),
    }


def _legacy_plan(price: Json) -> Json:
    """The ``plan`` Stripe still puts beside an item's ``price``."""
    recurring = price["recurring"] or {}
    return {
        "id": price["id"],
        "object": "plan",
        "active": price["active"],
        "amount": price["unit_amount"],
        "amount_decimal": price["unit_amount_decimal"],
        "billing_scheme": "per_unit",
        "created": price["created"],
        "currency": price["currency"],
        "interval": recurring.get("interval", "month"),
        "interval_count": recurring.get("interval_count", 1),
        "livemode": False,
        "metadata": price["metadata"],
        "meter": None,
        "nickname": price["nickname"],
        "product": price["product"],
        "tiers_mode": None,
        "transform_usage": None,
        "trial_period_days": None,
        "usage_type": "licensed",
    }


# -- page helpers ----------------------------------------------------------------------------------

_EXPIRED = "<h1>Checkout session expired</h1><p>Start again from the site.</p>"
_NO_SUBSCRIPTION = "<h1>No active subscription</h1><p>There is no subscription to change.</p>"


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def _money(amount: int, currency: str) -> str:
    sign = "-" if amount < 0 else ""
    if currency == "usd":
        return f"{sign}${abs(amount) / 100:,.2f}"
    return f"{sign}{abs(amount) / 100:,.2f} {currency.upper()}"


def _page(
    status: int, title: str, content: str, *, banner: str = "Test mode — no money moves"
) -> Reply:
    body = _PAGE.substitute(title=_text(title), banner=_text(banner), content=content)
    headers: Headers = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Cache-Control", "no-store"),
        (
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none';"
            " frame-ancestors 'none'",
        ),
    ]
    return Reply(status, body.encode("utf-8"), headers)


def _redirect(url: str) -> Reply:
    return Reply(303, b"", [("Location", url), ("Cache-Control", "no-store")])


def _missing_session(kind: str, session_id: str) -> Reply:
    title = f"{kind.capitalize()} session not found"
    return _page(
        404,
        title,
        f"<h1>{title}</h1><p>There is no {kind} session <code>{_text(session_id)}</code>.</p>",
    )


def _page_route(request: Request, action: str | None, actions: tuple[str, ...]) -> Reply | None:
    """The refusal for a page request that is not the session's view (GET) or one of its
    ``actions`` (POST); None when the request may go on."""
    if action is None:
        return None if request.method in ("GET", "HEAD") else _not_allowed("GET")
    if action not in actions:
        return _page(404, "Not found", "<h1>Not found</h1><p>No such page.</p>")
    return None if request.method == "POST" else _not_allowed("POST")


def _not_allowed(allowed: str) -> Reply:
    reply = _page(405, "Method not allowed", "<h1>Method not allowed</h1>")
    reply.headers.append(("Allow", allowed))
    return reply
