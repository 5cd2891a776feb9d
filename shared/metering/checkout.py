"""What the billing function sells and how: the offers, a purchase read from a request body, and
the checkout or portal request decided from the caller's account. Pure: no I/O, no clock."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from .account import Account
from .billing import GRANTING_STATUSES
from .errors import Conflict, InvalidRequest, PayloadTooLarge, PlanError
from .plans import PlanCatalog
from .ports import CheckoutMode, CheckoutRequest, PortalRequest, Price

# A purchase is one short id: anything longer is not one, and is refused before parsing.
MAX_BODY_BYTES = 4096
FIELDS = ("plan", "topup")
# How much of an unknown id an error message repeats.
_ECHO = 40

Kind = Literal["plan", "topup"]


@dataclass(frozen=True, slots=True)
class Offer:
    """Something for sale: a paid plan (a monthly subscription) or a top-up pack (one payment).
    Its id is the lookup key of its price."""

    kind: Kind
    id: str
    name: str
    tokens: int

    @property
    def mode(self) -> CheckoutMode:
        return CheckoutMode.SUBSCRIPTION if self.kind == "plan" else CheckoutMode.PAYMENT


def offers(plans: PlanCatalog) -> tuple[Offer, ...]:
    """Every plan but the default one (given to everyone, never sold), then every pack."""
    sold = tuple(
        Offer("plan", plan.id, plan.name, plan.tokens_per_month)
        for plan in plans.plans.values()
        if plan.id != plans.default_id
    )
    return sold + tuple(Offer("topup", pack.id, pack.name, pack.tokens) for pack in plans.topups)


# -- what GET /plans shows ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PricedOffer:
    offer: Offer
    price_id: str
    # Minor units (cents) of ``currency``, as the billing system holds them.
    amount: int
    currency: str


@dataclass(frozen=True, slots=True)
class Shelf:
    """The offers the caller can buy now, each with its price, and the caller's plan."""

    plans: tuple[PricedOffer, ...]
    topups: tuple[PricedOffer, ...]
    current_plan: str


def priced(offer: Offer, price: Price | None) -> PricedOffer:
    """``offer`` at ``price`` when that price can sell it; else a ``PlanError`` saying why not."""
    if price is None:
        raise PlanError(f"no active price has lookup key {offer.id!r}")
    if price.unit_amount is None:
        raise PlanError(f"price {price.id} ({offer.id}) has no fixed amount")
    if price.recurring != (offer.kind == "plan"):
        wanted = "recurring" if offer.kind == "plan" else "one-time"
        raise PlanError(f"price {price.id} ({offer.id}) must be {wanted}")
    return PricedOffer(offer, price.id, price.unit_amount, price.currency)


def shelf(
    plans: PlanCatalog, prices: Mapping[str, Price], account: Account | None
) -> tuple[Shelf, tuple[str, ...]]:
    """The shelf, and why each offer left off it could not be sold (for the operator)."""
    on_sale: list[PricedOffer] = []
    problems: list[str] = []
    for offer in offers(plans):
        try:
            on_sale.append(priced(offer, prices.get(offer.id)))
        except PlanError as problem:
            problems.append(problem.message)
    return (
        Shelf(
            plans=tuple(item for item in on_sale if item.offer.kind == "plan"),
            topups=tuple(item for item in on_sale if item.offer.kind == "topup"),
            current_plan=current_plan(plans, account),
        ),
        tuple(problems),
    )


def current_plan(plans: PlanCatalog, account: Account | None) -> str:
    """The caller's plan; a caller without an account has the default one."""
    return account.plan if account is not None else plans.default_id


def subscribed(account: Account | None) -> bool:
    """Whether the account has a subscription that grants its plan now."""
    return (
        account is not None
        and bool(account.stripe_subscription_id)
        and account.status in GRANTING_STATUSES
    )


# -- POST /checkout ----------------------------------------------------------------------------


