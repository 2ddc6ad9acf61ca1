"""Filter queries checked and evaluated in-process, with MongoDB's matching semantics.

Stage: used by the settings (to refuse a bad filter at start-up) and the filter stage
(broker.filters), which compiles each configured query once. Input: a query, then documents
as the store builds them. Output: `Matcher.matches(doc)`, the answer MongoDB's `find` gives
for that document; or QueryError naming the filter and the operator, path or value refused.
"""

from __future__ import annotations

import calendar
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from bson import Decimal128, Int64, ObjectId, Regex, Timestamp

from broker.errors import QueryError

# How a path is resolved (MongoDB's ElementPath, src/mongo/db/matcher/path.cpp):
# - sub-documents are followed; a missing field, or a scalar where the path goes on, yields
#   "missing" (which {$eq: null} and {$exists: false} match);
# - an array met before the path ends is traversed: each element that is a document is
#   resolved with the rest of the path, and a numeric component ("a.0.b") also indexes it;
#   scalars in such an array yield nothing at all;
# - an array at the end of the path yields each element, then the array itself, except for
#   $size and $elemMatch, which see the array only.
# A field condition holds when any yielded value passes; $ne, $nin, $not and {$exists: false}
# negate the whole positive condition (so {a: {$ne: 1}} refuses [1, 2]).

Test = Callable[[Any], bool]  # one yielded value (or MISSING) -> bool
Predicate = Callable[[Mapping[str, Any]], bool]  # one (sub-)document -> bool


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
# The operators evaluated here ($expr, $where, $text and the geo operators are not wanted in
# config; FerretDB 1.24 lacks most of them too).
LOGICAL = frozenset({"$and", "$or", "$nor"})
FIELD_OPERATORS = frozenset(
    {
        "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$all", "$exists",
        "$type", "$size", "$mod", "$regex", "$options", "$not", "$elemMatch",
    }
)  # fmt: skip
_ARRAY = (list, tuple)
_NUMBER = (int, float)
_INT32 = range(-(2**31), 2**31)
_INT64 = range(-(2**63), 2**63)
_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
_REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


class Matcher:
    """A compiled query: `matches(doc)` is True when MongoDB's find would return `doc`."""

    __slots__ = ("_predicate", "query")

    def __init__(self, query: Mapping[str, Any], predicate: Predicate) -> None:
        self.query = query
        self._predicate = predicate

    def matches(self, doc: Mapping[str, Any]) -> bool:
        return self._predicate(doc)

    def __repr__(self) -> str:
        return f"Matcher({self.query!r})"


def compile_query(
    query: Mapping[str, Any], *, name: str | None = None, fields: frozenset[str] | None = None
) -> Matcher:
    """Compile once, match many times.

    `fields`, when given, are the only top-level fields the query may name (for a filter:
    `broker.records.ALERT_FIELDS`); `name` is the filter's, put in front of every error.
    Raises QueryError naming the first operator, path or value it cannot evaluate.
    """
    where = f"filter {name!r}: query" if name is not None else "query"
    return Matcher(query, _document(query, where, fields))


# -- documents, logical operators and field conditions ----------------------------------


def _document(query: Any, where: str, fields: frozenset[str] | None = None) -> Predicate:
    """A query document; `fields` limits its top-level paths (None: a relative query)."""
    if not isinstance(query, Mapping) or not query:
        raise QueryError(f"{where} must be a non-empty mapping of field paths to conditions")
    predicates: list[Predicate] = []
    for key, value in query.items():
        if not isinstance(key, str):
            raise QueryError(f"{where}: key {key!r} is not a string")
        if key.startswith("$"):
            predicates.append(_logical(key, value, where, fields))
        else:
            parts = _split(key, where, fields)
            predicates.append(_field(parts, value, f"{where}.{key}"))
    return _all(predicates)


def _logical(op: str, value: Any, where: str, fields: frozenset[str] | None) -> Predicate:
    if op not in LOGICAL:
        allowed = ", ".join(sorted(LOGICAL))
        raise QueryError(
            f"{where}: operator {op} is not supported here: {op} is not allowed (use {allowed})"
        )
    where = f"{where}.{op}"
    if not isinstance(value, list) or not value:
        raise QueryError(f"{where} must be a non-empty list of conditions")
    branches = [_document(sub, f"{where}[{i}]", fields) for i, sub in enumerate(value)]
    if op == "$and":
        return _all(branches)
    either = _any(branches)
    return either if op == "$or" else _negate(either)


