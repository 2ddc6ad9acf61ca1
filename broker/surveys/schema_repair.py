"""Writer-schema repair before decode parses it: wrong defaults and repeated field names.

Input: a writer schema as plain JSON data (from a container header or a registry).
Output: the same schema mended, and one line per repair. A default never changes how a
writer's data is read (it only fills a field missing from the writer when a reader schema
asks for it), so a default that does not match its type is dropped (TURBO). A field name
repeated within a record (WINTER's candidate has `sgmag1` twice) is renamed `<name>_2`:
Avro reads fields by position, so the bytes mean the same, and both values are kept where a
dict would silently keep only the last. Anything else wrong with a schema is left for the
schema guard and the parser to refuse.
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
        fields = [_field(f, name, problems) for f in schema["fields"]]
        repaired["fields"] = _unique_names(fields, name, problems)
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


def _unique_names(fields: list[Any], record: str, problems: list[str]) -> list[Any]:
    """Rename the second and later uses of a field name to <name>_2, <name>_3, ..."""
    taken = {f.get("name") for f in fields if isinstance(f, Mapping)}
    seen: set[Any] = set()
    renamed: list[Any] = []
    for field in fields:
        name = field.get("name") if isinstance(field, Mapping) else None
        if name is None or name not in seen:
            seen.add(name)
            renamed.append(field)
            continue
        number = 2
        while f"{name}_{number}" in taken:
            number += 1
        new = f"{name}_{number}"
        taken.add(new)
        renamed.append({**field, "name": new})
        problems.append(f"{record}.{name}: repeated field name, the later one read as {new!r}")
    return renamed


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
