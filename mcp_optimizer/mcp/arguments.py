"""The meta-tools' arguments: pydantic models that are both the advertised JSON schema and the validator.

Deriving the ``inputSchema`` from the same model that validates a call keeps the two from
drifting apart. Validation is strict (``true`` is not a limit, ``"five"`` is not an integer)
because the schema we advertise says so, and a clear refusal teaches a model more than a
silent guess. Errors are rewritten into one sentence a model can act on.

One thing is not a guess: some clients send every argument as a string. The MCP Inspector's
CLI (``--tool-arg limit=3``) converts a string only when the property has a plain top-level
``type``, and LLM frameworks that fill forms do the same. :func:`coerce_string_arguments`
turns such a string into the value it can only mean (``"3"`` for an integer, a JSON object
text for an object), and only where the schema does not accept a string: a call it changes
would have been refused as it was. The same rule serves the meta-tools (against the schema
advertised here) and forwarded calls (against the target tool's own ``inputSchema``).
Optional meta-tool arguments are advertised with a plain ``type`` (no ``anyOf`` with
``null``) so that schema-driven clients convert them themselves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema
from pydantic_core import ErrorDetails

MAX_LIMIT = 50
MAX_QUERY_CHARS = 2000
MAX_KEYWORDS = 20
MAX_KEYWORD_CHARS = 100
#: Workload names are ``namespace/name`` in Kubernetes: 253 + 1 + 253 characters at most.
MAX_SERVER_NAME_CHARS = 512
#: SEP-986's limit on MCP tool names.
MAX_TOOL_NAME_CHARS = 128
MAX_GROUP_CHARS = 253


def _keywords(value: Any) -> Any:
    """Accept ``"a b, c"`` as well as ``["a", "b", "c"]``: models produce both."""
    if value is None:
        return None
    if isinstance(value, str):
        return [word for word in value.replace(",", " ").split() if word]
    if isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise ValueError("must be a string or a list of strings")
        return [item.strip() for item in value if item.strip()]
    raise ValueError("must be a string or a list of strings")


Keywords = Annotated[
    list[Annotated[str, Field(max_length=MAX_KEYWORD_CHARS)]] | None,
    BeforeValidator(_keywords),
    Field(max_length=MAX_KEYWORDS),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": {"type": "string"}, "maxItems": MAX_KEYWORDS},
                {"type": "string"},
                {"type": "null"},
            ],
            "description": "Optional extra words that must matter for the match: product names, verbs, "
            "nouns (e.g. ['github', 'issue']). A list, or one space-separated string.",
        }
    ),
]


class _Arguments(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)


class FindToolArgs(_Arguments):
    tool_description: str = Field(
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description="What you want to do, in plain words, e.g. 'create an issue in a GitHub repository'.",
    )
    tool_keywords: Keywords = None
    limit: int | None = Field(
        default=None, ge=1, le=MAX_LIMIT, description=f"How many tools to return (1-{MAX_LIMIT})."
    )
    group: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_GROUP_CHARS,
        description="Only search the servers of this group. Omit to search every server you can use.",
    )


class SearchRegistryArgs(_Arguments):
    query: str = Field(
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description="The capability you need, in plain words, e.g. 'query a PostgreSQL database'.",
    )
    limit: int | None = Field(
        default=None, ge=1, le=MAX_LIMIT, description=f"How many servers to return (1-{MAX_LIMIT}); default 5."
    )


class ListToolsArgs(_Arguments):
    server_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SERVER_NAME_CHARS,
        description="A server as find_tool or list_tools name it (the 'server' field). Omit to list every "
        "running server's tools.",
    )


class CallToolArgs(_Arguments):
    server_name: str = Field(
        min_length=1,
        max_length=MAX_SERVER_NAME_CHARS,
        description="The 'server' value find_tool or list_tools returned, exactly.",
    )
    tool_name: str = Field(
        min_length=1,
        max_length=MAX_TOOL_NAME_CHARS,
        description="The 'tool' value find_tool returned (the tool's name on that server), exactly.",
    )
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="The tool's arguments: an object matching the tool's input_schema. Omit for a tool "
        "that takes none.",
    )


def input_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema advertised for ``model``, without pydantic's ``title`` noise.

    An optional argument is advertised as its own type, not ``anyOf: [<type>, null]``: it is
    optional by not being ``required``, and clients that convert strings by the property's
    ``type`` (the MCP Inspector) cannot see through ``anyOf``.
    """
    schema = model.model_json_schema()
    schema.pop("title", None)
    properties = schema.get("properties", {})
    for name, prop in properties.items():
        prop.pop("title", None)
        variants = prop.get("anyOf")
        if isinstance(variants, list) and {"type": "null"} in variants:
            rest = [v for v in variants if v != {"type": "null"}]
            extra = {k: v for k, v in prop.items() if k != "anyOf" and not (k == "default" and v is None)}
            properties[name] = {**rest[0], **extra} if len(rest) == 1 else {"anyOf": rest, **extra}
    return schema


