"""HTTP resources, one class per URL shape; each does HTTP and leaves decisions to the ledger."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import falcon

from actors.broker import BrokerUnavailable, Dispatcher
from actors.callbacks import send_armed
from actors.channels.base import Channel
from ledger import callbacks, queries, transitions
from ledger.callbacks import CallbackView
from ledger.database import Database
from ledger.errors import LedgerUnavailable
from ledger.intake import Accepting, Intake
from ledger.timestamps import rfc3339, utcnow
from ledger.transitions import Dispatch
from service import metrics
from service.bodies import receive_json_object
from service.callbacks import job_body
from service.errors import ApiError
from service.intake import GroupIntake
from service.listing import JobListing, parse_query
from service.offload import Offload
from service.settings import ServiceSettings
from service.validation import parse_notification

log = logging.getLogger("wjp.api")


@dataclass(frozen=True)
class Context:
    """What every resource shares: settings, the ledger, the dispatcher, the enabled channels, and the threads that
    run their blocking calls off the event loop."""

    settings: ServiceSettings
    database: Database
    dispatcher: Dispatcher
    channels: dict[str, Channel]
    offload: Offload

    def dispatch(self, dispatches: list[Dispatch]) -> None:
        """Send after commit, best effort: the ledger has the jobs, and the reconciler sends what Redis missed."""
        if not dispatches:
            return
        try:
            self.dispatcher.send(dispatches, now=utcnow())
        except BrokerUnavailable as exc:
            for dispatch in dispatches:
                log.warning("job %s recorded but not yet dispatched: %s", dispatch.job_id, exc)


def _job_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise _not_found() from None


def _not_found() -> ApiError:
    return ApiError(falcon.HTTP_404, "not_found", "No notification has this id.")


def _scope(req: falcon.Request) -> str:
    """The producer's scope, set by `ApiKeyMiddleware`; raises the ledger outage that kept it from being known."""
    error = getattr(req.context, "scope_error", None)
    if error is not None:
        raise error
    return getattr(req.context, "scope", "")


class NotificationCollection:
    """POST and GET /api/notifications"""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.intake = GroupIntake(ctx.database, ctx.dispatch, ctx.offload)
        self.listing = JobListing(ctx.database, job_body)
        # Read once: the settings are frozen, and a property read per POST is CPU on the loop.
        self.max_attempts = ctx.settings.core.max_attempts
        self.max_schedule = ctx.settings.max_schedule
        self.schedule_horizon = ctx.settings.core.schedule_horizon

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = parse_query(req.params, dialect=self.ctx.database.dialect)
        resp.media = self.listing.page(query, scope=_scope(req))

    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            request = parse_notification(
                await receive_json_object(req),
                header_key=req.get_header("Idempotency-Key"),
                channels=self.ctx.channels,
                max_attempts=self.max_attempts,
                # '' when the ledger was down for the key check: `_scope` below raises that outage.
                scope=getattr(req.context, "scope", ""),
                max_schedule=self.max_schedule,
            )
        except ApiError:
            metrics.count_intake("invalid")
            raise
        # The outage only now: when the ledger was down for the key check, a bad request still gets its 400.
        _scope(req)
        now = utcnow()
        dispatch_now = request.send_at is None or (request.send_at - now).total_seconds() <= self.schedule_horizon
        result = await self.intake.accept(Accepting(request, now, dispatch_now))  # counted by its outcome there
        if result.outcome is Intake.MISMATCH:
            raise ApiError(
                falcon.HTTP_422,
                "idempotency_key_mismatch",
                "This idempotency key was already used with a different notification.",
                [{"field": "idempotency_key", "job_id": str(result.job_id)}],
            )
        job_id = str(result.job_id)
        resp.media = {
            "job_id": job_id,
            "status": result.status.value,
            "idempotency_key": request.idempotency_key,
            "created_at": rfc3339(result.created_at),
        }
        resp.location = f"/api/notifications/{job_id}"
        if result.outcome is Intake.REPLAYED:
            resp.status = falcon.HTTP_200
            resp.set_header("Idempotent-Replayed", "true")
            return
        resp.status = falcon.HTTP_202


