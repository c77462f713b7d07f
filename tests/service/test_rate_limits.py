"""Producer rate limits in one API process on real Redis: WJP_API_KEY_RATE and a key's own rate, 429 `rate_limited`
with Retry-After, no limit without a key, and intake that keeps answering while Redis is down."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from actors.async_redis import AsyncRedis
from actors.broker import Dispatcher, make_broker
from actors.ratelimit import RateLimiter
from actors.settings import SettingsError
from ledger import api_keys
from ledger.database import Database
from ledger.timestamps import utcnow
from service.settings import ServiceSettings
from tests.service.conftest import assert_error, notification, post

#: A rate that refills one notification per 100 s: a second request within a test is always over it.
SLOW = 0.01


def new_key(database: Database, name: str, rate: float | None = None) -> dict[str, str]:
    secret = database.run(lambda conn: api_keys.create(conn, name, now=utcnow(), rate=rate), transaction=True)[1]
    return {"Authorization": f"Bearer {secret}"}


def test_a_key_over_its_rate_gets_429_rate_limited_with_retry_after_in_whole_seconds(database, make_client):
    client = make_client()
    key = new_key(database, "slow", rate=SLOW)

    first = post(client, notification(), **key)
    second = post(client, notification(), **key)

    assert first.status_code == 202, first.text
    body = assert_error(second, 429, "rate_limited")
    assert "0.01" in body["message"]
    retry_after = second.headers["retry-after"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 100


def test_wjp_api_key_rate_holds_a_key_without_a_rate_of_its_own_and_a_keys_own_rate_wins(database, make_client):
    client = make_client(WJP_API_KEY_RATE=str(SLOW))
    default = new_key(database, "default")
    own = new_key(database, "own", rate=1000)

    assert post(client, notification(), **default).status_code == 202
    assert_error(post(client, notification(), **default), 429, "rate_limited")
    assert [post(client, notification(), **own).status_code for _ in range(5)] == [202] * 5


def test_each_key_has_a_bucket_of_its_own(database, make_client):
    client = make_client(WJP_API_KEY_RATE=str(SLOW))
    first, second = new_key(database, "first"), new_key(database, "second")

    assert post(client, notification(), **first).status_code == 202
    assert_error(post(client, notification(), **first), 429, "rate_limited")
    assert post(client, notification(), **second).status_code == 202


def test_while_no_key_exists_no_limit_applies(database, make_client):
    client = make_client(WJP_API_KEY_RATE=str(SLOW))

    assert [post(client, notification()).status_code for _ in range(3)] == [202] * 3


def test_reading_a_job_spends_nothing_of_the_rate(database, make_client):
    client = make_client()
    key = new_key(database, "reader", rate=SLOW)
    job_id = post(client, notification(), **key).json["job_id"]
    assert_error(post(client, notification(), **key), 429, "rate_limited")

    for _ in range(3):
        assert client.simulate_get(f"/api/notifications/{job_id}", headers=key).status_code == 200


def test_a_bad_wjp_api_key_rate_stops_the_api_naming_the_variable():
    for value in ("fast", "0", "-1", "inf"):
        with pytest.raises(SettingsError, match="WJP_API_KEY_RATE"):
            ServiceSettings.from_env({"WJP_API_KEY_RATE": value})


def test_while_redis_is_down_intake_answers_202_and_logs_the_outage_once_then_limits_again(
    database, client_for, private_redis, queue_name, caplog
):
    client = client_for(database, Dispatcher(make_broker(private_redis.url, timeout=2), queue_name))
    key = new_key(database, "outage", rate=SLOW)
    private_redis.stop()
    caplog.set_level(logging.INFO, logger="wjp.api")

    during = [post(client, notification(), **key).status_code for _ in range(3)]

    assert during == [202] * 3
    outages = [r for r in caplog.records if "rate limits are not enforced" in r.getMessage()]
    assert len(outages) == 1
    private_redis.start()
    assert post(client, notification(), **key).status_code == 202
    assert_error(post(client, notification(), **key), 429, "rate_limited")
    assert any("rate limits are enforced again" in r.getMessage() for r in caplog.records)


def test_a_cost_larger_than_the_bucket_passes_when_it_is_full_and_the_debt_is_waited_out(redis_server_url):
    limiter = RateLimiter(AsyncRedis(redis_server_url), prefix=f"wjp:test-ratelimit:{uuid.uuid4().hex}:")

    async def spend() -> tuple[float, float]:
        return await limiter.wait("batch", rate=2, cost=5), await limiter.wait("batch", rate=2)

    first, second = asyncio.run(spend())
    assert first == 0.0
    # Two tokens held, five spent: three owed, and one more needed, at two per second.
    assert 1.5 < second <= 2.0


class FakeClock:
    """The limiter's monotonic clock, moved by the test: how fast this process submits is the test's choice."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_busy_key_takes_tokens_ahead_and_asks_redis_once_for_many_requests(private_redis):
    client = redis.Redis.from_url(private_redis.url)
    clock = FakeClock()
    limiter = RateLimiter(AsyncRedis(private_redis.url), monotonic=clock)

    async def submit() -> tuple[int, list[float]]:
        assert await limiter.wait("warm-up", rate=1) == 0.0  # the script loaded (a first EVALSHA fails and counts)
        before = evalsha_calls(client)
        waits = []
        for _ in range(1000):
            waits.append(await limiter.wait("busy", rate=1_000_000))
            clock.now += 0.001  # 1,000 submissions per second from this process
        return before, waits

    before, waits = asyncio.run(submit())
    assert waits == [0.0] * 1000
    # About one round trip per ALLOWANCE_SECONDS of demand (50 requests here), not one per request.
    assert evalsha_calls(client) - before <= 1000 // 50 + 2
    client.close()