def _split(path: str, where: str, fields: frozenset[str] | None) -> tuple[str, ...]:
    parts = tuple(path.split("."))
    if any(not part or part.startswith("$") for part in parts):
        raise QueryError(f"{where}: {path!r} is not a valid field path")
    if fields is not None and parts[0] not in fields:
        known = ", ".join(sorted(fields))
        raise QueryError(f"{where}: {path!r} is not a field of the alert document ({known})")
    return parts


def _field(parts: tuple[str, ...], condition: Any, where: str) -> Predicate:
    operators = _operators(condition, where)
    if operators is None:
        return _path(parts, _eq(condition, where), expand=True)
    return _all([_path_operator(parts, op, arg, condition, where) for op, arg in operators])


def _operators(condition: Any, where: str) -> list[tuple[str, Any]] | None:
    """The (operator, argument) pairs of a condition, or None for a literal to equal."""
    if not isinstance(condition, Mapping) or not any(str(k).startswith("$") for k in condition):
        return None
    if not all(str(key).startswith("$") for key in condition):
        raise QueryError(f"{where}: do not mix operators and field names in one mapping")
    if "$options" in condition and "$regex" not in condition:
        raise QueryError(
            f"{where}.$options needs a $regex beside it "
            "($options must be letters of 'imsx' next to a $regex)"
        )
    # $options is read by its $regex, not a condition of its own.
    return [(op, arg) for op, arg in condition.items() if op != "$options"]


def _path_operator(
    parts: tuple[str, ...], op: str, arg: Any, siblings: Mapping[str, Any], where: str
) -> Predicate:
    here = f"{where}.{op}"
    if op == "$not":
        inner = _not_operators(arg, here)
        return _negate(_all([_path_operator(parts, o, a, arg, here) for o, a in inner]))
    if op == "$all":
        items = [_eq(item, f"{here}[{i}]") for i, item in enumerate(_list(arg, here))]
        return _all([_path(parts, test, expand=True) for test in items]) if items else _never
    test, negated = _positive(op, arg, siblings, here)
    predicate = _path(parts, test, expand=op not in ("$size", "$elemMatch"))
    return _negate(predicate) if negated else predicate


def _element_operator(op: str, arg: Any, siblings: Mapping[str, Any], where: str) -> Test:
    """An operator applied to one array element ($elemMatch's value form): no traversal."""
    here = f"{where}.{op}"
    if op == "$not":
        inner = [_element_operator(o, a, arg, here) for o, a in _not_operators(arg, here)]
        return lambda value: not all(test(value) for test in inner)
    if op == "$all":
        items = [_eq(item, f"{here}[{i}]") for i, item in enumerate(_list(arg, here))]
        return (lambda value: all(test(value) for test in items)) if items else _never
    test, negated = _positive(op, arg, siblings, here)
    return (lambda value: not test(value)) if negated else test


def _not_operators(arg: Any, where: str) -> list[tuple[str, Any]]:
    operators = _operators(arg, where)
    if not operators:
        raise QueryError(f"{where} needs a mapping of operators, e.g. {{$gte: 0.5}}")
    return operators


def _positive(op: str, arg: Any, siblings: Mapping[str, Any], where: str) -> tuple[Test, bool]:
    """The single-value test behind an operator, and whether the operator negates it."""
    if op == "$exists":
        if not isinstance(arg, bool):
            raise QueryError(f"{where} needs true or false, not {arg!r}")
        return _exists, not arg
    if op in _ORDER:
        return _order(_ORDER[op], arg, where), False
    if op == "$regex":
        return _regex(arg, siblings.get("$options", ""), where), False
    positive = _NEGATIONS.get(op, op)
    builder = _BUILDERS.get(positive)
    if builder is None:
        allowed = ", ".join(sorted(FIELD_OPERATORS))
        raise QueryError(f"{where}: operator {op} is not supported (allowed: {allowed})")
    return builder(arg, where), positive != op


# -- path resolution --------------------------------------------------------------------


