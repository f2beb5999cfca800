"""Parse a registry catalog into a flat list of entries the indexer can load.

Two catalog formats are understood, told apart by their top-level shape:

* **legacy** ToolHive format: ``servers`` maps a name to a container server (``image``) and
  ``remote_servers`` maps a name to a remote server (``url``). The map key is the entry's name.
  ``tools`` lists tool names only; an entry may also carry ``tool_definitions``, a list of full
  MCP tool objects, which is then used instead.
* **upstream** ToolHive format: ``data.servers`` is a list of official MCP registry
  ``server.json`` objects (an item may also be wrapped as ``{"server": {...}}``, as the registry
  API returns it). Each OCI package becomes a container entry and each remote a remote entry;
  npm, pypi and other packages are not container images and are skipped with a warning. Tags,
  tool names and tool definitions come from ToolHive's publisher extension,
  ``_meta["io.modelcontextprotocol.registry/publisher-provided"]["io.github.stacklok"]``, keyed
  by the package identifier or remote URL.

Entry names in the upstream format: a server that yields one entry gives it the server's
``name`` unchanged. When it yields several, the first (its first OCI package, or its first
remote when it has no OCI package) keeps the bare name and each other entry gets a suffix
``-container`` or ``-remote``, followed by ``-N`` for the N-th entry of that kind (N >= 2):
a server ``foo`` with two OCI packages and two remotes yields ``foo``, ``foo-container-2``,
``foo-remote`` and ``foo-remote-2``. The first entry keeps the bare name so that adding a remote
to an existing container server does not rename (and so re-embed) the entry already indexed.

Error policy: any invalid entry fails the whole catalog with :class:`CatalogParseError`. The
operator keeps the previous index for a catalog that fails to parse; loading the valid part
would instead delete every server whose entry happened to be broken and unlink its workloads.
Entry names key entries within a catalog, so a repeated name is an error too. Entries sharing an
identifier (aliases, such as ``heroku`` and ``heroku-mcp-server``) are legitimate and load, with
a warning: only a workload matching several of them is a problem (SPEC S2.5).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mcp_optimizer.errors import McpOptimizerError

from .identity import normalize_image, normalize_url

__all__ = [
    "CatalogEntry",
    "CatalogParseError",
    "ParsedCatalog",
    "ToolDefinition",
    "load_catalog_file",
    "parse_catalog",
]

_PUBLISHER_PROVIDED = "io.modelcontextprotocol.registry/publisher-provided"
_TOOLHIVE_EXTENSION = "io.github.stacklok"
# Bumped whenever the hashed representation changes, so that every stored hash goes stale at once
# instead of some entries colliding across representations.
_HASH_VERSION = "catalog-entry/v1"


class CatalogParseError(McpOptimizerError, ValueError):
    """A catalog that cannot be loaded; the message is one line naming the problem and the entry."""


def _default_input_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {}}


class ToolDefinition(BaseModel):
    """One tool a registry server offers, in the shape of an MCP ``tools/list`` item.

    Catalogs that list only tool names produce definitions with an empty description and an
    input schema that accepts an empty object.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    name: str = Field(min_length=1)
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=_default_input_schema, alias="inputSchema")

    @field_validator("description", mode="before")
    @classmethod
    def _none_description_is_empty(cls, value: object) -> object:
        # MCP servers commonly send "description": null; it means the same as no description.
        return "" if value is None else value

    @field_validator("input_schema", mode="before")
    @classmethod
    def _none_schema_is_default(cls, value: object) -> object:
        return _default_input_schema() if value is None else value

    def to_mcp(self) -> dict[str, Any]:
        """Return the tool as an MCP tool object: ``{"name", "description", "inputSchema"}``.

        The schema is a deep copy, so callers may modify the result without touching this frozen
        definition.
        """
        return {
            "name": self.name,
            "description": self.description,
            "inputSchema": copy.deepcopy(self.input_schema),
        }


