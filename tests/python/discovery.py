"""Checks a response dict against the response schema of a method in Google's discovery
documents (the static copies shipped with google-api-python-client): every field must be
known to the schema, of the right JSON type, and enum values must be listed."""

import json
import pathlib

import googleapiclient

DOCS = pathlib.Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"
_cache = {}


def document(api, version):
    key = (api, version)
    if key not in _cache:
        _cache[key] = json.loads((DOCS / f"{api}.{version}.json").read_text())
    return _cache[key]


def _methods(resource):
    for method in resource.get("methods", {}).values():
        yield method
    for sub in resource.get("resources", {}).values():
        yield from _methods(sub)


def method(api, version, method_id):
    doc = document(api, version)
    for m in _methods(doc):
        if m["id"] == method_id:
            return m
    raise KeyError(f"{method_id} not in {api}.{version}")


def errors(api, version, value, schema, path="$"):
    """Every mismatch between `value` and `schema` (a discovery schema object)."""
    doc = document(api, version)
    if "$ref" in schema:
        return errors(api, version, value, doc["schemas"][schema["$ref"]], path)
    kind = schema.get("type")
    out = []
    if kind == "object" or "properties" in schema or "additionalProperties" in schema:
        if not isinstance(value, dict):
            return [f"{path}: expected object, got {type(value).__name__}"]
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            if name in props:
                out += errors(api, version, item, props[name], f"{path}.{name}")
            elif extra is not None:
                out += errors(api, version, item, extra, f"{path}.{name}")
            elif name == "@type" or (not props and extra is None):
                continue  # Any messages and free-form objects
            else:
                out.append(f"{path}: unknown field {name!r}")
        return out
    if kind == "array":
        if not isinstance(value, list):
            return [f"{path}: expected array, got {type(value).__name__}"]
        for i, item in enumerate(value):
            out += errors(api, version, item, schema.get("items", {}), f"{path}[{i}]")
        return out
    if kind == "string":
        if not isinstance(value, str):
            return [f"{path}: expected string, got {value!r}"]
        if "enum" in schema and value not in schema["enum"]:
            return [f"{path}: {value!r} is not one of {schema['enum']}"]
        if schema.get("format") == "byte":
            import base64
            try:
                base64.b64decode(value, validate=True)
            except Exception:
                return [f"{path}: not base64"]
        return []
    if kind == "integer":
        # int64 travels as a decimal string; int32 as a number.
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())):
            return [f"{path}: expected integer, got {value!r}"]
        return []
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return [f"{path}: expected number, got {value!r}"]
        return []
    if kind == "boolean":
        if not isinstance(value, bool):
            return [f"{path}: expected boolean, got {value!r}"]
        return []
    return []  # "any"


def check(api, version, method_id, response):
    """Asserts that `response` fits the response schema of `method_id`; returns it."""
    m = method(api, version, method_id)
    schema = m.get("response")
    if schema is None:
        assert response in ({}, None), f"{method_id} returns nothing, got {response!r}"
        return response
    problems = errors(api, version, response, schema)
    assert not problems, f"{method_id} response does not match {schema['$ref']}: {problems}"
    return response