def _path(parts: tuple[str, ...], test: Test, *, expand: bool) -> Predicate:
    if len(parts) > 1:
        return lambda doc: _walk(doc, parts, 0, test, expand)
    key = parts[0]
    if not expand:
        return lambda doc: test(doc.get(key, MISSING))

    def top_level(doc: Mapping[str, Any]) -> bool:
        value = doc.get(key, MISSING)
        if isinstance(value, _ARRAY):
            for element in value:
                if test(element):
                    return True
        return test(value)

    return top_level


def _walk(
    doc: Mapping[str, Any], parts: tuple[str, ...], start: int, test: Test, expand: bool
) -> bool:
    value = doc.get(parts[start], MISSING)
    index, end = start + 1, len(parts)
    while index < end and (value.__class__ is dict or isinstance(value, Mapping)):
        value = value.get(parts[index], MISSING)
        index += 1
    if index == end:
        if expand and isinstance(value, _ARRAY):
            for element in value:
                if test(element):
                    return True
        return test(value)
    if isinstance(value, _ARRAY):
        return _walk_array(value, parts, index, test, expand)
    return test(MISSING)  # missing, or a scalar where the path goes on


def _walk_array(
    array: Sequence[Any], parts: tuple[str, ...], index: int, test: Test, expand: bool
) -> bool:
    """Resolve parts[index:] in each element of an array met before the end of the path."""
    key = parts[index]
    offset = int(key) if key.isascii() and key.isdigit() and str(int(key)) == key else -1
    last = index + 1 == len(parts)
    for position, element in enumerate(array):
        if isinstance(element, Mapping) and _walk(element, parts, index, test, expand):
            return True
        if position != offset:
            continue
        if last:
            if test(element):  # an explicit offset yields the element as it is
                return True
        elif isinstance(element, Mapping):
            if _walk(element, parts, index + 1, test, expand):
                return True
        elif isinstance(element, _ARRAY) and _walk_array(element, parts, index + 1, test, expand):
            return True
    return False


def _all(predicates: list[Predicate]) -> Predicate:
    if len(predicates) == 1:
        return predicates[0]

    # Plain loops here and in _any: faster than all()/any() over a generator, and this runs
    # for every alert and filter.
    def every(doc: Mapping[str, Any]) -> bool:
        for predicate in predicates:  # noqa: SIM110
            if not predicate(doc):
                return False
        return True

    return every


def _any(predicates: list[Predicate]) -> Predicate:
    def some(doc: Mapping[str, Any]) -> bool:
        for predicate in predicates:  # noqa: SIM110
            if predicate(doc):
                return True
        return False

    return some


def _negate(predicate: Predicate) -> Predicate:
    return lambda doc: not predicate(doc)


def _never(_: Any) -> bool:
    return False


def _exists(value: Any) -> bool:
    return value is not MISSING


# -- single-value tests (MongoDB's matchesSingleElement) ----------------------------------


def _eq(literal: Any, where: str) -> Test:
    _check_literal(literal, where)
    if literal is None:  # null also matches a missing field
        return lambda value: value is None or value is MISSING
    if isinstance(literal, bool):
        return lambda value: value.__class__ is bool and value == literal
    if isinstance(literal, _NUMBER):
        return lambda value: (
            isinstance(value, _NUMBER) and value.__class__ is not bool and value == literal
        )
    if isinstance(literal, str):
        return lambda value: isinstance(value, str) and value == literal
    if isinstance(literal, datetime):
        millis = _millis(literal)
        return lambda value: isinstance(value, datetime) and _millis(value) == millis
    return lambda value: isinstance(value, _ARRAY) and _equal(value, literal)


def _in(arg: Any, where: str) -> Test:
    items = _list(arg, where)
    for index, item in enumerate(items):
        _check_literal(item, f"{where}[{index}]")
    has_null = any(item is None for item in items)
    bools = {item for item in items if isinstance(item, bool)}
    numbers = {item for item in items if isinstance(item, _NUMBER) and not isinstance(item, bool)}
    strings = {item for item in items if isinstance(item, str)}
    dates = {_millis(item) for item in items if isinstance(item, datetime)}
    arrays = [item for item in items if isinstance(item, _ARRAY)]

    def member(value: Any) -> bool:
        if value is None or value is MISSING:
            return has_null
        if isinstance(value, str):
            return value in strings
        if isinstance(value, _NUMBER):
            return value in (bools if value.__class__ is bool else numbers)
        if isinstance(value, datetime):
            return _millis(value) in dates
        if isinstance(value, _ARRAY):
            return any(_equal(value, array) for array in arrays)
        return False

    return member