class CatalogEntry(BaseModel):
    """One registry server as the index stores it: a remote (by URL) or a container (by image).

    ``url`` and ``package`` hold the identifier exactly as the catalog wrote it, because that is
    what is shown and stored; :attr:`identifier` gives the normalised form used for matching.
    A remote entry has a ``url`` and no ``package``; a container entry the reverse.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    remote: bool
    url: str | None = None
    package: str | None = None
    transport: str | None = None
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    tools: list[ToolDefinition] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_identifier(self) -> CatalogEntry:
        if self.remote:
            if not self.url:
                raise ValueError("remote entry has no url")
            if self.package is not None:
                raise ValueError("remote entry must not have an image")
            try:
                normalize_url(self.url)
            except ValueError as exc:
                raise ValueError(f"invalid url: {exc}") from exc
        else:
            if not self.package:
                raise ValueError("container entry has no image")
            if self.url is not None:
                raise ValueError("container entry must not have a url")
            try:
                normalize_image(self.package)
            except ValueError as exc:
                raise ValueError(f"invalid image: {exc}") from exc
        seen: set[str] = set()
        for tool in self.tools:
            # Tool names key a server's tools (MCP requires them unique per server).
            if tool.name in seen:
                raise ValueError(f"duplicate tool name {tool.name!r}")
            seen.add(tool.name)
        return self

    @property
    def identifier(self) -> str:
        """The normalised URL (remote) or image repository (container) used to match workloads."""
        if self.remote:
            assert self.url is not None  # guaranteed by validation
            return normalize_url(self.url)
        assert self.package is not None
        return normalize_image(self.package)

    def content_hash(self) -> str:
        """Return a hex sha256 over everything about this entry that the index stores.

        Covers the name, kind, identifier as written, transport, description, tags and tools. Key
        order inside tool schemas, the order of tools and the order of tags do not change the hash:
        none of them changes what is indexed. The identifier is hashed as written rather than
        normalised so that a tag bump still updates the stored row.
        """
        tools = sorted(
            (tool.to_mcp() for tool in self.tools),
            key=lambda tool: (tool["name"], _canonical_json(tool)),
        )
        payload = {
            "v": _HASH_VERSION,
            "name": self.name,
            "remote": self.remote,
            "url": self.url,
            "package": self.package,
            "transport": self.transport,
            "description": self.description,
            "tags": sorted(self.tags),
            "tools": tools,
        }
        return hashlib.sha256(_canonical_json(payload).encode("utf-8")).hexdigest()


@dataclass
class ParsedCatalog:
    """The result of parsing a catalog: its entries in catalog order, plus non-fatal warnings."""

    entries: list[CatalogEntry]
    warnings: list[str] = field(default_factory=list)


def parse_catalog(data: str | bytes | Mapping[str, Any]) -> ParsedCatalog:
    """Parse a catalog in the legacy or upstream ToolHive format (see the module docstring).

    Args:
        data: The catalog as JSON text, JSON bytes, or an already decoded mapping.

    Returns:
        Every entry of the catalog, and warnings for skipped non-OCI packages, servers with
        nothing to index, and entries that share an identifier.

    Raises:
        CatalogParseError: For invalid JSON (including a key repeated within one object), a
            top-level shape that is neither format, any invalid entry, or a repeated entry name.
            The whole catalog fails: no partial result is returned.
    """
    document = _decode(data)
    warnings: list[str] = []
    if "data" in document:
        if "servers" in document or "remote_servers" in document:
            raise CatalogParseError(
                "ambiguous catalog: has both 'data' (upstream format) and 'servers'/'remote_servers'"
                " (legacy format)"
            )
        entries = list(_parse_upstream(document["data"], warnings))
    elif "servers" in document or "remote_servers" in document:
        entries = list(_parse_legacy(document, warnings))
    else:
        raise CatalogParseError(
            "unrecognised catalog: expected top-level 'servers'/'remote_servers' (legacy format)"
            " or 'data.servers' (upstream format)"
        )
    _check_unique_names(entries)
    warnings.extend(_shared_identifier_warnings(entries))
    return ParsedCatalog(entries=entries, warnings=warnings)


def load_catalog_file(path: str | PathLike[str]) -> ParsedCatalog:
    """Read and parse the catalog file at ``path``.

    Raises:
        OSError: If the file cannot be read.
        CatalogParseError: As :func:`parse_catalog`, with the file path prefixed to the message.
    """
    raw = Path(path).read_bytes()
    try:
        return parse_catalog(raw)
    except CatalogParseError as exc:
        raise CatalogParseError(f"{path}: {exc}") from exc


# --- decoding ----------------------------------------------------------------------------------


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses repeated keys, which json would resolve silently."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # In "servers" a repeated key is two servers with one name; anywhere it is ambiguous.
            raise CatalogParseError(f"invalid JSON: key {key!r} appears twice in one object")
        result[key] = value
    return result


def _decode(data: str | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    """Return the catalog document as a mapping, decoding JSON text or bytes when given."""
    if isinstance(data, str | bytes):
        if isinstance(data, str):
            data = data.removeprefix("\ufeff")
        try:
            document = json.loads(data, object_pairs_hook=_reject_duplicate_keys)
        except json.JSONDecodeError as exc:
            raise CatalogParseError(
                f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from exc
        except UnicodeDecodeError as exc:
            raise CatalogParseError(f"invalid JSON: not UTF-8 text ({exc.reason})") from exc
    else:
        document = data
    if not isinstance(document, Mapping):
        raise CatalogParseError(f"catalog must be a JSON object, got {_kind(document)}")
    return document


# --- legacy format -----------------------------------------------------------------------------


def _parse_legacy(document: Mapping[str, Any], warnings: list[str]) -> Iterator[CatalogEntry]:
    """Yield the container then the remote entries of a legacy-format catalog."""
    for section, remote in (("servers", False), ("remote_servers", True)):
        servers = document.get(section)
        if servers is None:
            continue
        if not isinstance(servers, Mapping):
            raise CatalogParseError(
                f"'{section}' must be an object mapping server names to servers, got {_kind(servers)}"
            )
        for name, server in servers.items():
            if not isinstance(server, Mapping):
                raise CatalogParseError(f"server {name!r}: must be an object, got {_kind(server)}")
            yield _legacy_entry(str(name), server, remote, warnings)


def _legacy_entry(name: str, server: Mapping[str, Any], remote: bool, warnings: list[str]) -> CatalogEntry:
    """Build one entry of the legacy format, whose identifier is ``url`` or ``image``.

    The section decides the kind: an entry of ``servers`` that also has a ``url`` (or of
    ``remote_servers`` with an ``image``) is indexed by its section's identifier, with a warning
    naming what is ignored.
    """
    where = f"server {name!r}"
    key = "url" if remote else "image"
    other = "image" if remote else "url"
    if isinstance(server.get(other), str) and server[other].strip():
        section, other_section = ("remote_servers", "servers") if remote else ("servers", "remote_servers")
        warnings.append(
            f"{where} in '{section}' has both url and image: it is indexed as a "
            f"{'remote' if remote else 'container'} server by its {key}, and its {other} {server[other]!r} "
            f"is ignored; to index both, add the {other} as its own entry under '{other_section}'"
        )
    identifier = server.get(key)
    if identifier is None or (isinstance(identifier, str) and not identifier.strip()):
        raise CatalogParseError(
            f"{where}: {'remote' if remote else 'container'} entry has no {'url' if remote else 'image'}"
        )
    return _make_entry(
        where,
        name=name,
        remote=remote,
        identifier=_require_str(identifier, where, key),
        transport=_optional_str(server.get("transport"), where, "transport"),
        description=_optional_str(server.get("description"), where, "description") or "",
        tags=_str_list(server.get("tags"), where, "tags"),
        tools=_tools(server.get("tools"), server.get("tool_definitions"), where),
    )


# --- upstream format ---------------------------------------------------------------------------


def _parse_upstream(data: object, warnings: list[str]) -> Iterator[CatalogEntry]:
    """Yield the entries of every server in an upstream-format ``data`` object."""
    if not isinstance(data, Mapping):
        raise CatalogParseError(f"'data' must be an object with a 'servers' list, got {_kind(data)}")
    servers = data.get("servers")
    if not isinstance(servers, list):
        raise CatalogParseError(f"'data.servers' must be a list of servers, got {_kind(servers)}")
    for position, item in enumerate(servers):
        server = item
        # The registry API wraps each server.json as {"server": {...}, "_meta": {...}}.
        if isinstance(item, Mapping) and "name" not in item and isinstance(item.get("server"), Mapping):
            server = item["server"]
        if not isinstance(server, Mapping):
            raise CatalogParseError(f"data.servers[{position}]: must be an object, got {_kind(server)}")
        name = server.get("name")
        if not isinstance(name, str) or not name.strip():
            raise CatalogParseError(f"data.servers[{position}]: server has no name")
        yield from _upstream_entries(name, server, warnings)


def _upstream_entries(name: str, server: Mapping[str, Any], warnings: list[str]) -> Iterator[CatalogEntry]:
    """Yield one entry per OCI package and per remote of one ``server.json``."""
    where = f"server {name!r}"
    description = _optional_str(server.get("description"), where, "description") or ""
    extensions = _toolhive_extensions(server.get("_meta"), where)

    # (kind, identifier, transport, where-label) for every indexable part of the server.
    parts: list[tuple[str, str, str | None, str]] = []
    for index, package in enumerate(_object_list(server.get("packages"), where, "packages")):
        label = f"{where}: packages[{index}]"
        registry_type = package.get("registryType", package.get("registry_type"))
        identifier = package.get("identifier")
        if registry_type != "oci":
            warnings.append(
                f"{where}: skipped {registry_type or 'untyped'} package {identifier!r}:"
                " only OCI images are container servers"
            )
            continue
        if identifier is None or (isinstance(identifier, str) and not identifier.strip()):
            raise CatalogParseError(f"{label}: container entry has no image")
        image = _require_str(identifier, label, "identifier")
        parts.append(("container", image, _transport_type(package.get("transport"), label), label))
    for index, remote in enumerate(_object_list(server.get("remotes"), where, "remotes")):
        label = f"{where}: remotes[{index}]"
        url = remote.get("url")
        if url is None or (isinstance(url, str) and not url.strip()):
            raise CatalogParseError(f"{label}: remote entry has no url")
        transport = _optional_str(remote.get("type"), label, "type")
        parts.append(("remote", _require_str(url, label, "url"), transport, label))

    if not parts:
        warnings.append(f"{where}: no OCI package or remote to index; skipped")
        return
    for (kind, identifier, transport, label), entry_name in zip(
        parts, _entry_names(name, [kind for kind, *_ in parts]), strict=True
    ):
        extension = _extension_for(extensions, identifier, kind == "remote")
        yield _make_entry(
            label,
            name=entry_name,
            remote=kind == "remote",
            identifier=identifier,
            transport=transport,
            description=description,
            tags=_str_list(extension.get("tags"), label, "tags"),
            tools=_tools(extension.get("tools"), extension.get("tool_definitions"), label),
        )


def _entry_names(server_name: str, kinds: Sequence[str]) -> list[str]:
    """Name each entry of one server by the rule in the module docstring."""
    names = [server_name]
    counts: dict[str, int] = {kinds[0]: 1}
    for kind in kinds[1:]:
        counts[kind] = counts.get(kind, 0) + 1
        number = counts[kind]
        names.append(f"{server_name}-{kind}" + (f"-{number}" if number > 1 else ""))
    return names


def _toolhive_extensions(meta: object, where: str) -> Mapping[str, Any]:
    """Return ToolHive's publisher extension: per-identifier metadata, or an empty mapping."""
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise CatalogParseError(f"{where}: '_meta' must be an object, got {_kind(meta)}")
    provided = meta.get(_PUBLISHER_PROVIDED) or {}
    extensions = provided.get(_TOOLHIVE_EXTENSION) if isinstance(provided, Mapping) else None
    if extensions is None:
        return {}
    if not isinstance(extensions, Mapping):
        raise CatalogParseError(
            f"{where}: '_meta.{_PUBLISHER_PROVIDED}.{_TOOLHIVE_EXTENSION}' must be an object,"
            f" got {_kind(extensions)}"
        )
    return extensions