def read_purchase(body: bytes, plans: PlanCatalog) -> Offer:
    """The offer a ``{"plan": id}`` or ``{"topup": id}`` body asks for; anything else is a 4xx.

    Only the id is read: tokens, prices and the user always come from the server's side.
    """
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"a checkout body is at most {MAX_BODY_BYTES} bytes")
    document = _json_object(body)
    unknown = sorted(set(document) - set(FIELDS))
    if unknown:
        raise InvalidRequest(
            'send {"plan": "<plan id>"} or {"topup": "<pack id>"} only',
            details=[{"field": name[:_ECHO], "problem": "unknown field"} for name in unknown[:5]],
        )
    chosen = [name for name in FIELDS if name in document]
    if len(chosen) != 1:
        raise InvalidRequest('send exactly one of {"plan": "<plan id>"} or {"topup": "<pack id>"}')
    field = chosen[0]
    wanted = document[field]
    if not isinstance(wanted, str) or not wanted.strip():
        raise InvalidRequest(f"{field} must be a non-empty string")
    return _offer(plans, "plan" if field == "plan" else "topup", wanted.strip())


def _json_object(body: bytes) -> Mapping[str, Any]:
    try:
        document = json.loads(body) if body.strip() else None
    # ValueError covers bad JSON and bytes that are not UTF-8; deep nesting exhausts recursion.
    except (ValueError, RecursionError):
        raise InvalidRequest("the body must be a JSON object") from None
    if not isinstance(document, dict):
        raise InvalidRequest("the body must be a JSON object")
    return document


def _offer(plans: PlanCatalog, kind: Kind, wanted: str) -> Offer:
    if kind == "plan" and wanted.lower() == plans.default_id:
        raise InvalidRequest(f"the {plans.default.name} plan is free: it cannot be bought")
    for offer in offers(plans):
        if offer.kind == kind and offer.id == wanted.lower():
            return offer
    known = [offer.id for offer in offers(plans) if offer.kind == kind]
    what = "plan" if kind == "plan" else "top-up pack"
    raise InvalidRequest(
        f"unknown {what} {wanted[:_ECHO]!r}", details=[{"field": kind, "allowed": known}]
    )


def plan_change(account: Account | None, offer: Offer, return_url: str) -> PortalRequest | None:
    """For a subscriber asking for another plan, the portal at their subscription's plan change:
    a second subscription would bill both. None when a checkout is the way.

    Raises ``Conflict`` for the plan the subscriber already has.
    """
    if offer.kind != "plan" or account is None or not subscribed(account):
        return None
    if account.plan == offer.id:
        raise Conflict(f"you already have the {offer.name} plan")
    if not account.stripe_customer_id or not account.stripe_subscription_id:
        raise Conflict("your subscription cannot be changed here yet: try again shortly")
    return PortalRequest(
        account.stripe_customer_id, return_url, change_subscription=account.stripe_subscription_id
    )


def checkout_request(
    user_id: str,
    account: Account | None,
    offer: Offer,
    price: Price | None,
    urls: ReturnUrls,
) -> CheckoutRequest:
    """The session to create: the caller on every id field, the pack's tokens from the catalogue.

    Raises ``PlanError`` when the billing system has no usable price for the offer.
    """
    price_id = priced(offer, price).price_id
    metadata = {"user_id": user_id}
    if offer.kind == "topup":
        metadata |= {"topup_id": offer.id, "topup_tokens": str(offer.tokens)}
    return CheckoutRequest(
        mode=offer.mode,
        price_id=price_id,
        user_id=user_id,
        customer_id=account.stripe_customer_id if account is not None else None,
        metadata=metadata,
        success_url=urls.success,
        cancel_url=urls.cancel,
    )


# -- POST /portal ------------------------------------------------------------------------------


def portal_request(account: Account | None, return_url: str) -> PortalRequest:
    """The portal of the caller's linked customer; ``Conflict`` when there is none yet."""
    if account is None or not account.stripe_customer_id:
        raise Conflict("there is no billing account yet: buy a plan or a top-up first")
    return PortalRequest(account.stripe_customer_id, return_url)


# -- where the hosted pages send the user back ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReturnUrls:
    page: str
    success: str
    cancel: str


def return_urls(page: str) -> ReturnUrls:
    """The page's URL, and it with ``checkout=success`` / ``checkout=cancel`` added to its query.

    Raises ``ValueError`` unless ``page`` is an absolute http(s) URL.
    """
    parts = urlsplit(page)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{page!r} is not an absolute http:// or https:// URL")

    def with_outcome(outcome: str) -> str:
        query = f"{parts.query}&checkout={outcome}" if parts.query else f"checkout={outcome}"
        return urlunsplit(parts._replace(query=query))

    return ReturnUrls(page=page, success=with_outcome("success"), cancel=with_outcome("cancel"))
