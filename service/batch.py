"""POST /api/notifications/batch: many notifications in one request, each answered as its own single POST."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

import falcon
import msgspec

from ledger import intake
from ledger.errors import LedgerUnavailable
from ledger.ids import uuid7s
from ledger.intake import Accepting, Intake, IntakeResult, NewNotification
from ledger.timestamps import rfc3339, utcnow
from ledger.transitions import Dispatch
from service import metrics
from service.access import request_scope
from service.batch_group import BatchGroups
from service.bodies import json_object, receive_body
from service.errors import ApiError, error_body
from service.field_rules import json_type
from service.resources import Context
from service.shapes import MAX_BATCH_ITEMS, BatchResult, BatchResults
from service.shapes import NewNotification as Item
from service.validation import checked_key, checked_notification, parse_notification

#: Largest batch body accepted, in bytes.
MAX_BATCH_BYTES = 4 * 1024 * 1024


class _TypedBatch(msgspec.Struct, forbid_unknown_fields=True):
    notifications: list[Item]


_TYPED = msgspec.json.Decoder(_TypedBatch)


def typed_items(raw: bytes) -> list[Item] | None:
    """The batch's notifications if every one of them has its type (then only the rules no type can say are left to
    check), None otherwise: such a body is read again as plain JSON, to tell each item what is wrong with it.

    Read straight into the type, a batch's items cost a third of reading them into dicts and checking each against
    the type after (bench/README.md)."""
    try:
        items = _TYPED.decode(raw).notifications
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return items if 0 < len(items) <= MAX_BATCH_ITEMS else None


def _invalid_batch(message: str, detail: str) -> ApiError:
    return ApiError(falcon.HTTP_400, "validation_error", message, [{"field": "notifications", "message": detail}])


def batch_items(body: dict[str, Any]) -> list[Any]:
    """The batch's notifications, or the 400/413 that the batch as a whole gets."""
    unknown = sorted(set(body) - {"notifications"})
    if unknown:
        raise ApiError(
            falcon.HTTP_400,
            "validation_error",
            "A batch holds only 'notifications'.",
            [{"field": name, "message": "is not a field of a batch"} for name in unknown],
        )
    items = body.get("notifications")
    if not isinstance(items, list):
        got = "is required" if items is None else f"must be an array, got {json_type(items)}"
        raise _invalid_batch("Send the notifications as an array in 'notifications'.", got)
    if not items:
        raise _invalid_batch("A batch holds at least one notification.", "must not be empty")
    if len(items) > MAX_BATCH_ITEMS:
        raise ApiError(
            falcon.HTTP_413,
            "batch_too_large",
            f"A batch holds at most {MAX_BATCH_ITEMS} notifications, this one {len(items)}; split it.",
        )
    return items


def _mismatch(result: IntakeResult) -> BatchResult:
    return BatchResult(
        status=422,
        error="idempotency_key_mismatch",
        message="This idempotency key was already used with a different notification.",
        details=[{"field": "idempotency_key", "job_id": str(result.job_id)}],
    )


def _refused(error: ApiError) -> BatchResult:
    return BatchResult(status=error.status_code, **error_body(error))


