"""JSON Schemas as rows of a table, for the Docs page (rendered by the server, so the page
needs no viewer from the internet and shows what it can of an odd schema instead of a
blank page)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REF = "#/components/schemas/"
DEPTH = 6
_NOTES = (
    ("format", "format"),
    ("minimum", "≥"),
    ("exclusiveMinimum", ">"),
    ("maximum", "≤"),
    ("exclusiveMaximum", "<"),
    ("minLength", "min length"),
    ("maxLength", "max length"),
    ("minItems", "min items"),
    ("maxItems", "max items"),
    ("pattern", "pattern"),
)


@dataclass(frozen=True, slots=True)
class Field:
    """One row: a property (``name``) at ``depth``, its type, and what else is said."""

    depth: int
    name: str
    type: str
    ref: str | None  # the named schema the type is, to link to
    required: bool
    notes: str


def rows(
    schema: Any,
    defs: dict[str, Any] | None = None,
    name: str = "",
    depth: int = 0,
    required: bool = False,
) -> list[Field]:
    """The rows of ``schema``: the value itself, then its properties (and those of an
    array's items) below it. A payload that is a named schema of ``defs`` shows its
    properties (deeper references stay links)."""
    if not isinstance(schema, dict):
        return [Field(depth, name, "any" if schema is not False else "nothing", None,
                      required, "")]  # fmt: skip
    found = [Field(depth, name, type_of(schema), ref_of(schema), required, notes(schema))]
    if depth >= DEPTH:
        return found
    target = schema
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        target = schema["items"]
    named = ref_of(target)
    if depth == 0 and defs and named in defs and isinstance(defs[named], dict):
        target = defs[named]
    props = target.get("properties")
    if isinstance(props, dict):
        needed = set(target.get("required") or ())
        for key, sub in props.items():
            found += rows(sub, None, str(key), depth + 1, key in needed)
    return found


def ref_of(schema: dict[str, Any]) -> str | None:
    """The name of the component schema ``schema`` refers to (directly or as array items)."""
    ref = schema.get("$ref")
    if ref is None and schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        ref = schema["items"].get("$ref")
    if isinstance(ref, str) and ref.startswith(REF):
        return ref[len(REF) :]
    return None


def type_of(schema: Any) -> str:
    """A short type: ``string``, ``integer | null``, ``array of Order``, ``Order``..."""
    if not isinstance(schema, dict):
        return "any"
    if isinstance(schema.get("$ref"), str):
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "const" in schema:
        return f"= {schema['const']!r}"
    if isinstance(schema.get("enum"), list):
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    for combine in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(combine), list):
            joiner = " & " if combine == "allOf" else " | "
            return joiner.join(type_of(s) for s in schema[combine])
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items")
        return f"array of {type_of(items)}" if items is not None else "array"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of {type_of(schema['additionalProperties'])}"
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    return str(kind) if kind else "any"


def notes(schema: dict[str, Any]) -> str:
    """Description, default and constraints, in one line."""
    parts = []
    if isinstance(schema.get("description"), str):
        parts.append(schema["description"])
    for key, label in _NOTES:
        if key in schema:
            parts.append(f"{label} {schema[key]}")
    if "default" in schema:
        parts.append(f"default {schema['default']!r}")
    if isinstance(schema.get("discriminator"), str):
        parts.append(f"discriminated by {schema['discriminator']!r}")
    return "; ".join(parts)
