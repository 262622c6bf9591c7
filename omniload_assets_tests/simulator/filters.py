"""Klaviyo's ``filter`` query syntax: parse, validate against an endpoint, compile to a predicate.

Grammar: comma-joined top-level expressions (AND); an expression is ``op(field,value)``,
``has(field)``, ``and(...)``, ``or(...)`` or ``not(expr)``. Values are quoted strings (``'`` or
``"``), unquoted ISO 8601 datetimes, numbers, ``true``/``false``/``null`` or ``[..]`` lists.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .endpoints import ANY, CONTAINS, ENDS, EQ, GE, GT, HAS, LE, LT, STARTS, Endpoint, FilterField
from .timeutil import US, parse_filter_datetime, value_us

COMPARISONS = frozenset({EQ, GT, GE, LT, LE, ANY, CONTAINS, STARTS, ENDS})
LOGICAL = frozenset({"and", "or", "not"})
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_NAME = re.compile(r"[A-Za-z0-9_.$\-]+")

Record = dict[str, Any]
Predicate = Callable[[Record, dict[str, Any]], bool]


class FilterError(ValueError):
    """An invalid filter; the message is the 400 response's ``detail``."""


@dataclass(frozen=True)
class Value:
    """A literal: ``kind`` is string, datetime (epoch µs), number, boolean, null or list."""

    kind: str
    value: Any
    raw: str


@dataclass(frozen=True)
class Compare:
    op: str
    field: str
    value: Value | None


@dataclass(frozen=True)
class Logical:
    op: str
    args: tuple[Expr, ...]


Expr = Compare | Logical


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str) -> FilterError:
        return FilterError(f"Invalid filter provided: {message} at position {self.pos}.")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise self.fail(f"expected {char!r}")
        self.pos += 1

    def name(self) -> str:
        match = _NAME.match(self.text, self.pos)
        if not match:
            raise self.fail("expected a name")
        self.pos = match.end()
        return match.group()

    def top(self) -> list[Expr]:
        exprs = [self.expr()]
        while self.peek() == ",":
            self.pos += 1
            exprs.append(self.expr())
        if self.pos != len(self.text):
            raise self.fail("unexpected trailing text")
        return exprs

    def expr(self) -> Expr:
        op = self.name()
        self.expect("(")
        if op in LOGICAL:
            args = [self.expr()]
            while self.peek() == ",":
                self.pos += 1
                args.append(self.expr())
            self.expect(")")
            if op == "not" and len(args) != 1:
                raise self.fail("not() takes one expression")
            return Logical(op, tuple(args))
        field = self.name()
        if op == HAS:
            self.expect(")")
            return Compare(op, field, None)
        if op not in COMPARISONS:
            raise FilterError(f"'{op}' is not a valid filter operator.")
        self.expect(",")
        value = self.value()
        self.expect(")")
        return Compare(op, field, value)

    def value(self) -> Value:
        char = self.peek()
        if char in "'\"":
            return self.quoted(char)
        if char == "[":
            start = self.pos
            self.pos += 1
            items = []
            if self.peek() != "]":
                items.append(self.value())
                while self.peek() == ",":
                    self.pos += 1
                    items.append(self.value())
            self.expect("]")
            return Value("list", tuple(items), self.text[start : self.pos])
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ",)]":
            self.pos += 1
        token = self.text[start : self.pos]
        if not token:
            raise self.fail("expected a value")
        if token in ("true", "false"):
            return Value("boolean", token == "true", token)
        if token == "null":
            return Value("null", None, token)
        if _NUMBER.match(token):
            return Value("number", float(token) if "." in token else int(token), token)
        us = parse_filter_datetime(token)
        if us is not None:
            return Value("datetime", us, token)
        raise FilterError(
            f"Invalid filter value {token!r}: strings must be quoted and datetimes must be "
            "ISO 8601 (a '+' in an offset must be URL-encoded as %2B)."
        )

    def quoted(self, quote: str) -> Value:
        start = self.pos
        self.pos += 1
        out = []
        while True:
            if self.pos >= len(self.text):
                raise self.fail("unterminated string")
            char = self.text[self.pos]
            if char == "\\" and self.pos + 1 < len(self.text):
                out.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            self.pos += 1
            if char == quote:
                break
            out.append(char)
        return Value("string", "".join(out), self.text[start : self.pos])