def _extension_for(extensions: Mapping[str, Any], identifier: str, remote: bool) -> Mapping[str, Any]:
    """Return the extension block for ``identifier``: exact key first, else same normalised form.

    The normalised fallback lets ``ghcr.io/x/y:1.1`` find a block keyed ``ghcr.io/x/y:1.0``,
    which happens when a package is bumped and its metadata key is not.
    """
    exact = extensions.get(identifier)
    if isinstance(exact, Mapping):
        return exact
    normalize = normalize_url if remote else normalize_image
    try:
        wanted = normalize(identifier)
    except ValueError:
        return {}  # the entry itself reports the bad identifier
    for key, value in extensions.items():
        if not isinstance(value, Mapping):
            continue
        try:
            if normalize(str(key)) == wanted:
                return value
        except ValueError:
            continue
    return {}


def _transport_type(transport: object, where: str) -> str | None:
    """Return ``transport.type`` of a package, or None when absent."""
    if transport is None:
        return None
    if not isinstance(transport, Mapping):
        raise CatalogParseError(f"{where}: 'transport' must be an object, got {_kind(transport)}")
    return _optional_str(transport.get("type"), where, "transport.type")


# --- shared helpers ----------------------------------------------------------------------------


def _make_entry(where: str, **fields: Any) -> CatalogEntry:
    """Build a :class:`CatalogEntry`, turning validation errors into one-line parse errors."""
    identifier = fields.pop("identifier")
    if fields["remote"]:
        fields["url"] = identifier
    else:
        fields["package"] = identifier
    try:
        return CatalogEntry(**fields)
    except ValidationError as exc:
        raise CatalogParseError(f"{where}: {_first_error(exc)}") from exc


