"""The transport against the Dramatiq it was tested with: actors/broker.py and actors/consumer.py write Dramatiq's
Redis layout and build its script's calls themselves, so each of those is checked against Dramatiq's own code."""

from __future__ import annotations

import importlib.metadata
import re
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import dramatiq
import dramatiq.brokers.redis
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis

from actors.broker import (
    ACTOR_NAME,
    DEST_OPTION,
    NAMESPACE,
    RID_OPTION,
    TESTED_DISPATCH_SHA,
    Dispatcher,
    PinRedisMessageId,
    UntestedDramatiq,
    make_broker,
    redis_message_id,
)
from actors.consumer import bell_key
from actors.settings import Settings
from ledger.timestamps import utcnow
from ledger.transitions import Dispatch
from service.cli import main
from tests.actors.conftest import RecordingChannel, running_worker, submit, wait_for_status
from tests.conftest import settings_env

QUEUE = "contract"
CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"


def snapshot(client: redis.Redis) -> dict[str, tuple[str, Any]]:
    """Every key with its type and its content, bodies decoded; leaving out the keys only one side writes:
    `__heartbeats__`, which Dramatiq's script updates for the caller on every call (a sender's entry only matters
    to maintenance, which finds no leases under it), and the queue's bell, which only our sends ring."""
    found: dict[str, tuple[str, Any]] = {}
    for raw in client.scan_iter():
        key = raw.decode()
        if key in {f"{NAMESPACE}:__heartbeats__", bell_key(QUEUE)}:
            continue
        kind = client.type(key).decode()
        if kind == "hash":
            value: Any = {f.decode(): dramatiq.Message.decode(v).asdict() for f, v in client.hgetall(key).items()}
        elif kind == "list":
            value = [item.decode() for item in client.lrange(key, 0, -1)]
        else:
            value = None
        found[key] = (kind, value)
    return found


def test_the_installed_dramatiq_is_the_one_constraints_txt_pins_and_its_script_the_tested_one():
    pinned = re.search(r"^dramatiq==(\S+)$", CONSTRAINTS.read_text(), re.MULTILINE)
    assert pinned and importlib.metadata.version("dramatiq") == pinned.group(1)
    assert make_broker("redis://127.0.0.1:1/0").scripts["dispatch"].sha == TESTED_DISPATCH_SHA


