"""Structured output: a request's ``json_schema`` mapped to each provider's native feature,
and the provider's answer checked against it before anyone sees it.

OpenAI takes the schema as ``response_format`` (``json_schema``, strict); Anthropic has no
such field, so the schema becomes the input schema of one tool the model is forced to call
(``tool_choice``), and the tool's input is the answer. Providers do not always keep their
word (strict mode has exceptions, tool inputs are not validated), so the answer is parsed
and validated with ``jsonschema`` here; the caller retries a non-conforming answer once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

#: The tool an Anthropic model is forced to call with its answer.
ANSWER_TOOL = "respond"


@dataclass(frozen=True)
class AnswerSchema:
    """A request's JSON Schema (already checked by ``validate_request``) and its validator."""

    schema: dict[str, Any]
    validator: Validator

    @classmethod
    def parse(cls, text: str) -> AnswerSchema:
        """The schema of ``response_format.json_schema``."""
        schema = json.loads(text)
        return cls(schema, validator_for(schema)(schema))

    def openai_response_format(self) -> dict[str, Any]:
        """OpenAI's ``response_format``."""
        return {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": self.schema, "strict": True},
        }

    def anthropic_tool(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Anthropic's ``tools`` and ``tool_choice`` forcing the answer tool."""
        tool = {
            "name": ANSWER_TOOL,
            "description": "Give the answer as this tool's input.",
            "input_schema": self.schema,
        }
        return [tool], {"type": "tool", "name": ANSWER_TOOL}

    def check(self, answer: str, *, tool_input: bool) -> tuple[str, str | None]:
        """(the answer text, None) when ``answer`` conforms, else (``answer``, why not).

        ``tool_input``: ``answer`` is the streamed JSON of an Anthropic tool input (empty
        means ``{}``); the text returned is then ``json.dumps`` of the input.
        """
        raw = answer or ("{}" if tool_input else "")
        try:
            instance = json.loads(raw)
        except RecursionError:
            return answer, "the answer nests arrays and objects too deeply to check"
        except ValueError as exc:
            return answer, f"the answer is not JSON ({exc})"
        try:
            error = best_match(self.validator.iter_errors(instance))
        except RecursionError:  # validate_json_schema refuses loops it can find; not all
            return answer, "checking the answer against the schema does not end ($ref loop)"
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            return answer, f"{error.message} (at {where})"
        return (json.dumps(instance, ensure_ascii=False) if tool_input else answer), None