def _tools(names: object, definitions: object, where: str) -> list[ToolDefinition]:
    """Return the entry's tools: full ``tool_definitions`` when given, else bare ``tools`` names."""
    if definitions is not None:
        if not isinstance(definitions, list):
            raise CatalogParseError(f"{where}: 'tool_definitions' must be a list, got {_kind(definitions)}")
        tools = []
        for index, definition in enumerate(definitions):
            try:
                tools.append(ToolDefinition.model_validate(definition))
            except ValidationError as exc:
                raise CatalogParseError(f"{where}: tool_definitions[{index}]: {_first_error(exc)}") from exc
        return tools
    return [ToolDefinition(name=name) for name in _str_list(names, where, "tools", non_empty=True)]


def _check_unique_names(entries: Sequence[CatalogEntry]) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise CatalogParseError(f"server {entry.name!r}: duplicate server name in catalog")
        seen.add(entry.name)


def _shared_identifier_warnings(entries: Sequence[CatalogEntry]) -> list[str]:
    """Warn once per identifier that several entries of the same kind share."""
    groups: dict[tuple[bool, str], list[str]] = {}
    for entry in entries:
        groups.setdefault((entry.remote, entry.identifier), []).append(entry.name)
    return [
        f"entries {', '.join(repr(name) for name in names)} share the"
        f" {'remote' if remote else 'container'} identifier {identifier!r};"
        " a workload matching it must pin one of them"
        for (remote, identifier), names in groups.items()
        if len(names) > 1
    ]


