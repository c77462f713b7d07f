"""A probe, not the product: POST /api/notifications on gunicorn's asyncio worker (`-k asgi`), for
`python -m bench.experiments asgi`.

It measures what the API would gain from an event loop instead of gthread's thread hand-offs (poller → pool
thread → intake thread → back, for every request). The handler runs the product's own validation, ledger
intake (`ledger.intake.accept_many`) and dispatch; the requests that arrive while a group is in the database
wait on the loop and form the next group, with no thread at all: the group's statement blocks the loop, which
is what lets the backlog build. Left out, so the figures are an upper bound: API keys (the probe's scope is
always ""), metrics, the single-request path for a taken key, and every other route.
"""

from __future__ import annotations

import asyncio
import json

import falcon
import falcon.asgi

from actors.broker import Dispatcher, make_broker
from actors.channels import build_channels
from ledger import intake
from ledger.database import Database
from ledger.intake import Accepting, IntakeResult
from ledger.timestamps import rfc3339, utcnow
from ledger.transitions import Dispatch
from service.bodies import MAX_BODY_BYTES
from service.resources import Context
from service.settings import ServiceSettings
from service.validation import parse_notification


class _Groups:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.waiting: list[tuple[Accepting, asyncio.Future[IntakeResult | None]]] = []
        self.running = False

    async def accept(self, item: Accepting) -> IntakeResult | None:
        answer: asyncio.Future[IntakeResult | None] = asyncio.get_running_loop().create_future()
        self.waiting.append((item, answer))
        if not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self._run())
        return await answer

    async def _run(self) -> None:
        try:
            while self.waiting:
                await asyncio.sleep(0)  # the requests already read join this group
                group, self.waiting = self.waiting[:64], self.waiting[64:]
                items = [item for item, _ in group]
                try:
                    results = self.ctx.database.run(lambda conn, items=items: intake.accept_many(conn, items))
                    self.ctx.dispatch(
                        [
                            Dispatch(r.job_id, r.dispatch_seq, r.next_attempt_at)  # type: ignore[arg-type]
                            for r in results
                            if r is not None and r.dispatch_seq
                        ]
                    )
                except Exception as exc:
                    for _, answer in group:
                        answer.set_exception(exc)
                    continue
                for (_, answer), result in zip(group, results, strict=True):
                    answer.set_result(result)
        finally:
            self.running = False


class _Post:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.groups = _Groups(ctx)

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body = json.loads(await req.stream.read(MAX_BODY_BYTES + 1))
        core = self.ctx.settings.core
        request = parse_notification(
            body, header_key=req.get_header("Idempotency-Key"), channels=self.ctx.channels,
            max_attempts=core.max_attempts, scope="",
        )  # fmt: skip
        result = await self.groups.accept(Accepting(request, utcnow(), True))
        if result is None:
            raise falcon.HTTPInternalServerError(description="the probe has no single-request path")
        resp.media = {"job_id": str(result.job_id), "status": result.status.value,
                      "idempotency_key": request.idempotency_key, "created_at": rfc3339(result.created_at)}  # fmt: skip
        resp.status = falcon.HTTP_202


class _Health:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok"}


def create_app() -> falcon.asgi.App:
    settings = ServiceSettings.from_env()
    core = settings.core
    ctx = Context(settings, Database(core.database_url), Dispatcher(make_broker(core.redis_url), core.queue),
                  build_channels(core.channels))  # fmt: skip
    app = falcon.asgi.App()
    app.add_route("/api/notifications", _Post(ctx))
    app.add_route("/healthz", _Health())
    return app
