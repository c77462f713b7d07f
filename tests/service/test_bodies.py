"""Request bodies are read by msgspec, and what it refuses by json.loads: the values and the errors are those
json.loads alone gave (service/bodies.py). Bounded and deterministic: a fixed number of examples, derandomized."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import bodies
from service.errors import ApiError

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
#: JSON number literals, with the spellings a float parser can get wrong: long mantissas, exponents, limits.
NUMBERS = st.from_regex(r"-?(0|[1-9][0-9]{0,40})(\.[0-9]{1,40})?([eE][+-]?[0-9]{1,3})?", fullmatch=True)


def read(raw: bytes) -> Any:
    req = SimpleNamespace(content_type="application/json", content_length=len(raw), context=SimpleNamespace(body=raw))
    return bodies.read_json_object(req)  # type: ignore[arg-type]


def read_as_before(raw: bytes) -> Any:
    """What json.loads alone made of `raw`: its value, as JSON (1, 1.0 and true apart), or its error."""
    try:
        return json.dumps(bodies._strict_json(raw))
    except ApiError as exc:
        return exc.code, exc.description


def read_now(raw: bytes) -> Any:
    try:
        return json.dumps(read(raw))
    except ApiError as exc:
        return exc.code, exc.description


@settings(max_examples=300, derandomize=True, deadline=None)
@given(value=JSON_VALUES, ensure_ascii=st.booleans())
def test_a_json_object_reads_to_the_values_json_loads_read(value, ensure_ascii):
    raw = json.dumps({"v": value}, ensure_ascii=ensure_ascii).encode()

    assert read_now(raw) == read_as_before(raw)


@settings(max_examples=500, derandomize=True, deadline=None)
@given(number=NUMBERS)
def test_a_number_reads_as_json_loads_read_it_or_fails_as_it_failed(number):
    raw = f'{{"n": {number}}}'.encode()

    assert read_now(raw) == read_as_before(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"n": NaN}',
        b'{"n": -Infinity}',
        b'{"n": 1e400}',
        b'{"m": "\xff\xfe"}',
        b'{"m": "caf\xe9"}',
        b"",
        b'{"a": 1} x',
        b"{'a': 1}",
        b'\xef\xbb\xbf{"a": 1}',
        b'{"a": "\x01"}',
        b"[" * 10_000 + b"]" * 10_000,
    ],
    ids=[
        "NaN",
        "Infinity",
        "1e400",
        "invalid UTF-8",
        "Latin-1",
        "empty",
        "trailing",
        "quotes",
        "BOM",
        "control",
        "deep",
    ],
)
def test_what_is_not_json_gets_the_error_json_loads_gave(raw):
    assert read_now(raw) == read_as_before(raw)
    assert read_now(raw)[0] == "invalid_json"


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "a\\ud800b"])
def test_a_lone_surrogate_escape_msgspec_refuses_is_read_as_json_loads_reads_it(escape):
    # Valid JSON syntax that msgspec refuses: read as before, so that validation names the field that holds it.
    raw = f'{{"message": "{escape}"}}'.encode()

    assert read(raw) == json.loads(raw)


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"hello"', b"42", b"null"])
def test_json_that_is_not_an_object_is_still_a_validation_error(raw):
    with pytest.raises(ApiError) as caught:
        read(raw)

    assert caught.value.code == "validation_error"