def _object_list(value: object, where: str, key: str) -> list[Mapping[str, Any]]:
    """Return ``value`` as a list of objects (None counts as empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise CatalogParseError(f"{where}: '{key}' must be a list, got {_kind(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise CatalogParseError(f"{where}: {key}[{index}] must be an object, got {_kind(item)}")
    return value


def _str_list(value: object, where: str, key: str, *, non_empty: bool = False) -> list[str]:
    """Return ``value`` as a list of strings (None counts as empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise CatalogParseError(f"{where}: '{key}' must be a list of strings, got {_kind(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str) or (non_empty and not item.strip()):
            raise CatalogParseError(
                f"{where}: {key}[{index}] must be a {'non-empty ' if non_empty else ''}string, got {item!r}"
            )
    return list(value)


def _optional_str(value: object, where: str, key: str) -> str | None:
    """Return ``value`` if it is a string, None if it is absent; anything else is an error."""
    return None if value is None else _require_str(value, where, key)


def _require_str(value: object, where: str, key: str) -> str:
    """Return ``value`` if it is a string; anything else is an error."""
    if not isinstance(value, str):
        raise CatalogParseError(f"{where}: '{key}' must be a string, got {_kind(value)}")
    return value


def _first_error(exc: ValidationError) -> str:
    """Return pydantic's first error as one line, with its location when it has one."""
    error = exc.errors()[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    location = ".".join(str(part) for part in error["loc"])
    return f"{location}: {message}" if location else message


def _kind(value: object) -> str:
    """Name a JSON value's type the way a catalog author thinks of it."""
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def _canonical_json(value: object) -> str:
    """Serialise ``value`` with sorted keys and no whitespace, so equal data gives equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