def parse(text: str) -> list[Expr]:
    """Parse a filter string into its top-level (AND-ed) expressions."""
    if not text:
        raise FilterError("Invalid filter provided: empty filter.")
    return _Parser(text).top()


def _check_value(name: str, spec: FilterField, op: str, value: Value) -> None:
    kind = spec.kind
    if value.kind == "null":
        return
    if value.kind != kind:
        if kind == "datetime" and value.kind == "string":
            raise FilterError(
                f"Invalid value for '{name}': datetimes must be given unquoted, "
                f"not as the string {value.raw}."
            )
        raise FilterError(f"Invalid value {value.raw} for '{name}': expected a {kind}.")


def validate(exprs: list[Expr], ep: Endpoint) -> None:
    """Raise :class:`FilterError` unless every field and operator is allowed by ``ep``."""
    for expr in exprs:
        if isinstance(expr, Logical):
            validate(list(expr.args), ep)
            continue
        spec = ep.filters.get(expr.field)
        if spec is None:
            raise FilterError(f"'{expr.field}' is not a valid field for the resource '{ep.resource_type}'.")
        if expr.op == HAS:
            if spec.kind != "none" or HAS not in spec.ops:
                raise FilterError(f"'has' is not a valid operator for field '{expr.field}'.")
            continue
        assert expr.value is not None
        if expr.value.kind == "list":
            if expr.op not in spec.list_ops:
                raise FilterError(
                    f"'{expr.op}' with a list value is not a valid operator for field '{expr.field}'."
                )
            for item in expr.value.value:
                _check_value(expr.field, spec, expr.op, item)
            continue
        if expr.op not in spec.ops:
            raise FilterError(f"'{expr.op}' is not a valid operator for field '{expr.field}'.")
        _check_value(expr.field, spec, expr.op, expr.value)


def mentions(exprs: list[Expr], field: str) -> bool:
    """True if any expression (at any depth) filters on ``field``."""
    for expr in exprs:
        if isinstance(expr, Logical):
            if mentions(list(expr.args), field):
                return True
        elif expr.field == field:
            return True
    return False


def leaves(obj: Any, parts: list[str]) -> list[Any]:
    """The values at a dotted path, flattening lists met on the way (``[None]`` when absent)."""
    values = [obj]
    for part in parts:
        nxt: list[Any] = []
        for value in values:
            if isinstance(value, list):
                nxt.extend(v.get(part) for v in value if isinstance(v, dict))
            elif isinstance(value, dict):
                nxt.append(value.get(part))
            else:
                nxt.append(None)
        values = nxt
    flat: list[Any] = []
    for value in values:
        if isinstance(value, list):
            flat.extend(value)
        else:
            flat.append(value)
    return flat or [None]


def accessor(path: str) -> Callable[[Record, dict[str, Any]], list[Any]]:
    """A function returning the leaf values at ``path`` of a record (or of its hidden meta)."""
    parts = path.split(".")
    if parts[0] == "meta":
        rest = parts[1:]
        return lambda record, meta: leaves(meta, rest)
    return lambda record, meta: leaves(record, parts)


def _scalar_test(kind: str, op: str, target: Any) -> Callable[[Any], bool]:
    """A test of one leaf value against a filter literal."""
    if kind == "datetime":

        def convert(v: Any) -> Any:
            return value_us(v)

    elif kind == "number":

        def convert(v: Any) -> Any:
            return v if isinstance(v, int | float) and not isinstance(v, bool) else None

    elif kind == "boolean":

        def convert(v: Any) -> Any:
            return v if isinstance(v, bool) else None

    else:

        def convert(v: Any) -> Any:
            return v if isinstance(v, str) else None

    if op == EQ:
        return lambda v: (c := convert(v)) is not None and c == target
    if op == GT:
        return lambda v: (c := convert(v)) is not None and c > target
    if op == GE:
        return lambda v: (c := convert(v)) is not None and c >= target
    if op == LT:
        return lambda v: (c := convert(v)) is not None and c < target
    if op == LE:
        return lambda v: (c := convert(v)) is not None and c <= target
    if op == CONTAINS:
        return lambda v: (c := convert(v)) is not None and target in c
    if op == STARTS:
        return lambda v: (c := convert(v)) is not None and c.startswith(target)
    if op == ENDS:
        return lambda v: (c := convert(v)) is not None and c.endswith(target)
    raise FilterError(f"unsupported operator {op}")