def _order(compare: Callable[[Any, Any], bool], bound: Any, where: str) -> Test:
    # Type bracketing: a bound only compares with values of its own kind (numbers of any
    # width together); NaN compares false to everything, as in MongoDB.
    if isinstance(bound, _NUMBER) and not isinstance(bound, bool) and math.isfinite(bound):
        return lambda value: (
            isinstance(value, _NUMBER) and value.__class__ is not bool and compare(value, bound)
        )
    if isinstance(bound, str):
        # Python orders str by code point, which is the UTF-8 byte order MongoDB uses.
        return lambda value: isinstance(value, str) and compare(value, bound)
    if isinstance(bound, datetime):
        millis = _millis(bound)
        return lambda value: isinstance(value, datetime) and compare(_millis(value), millis)
    raise QueryError(f"{where} needs a number, string or date, not {bound!r}")


def _regex(pattern: Any, options: Any, where: str) -> Test:
    if not isinstance(pattern, str) or "\0" in pattern:
        raise QueryError(f"{where} needs a string pattern without NUL bytes, not {pattern!r}")
    if not isinstance(options, str) or set(options) - set(_REGEX_FLAGS):
        raise QueryError(
            f"{where}: $options must be letters of 'imsx' next to a $regex, not {options!r}"
        )
    # Python's re stands in for MongoDB's PCRE: patterns PCRE alone knows (\z, (?<name>...))
    # are refused here, at start-up; \d and \w also match non-ASCII digits and letters.
    flags = 0
    for letter in options:
        flags |= _REGEX_FLAGS[letter]
    try:
        search = re.compile(pattern, flags).search
    except re.error as exc:
        raise QueryError(f"{where}: {pattern!r} is not a valid regular expression: {exc}") from exc
    return lambda value: isinstance(value, str) and search(value) is not None


def _elem_match(condition: Any, where: str) -> Test:
    if not isinstance(condition, Mapping) or not condition:
        raise QueryError(f"{where} needs a mapping of conditions")
    operators = _operators(condition, where)
    if operators is not None and not set(condition) & LOGICAL:
        # Value form ({$gte: 1, $lt: 5}): every operator on the same element.
        tests = [_element_operator(op, arg, condition, where) for op, arg in operators]

        def value_form(value: Any) -> bool:
            if not isinstance(value, _ARRAY):
                return False
            return any(all(test(element) for test in tests) for element in value)

        return value_form
    query = _document(condition, where)  # document form: a query on each element

    def document_form(value: Any) -> bool:
        if not isinstance(value, _ARRAY):
            return False
        for element in value:
            if isinstance(element, Mapping) and query(element):
                return True
            if isinstance(element, _ARRAY) and query({str(i): e for i, e in enumerate(element)}):
                return True  # MongoDB reads a nested array as a document keyed "0", "1", ...
        return False

    return document_form


def _size(size: Any, where: str) -> Test:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise QueryError(f"{where} needs a non-negative integer, not {size!r}")
    return lambda value: isinstance(value, _ARRAY) and len(value) == size


def _mod(arg: Any, where: str) -> Test:
    valid = isinstance(arg, list) and len(arg) == 2
    if not valid or not all(isinstance(x, int) and not isinstance(x, bool) for x in arg):
        raise QueryError(f"{where} needs [divisor, remainder] integers with divisor != 0")
    divisor, remainder = arg
    if divisor == 0:
        raise QueryError(f"{where} needs [divisor, remainder] integers with divisor != 0")

    def test(value: Any) -> bool:
        if not isinstance(value, _NUMBER) or value.__class__ is bool:
            return False
        if isinstance(value, float):
            if not math.isfinite(value) or math.trunc(value) not in _INT64:
                return False
            value = math.trunc(value)
        # C's remainder: its sign follows the dividend (-5 % 3 == -2), unlike Python's %.
        rest = abs(value) % abs(divisor)
        return (-rest if value < 0 else rest) == remainder

    return test


