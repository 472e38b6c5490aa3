"""Hooks for tests/hostile/schemathesis.sh (loaded through SCHEMATHESIS_HOOKS)."""

import json
import os
import sys

import jsonschema_rs
import schemathesis

# The run authenticates as this account; deactivating it, deleting it or changing its
# password would turn every later request into a 401 and end the run's real coverage.
STAFF_ID = os.environ.get("KEYSTONE_ST_STAFF_ID", "")
UNSAFE = {"PUT", "PATCH", "DELETE"}


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path != "/users/users/{id}/" or case.method.upper() not in UNSAFE:
        return
    params = case.path_parameters or {}
    if str(params.get("id")) == STAFF_ID:
        # 0 never names an account: the request keeps its shape and gets a 404.
        params["id"] = 0


# DRF's field parsing, which the API keeps (the spec follows upstream's serializers where it
# is silent): BooleanField takes these spellings, CharField takes numbers, IntegerField
# takes integral floats and digit strings, FloatField and DecimalField take numeric text. A negative case invalid only through them is
# valid input to the API.
DRF_TRUE = {"t", "T", "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON", "1"}
DRF_FALSE = {"f", "F", "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF", "0"}


def _coerce(value, schema):
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind == "boolean" and not isinstance(value, bool):
        if value in (1, 1.0) or value in DRF_TRUE:
            return True
        if value in (0, 0.0) or value in DRF_FALSE:
            return False
    if kind == "string" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if kind == "string" and isinstance(value, str) and value != value.strip():
        # CharField's trim_whitespace (Python's str.strip) runs before max_length.
        return value.strip()
    if kind == "number" and isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return value
        return number if number == number and abs(number) != float("inf") else value
    if kind == "integer" and not isinstance(value, bool):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value.strip())
    return value


def _json_schema(node):
    """OpenAPI 3.0 `nullable` spelled as JSON Schema."""
    if isinstance(node, list):
        return [_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if k not in ("nullable", "writeOnly")}
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    return out


def _request_schema(case):
    raw = case.operation.schema.raw_schema
    op = raw["paths"][case.operation.path][case.method.lower()]
    content = op.get("requestBody", {}).get("content", {}).get("application/json")
    if not content:
        return None, None
    ref = content["schema"].get("$ref", "")
    schemas = raw.get("components", {}).get("schemas", {})
    schema = schemas.get(ref.rsplit("/", 1)[-1])
    if schema is None:
        return None, None
    root = _json_schema(schema)
    root["components"] = {"schemas": _json_schema(schemas)}
    return schema, root


FORM_MEDIA_TYPES = {"application/x-www-form-urlencoded", "multipart/form-data"}


def _wire_text(value):
    """A form field as schemathesis sends it: text, with JSON spellings for true, null, {}."""
    if isinstance(value, (bool, dict, list)) or value is None:
        return json.dumps(value)
    return value if isinstance(value, str) else str(value)


def _form_fields(body, schema, required):
    """A form body as DRF's serializers read it (`Field.get_value` for HTML input): every
    value is text, an empty value is null where null is allowed and "not given" where the
    field is optional, and the text is then parsed as the field's type."""
    out = {}
    for key, value in body.items():
        prop = schema.get("properties", {}).get(key, {})
        if isinstance(value, list) and not value:
            # An empty list encodes as no field at all: the API never sees the key.
            continue
        if isinstance(value, list):
            out[key] = [_coerce(_wire_text(v), prop.get("items", {})) for v in value]
            continue
        text = _wire_text(value)
        if text == "" and prop.get("nullable"):
            out[key] = None
        elif text == "" and key not in required and prop.get("type") != "string":
            continue
        else:
            out[key] = _coerce(text, prop)
    return out


def _has_control_bytes(name):
    return any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F for c in str(name))


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Drops two kinds of failure that are the API reading its input as upstream does:

    - "invalid data accepted" when the body was invalid solely through values DRF coerces
      (e.g. `{"is_active": 0}`, `{"name": 5}`, a name that fits once stripped of surrounding
      whitespace, or in a form `end_date=` for a nullable date,
      which DRF reads as null, or an empty list, which a form body cannot carry and sends as
      no field at all): once coerced it validates;
    - "valid data rejected" with 400 "Malformed request body" when a multipart part's name
      holds a raw control byte: a part header is header syntax, which has no control bytes
      (RFC 7578 §4.2, RFC 9110 §5.5), so the body cannot be parsed."""
    kind = type(failure).__name__
    media = (case.media_type or "").split(";")[0].strip().lower()
    if kind == "RejectedPositiveData":
        if (
            media == "multipart/form-data"
            and response is not None
            and response.status_code == 400
            and isinstance(case.body, dict)
            and any(_has_control_bytes(k) for k in case.body)
            and "Malformed request body" in (response.text or "")
        ):
            print(f"malformed multipart part header, not a failure: {case.method} {case.path}"[:300], file=sys.stderr)
            return False
        return True
    if kind != "AcceptedNegativeData" or not isinstance(case.body, dict):
        return True
    schema, root = _request_schema(case)
    if schema is None:
        return True
    props = schema.get("properties", {})
    if media in FORM_MEDIA_TYPES:
        coerced = _form_fields(case.body, schema, set(schema.get("required", [])))
    elif media == "application/json":
        coerced = {k: _coerce(v, props.get(k, {})) for k, v in case.body.items()}
    else:
        return True
    if coerced == case.body and all(type(a) is type(b) for a, b in zip(coerced.values(), case.body.values())):
        return True
    if jsonschema_rs.validator_for(root, validate_formats=True).is_valid(coerced):
        print(f"coerced as upstream, not a failure: {case.method} {case.path} {case.body!r}"[:300], file=sys.stderr)
        return False
    return True
