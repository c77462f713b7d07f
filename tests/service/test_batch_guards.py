"""The batch endpoint under the guards and faults a single POST meets: tenant-scoped keys, producer rate limits
counted per item, Redis or the ledger down, and two batches racing on the same keys."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from falcon import testing

from actors.broker import Dispatcher, make_broker
from ledger import api_keys
from ledger.database import Database
from ledger.states import Status
from ledger.timestamps import utcnow
from tests.conftest import free_port
from tests.service.conftest import assert_error, job_count, ledger_counts, notification, post, simulate_on_own_loop
from tests.service.test_batch import post_batch, results_of
from tests.service.test_outages import assert_ledger_unavailable, ledger_down  # noqa: F401 (a fixture)


def new_key(database: Database, name: str, rate: float | None = None) -> dict[str, str]:
    secret = database.run(lambda conn: api_keys.create(conn, name, now=utcnow(), rate=rate), transaction=True)[1]
    return {"Authorization": f"Bearer {secret}"}


def test_idempotency_keys_in_batches_are_scoped_per_api_key_and_jobs_seen_only_by_their_key(database, make_client):
    client = make_client()
    alpha, beta = new_key(database, "alpha"), new_key(database, "beta")
    items = [notification(idempotency_key="order-1"), notification(idempotency_key="order-2")]

    first = results_of(post_batch(client, items, **alpha))
    second = results_of(post_batch(client, items, **beta))
    again = results_of(post_batch(client, items, **alpha))

    assert [r["status"] for r in first + second + again] == [202, 202, 202, 202, 200, 200]
    assert {r["job_id"] for r in first}.isdisjoint({r["job_id"] for r in second})
    assert [r["job_id"] for r in again] == [r["job_id"] for r in first]
    assert_error(client.simulate_get(f"/api/notifications/{first[0]['job_id']}", headers=beta), 404, "not_found")
    assert_error(post_batch(client, items), 401, "unauthorized")
    assert job_count(database) == 4


def test_a_batch_spends_one_notification_of_the_rate_per_item(database, make_client):
    client = make_client()
    key = new_key(database, "bulk", rate=1)

    accepted = results_of(post_batch(client, [notification() for _ in range(60)], **key))
    after = post(client, notification(), **key)

    assert [r["status"] for r in accepted] == [202] * 60
    # Sixty spent from a bucket of one: the next notification waits about a minute, not a second.
    assert_error(after, 429, "rate_limited")
    assert int(after.headers["retry-after"]) >= 50


def test_a_batch_over_the_rate_is_refused_whole_and_writes_nothing(database, make_client):
    client = make_client(WJP_API_KEY_RATE="0.01")
    key = new_key(database, "slow")
    assert post(client, notification(), **key).status_code == 202

    refused = post_batch(client, [notification(), notification()], **key)

    assert_error(refused, 429, "rate_limited")
    assert refused.headers["retry-after"].isdigit()
    assert job_count(database) == 1


def test_a_batchs_messages_go_to_redis_in_one_round_trip(client, dispatcher, redis_messages):
    trips: list[int] = []
    enqueue_many = dispatcher.broker.enqueue_many

    def counted(messages):
        trips.append(len(messages))
        return enqueue_many(messages)

    dispatcher.broker.enqueue_many = counted

    results = results_of(post_batch(client, [notification() for _ in range(100)]))

    assert [r["status"] for r in results] == [202] * 100
    assert trips == [100]
    assert len(redis_messages.queued()) == 100


def test_with_redis_down_a_batch_is_still_recorded_and_answered_item_by_item(client_for, database, queue_name):
    client = client_for(database, Dispatcher(make_broker(f"redis://127.0.0.1:{free_port()}/0"), queue_name))
    items = [notification(), notification(channel="pigeon"), notification()]

    results = results_of(post_batch(client, items))

    assert [r["status"] for r in results] == [202, 400, 202]
    assert ledger_counts(database)[Status.PENDING] == 2


def test_with_the_ledger_down_a_batch_is_a_503_and_nothing_is_sent(
    client_for,
    ledger_down,  # noqa: F811 (the fixture imported above)
    dispatcher,
    redis_messages,
):
    client = client_for(ledger_down, dispatcher)

    assert_ledger_unavailable(post_batch(client, [notification(), notification(channel="pigeon")]))

    assert redis_messages.queued() == {} and redis_messages.delayed() == {}


def race(app, batches: list[list[dict]]) -> list[testing.Result]:
    barrier = threading.Barrier(len(batches))

    def send(items: list[dict]) -> testing.Result:
        barrier.wait(timeout=30)
        return simulate_on_own_loop(app, "POST", "/api/notifications/batch", json={"notifications": items})

    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        return list(pool.map(send, batches))


def test_two_batches_racing_on_overlapping_keys_make_one_job_per_key_and_no_5xx(
    client_for, database, dispatcher, redis_messages
):
    app = client_for(database, dispatcher).app
    rounds = 3
    for round_number in range(rounds):
        shared = [notification(idempotency_key=f"shared-{round_number}-{i}") for i in range(40)]
        mine = [notification() for _ in range(10)]
        theirs = [notification() for _ in range(10)]

        one, two = race(app, [shared + mine, list(reversed(shared)) + theirs])

        first, second = results_of(one), results_of(two)
        by_key = {r["idempotency_key"]: r["job_id"] for r in first}
        assert all(by_key.get(r["idempotency_key"], r["job_id"]) == r["job_id"] for r in second)
        statuses = Counter(r["status"] for r in first[:40] + second[:40])
        assert statuses == {202: 40, 200: 40}, statuses
        assert [r["status"] for r in first[40:] + second[40:]] == [202] * 20
    assert job_count(database) == rounds * 60
    assert len(redis_messages.queued()) == rounds * 60


def test_with_the_ledger_down_a_batch_of_bad_items_is_still_told_what_is_wrong_with_each(
    client_for,
    ledger_down,  # noqa: F811 (the fixture imported above)
    dispatcher,
):
    client = client_for(ledger_down, dispatcher)

    results = results_of(post_batch(client, [notification(channel="pigeon"), notification(message="")]))

    assert [(r["status"], r["error"]) for r in results] == [(400, "validation_error")] * 2