async def eight_producers(
    limiter: RateLimiter, clock: FakeClock, client: redis.Redis, key: str, *, yield_between: bool = False
) -> tuple[int, list[float]]:
    """Eight connections of one API process submitting 250 times each for `key`, 8,000 a second in all: the EVALSHA
    count before them, and every wait they were answered."""

    async def producer() -> list[float]:
        waits = []
        for _ in range(250):
            waits.append(await limiter.wait(key, rate=1_000_000))
            clock.now += 0.000125
            if yield_between:
                await asyncio.sleep(0)
        return waits

    assert await limiter.wait("warm-up", rate=1) == 0.0  # the script loaded (a first EVALSHA fails and counts)
    before = evalsha_calls(client)
    waits = await asyncio.gather(*(producer() for _ in range(8)))
    return before, [w for ws in waits for w in ws]


def test_requests_arriving_while_a_round_trip_is_under_way_wait_for_it_instead_of_asking_redis_each(
    private_redis,
):
    client = redis.Redis.from_url(private_redis.url)
    clock = FakeClock()
    limiter = RateLimiter(AsyncRedis(private_redis.url), monotonic=clock)

    before, waits = asyncio.run(eight_producers(limiter, clock, client, "concurrent"))
    assert waits == [0.0] * 2000
    # About one round trip per ALLOWANCE_SECONDS of the process's demand (400 requests here), however many
    # requests wait on it.
    assert evalsha_calls(client) - before <= 2000 // 400 + 4
    client.close()


def test_a_request_that_goes_away_while_asking_redis_does_not_leave_the_ones_waiting_for_it_waiting(
    private_redis,
):
    limiter = RateLimiter(AsyncRedis(private_redis.url))

    async def submit() -> float:
        asking = asyncio.create_task(limiter.wait("left", rate=100))
        waiting = asyncio.create_task(limiter.wait("left", rate=100))
        await asyncio.sleep(0)  # both started: the first is connecting to Redis, the second waits for it
        asking.cancel()  # its client went away
        # A hang guard only: the round trip goes on without the request that started it.
        return await asyncio.wait_for(waiting, timeout=60)

    assert asyncio.run(submit()) == 0.0