class NotificationBatch:
    """POST /api/notifications/batch"""

    #: The producer's rate is spent per notification of the batch, which only this resource can count.
    counts_its_items = True

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._groups = BatchGroups(self._accept, MAX_BATCH_ITEMS)

    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw = await receive_body(req, limit=MAX_BATCH_BYTES)
        typed = typed_items(raw)
        items: list[Any] = typed if typed is not None else batch_items(json_object(raw, limit=MAX_BATCH_BYTES))
        hold_to_rate = getattr(req.context, "hold_to_rate", None)
        if hold_to_rate is not None:
            await hold_to_rate(len(items))
        try:
            scope, outage = request_scope(req), None
        except LedgerUnavailable as exc:
            # Raised only if an item needs the ledger: a batch of bad items is still told what is wrong with each.
            scope, outage = "", exc
        now = utcnow()
        results: list[BatchResult | None] = [None] * len(items)
        valid: list[tuple[int, NewNotification]] = []
        parse = partial(self._parsed, scope=scope, now=now) if typed is None else self._checker(scope, now)
        for index, item in enumerate(items):
            try:
                valid.append((index, parse(item)))
            except ApiError as exc:
                results[index] = _refused(exc)
        if len(valid) < len(items):
            metrics.count_intake("invalid", len(items) - len(valid))
        if valid:
            if outage is not None:
                raise outage
            # Dispatched at once, or left to the reconciler until it falls due (as a single POST).
            horizon = self.ctx.settings.core.schedule_horizon
            batch = [
                Accepting(r, now, r.send_at is None or (r.send_at - now).total_seconds() <= horizon, job_id)
                for (_, r), job_id in zip(valid, uuid7s(len(valid)), strict=True)
            ]
            outcomes = await self._groups(batch)
            # The jobs a batch creates share one instant: it is rendered once per batch, not once per item.
            times: dict[datetime, str] = {}
            for (index, request), outcome in zip(valid, outcomes, strict=True):
                if outcome.outcome is Intake.MISMATCH:
                    results[index] = _mismatch(outcome)
                    continue
                created_at = times.get(outcome.created_at)
                if created_at is None:
                    created_at = times[outcome.created_at] = rfc3339(outcome.created_at)
                status = 200 if outcome.outcome is Intake.REPLAYED else 202
                key = request.idempotency_key
                results[index] = BatchResult(status, outcome.job_id, outcome.status, key, created_at)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = msgspec.json.encode(BatchResults(results=results))

    def _accept(self, batch: list[Accepting]) -> list[IntakeResult]:
        """The batch in one statement, then its new jobs' messages in one send, on the group thread's kept
        connection (`BatchGroups`)."""
        outcomes = self.ctx.database.run(lambda conn: intake.accept_batch(conn, batch), kept=True)
        created = [outcome for outcome in outcomes if outcome.outcome is Intake.CREATED]
        self.ctx.dispatch(
            [Dispatch(o.job_id, o.dispatch_seq, o.next_attempt_at, o.destination) for o in created if o.dispatch_seq]
        )
        # Counted here, off the loop, once per outcome: a count in the API's multiprocess registry costs ~6 µs.
        counts = Counter({Intake.CREATED: len(created)} if created else {})
        if len(created) < len(outcomes):  # replays and mismatches, seldom: the new jobs are counted above
            counts.update(outcome.outcome for outcome in outcomes if outcome.outcome is not Intake.CREATED)
        for kind, count in counts.items():
            metrics.count_intake(kind.value, count)
        return outcomes

    def _checker(self, scope: str, now: datetime) -> Callable[[Item], NewNotification]:
        """Checks an item read into its type, with what every item of the batch shares read once."""
        channels, settings = self.ctx.channels, self.ctx.settings
        max_attempts, max_schedule = settings.core.max_attempts, settings.max_schedule

        def checked(item: Item) -> NewNotification:
            # The key's 400 comes first and alone, as for a single POST. Arguments spelt out: unpacking a tuple of
            # them cost a batch item more than some of its checks.
            key = checked_key(item.idempotency_key)
            return checked_notification(key, item, [], channels, max_attempts, scope, max_schedule, now)

        return checked

    def _parsed(self, item: Any, scope: str, now: datetime) -> NewNotification:
        if not isinstance(item, dict):
            raise ApiError(
                falcon.HTTP_400,
                "validation_error",
                "The notification must be a JSON object.",
                [{"field": None, "message": f"expected an object, got {json_type(item)}"}],
            )
        return parse_notification(
            item,
            header_key=None,
            channels=self.ctx.channels,
            max_attempts=self.ctx.settings.core.max_attempts,
            scope=scope,
            max_schedule=self.ctx.settings.max_schedule,
            now=now,
        )
