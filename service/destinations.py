"""GET /internal/destinations[/{key}] and PUT /internal/destinations/{key}: limits, circuits and waiting jobs."""

from __future__ import annotations

from typing import Any

import falcon
import msgspec
from msgspec import UNSET

from actors.broker import BrokerUnavailable
from actors.flow.keys import MalformedKey, parse_key
from actors.flow.overview import Destinations, DestinationView
from ledger.destinations import KEEP
from ledger.timestamps import rfc3339
from service import shapes
from service.bodies import read_json_object
from service.errors import RETRY_AFTER, ApiError
from service.field_rules import field_problems
from service.shapes import Destination, Limits


def destination_document(view: DestinationView) -> Destination:
    return Destination(
        key=view.key,
        concurrency=view.concurrency,
        rate=view.rate,
        in_flight=view.in_flight,
        circuit=view.circuit,
        consecutive_failures=view.consecutive_failures,
        opened_until=rfc3339(view.opened_until),
        paused_until=rfc3339(view.paused_until),
        waiting=view.waiting,
    )


def _key(raw: str) -> str:
    try:
        return parse_key(raw)
    except MalformedKey as exc:
        raise ApiError(falcon.HTTP_404, "not_found", f"No destination has this key: {exc}.") from None


def _redis_unavailable(what: str) -> ApiError:
    return ApiError(
        falcon.HTTP_503,
        "redis_unavailable",
        f"{what} Redis, which holds the destinations' circuits and slots, cannot be reached; try again shortly.",
        headers={"Retry-After": str(RETRY_AFTER)},
    )


def parse_limits(body: dict[str, Any]) -> dict[str, Any]:
    """The limits a PUT body changes (`shapes.Limits`): a number sets one, null takes it back to the default, a
    missing one stays (`KEEP`).

    Raises:
        ApiError: 400 `validation_error` naming each bad field.
    """
    try:
        limits = msgspec.convert(body, Limits)
    except msgspec.ValidationError:
        problems = field_problems(body, Limits, "is not a limit of a destination")
        fields = ", ".join(dict.fromkeys(field for field, _ in problems))
        raise ApiError(
            falcon.HTTP_400,
            "validation_error",
            f"The limits are not valid: check {fields}.",
            [{"field": field, "message": message} for field, message in problems],
        ) from None
    return {name: KEEP if value is UNSET else value for name, value in msgspec.structs.asdict(limits).items()}


class DestinationCollection:
    """GET /internal/destinations"""

    def __init__(self, destinations: Destinations) -> None:
        self.destinations = destinations

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            views = self.destinations.listing()
        except BrokerUnavailable:
            raise _redis_unavailable("The destinations cannot be listed:") from None
        resp.media = msgspec.to_builtins(shapes.Destinations(data=[destination_document(view) for view in views]))


class DestinationItem:
    """GET and PUT /internal/destinations/{key}"""

    def __init__(self, destinations: Destinations) -> None:
        self.destinations = destinations

    def on_get(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        canonical = _key(key)
        try:
            resp.media = msgspec.to_builtins(destination_document(self.destinations.one(canonical)))
        except BrokerUnavailable:
            raise _redis_unavailable("The destination cannot be read:") from None

    def on_put(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        canonical = _key(key)
        changes = parse_limits(read_json_object(req))
        self.destinations.change(canonical, **changes)
        try:
            resp.media = msgspec.to_builtins(destination_document(self.destinations.one(canonical)))
        except BrokerUnavailable:
            raise _redis_unavailable("The limits were saved, but the destination's state cannot be read:") from None