def _compile(expr: Expr, ep: Endpoint) -> Predicate:
    if isinstance(expr, Logical):
        parts = [_compile(arg, ep) for arg in expr.args]
        if expr.op == "and":
            return lambda r, m: all(p(r, m) for p in parts)
        if expr.op == "or":
            return lambda r, m: any(p(r, m) for p in parts)
        inner = parts[0]
        return lambda r, m: not inner(r, m)
    spec = ep.filters[expr.field]
    get = accessor(spec.path)
    if expr.op == HAS:
        return lambda r, m: any(v is not None for v in get(r, m))
    assert expr.value is not None
    value = expr.value
    if value.kind == "null":
        return lambda r, m: all(v is None for v in get(r, m))
    if value.kind == "list":
        tests = [_scalar_test(spec.kind, EQ, item.value) for item in value.value]
        return lambda r, m: any(t(v) for v in get(r, m) for t in tests)
    test = _scalar_test(spec.kind, expr.op, value.value)
    return lambda r, m: any(test(v) for v in get(r, m))


def compile_filter(exprs: list[Expr], ep: Endpoint) -> Predicate | None:
    """One predicate AND-ing ``exprs`` (None when there is nothing to check)."""
    if not exprs:
        return None
    parts = [_compile(e, ep) for e in exprs]
    if len(parts) == 1:
        return parts[0]
    return lambda r, m: all(p(r, m) for p in parts)


def conjuncts(exprs: list[Expr]) -> list[Expr]:
    """Flatten top-level ``and(...)`` into a list of AND-ed expressions."""
    out: list[Expr] = []
    for expr in exprs:
        if isinstance(expr, Logical) and expr.op == "and":
            out.extend(conjuncts(list(expr.args)))
        else:
            out.append(expr)
    return out


def event_bounds(exprs: list[Expr]) -> tuple[int | None, int | None, list[Expr]]:
    """Split event filters into a ``[lo, hi)`` window in epoch µs and the remaining expressions.

    ``datetime`` and ``timestamp`` (whole epoch seconds, the floor of ``datetime``) comparisons
    at the top level become bounds; everything else is left to the per-record predicate.
    """
    lo: int | None = None
    hi: int | None = None
    rest: list[Expr] = []
    for expr in conjuncts(exprs):
        if (
            isinstance(expr, Compare)
            and expr.field in ("datetime", "timestamp")
            and expr.op in (GE, GT, LE, LT)
            and expr.value is not None
            and expr.value.kind in ("datetime", "number")
        ):
            v = expr.value.value
            if expr.field == "datetime":
                new_lo = {GE: v, GT: v + 1}.get(expr.op)
                new_hi = {LT: v, LE: v + 1}.get(expr.op)
            else:
                new_lo = {GE: math.ceil(v) * US, GT: (math.floor(v) + 1) * US}.get(expr.op)
                new_hi = {LT: math.ceil(v) * US, LE: (math.floor(v) + 1) * US}.get(expr.op)
            if new_lo is not None:
                lo = new_lo if lo is None else max(lo, new_lo)
            if new_hi is not None:
                hi = new_hi if hi is None else min(hi, new_hi)
        else:
            rest.append(expr)
    return lo, hi, rest


def sort_bounds(exprs: list[Expr], ep: Endpoint, sort_path: str) -> tuple[int | None, int | None]:
    """``[lo, hi)`` in epoch µs that top-level datetime comparisons put on the field at ``sort_path``.

    Every record the filter accepts has its value there in the range (a comparison on a datetime
    field rejects values that are not datetimes), so a scan sorted on that field may skip the rest.
    """
    lo: int | None = None
    hi: int | None = None
    for expr in conjuncts(exprs):
        if not isinstance(expr, Compare) or expr.value is None or expr.value.kind != "datetime":
            continue
        spec = ep.filters.get(expr.field)
        if spec is None or spec.kind != "datetime" or spec.path != sort_path:
            continue
        v = expr.value.value
        new_lo = {GE: v, GT: v + 1}.get(expr.op)
        new_hi = {LT: v, LE: v + 1}.get(expr.op)
        if new_lo is not None:
            lo = new_lo if lo is None else max(lo, new_lo)
        if new_hi is not None:
            hi = new_hi if hi is None else min(hi, new_hi)
    return lo, hi