def _type(name: Any, where: str) -> Test:
    if isinstance(name, int) and not isinstance(name, bool):
        name = _TYPE_CODES.get(name, name)
    if not isinstance(name, str) or name not in _TYPES:
        known = ", ".join(sorted(_TYPES))
        raise QueryError(
            f"{where}: unsupported type {name!r} (unknown type {name!r}: use one of {known} "
            "or their codes)"
        )
    return _TYPES[name]


# Operators whose test is built from their argument alone; $ne and $nin negate $eq and $in.
_BUILDERS: dict[str, Callable[[Any, str], Test]] = {
    "$eq": _eq,
    "$in": _in,
    "$elemMatch": _elem_match,
    "$size": _size,
    "$mod": _mod,
    "$type": _type,
}
_NEGATIONS = {"$ne": "$eq", "$nin": "$in"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and value.__class__ is not bool


def _is_number(value: Any) -> bool:
    return (isinstance(value, _NUMBER) and value.__class__ is not bool) or isinstance(
        value, Decimal128
    )


# What pymongo writes for each Python value: an int that fits 32 bits is an int32, any
# other int (or bson.Int64) an int64.
_TYPES: dict[str, Test] = {
    "double": lambda value: isinstance(value, float),
    "string": lambda value: isinstance(value, str),
    "object": lambda value: isinstance(value, Mapping),
    "array": lambda value: isinstance(value, _ARRAY),
    "binData": lambda value: isinstance(value, bytes),
    "objectId": lambda value: isinstance(value, ObjectId),
    "bool": lambda value: value.__class__ is bool,
    "date": lambda value: isinstance(value, datetime),
    "null": lambda value: value is None,
    "regex": lambda value: isinstance(value, Regex | re.Pattern),
    "int": lambda value: _is_int(value) and not isinstance(value, Int64) and value in _INT32,
    "timestamp": lambda value: isinstance(value, Timestamp),
    "long": lambda value: _is_int(value) and (isinstance(value, Int64) or value not in _INT32),
    "decimal": lambda value: isinstance(value, Decimal128),
    "number": _is_number,
}
_TYPE_CODES = {1: "double", 2: "string", 3: "object", 4: "array", 5: "binData", 7: "objectId",
               8: "bool", 9: "date", 10: "null", 11: "regex", 16: "int", 17: "timestamp",
               18: "long", 19: "decimal"}  # fmt: skip


# -- literals and BSON equality ---------------------------------------------------------


def _list(arg: Any, where: str) -> list[Any]:
    if not isinstance(arg, list):
        raise QueryError(f"{where} needs a list, not {arg!r}")
    return arg


def _check_literal(value: Any, where: str) -> None:
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_literal(item, f"{where}[{index}]")
    elif isinstance(value, Mapping):
        raise QueryError(
            f"{where}: matching a whole sub-document is not supported; use dotted paths "
            "(e.g. candidate.magpsf) with operators"
        )
    elif isinstance(value, float) and not math.isfinite(value):
        raise QueryError(f"{where}: {value!r} is not a finite number")
    elif value is not None and not isinstance(value, str | int | float | datetime):
        raise QueryError(f"{where}: unsupported value {value!r} ({type(value).__name__})")


def _equal(left: Any, right: Any) -> bool:
    """BSON equality of two values (numbers across widths, dates to the millisecond)."""
    if isinstance(left, _ARRAY):
        return (
            isinstance(right, _ARRAY) and len(left) == len(right) and all(map(_equal, left, right))
        )
    if isinstance(left, Mapping):
        return (
            isinstance(right, Mapping)
            and list(left) == list(right)
            and all(_equal(left[key], right[key]) for key in left)
        )
    if isinstance(left, _NUMBER) and left.__class__ is not bool:
        if not isinstance(right, _NUMBER) or right.__class__ is bool:
            return False
        return left == right or (left != left and right != right)  # NaN equals NaN in BSON
    if isinstance(left, datetime):
        return isinstance(right, datetime) and _millis(left) == _millis(right)
    if left.__class__ is bool or right.__class__ is bool:
        return left.__class__ is right.__class__ and left == right
    return type(left) is type(right) and bool(left == right)


def _millis(moment: datetime) -> int:
    """Milliseconds since the epoch as pymongo stores a datetime (naive means UTC)."""
    offset = moment.utcoffset()
    if offset is not None:
        moment = moment - offset
    return calendar.timegm(moment.timetuple()) * 1000 + moment.microsecond // 1000
