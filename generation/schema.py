"""The JSON-schema subset the model asks use: `validate` an answer, `parse_json` the model's text, and
`union_schema` to parse a batch of asks with different schemas at once."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def validate(value: Any, schema: Mapping, path: str = "$") -> None:
    """Raise ValueError unless `value` fits `schema`. Subset: type object/string/boolean/integer/number,
    enum, properties, required, additionalProperties: false, minLength (non-blank characters), maxLength,
    minimum, maximum."""
    if "enum" in schema:
        if value not in schema["enum"]:
            raise ValueError(f"{path}: {str(value)[:40]!r} not an allowed value")
        return
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object")
        props = schema.get("properties", {})
        missing = [k for k in schema.get("required", []) if k not in value]
        if missing:
            raise ValueError(f"{path}: missing {', '.join(missing)}")
        extra = [k for k in value if k not in props]
        if extra and schema.get("additionalProperties") is False:
            raise ValueError(f"{path}: unexpected {', '.join(extra)}")
        for k, v in value.items():
            if k in props:
                validate(v, props[k], f"{path}.{k}")
    elif kind == "string":
        if not isinstance(value, str):
            raise ValueError(f"{path}: expected a string")
        if len(value.strip()) < schema.get("minLength", 0):
            raise ValueError(f"{path}: too short")
        if len(value) > schema.get("maxLength", math.inf):
            raise ValueError(f"{path}: longer than {schema['maxLength']}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"{path}: expected true or false")
    elif kind in ("integer", "number"):
        ok = isinstance(value, int) if kind == "integer" else isinstance(value, (int, float))
        if not ok or isinstance(value, bool):
            raise ValueError(f"{path}: expected a {kind}")
        if not schema.get("minimum", -math.inf) <= value <= schema.get("maximum", math.inf):
            raise ValueError(f"{path}: out of range")
    else:
        raise ValueError(f"{path}: unsupported schema type {kind!r}")


def parse_json(text: str, schema: Mapping) -> Any:
    """Decode the model's answer and validate it; ValueError with a short reason otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e.msg} at {e.pos}") from None
    validate(value, schema)
    return value


def _max_len(prop: Mapping) -> int:
    return prop["maxLength"] if "maxLength" in prop else max(len(v) for v in prop["enum"])


def union_schema(schemas: list[dict]) -> dict:
    """One schema accepting every answer any of `schemas` accepts (enums merged; an enum meeting free text
    becomes free text; required = fields required by all). `run` takes one parse for a whole batch, so the
    batch is parsed against the union and each answer is then checked against its own schema."""
    props: dict[str, dict] = {}
    for s in schemas:
        for k, p in s["properties"].items():
            q = props.get(k)
            if q is None or q == p:
                props[k] = dict(p)
            elif "enum" in q and "enum" in p:
                props[k] = {"type": "string", "enum": q["enum"] + [v for v in p["enum"] if v not in q["enum"]]}
            else:
                props[k] = {"type": "string", "minLength": min(q.get("minLength", 0), p.get("minLength", 0)),
                            "maxLength": max(_max_len(q), _max_len(p))}
    required = [k for k in props if all(k in s.get("required", []) for s in schemas)]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}