# --------------------------------------------------------------------------------------------
# Stringly-typed clients
# --------------------------------------------------------------------------------------------

#: JSON's integer and number grammars: what a string must look like to be read as one.
_JSON_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]{0,18})")
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
#: A JSON object or array passed as a string is bounded like any argument.
MAX_JSON_STRING_CHARS = 1_000_000
_JSON_TYPES: dict[str, type | tuple[type, ...]] = {"object": dict, "array": list}


def _allowed_types(schema: object) -> set[str] | None:
    """The JSON types a property schema accepts, or None when it cannot be told simply."""
    if not isinstance(schema, Mapping):
        return None
    declared = schema.get("type")
    if isinstance(declared, str):
        return {declared}
    if isinstance(declared, list) and all(isinstance(t, str) for t in declared):
        return set(declared)
    variants = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(variants, list) and variants:
        types: set[str] = set()
        for variant in variants:
            inner = _allowed_types(variant)
            if inner is None:
                return None
            types |= inner
        return types
    return None


def _string_value(text: str, allowed: set[str]) -> tuple[bool, Any]:
    """(True, value) when ``text`` can only mean one value of an allowed non-string type."""
    stripped = text.strip()
    if stripped[:1] in ("{", "[") and allowed & _JSON_TYPES.keys() and len(stripped) <= MAX_JSON_STRING_CHARS:
        try:
            value = json.loads(stripped)
        except ValueError:
            return False, None
        if any(isinstance(value, _JSON_TYPES[t]) for t in allowed & _JSON_TYPES.keys()):
            return True, value
        return False, None
    if "integer" in allowed and _JSON_INTEGER.fullmatch(stripped):
        return True, int(stripped)
    if "number" in allowed and _JSON_NUMBER.fullmatch(stripped) and len(stripped) <= 64:
        value = json.loads(stripped)
        return True, value
    if "boolean" in allowed and stripped in ("true", "false"):
        return True, stripped == "true"
    return False, None


def coerce_string_arguments(arguments: Mapping[str, Any], schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """``arguments`` with string values read as the type ``schema`` asks for, where unambiguous.

    Only top-level properties whose schema names its types plainly (``type``, or ``anyOf`` /
    ``oneOf`` of plain types) and does not accept a string are touched; a string that is not
    exactly one value of those types (``"abc"`` for an integer, ``"3.5"`` for an integer) is
    left as it is, so validation still refuses it with its usual message.
    """
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(properties, Mapping):
        return dict(arguments)
    coerced = dict(arguments)
    for name, value in arguments.items():
        if not isinstance(value, str):
            continue
        allowed = _allowed_types(properties.get(name))
        if not allowed or "string" in allowed:
            continue
        ok, converted = _string_value(value, allowed)
        if ok:
            coerced[name] = converted
    return coerced


def describe_validation_error(tool: str, model: type[BaseModel], exc: ValidationError) -> str:
    """One sentence naming every problem with a call's arguments, without echoing their values."""
    problems = [_describe_problem(tool, model, error) for error in exc.errors(include_url=False)]
    return f"Invalid arguments for {tool}: {'; '.join(problems)}."


#: What each kind of pydantic error says about an argument (``{where}``: the argument, ``{n}``:
#: the error's bound).
_PROBLEMS = {
    "missing": "{where} is required",
    "string_too_short": "{where} must not be empty",
    "string_too_long": "{where} is too long (at most {n} characters)",
    "too_long": "{where} has too many items (at most {n})",
    "int_type": "{where} must be an integer",
    "int_from_float": "{where} must be an integer",
    "string_type": "{where} must be a string",
}


def _describe_problem(tool: str, model: type[BaseModel], error: ErrorDetails) -> str:
    loc = [str(part) for part in error["loc"]]
    field = loc[0] if loc else "arguments"
    where = f"'{field}'" + "".join(f"[{part}]" for part in loc[1:] if part.isdigit())
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind in _PROBLEMS:
        return _PROBLEMS[kind].format(where=where, n=ctx.get("max_length"))
    if kind == "extra_forbidden":
        return f"{where} is not a parameter of {tool} (parameters: {', '.join(model.model_fields)})"
    if kind in ("greater_than_equal", "less_than_equal"):
        low, high = _bounds(model, field)
        if low is not None and high is not None:
            return f"{where} must be between {low} and {high}"
        if kind == "greater_than_equal":
            return f"{where} must be at least {ctx.get('ge')}"
        return f"{where} must be at most {ctx.get('le')}"
    if kind in ("dict_type", "model_type"):
        return f"{where} must be an object" if loc else "the arguments must be an object"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where} {message[0].lower()}{message[1:]}" if message else f"{where} is invalid"


def _bounds(model: type[BaseModel], field: str) -> tuple[Any, Any]:
    """The (ge, le) bounds declared on ``field``, for "must be between" messages."""
    info = model.model_fields.get(field)
    low = high = None
    for constraint in info.metadata if info is not None else ():
        low = getattr(constraint, "ge", low)
        high = getattr(constraint, "le", high)
    return low, high
