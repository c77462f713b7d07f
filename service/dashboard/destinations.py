"""GET /internal/dashboard/destinations, and its forms: POST …/destinations/limits and …/destinations/reset."""

from __future__ import annotations

from typing import Any

import falcon

from actors.broker import BrokerUnavailable
from actors.flow.keys import MalformedKey, parse_key
from actors.flow.overview import Destinations
from ledger.destinations import KEEP
from ledger.timestamps import utcnow
from service.dashboard import destinations_page
from service.dashboard.forms import invalid, read_form, with_params
from service.dashboard.layout import BASE, answer
from service.destinations import parse_limits
from service.errors import RETRY_AFTER, ApiError

PAGE = f"{BASE}/destinations"
#: What a limit's field may say to take it back to the default.
DEFAULT_WORDS = {"default", "none"}


class DestinationsPage:
    """GET /internal/dashboard/destinations"""

    def __init__(self, destinations: Destinations) -> None:
        self.destinations = destinations

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        now = utcnow()
        try:
            views = self.destinations.listing(now=now)
        except BrokerUnavailable:
            views = None
        answer(resp, destinations_page.render(views, now, _notice(req)))


def _notice(req: falcon.Request) -> str | None:
    template = destinations_page.NOTICES.get(req.get_param("notice") or "")
    try:
        key = parse_key(req.get_param("key") or "")
    except MalformedKey:
        return None
    if template is None:
        return None
    return template.format(key=key, released=req.get_param_as_int("released") or 0)


def _key(form: dict[str, str]) -> str:
    try:
        return parse_key(form.get("key", "").strip())
    except MalformedKey as exc:
        raise invalid("key", str(exc)) from None


def _limit(text: str) -> Any:
    """A limit's field as the JSON API would take it: empty keeps it, `default` clears it, else a number."""
    text = text.strip()
    if not text:
        return KEEP
    if text.lower() in DEFAULT_WORDS:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text  # parse_limits names it as not a number


class DestinationLimits:
    """POST /internal/dashboard/destinations/limits: set or clear a destination's limits (form fields `key`,
    `concurrency`, `rate`), as `PUT /internal/destinations/{key}` does."""

    def __init__(self, destinations: Destinations) -> None:
        self.destinations = destinations

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = read_form(req)
        key = _key(form)
        given = {name: _limit(form.get(name, "")) for name in ("concurrency", "rate")}
        changes = parse_limits({name: value for name, value in given.items() if value is not KEEP})
        self.destinations.change(key, **changes)
        raise falcon.HTTPSeeOther(with_params(PAGE, notice="limits", key=key))


class DestinationReset:
    """POST /internal/dashboard/destinations/reset: close a destination's circuit and lift its pause (form field
    `key`), as `wjp destinations reset` does."""

    def __init__(self, destinations: Destinations) -> None:
        self.destinations = destinations

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        key = _key(read_form(req))
        try:
            released = self.destinations.reset(key)
        except BrokerUnavailable:
            raise ApiError(
                falcon.HTTP_503,
                "redis_unavailable",
                "Redis, which holds the destinations' circuits, cannot be reached; try again shortly.",
                headers={"Retry-After": str(RETRY_AFTER)},
            ) from None
        raise falcon.HTTPSeeOther(with_params(PAGE, notice="reset", key=key, released=str(released)))
