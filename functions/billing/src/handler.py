"""One billing execution, routed on method and path: GET /plans, POST /checkout, POST /portal,
each for the verified caller only."""

from __future__ import annotations

from collections.abc import Callable

from metering import checkout
from metering.account import Account
from metering.edge import Answer, LogLine, Request
from metering.errors import InvalidRequest
from metering.identity import caller_id
from metering.wire import plans_answer, session_url

from .bootstrap import BillingApp

Route = Callable[[Request, LogLine, BillingApp, str], Answer]


def handle_billing(request: Request, log: LogLine, app: BillingApp) -> Answer:
    route = ROUTES.get((request.method, request.path.rstrip("/") or "/"))
    if route is None:
        raise InvalidRequest("billing answers GET /plans, POST /checkout and POST /portal")
    user_id = caller_id(request.headers, app.verifier)
    log.add(userId=user_id)
    return route(request, log, app, user_id)


def show_plans(request: Request, log: LogLine, app: BillingApp, user_id: str) -> Answer:
    account = _account(request, app, user_id)
    prices = app.checkout.find_prices([offer.id for offer in checkout.offers(app.plans)])
    shelf, problems = checkout.shelf(app.plans, prices, account)
    for problem in problems:
        log.note("billing.offer_unpriced", problem=problem)
    log.add(plan=shelf.current_plan)
    return Answer(dict(plans_answer(shelf)), outcome="plans")


def start_checkout(request: Request, log: LogLine, app: BillingApp, user_id: str) -> Answer:
    # The body is read before anything else is: a bad one reaches neither the store nor Stripe.
    offer = checkout.read_purchase(request.body_binary, app.plans)
    log.add(kind=offer.kind, offer=offer.id)
    account = _account(request, app, user_id)
    change = checkout.plan_change(account, offer, app.urls.page)
    if change is not None:
        return Answer(dict(session_url(app.checkout.create_portal(change))), outcome="plan_change")
    price = app.checkout.find_prices([offer.id]).get(offer.id)
    url = app.checkout.create_checkout(
        checkout.checkout_request(user_id, account, offer, price, app.urls)
    )
    return Answer(dict(session_url(url)), outcome="checkout")


def open_portal(request: Request, log: LogLine, app: BillingApp, user_id: str) -> Answer:
    portal = checkout.portal_request(_account(request, app, user_id), app.urls.page)
    return Answer(dict(session_url(app.checkout.create_portal(portal))), outcome="portal")


def _account(request: Request, app: BillingApp, user_id: str) -> Account | None:
    # Read only: billing never creates or changes an account (the webhook applies purchases).
    return app.stores(request.headers.get("x-appwrite-key")).get_account(user_id)


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/plans"): show_plans,
    ("POST", "/checkout"): start_checkout,
    ("POST", "/portal"): open_portal,
}
