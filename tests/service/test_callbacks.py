"""`callback_url` over HTTP: checked at intake as a webhook recipient is, shown on the job, and a DELETE sends the
cancelled callback once its cancellation is committed; on PostgreSQL and SQLite."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest

from actors.broker import NAMESPACE
from actors.callbacks import CALLBACK_ACTOR
from ledger import callbacks
from ledger.states import Status
from ledger.timestamps import utcnow
from tests.actors.conftest import running_worker, settings_builder
from tests.actors.test_callbacks import wait_for_callback
from tests.service.conftest import assert_error, notification, post
from tests.webhook_sink import webhook_sink

HOOK = "https://hooks.example.com/status"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:8080/status", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("https://user:secret@hooks.example.com/status", "user name or password"),
        ("https://xn--zz.com/status", "internationalized domain name"),
        ("ftp://hooks.example.com/status", "http"),
        ("/status", "absolute"),
        ("", "must not be empty"),
        (42, "must be a string"),
    ],
)
def test_a_callback_url_a_webhook_could_not_be_sent_to_is_a_400_naming_it(make_client, url, says) -> None:
    client = make_client(WJP_WEBHOOK_ALLOW_PRIVATE="false")
    body = assert_error(post(client, notification(callback_url=url)), 400, "validation_error")
    [detail] = body["details"]
    assert detail["field"] == "callback_url" and says in detail["message"]
    assert "secret" not in json.dumps(body)


def test_a_job_without_a_callback_url_shows_callback_null(client) -> None:
    created = post(client, notification())
    assert client.simulate_get(created.headers["location"]).json["callback"] is None


def test_a_job_with_a_callback_url_shows_it_waiting_until_it_finishes(client) -> None:
    created = post(client, notification(callback_url=HOOK))
    assert created.status_code == 202
    shown = client.simulate_get(created.headers["location"]).json
    assert shown["callback"] == {"url": HOOK, "event": None, "status": "waiting", "attempts": 0, "last_error": None}
    assert shown["status"] == "PENDING"


def test_a_delete_sends_the_cancelled_callback_after_its_commit(client, database, dispatcher, queue_name) -> None:
    job_id = post(client, notification(callback_url=HOOK)).json["job_id"]
    cancelled = client.simulate_delete(f"/api/notifications/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json["status"] == "CANCELLED"
    message = dispatcher.broker.client.hget(f"{NAMESPACE}:{queue_name}.msgs", f"{job_id}.callback.1")
    assert message is not None and json.loads(message)["actor_name"] == CALLBACK_ACTOR
    shown = client.simulate_get(f"/api/notifications/{job_id}").json["callback"]
    assert (shown["event"], shown["status"], shown["attempts"]) == ("CANCELLED", "pending", 0)


def test_a_cancelled_job_gets_its_callback_delivered_and_shown(
    make_client, database, redis_server_url, queue_name, tmp_path
) -> None:
    settings = settings_builder(database, redis_server_url, queue_name, tmp_path)()
    client = make_client()
    with webhook_sink() as sink, running_worker(settings, database):
        later = (utcnow() + timedelta(hours=1)).isoformat()
        body = notification(callback_url=sink.url, send_at=later)
        job_id = post(client, body).json["job_id"]
        assert client.simulate_delete(f"/api/notifications/{job_id}").status_code == 200
        wait_for_callback(database, uuid.UUID(job_id), {Status.SUCCESS})
    [request] = sink.requests()
    assert request.headers["webhook-id"] == f"{job_id}.CANCELLED"
    assert request.json["type"] == "notification.cancelled"
    assert request.json["data"]["status"] == "CANCELLED"
    shown = client.simulate_get(f"/api/notifications/{job_id}").json
    assert shown["callback"] == {
        "url": sink.url, "event": "CANCELLED", "status": "delivered", "attempts": 1, "last_error": None,
    }  # fmt: skip
    assert database.run(lambda conn: callbacks.callback_view(conn, uuid.UUID(job_id))).status is Status.SUCCESS


def test_a_replay_with_the_same_callback_url_is_a_200(client) -> None:
    body = notification(callback_url=HOOK)
    assert post(client, body).status_code == 202
    assert post(client, body).status_code == 200
