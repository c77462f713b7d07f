"""Micro-benchmark of reading a notification body on the intake hot path: parse + validate one POST's body, and one
item of a batch of 1,000, with the product's code and with the type-checking step of msgspec and of pydantic v2.

It is what chose the library the bodies are declared with (bench/README.md, "Bodies declared once"). Run apart:

    python -m bench.bodies           (no servers needed; µs of CPU per body, median of 5 rounds)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
import pydantic

from actors.channels import build_channels
from actors.settings import Settings
from bench.common import log
from service.validation import parse_notification

MESSAGE = "Hello, this is a notification body of roughly one hundred and sixty characters used for the micro " \
          "benchmark; it is padded to be realistic....."  # fmt: skip
BODY = {"idempotency_key": "k", "recipient": "user@example.com", "channel": "log", "message": MESSAGE}
BATCH = 1000


class MsgspecShape(msgspec.Struct, forbid_unknown_fields=True):
    """The type-level rules of a notification (fields, types, lengths), as msgspec declares them."""

    recipient: Annotated[str, msgspec.Meta(min_length=1)]
    channel: str
    message: Annotated[str, msgspec.Meta(min_length=1, max_length=16_384)]
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = None
    subject: Annotated[str, msgspec.Meta(max_length=255)] | None = None
    metadata: dict[str, Any] | None = None
    send_at: str | None = None


class PydanticShape(pydantic.BaseModel):
    """The same rules as pydantic v2 declares them (strict: no coercion, as the contract wants)."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    recipient: Annotated[str, pydantic.Field(min_length=1)]
    channel: str
    message: Annotated[str, pydantic.Field(min_length=1, max_length=16_384)]
    idempotency_key: Annotated[str, pydantic.Field(min_length=1, max_length=255)] | None = None
    subject: Annotated[str, pydantic.Field(max_length=255)] | None = None
    metadata: dict[str, Any] | None = None
    send_at: str | None = None


def cpu_us(fn: Callable[[], object], calls: int, per_call: int = 1, rounds: int = 5) -> float:
    """Median over `rounds` of the CPU µs per unit (`per_call` units per call)."""
    fn()
    samples = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            fn()
        samples.append((time.process_time() - start) / (calls * per_call) * 1e6)
    return round(statistics.median(samples), 2)


#: A fresh interpreter imports each library and declares a two-field body with it.
DECLARATIONS = {
    "msgspec": "import msgspec\nclass Body(msgspec.Struct):\n    a: str\n    b: int = 0\n"
    "msgspec.convert({'a': 'x'}, Body)",
    "pydantic": "import pydantic\nclass Body(pydantic.BaseModel):\n    a: str\n    b: int = 0\n"
    "Body.model_validate({'a': 'x'})",
}


def import_cost(library: str) -> str:
    """What importing `library` and declaring a body with it costs a fresh interpreter: wall ms and resident MB."""
    script = (
        "import time\n"
        "rss = lambda: int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) / 1024\n"
        f"r, t = rss(), time.perf_counter()\n{DECLARATIONS[library]}\n"
        "print(f'{(time.perf_counter() - t) * 1000:.0f} ms, {rss() - r:.1f} MB')"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    channels = build_channels(Settings.from_env().channels)
    raw = json.dumps(BODY).encode()
    raw_batch = json.dumps({"notifications": [{**BODY, "idempotency_key": f"k{i}"} for i in range(BATCH)]}).encode()

    def product(body: dict[str, Any]) -> object:
        return parse_notification(body, header_key=None, channels=channels, max_attempts=5, scope="")

    def batch_of(check: Callable[[dict[str, Any]], object]) -> Callable[[], object]:
        return lambda: [check(item) for item in json.loads(raw_batch)["notifications"]]

    # The type check alone, as each library does it; the rules no type holds (recipient per channel, NUL, metadata
    # size, send_at) are the product's code whichever library checks the types.
    msgspec_check: Callable[[dict[str, Any]], object] = lambda body: msgspec.convert(body, MsgspecShape)  # noqa: E731
    pydantic_check: Callable[[dict[str, Any]], object] = PydanticShape.model_validate
    rows = {
        "json.loads": (lambda: json.loads(raw), batch_of(lambda item: item)),
        "json.loads + parse_notification (the product)": (lambda: product(json.loads(raw)), batch_of(product)),
        "json.loads + msgspec.convert (type check only)": (
            lambda: msgspec_check(json.loads(raw)),
            batch_of(msgspec_check),
        ),
        "json.loads + pydantic model_validate (type check only)": (
            lambda: pydantic_check(json.loads(raw)),
            batch_of(pydantic_check),
        ),
    }
    for library in ("msgspec", "pydantic"):
        log(f"  import {library}: {import_cost(library)}")
    log(f"{'CPU µs per body':58s} {'single POST':>12s} {'batch item':>12s}")
    for name, (single, batch) in rows.items():
        log(f"  {name:56s} {cpu_us(single, 20_000):12.2f} {cpu_us(batch, 20, BATCH):12.2f}")


if __name__ == "__main__":
    main()
