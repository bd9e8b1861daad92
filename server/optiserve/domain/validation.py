"""Checks every request passes before any work is done; each error names the field and range."""

from __future__ import annotations

import json
import math

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from optiserve.domain.errors import InvalidRequest
from optiserve.domain.types import GenerateRequest

ROLES = ("system", "user", "assistant")
#: Deepest nesting of arrays and objects a ``response_format.json_schema`` may have (deeper
#: documents would exhaust the recursion of the JSON parser and the schema checker).
MAX_SCHEMA_DEPTH = 64
#: Longest model or route name a request may give. Error messages quote what a request
#: sent; a longer quote would not fit in the status a client can receive (grpc's clients
#: refuse metadata over 8 KiB by default).
MAX_NAME_CHARS = 256
#: Characters of a sent value an error message quotes at most.
QUOTE_CHARS = 64


def shown(value: str, limit: int = QUOTE_CHARS) -> str:
    """``value`` quoted for an error message (``repr``), cut to ``limit`` characters."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def check_name(field: str, value: str) -> None:
    """InvalidRequest when ``value``, a model or route name, is longer than any may be."""
    if len(value) > MAX_NAME_CHARS:
        raise InvalidRequest(
            f"{field} {shown(value)} is not a model or route this server could serve: names "
            f"are at most {MAX_NAME_CHARS} characters (see ListModels)"
        )


def validate_request(request: GenerateRequest) -> None:
    """Raise :class:`InvalidRequest` for the first invalid field of ``request``."""
    if request.prompt and request.messages:
        raise InvalidRequest("give either prompt or messages, not both")
    if not request.prompt and not request.messages:
        raise InvalidRequest("the request has no prompt and no messages; set one of them")
    check_name("model", request.model)
    for i, message in enumerate(request.messages):
        if message.role not in ROLES:
            raise InvalidRequest(
                f"messages[{i}].role is {shown(message.role)}; allowed: {', '.join(ROLES)}"
            )
    if request.messages and request.messages[-1].role == "assistant":
        raise InvalidRequest("the last message must be from the user or system, not assistant")
    s = request.sampling
    if s.max_new_tokens is not None and s.max_new_tokens <= 0:
        raise InvalidRequest(f"sampling.max_new_tokens must be >= 1, got {s.max_new_tokens}")
    # The upper bound (max_new_tokens, which may be the model's default) is checked where
    # the defaults are known: the backend's resolve_sampling.
    if s.min_new_tokens is not None and s.min_new_tokens < 0:
        raise InvalidRequest(
            f"sampling.min_new_tokens must be in [0, max_new_tokens], got {s.min_new_tokens}"
        )
    if not math.isfinite(s.temperature) or s.temperature < 0:
        raise InvalidRequest(
            f"sampling.temperature must be a finite number >= 0, got {s.temperature}"
        )
    if not (0.0 < s.top_p <= 1.0):
        raise InvalidRequest(f"sampling.top_p must be in (0, 1], got {s.top_p}")
    if s.top_k < 0:
        raise InvalidRequest(f"sampling.top_k must be >= 0 (0 disables it), got {s.top_k}")
    if request.min_quality is not None and not 0.0 <= request.min_quality <= 1.0:
        raise InvalidRequest(f"budget.min_quality must be in [0, 1], got {request.min_quality}")
    if request.max_cost_usd is not None and not request.max_cost_usd >= 0:
        raise InvalidRequest(f"budget.max_cost_usd must be >= 0, got {request.max_cost_usd}")
    if request.json_schema:
        validate_json_schema(request.json_schema)


def validate_json_schema(schema: str) -> None:
    """``response_format.json_schema`` must be a valid JSON Schema document (an object,
    checked against the metaschema of its ``$schema``, draft 2020-12 by default).

    Whether the model can honour it is the service's call.
    """
    allowed = 'a JSON Schema object such as {"type": "object"}, or empty for free text'
    too_deep = InvalidRequest(
        f"response_format.json_schema nests arrays and objects too deeply; at most "
        f"{MAX_SCHEMA_DEPTH} levels are allowed; it must be {allowed}"
    )
    try:
        document = json.loads(schema)
    except RecursionError:
        raise too_deep from None
    except ValueError as exc:
        raise InvalidRequest(
            f"response_format.json_schema is not valid JSON ({_cut(str(exc))}); it must be "
            f"{allowed}"
        ) from None
    if not isinstance(document, dict):
        raise InvalidRequest(
            f"response_format.json_schema must be a JSON object, got a JSON "
            f"{_json_kind(document)}; it must be {allowed}"
        )
    if _depth(document) > MAX_SCHEMA_DEPTH:
        raise too_deep
    if "$schema" in document and not isinstance(document["$schema"], str):
        # jsonschema's validator_for looks it up as is: a list is unhashable, a number has
        # no .decode (TypeError, AttributeError).
        raise InvalidRequest(
            "response_format.json_schema's $schema must be a string, the URI of a JSON "
            'Schema metaschema such as "https://json-schema.org/draft/2020-12/schema", got '
            f"a JSON {_json_kind(document['$schema'])}; it must be {allowed}"
        )
    try:
        validator_for(document).check_schema(document)
    except RecursionError:
        raise too_deep from None
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise InvalidRequest(
            f"response_format.json_schema is not a valid JSON Schema: {_cut(exc.message)} "
            f"(at {_cut(where)}); it must be {allowed}"
        ) from None


def _cut(text: str, limit: int = 4 * QUOTE_CHARS) -> str:
    """``text`` (a message that may quote the request) cut to ``limit`` characters."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _depth(document: object) -> int:
    """How deeply arrays and objects nest in ``document`` (iteratively: no recursion)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        children: list[object] = []
        if isinstance(value, dict):
            children = list(value.values())
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_SCHEMA_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _json_kind(value: object) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"