class NotificationItem:
    """GET and DELETE /api/notifications/{job_id}"""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        key, scope = _job_id(job_id), _scope(req)

        def read(conn: Any) -> tuple[queries.JobView | None, CallbackView | None]:
            job = queries.get_job(conn, key, scope=scope)
            return job, None if job is None else callbacks.callback_view(conn, key)

        found, callback = self.ctx.database.run(read)
        if found is None:
            raise _not_found()
        resp.media = job_body(found, callback)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        key, scope, now = _job_id(job_id), _scope(req), utcnow()

        def cancel(conn: Any) -> tuple[bool, queries.JobView | None, CallbackView | None]:
            cancelled = transitions.cancel(conn, key, scope=scope, now=now)
            return cancelled, queries.get_job(conn, key, scope=scope), callbacks.callback_view(conn, key)

        cancelled, job, callback = self.ctx.database.run(cancel, transaction=True)
        if job is None:
            raise _not_found()
        # Only this request's own transition counts: a job cancelled earlier is finished, hence 409.
        if not cancelled:
            raise ApiError(
                falcon.HTTP_409,
                "not_cancellable",
                f"The notification is {job.status.value}; only PENDING or RETRY notifications can be cancelled.",
            )
        send_armed(self.ctx.database, self.ctx.dispatcher, [key], now=now)
        resp.media = job_body(job, callback)


class NotificationAttempts:
    """GET /api/notifications/{job_id}/attempts"""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        key, scope = _job_id(job_id), _scope(req)

        def read(conn: Any) -> list[queries.AttemptView] | None:
            if queries.get_job(conn, key, scope=scope) is None:
                return None
            return queries.list_attempts(conn, key)

        found = self.ctx.database.run(read)
        if found is None:
            raise _not_found()
        resp.media = {
            "job_id": str(key),
            "attempts": [
                {
                    "number": a.number,
                    "started_at": rfc3339(a.started_at),
                    "finished_at": rfc3339(a.finished_at),
                    "outcome": a.outcome,
                    "error": a.error,
                    "worker": a.worker,
                }
                for a in found
            ],
        }


class QueueStats:
    """GET /internal/queue/stats"""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        stats = self.ctx.database.run(lambda conn: queries.queue_stats(conn, now=utcnow()))
        document: dict[str, Any] = {status.value.lower(): count for status, count in stats.counts.items()}
        document["avg_attempts_success"] = stats.avg_attempts_success
        document["oldest_due_age_seconds"] = round(stats.oldest_due_age, 3)
        resp.media = document


class NotificationRetry:
    """POST /internal/notifications/{job_id}/retry"""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        key, now = _job_id(job_id), utcnow()
        extra = self.ctx.settings.core.max_attempts

        def retry(conn: Any) -> tuple[Dispatch | None, queries.JobView | None, CallbackView | None]:
            dispatch = transitions.manual_retry(conn, key, now=now, extra_attempts=extra)
            return dispatch, queries.get_job(conn, key, scope=None), callbacks.callback_view(conn, key)

        dispatch, job, callback = self.ctx.database.run(retry, transaction=True)
        if job is None:
            raise _not_found()
        if dispatch is None:
            raise ApiError(
                falcon.HTTP_409,
                "not_failed",
                f"The notification is {job.status.value}; only FAILED ones can be retried.",
            )
        self.ctx.dispatch([dispatch])
        resp.status = falcon.HTTP_202
        resp.media = job_body(job, callback)


class Health:
    """GET /healthz: the process answers (on the loop: nothing it waits for, whatever the ledger is doing)."""

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class Ready:
    """GET /readyz: the ledger and Redis both answer."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # The body is public: it names what is down, never the driver's message (host, port, user); that goes
        # to the log.
        checks: dict[str, str] = {}
        try:
            self.ctx.database.ping()
            checks["ledger"] = "ok"
        except LedgerUnavailable as exc:
            log.warning("readiness: ledger unavailable: %s", exc)
            checks["ledger"] = "unavailable"
        try:
            self.ctx.dispatcher.ping()
            checks["redis"] = "ok"
        except BrokerUnavailable as exc:
            log.warning("readiness: redis unavailable: %s", exc)
            checks["redis"] = "unavailable"
        down = [name for name, state in checks.items() if state != "ok"]
        if down:
            raise ApiError(
                falcon.HTTP_503,
                "not_ready",
                f"Not ready: {' and '.join(down)} unreachable.",
                [{"component": name, "state": state} for name, state in checks.items()],
                headers={"Retry-After": "5"},
            )
        resp.media = {"status": "ready", **checks}
