"""Writer-schema repair before decode parses it: field defaults that do not match their types.

Input: a writer schema as plain JSON data (from a container header or a registry).
Output: the same schema with each such default removed, and what was removed. A default
never changes how a writer's data is read (it only fills a field missing from the writer
when a reader schema asks for it), so dropping a wrong one keeps every packet's meaning;
anything else wrong with a schema is left for the parser to refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Avro primitive type -> the JSON values its default may hold (bool is not an int here).
_PRIMITIVE_DEFAULTS: dict[str, tuple[type, ...]] = {
    "null": (type(None),),
    "boolean": (bool,),
    "int": (int,),
    "long": (int,),
    "float": (int, float),
    "double": (int, float),
    "string": (str,),
    "bytes": (str,),
}


def repair_defaults(schema: Any) -> tuple[Any, list[str]]:
    """(`schema` with mismatched field defaults removed, one line per removed default).

    The input is not modified. A default matches a union when it matches any branch
    (fastavro's rule); named types are checked where they are defined.
    """
    problems: list[str] = []
    return _repair(schema, "", problems), problems


def _repair(schema: Any, where: str, problems: list[str]) -> Any:
    if isinstance(schema, list):
        return [_repair(branch, where, problems) for branch in schema]
    if not isinstance(schema, Mapping):
        return schema
    kind = schema.get("type")
    repaired = dict(schema)
    if kind == "record" and isinstance(schema.get("fields"), list):
        name = f"{where}{schema.get('name', '?')}"
        repaired["fields"] = [_field(f, name, problems) for f in schema["fields"]]
    elif kind == "array" and "items" in schema:
        repaired["items"] = _repair(schema["items"], where, problems)
    elif kind == "map" and "values" in schema:
        repaired["values"] = _repair(schema["values"], where, problems)
    elif isinstance(kind, list | Mapping):
        repaired["type"] = _repair(kind, where, problems)
    return repaired


def _field(field: Any, record: str, problems: list[str]) -> Any:
    if not isinstance(field, Mapping):
        return field
    repaired = dict(field)
    repaired["type"] = _repair(field.get("type"), f"{record}.", problems)
    if "default" in field and not _default_fits(field["default"], field.get("type")):
        del repaired["default"]
        problems.append(
            f"{record}.{field.get('name')}: default {field['default']!r} does not match "
            f"type {_type_text(field.get('type'))}"
        )
    return repaired


def _default_fits(default: Any, schema: Any) -> bool:
    """False only when `default` certainly cannot be a value of `schema` (named types pass)."""
    if isinstance(schema, list):
        return any(_default_fits(default, branch) for branch in schema)
    kind = schema.get("type") if isinstance(schema, Mapping) else schema
    if isinstance(kind, list | Mapping):
        return _default_fits(default, kind)
    allowed = _PRIMITIVE_DEFAULTS.get(str(kind))
    if allowed is not None:
        return isinstance(default, allowed) and not (
            isinstance(default, bool) and bool not in allowed
        )
    if kind in ("array",):
        return isinstance(default, list)
    if kind in ("map", "record"):
        return isinstance(default, dict)
    if kind in ("enum", "fixed"):
        return isinstance(default, str)
    return True  # a reference to a named type: its definition is checked where it stands


def _type_text(schema: Any) -> str:
    if isinstance(schema, Mapping):
        return str(schema.get("type"))
    if isinstance(schema, list):
        return "[" + ", ".join(_type_text(branch) for branch in schema) + "]"
    return str(schema)