def test_a_dramatiq_whose_script_differs_is_refused_in_one_line_naming_both_shas(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(dramatiq.brokers.redis._scripts, "dispatch", b"-- another release\n")
    with pytest.raises(UntestedDramatiq, match=TESTED_DISPATCH_SHA) as refused:
        make_broker("redis://127.0.0.1:1/0")
    found = re.findall(r"[0-9a-f]{40}", str(refused.value))
    assert len(set(found)) == 2, "the installed script's SHA-1 and the tested one"

    # `wjp reconcile` builds a broker in its own process: the refusal is its one line, and it exits non-zero.
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["reconcile"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and TESTED_DISPATCH_SHA in err and err.startswith("wjp: ")


def test_dispatcher_send_writes_what_dramatiqs_own_enqueue_writes(private_redis):
    # Dramatiq's enqueue of the same messages, their Redis ids pinned as the worker's middleware pins them.
    client = redis.Redis(port=private_redis.port)
    dramatiqs = RedisBroker(client=client, namespace=NAMESPACE, middleware=[PinRedisMessageId()])
    dispatcher = Dispatcher(make_broker(private_redis.url), QUEUE)
    now = utcnow()
    due = Dispatch(uuid.uuid4(), 1, now, "log")
    later = Dispatch(uuid.uuid4(), 2, now + timedelta(minutes=5), "webhook:example.com:443")
    delay_ms = 5 * 60 * 1000

    before = current_millis()
    dispatcher.send([due, later], now=now)
    after = current_millis()
    ours = snapshot(client)
    client.flushall()
    for dispatch, delay in ((due, None), (later, delay_ms)):
        rid = redis_message_id(dispatch)
        sent_at = ours[f"{NAMESPACE}:{QUEUE}{'.DQ' if delay else ''}.msgs"][1][rid]["message_timestamp"]
        message = dramatiq.Message(
            queue_name=QUEUE, actor_name=ACTOR_NAME, args=(str(dispatch.job_id),), kwargs={},
            options={RID_OPTION: rid, DEST_OPTION: dispatch.destination}, message_id=rid, message_timestamp=sent_at,
        )  # fmt: skip
        dramatiqs.enqueue(message, delay=delay)
    theirs = snapshot(client)

    # The due time of the delayed one is each side's clock plus the delay: the same within the call's span.
    delayed = f"{NAMESPACE}:{QUEUE}.DQ.msgs"
    etas = [side[delayed][1][redis_message_id(later)]["options"].pop("eta") for side in (ours, theirs)]
    assert before + delay_ms <= etas[0] <= after + delay_ms <= etas[1]
    assert ours == theirs
    assert set(ours) == {f"{NAMESPACE}:{QUEUE}{suffix}" for suffix in ("", ".msgs", ".DQ", ".DQ.msgs")}


def test_each_sent_body_decodes_to_the_message_dramatiqs_own_encoding_would_give(private_redis):
    """The bodies are written by msgspec, not by Dramatiq's encoder: a worker must read them back as the very
    message, whatever text its destination holds."""
    client = redis.Redis(port=private_redis.port)
    dispatcher = Dispatcher(make_broker(private_redis.url), QUEUE)
    now = utcnow()
    destinations = ["", "log", 'webhook:bücher.example:443 "quoted" \\ \n\x01 \u2028 😀']
    dispatches = [Dispatch(uuid.uuid4(), seq, now, destination) for seq, destination in enumerate(destinations, 1)]
    dispatches.append(Dispatch(uuid.uuid4(), 2**31 - 1, now + timedelta(hours=1), "email:relay:25"))

    dispatcher.send(dispatches, now=now)

    for dispatch in dispatches:
        rid = redis_message_id(dispatch)
        queue = QUEUE if dispatch.due_at == now else f"{QUEUE}.DQ"
        body = client.hget(f"{NAMESPACE}:{queue}.msgs", rid)
        ours = dramatiq.Message.decode(body)
        options: dict[str, object] = {RID_OPTION: rid, "redis_message_id": rid}
        if dispatch.destination:
            options[DEST_OPTION] = dispatch.destination
        if queue != QUEUE:
            options["eta"] = ours.options["eta"]
        theirs = dramatiq.Message(
            queue_name=queue, actor_name=ACTOR_NAME, args=(str(dispatch.job_id),), kwargs={}, options=options,
            message_id=rid, message_timestamp=ours.message_timestamp,
        )  # fmt: skip
        assert ours == dramatiq.Message.decode(theirs.encode())


@pytest.mark.parametrize(("command", "args"), [("fetch", (3,)), ("ack", ("a.1",)), ("enqueue", ("a.1", b"{}"))])
def test_script_command_builds_the_arguments_dramatiqs_dispatch_builds(private_redis, command, args):
    broker = make_broker(private_redis.url, maintenance_chance=0)
    script = broker.scripts["dispatch"]
    calls: list[tuple[list[object], list[object]]] = []

    def recording(*, keys: list[object], args: list[object]) -> object:
        calls.append((keys, args))
        return script(keys=keys, args=args)

    broker.scripts["dispatch"] = recording  # type: ignore[assignment]
    getattr(broker, f"do_{command}")(QUEUE, *args)
    broker.scripts["dispatch"] = script
    ours = broker._script_command(command, QUEUE, *args, sha=True)

    (keys, dramatiqs_args), = calls
    assert ours[:3] == ("EVALSHA", TESTED_DISPATCH_SHA, len(keys))
    # Equal but for the call's timestamp (the second argument), each taken from the clock as the call is built.
    ours_args = list(ours[3 + len(keys) :])
    assert isinstance(ours_args[1], int) and ours_args[1] >= dramatiqs_args[1]
    ours_args[1] = dramatiqs_args[1]
    assert (list(ours[3 : 3 + len(keys)]), ours_args) == (keys, dramatiqs_args)


def test_requeue_abandoned_returns_a_dead_workers_leases_to_their_queues(private_redis):
    client = redis.Redis(port=private_redis.port)
    now = utcnow()
    due, later = Dispatch(uuid.uuid4(), 1, now), Dispatch(uuid.uuid4(), 1, now + timedelta(minutes=5))
    dispatcher = Dispatcher(make_broker(private_redis.url, heartbeat_timeout=200), QUEUE)
    dispatcher.send([due, later], now=now)
    dead = make_broker(private_redis.url)
    assert next(dead.consume(QUEUE, prefetch=1, timeout=50)) is not None
    assert next(dead.consume(f"{QUEUE}.DQ", prefetch=1, timeout=50)) is not None
    assert client.llen(f"{NAMESPACE}:{QUEUE}") == client.llen(f"{NAMESPACE}:{QUEUE}.DQ") == 0

    # The leasing process stops heart-beating (it makes no more calls) for longer than the heartbeat timeout.
    last_heartbeat = client.zscore(f"{NAMESPACE}:__heartbeats__", dead.broker_id)
    while current_millis() <= last_heartbeat + 200:
        time.sleep(0.05)
    dispatcher.requeue_abandoned()

    assert client.lrange(f"{NAMESPACE}:{QUEUE}", 0, -1) == [redis_message_id(due).encode()]
    assert client.lrange(f"{NAMESPACE}:{QUEUE}.DQ", 0, -1) == [redis_message_id(later).encode()]
    assert not list(client.scan_iter(f"{NAMESPACE}:__acks__.{dead.broker_id}.*"))


def test_a_stopped_worker_leaves_no_body_unacked(postgres_db, private_redis, tmp_path):
    # Acks are deferred to the consumer's next fetch: a worker that stops must send those of its last jobs.
    client = redis.Redis(port=private_redis.port)
    settings = Settings.from_env(
        settings_env(postgres_db, private_redis.url, QUEUE, WJP_OUTBOX_DIR=str(tmp_path / "outbox"))
    )
    dispatcher = Dispatcher(make_broker(private_redis.url), QUEUE)
    with running_worker(settings, postgres_db, channels={"log": RecordingChannel()}, threads=2):
        jobs = [submit(postgres_db, dispatcher, settings) for _ in range(5)]
        for job in jobs:
            wait_for_status(postgres_db, job)

    assert client.hlen(f"{NAMESPACE}:{QUEUE}.msgs") == 0
    assert not list(client.scan_iter(f"{NAMESPACE}:__acks__.*"))


def test_make_and_the_image_install_from_the_constraints_file():
    root = CONSTRAINTS.parent
    makefile = (root / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    stamps = [line for line in makefile.splitlines() if line.startswith("$(VENV)/.installed-")]
    assert installs and all("-c constraints.txt" in line for line in installs)
    assert stamps and all("constraints.txt" in line for line in stamps)
    assert "pip install -c /app/constraints.txt" in (root / "deploy" / "Dockerfile").read_text()
