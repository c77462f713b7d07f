"""Every bad field of a body, read from the rules of its declared type (service/shapes.py).

A type check (`msgspec.convert`) stops at the first problem it meets; the contract names every bad field. This
walks the type's fields and says, in the producer's words, what each one breaks.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from msgspec import inspect


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages a producer understands."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _kind(info: inspect.Type) -> tuple[type | tuple[type, ...], str]:
    """The Python types a JSON value of this kind decodes to, and its name in a message."""
    if isinstance(info, inspect.Metadata):
        if (info.extra_json_schema or {}).get("format") == "date-time":
            return str, "an RFC 3339 time string"
        info = info.type
    if isinstance(info, inspect.DictType):
        return dict, "an object"
    if isinstance(info, inspect.IntType):
        return int, "a whole number"
    if isinstance(info, inspect.FloatType):
        return (int, float), "a number"
    return str, "a string"


def _range_problem(info: inspect.IntType | inspect.FloatType, value: float, unit: str) -> str | None:
    if (info.ge is not None and value < info.ge) or (info.le is not None and value > info.le):
        spell = str if isinstance(info, inspect.IntType) else lambda bound: f"{bound:g}"
        low, high = spell(info.ge), spell(info.le)
        return f"must be {low} to {high}{unit}, got {value}"
    return None


def _value_problem(field: inspect.Field, value: Any) -> str | None:
    """What is wrong with a present, non-null `value` by the rules of `field`'s declared type."""
    info = field.type
    if isinstance(info, inspect.UnionType):
        (info,) = (member for member in info.types if not isinstance(member, inspect.NoneType))
    python_type, name = _kind(info)
    # No field is a boolean, and JSON's true is no number.
    if isinstance(value, bool) or not isinstance(value, python_type):
        # Null is worth naming where it means something else than leaving the field out.
        nullable = " or null" if not field.required and field.default is not None else ""
        return f"must be {name}{nullable}, got {json_type(value)}"
    unit = f" {info.extra['unit']}" if isinstance(info, inspect.Metadata) and info.extra else ""
    rules = info.type if isinstance(info, inspect.Metadata) else info
    if isinstance(rules, inspect.StrType):
        if rules.max_length is not None and len(value) > rules.max_length:
            return f"must be at most {rules.max_length} characters, got {len(value)}"
        if rules.min_length and len(value) < rules.min_length:
            return "must not be empty"
    if isinstance(rules, inspect.IntType | inspect.FloatType):
        return _range_problem(rules, value, unit)
    return None


@cache
def _fields(shape: type) -> tuple[inspect.Field, ...]:
    return inspect.type_info(shape).fields


def field_problems(body: Mapping[str, Any], shape: type, unknown: str) -> list[tuple[str, str]]:
    """Each field of `body` that breaks the rules of the type `shape`: unknown (said as `unknown`), missing, of
    another JSON type, too long, empty or out of range."""
    fields = _fields(shape)
    names = {field.encode_name for field in fields}
    problems = [(name, unknown) for name in sorted(set(body) - names)]
    for field in fields:
        value = body.get(field.encode_name)
        if value is None:
            if field.required:
                problems.append((field.encode_name, "is required"))
            continue
        problem = _value_problem(field, value)
        if problem:
            problems.append((field.encode_name, problem))
    return problems
