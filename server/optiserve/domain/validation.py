"""Checks every request passes before any work is done; each error names the field and range."""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import unquote

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from referencing.exceptions import Unresolvable

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
        document = json.loads(schema, parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        raise too_deep from None
    except _NotJson as exc:
        raise InvalidRequest(
            f"response_format.json_schema holds {exc}, which is not JSON (numbers must be "
            f"finite); it must be {allowed}"
        ) from None
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
    problem = _content_problem(document)
    if problem:
        raise InvalidRequest(f"response_format.json_schema {problem}; it must be {allowed}")
    try:  # what a model's answer will be checked with: its references must resolve
        validator = validator_for(document)(document)
        samples: tuple[Any, ...] = ({}, [], "", 0, None, True)
        for sample in samples:
            validator.is_valid(sample)
    except RecursionError:
        raise InvalidRequest(
            "response_format.json_schema's references loop: a $ref leads back to itself "
            'without any instance in between (e.g. {"$ref": "#"}); it must be ' + allowed
        ) from None
    except Unresolvable as exc:
        raise InvalidRequest(
            f"response_format.json_schema has a $ref that cannot be resolved "
            f"({_cut(str(exc))}); it must be {allowed}"
        ) from None


class _NotJson(ValueError):
    """NaN, Infinity or -Infinity: Python's json reads them, JSON has no such numbers."""


def _not_json(constant: str) -> object:
    raise _NotJson(constant)


def _finite(text: str) -> float:
    """A JSON number as a float; 1e999 and the like overflow to infinity, which JSON (and
    the provider request it would go into) cannot hold."""
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson(f"{_cut(text, QUOTE_CHARS)} (out of a double's range)")
    return value


#: Keywords whose values are data, not schemas: a "$ref" inside them is not a reference.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples", "example"})


def _content_problem(document: dict[str, object]) -> str:
    """What, in a schema the metaschema accepts, a provider request or the answer's check
    would still fail on ("" when nothing): a string that is not Unicode text (a lone
    surrogate escape such as \\ud800 cannot be encoded as UTF-8), or a ``$ref`` that is
    not a local reference to a part of the document (the server fetches no schemas)."""
    stack: list[object] = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if not _is_text(value):
                return f"holds a string with a lone surrogate ({shown(value)}); use valid Unicode"
            continue
        if isinstance(value, list):
            stack.extend(value)
            continue
        if not isinstance(value, dict):
            continue
        for key, child in value.items():
            if not _is_text(key):
                return f"holds a key with a lone surrogate ({shown(key)}); use valid Unicode"
            if key in _DATA_KEYWORDS:
                # Its strings are sent to providers too (surrogates kept to be found).
                stack.append(json.dumps(child, ensure_ascii=False))
                continue
            if key in ("$ref", "$dynamicRef") and isinstance(child, str):
                problem = _ref_problem(document, key, child)
                if problem:
                    return problem
            stack.append(child)
    return ""


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _ref_problem(document: dict[str, object], key: str, ref: str) -> str:
    if not ref.startswith("#"):
        return (
            f"has {key} {shown(ref)}, which is not a local reference; the server fetches no "
            'schemas: put the definition under "$defs" and refer to it as "#/$defs/<name>"'
        )
    if _has_nested_id(document):
        return ""  # pointers and anchors relative to a nested resource: the validator's
    if ref == "#":
        return ""
    if not ref.startswith("#/"):
        anchor = unquote(ref[1:])
        if anchor in _anchors(document):
            return ""
        return (
            f'has {key} {shown(ref)}, but no "$anchor" or "$dynamicAnchor" in the document is '
            f"named {shown(anchor)}"
        )
    node: object = document
    for raw in ref[2:].split("/"):
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return f"has {key} {shown(ref)}, which points to nothing in the document"
    return ""


def _anchors(document: dict[str, object]) -> set[str]:
    """The anchor names the document declares ("$anchor", "$dynamicAnchor", or an older
    draft's "$id"/"id" of the form "#name")."""
    names: set[str] = set()
    stack: list[object] = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            for key in ("$anchor", "$dynamicAnchor"):
                if isinstance(value.get(key), str):
                    names.add(value[key])
            for key in ("$id", "id"):
                if isinstance(value.get(key), str) and value[key].startswith("#"):
                    names.add(value[key][1:])
            stack.extend(v for k, v in value.items() if k not in _DATA_KEYWORDS)
    return names


def _has_nested_id(document: dict[str, object]) -> bool:
    """Whether a subschema declares its own ``$id`` (or ``id``): its pointers are relative
    to it, not to the document."""
    stack: list[object] = [v for k, v in document.items() if k not in _DATA_KEYWORDS]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            for key in ("$id", "id"):
                nested = value.get(key)
                if isinstance(nested, str) and not nested.startswith("#"):
                    return True
            stack.extend(v for k, v in value.items() if k not in _DATA_KEYWORDS)
    return False


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