def test_tokens_a_round_trip_slower_than_the_allowance_brings_are_spent_not_given_back(private_redis):
    client = redis.Redis.from_url(private_redis.url)
    clock = FakeClock()
    limiter = RateLimiter(AsyncRedis(private_redis.url), monotonic=clock)
    round_trip = limiter._bucket

    async def slow_round_trip(key: str, *args: object) -> list[int]:
        answer = await round_trip(key, *args)
        asked = clock.now
        while clock.now < asked + 0.06:  # a starved process reads the answer 60 ms later; its requests go on
            clock.now += 0.001
            await asyncio.sleep(0)
        return answer

    limiter._bucket = slow_round_trip  # type: ignore[method-assign]

    before, waits = asyncio.run(eight_producers(limiter, clock, client, "starved", yield_between=True))
    assert waits == [0.0] * 2000
    # Given back on arrival, every request would need a round trip of its own.
    assert evalsha_calls(client) - before <= 2000 // 3, "what a round trip brought back was spent, not given back"
    client.close()


def test_a_key_that_submits_slowly_asks_redis_for_each_request_and_takes_nothing_ahead(private_redis):
    client = redis.Redis.from_url(private_redis.url)
    clock = FakeClock()
    limiter = RateLimiter(AsyncRedis(private_redis.url), monotonic=clock)

    async def submit() -> int:
        assert await limiter.wait("warm-up", rate=1) == 0.0
        before = evalsha_calls(client)
        for _ in range(10):
            assert await limiter.wait("calm", rate=100) == 0.0
            clock.now += 1.0
        return before

    before = asyncio.run(submit())
    assert evalsha_calls(client) - before == 10
    assert float(client.hget("wjp:ratelimit:calm", "tokens")) >= 99 - 10, "nothing taken beyond what was spent"
    client.close()


def test_tokens_taken_ahead_and_not_spent_go_back_to_the_shared_bucket(private_redis):
    client = redis.Redis.from_url(private_redis.url)
    clock = FakeClock()
    limiter = RateLimiter(AsyncRedis(private_redis.url), monotonic=clock)
    bucket = "wjp:ratelimit:returning"

    async def submit() -> float:
        # 47 submissions 0.1 ms apart at 100/s: the round trips take 5 tokens ahead each (0.05 s of the rate), one
        # every 5 submissions, the last for the 47th, so this process holds 4 unspent.
        for _ in range(47):
            assert await limiter.wait("returning", rate=100) == 0.0
            clock.now += 0.0001
        held_back = float(client.hget(bucket, "tokens"))
        clock.now += 10  # the process goes quiet; its next submission gives back what it did not spend
        assert await limiter.wait("returning", rate=100) == 0.0
        return held_back

    held_back = asyncio.run(submit())

    assert float(client.hget(bucket, "tokens")) >= held_back + 4 - 1
    client.close()


def test_two_processes_taking_tokens_ahead_never_admit_more_than_the_rate_between_them(redis_server_url):
    rate, seconds = 200.0, 1.5
    prefix = f"wjp:test-ratelimit:{uuid.uuid4().hex}:"
    limiters = [RateLimiter(AsyncRedis(redis_server_url), prefix=prefix) for _ in range(2)]  # two processes

    async def submit(limiter: RateLimiter) -> int:
        admitted = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            admitted += await limiter.wait("shared", rate=rate) == 0.0
        return admitted

    def hammer(limiter: RateLimiter) -> int:
        return asyncio.run(submit(limiter))  # a loop per thread, as each API process has its own

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        admitted = sum(pool.map(hammer, limiters * 2))
    elapsed = time.monotonic() - started

    # The bucket starts with one second's worth and refills at the rate, whoever spends it.
    assert rate * seconds * 0.8 <= admitted <= rate + rate * elapsed, (admitted, elapsed)
