"""Tests for catalog parsing: both ToolHive formats, the real registry, errors and content hashes."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mcp_optimizer.catalog import (
    CatalogEntry,
    CatalogParseError,
    ParsedCatalog,
    ToolDefinition,
    load_catalog_file,
    parse_catalog,
)

DEFAULT_SCHEMA = {"type": "object", "properties": {}}
PUBLISHER = "io.modelcontextprotocol.registry/publisher-provided"


def _shared_data_dir() -> Path:
    """``$MCP_OPTIMIZER_SHARED_DATA``, else the first ``shared/data`` found walking up from here."""
    configured = os.environ.get("MCP_OPTIMIZER_SHARED_DATA")
    if configured:
        return Path(configured)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    pytest.fail("shared data not found: set MCP_OPTIMIZER_SHARED_DATA or place shared/data beside the repo")


@pytest.fixture(scope="module")
def registry_path() -> Path:
    return _shared_data_dir() / "toolhive-registry" / "registry.json"


@pytest.fixture(scope="module")
def registry(registry_path: Path) -> ParsedCatalog:
    return load_catalog_file(registry_path)


# --- the real ToolHive registry ----------------------------------------------------------------


def test_real_registry_counts(registry: ParsedCatalog) -> None:
    containers = [entry for entry in registry.entries if not entry.remote]
    remotes = [entry for entry in registry.entries if entry.remote]
    assert len(containers) == 79
    assert len(remotes) == 23
    assert sum(len(entry.tools) for entry in registry.entries) == 1652


def test_real_registry_entries_match_source(registry: ParsedCatalog, registry_path: Path) -> None:
    raw = json.loads(registry_path.read_text())
    by_name = {entry.name: entry for entry in registry.entries}
    assert set(by_name) == set(raw["servers"]) | set(raw["remote_servers"])
    for name, server in raw["servers"].items():
        entry = by_name[name]
        assert (entry.remote, entry.package, entry.url) == (False, server["image"], None)
        assert entry.transport == server["transport"]
        assert entry.description == server["description"]
        assert entry.tags == server.get("tags", [])
        assert [tool.name for tool in entry.tools] == server.get("tools", [])
    for name, server in raw["remote_servers"].items():
        entry = by_name[name]
        assert (entry.remote, entry.url, entry.package) == (True, server["url"], None)
    # Legacy tools are names only.
    assert all(tool.to_mcp()["inputSchema"] == DEFAULT_SCHEMA for e in registry.entries for tool in e.tools)


def test_real_registry_aliases_are_warned_not_rejected(registry: ParsedCatalog) -> None:
    names = {entry.name for entry in registry.entries}
    assert {"heroku", "heroku-mcp-server", "database-toolbox", "genai-toolbox"} <= names
    assert len(registry.warnings) == 2
    heroku = [warning for warning in registry.warnings if "'heroku'" in warning]
    assert len(heroku) == 1
    assert "'heroku-mcp-server'" in heroku[0]
    assert "ghcr.io/stacklok/dockyard/npx/heroku-mcp-server" in heroku[0]
    assert any("'database-toolbox', 'genai-toolbox'" in warning for warning in registry.warnings)


def test_real_registry_every_input_form_gives_the_same_result(
    registry: ParsedCatalog, registry_path: Path
) -> None:
    raw = registry_path.read_bytes()
    for data in (raw, raw.decode("utf-8"), json.loads(raw)):
        assert parse_catalog(data) == registry


def test_real_registry_hashes_are_unique_and_stable(registry: ParsedCatalog, registry_path: Path) -> None:
    hashes = [entry.content_hash() for entry in registry.entries]
    assert len(set(hashes)) == len(hashes)
    assert [entry.content_hash() for entry in load_catalog_file(registry_path).entries] == hashes


# --- the upstream (server.json) format ---------------------------------------------------------


def test_upstream_sample() -> None:
    parsed = load_catalog_file(_shared_data_dir() / "toolhive-registry" / "upstream-format-sample.json")
    assert parsed.warnings == []
    [entry] = parsed.entries
    assert entry.name == "osv-upgrade-test"
    assert not entry.remote
    assert entry.package == "ghcr.io/stackloklabs/osv-mcp/server:0.1.3"
    assert entry.url is None
    assert entry.identifier == "ghcr.io/stackloklabs/osv-mcp/server"
    assert entry.transport == "streamable-http"
    assert entry.description.startswith("OSV MCP server fixture")


def _upstream(*servers: Any) -> dict[str, Any]:
    return {"version": "1.0.0", "meta": {}, "data": {"servers": list(servers)}}


MIXED_SERVER: dict[str, Any] = {
    "name": "io.github.example/multi",
    "description": "A server shipped every way",
    "packages": [
        {"registryType": "oci", "identifier": "ghcr.io/example/multi:1.0", "transport": {"type": "stdio"}},
        {"registryType": "npm", "identifier": "@example/multi", "transport": {"type": "stdio"}},
        {"registryType": "oci", "identifier": "quay.io/example/multi:1.0", "transport": {"type": "stdio"}},
    ],
    "remotes": [
        {"type": "streamable-http", "url": "https://multi.example.com/mcp"},
        {"type": "sse", "url": "https://multi.example.com/sse"},
    ],
    "_meta": {
        PUBLISHER: {
            "io.github.stacklok": {
                "ghcr.io/example/multi:1.0": {"tags": ["a"], "tools": ["t1", "t2"]},
                # Keyed by an older tag: found through the normalised identifier.
                "quay.io/example/multi:0.9": {
                    "tools": ["ignored-because-definitions-win"],
                    "tool_definitions": [
                        {"name": "q1", "description": "Query", "inputSchema": {"type": "object"}}
                    ],
                },
                "https://multi.example.com/mcp": {"tags": ["remote"], "tools": ["r1"]},
            }
        }
    },
}


def test_upstream_server_with_packages_and_remotes() -> None:
    parsed = parse_catalog(_upstream(MIXED_SERVER))
    summary = [(e.name, e.remote, e.package or e.url, e.transport) for e in parsed.entries]
    assert summary == [
        ("io.github.example/multi", False, "ghcr.io/example/multi:1.0", "stdio"),
        ("io.github.example/multi-container-2", False, "quay.io/example/multi:1.0", "stdio"),
        ("io.github.example/multi-remote", True, "https://multi.example.com/mcp", "streamable-http"),
        ("io.github.example/multi-remote-2", True, "https://multi.example.com/sse", "sse"),
    ]
    assert all(entry.description == "A server shipped every way" for entry in parsed.entries)
    first, second, remote, bare_remote = parsed.entries
    assert (first.tags, [t.name for t in first.tools]) == (["a"], ["t1", "t2"])
    assert second.tools == [ToolDefinition(name="q1", description="Query", inputSchema={"type": "object"})]
    assert (remote.tags, [t.name for t in remote.tools]) == (["remote"], ["r1"])
    assert (bare_remote.tags, bare_remote.tools) == ([], [])
    assert parsed.warnings == [
        "server 'io.github.example/multi': skipped npm package '@example/multi':"
        " only OCI images are container servers"
    ]


def test_upstream_remote_only_server_keeps_bare_name() -> None:
    server = {"name": "remote-only", "remotes": [{"type": "sse", "url": "https://r.example.com/sse"}]}
    [entry] = parse_catalog(_upstream(server)).entries
    assert (entry.name, entry.remote, entry.url) == ("remote-only", True, "https://r.example.com/sse")


def test_upstream_server_with_nothing_to_index_is_skipped_with_warning() -> None:
    npm_only = {"name": "npm-only", "packages": [{"registryType": "npm", "identifier": "npm-only"}]}
    ok = {"name": "ok", "packages": [{"registryType": "oci", "identifier": "ghcr.io/x/ok:1"}]}
    parsed = parse_catalog(_upstream(npm_only, ok))
    assert [entry.name for entry in parsed.entries] == ["ok"]
    assert parsed.warnings == [
        "server 'npm-only': skipped npm package 'npm-only': only OCI images are container servers",
        "server 'npm-only': no OCI package or remote to index; skipped",
    ]


def test_upstream_accepts_registry_api_wrapper() -> None:
    wrapped = {
        "server": {"name": "wrapped", "packages": [{"registryType": "oci", "identifier": "ghcr.io/x/w"}]},
        "_meta": {"io.modelcontextprotocol.registry/official": {"status": "active"}},
    }
    [entry] = parse_catalog(_upstream(wrapped)).entries
    assert (entry.name, entry.package) == ("wrapped", "ghcr.io/x/w")


def test_upstream_aliases_warned_across_spellings() -> None:
    first = {"name": "a", "packages": [{"registryType": "oci", "identifier": "mcp/fetch:1"}]}
    second = {"name": "b", "packages": [{"registryType": "oci", "identifier": "docker.io/mcp/fetch:2"}]}
    parsed = parse_catalog(_upstream(first, second))
    assert len(parsed.entries) == 2
    assert parsed.warnings == [
        "entries 'a', 'b' share the container identifier 'docker.io/mcp/fetch';"
        " a workload matching it must pin one of them"
    ]


def test_remote_and_container_never_share_an_identifier() -> None:
    catalog = {
        "servers": {"c": {"image": "ghcr.io/x/y"}},
        "remote_servers": {"r": {"url": "https://ghcr.io/x/y"}},
    }
    assert parse_catalog(catalog).warnings == []


# --- legacy details ----------------------------------------------------------------------------


def test_legacy_tool_definitions_replace_tool_names() -> None:
    catalog = {
        "servers": {
            "fetch": {
                "image": "mcp/fetch:latest",
                "description": "Fetches URLs",
                "tools": ["fetch"],
                "tool_definitions": [
                    {
                        "name": "fetch",
                        "description": None,
                        "inputSchema": {"type": "object", "properties": {"url": {"type": "string"}}},
                        "annotations": {"readOnlyHint": True},
                    }
                ],
            }
        }
    }
    [entry] = parse_catalog(catalog).entries
    assert [tool.to_mcp() for tool in entry.tools] == [
        {
            "name": "fetch",
            "description": "",
            "inputSchema": {"type": "object", "properties": {"url": {"type": "string"}}},
        }
    ]


def test_legacy_minimal_entries() -> None:
    parsed = parse_catalog('{"servers": {"s": {"image": "ghcr.io/x/s"}}, "remote_servers": null}')
    [entry] = parsed.entries
    assert entry == CatalogEntry(name="s", remote=False, package="ghcr.io/x/s")
    assert (entry.description, entry.tags, entry.tools, entry.transport) == ("", [], [], None)


def test_legacy_entry_with_both_url_and_image_is_indexed_by_its_section_with_a_warning() -> None:
    parsed = parse_catalog({
        "servers": {"both": {"image": "ghcr.io/acme/both:1", "url": "https://both.example/mcp"}},
        "remote_servers": {"remote-both": {"url": "https://rb.example/mcp", "image": "ghcr.io/acme/rb:1"}},
    })
    [container, remote] = parsed.entries
    assert (container.remote, container.package, container.url) == (False, "ghcr.io/acme/both:1", None)
    assert (remote.remote, remote.url, remote.package) == (True, "https://rb.example/mcp", None)
    assert parsed.warnings == [
        "server 'both' in 'servers' has both url and image: it is indexed as a container server by its image, and "
        "its url 'https://both.example/mcp' is ignored; to index both, add the url as its own entry under "
        "'remote_servers'",
        "server 'remote-both' in 'remote_servers' has both url and image: it is indexed as a remote server by its "
        "url, and its image 'ghcr.io/acme/rb:1' is ignored; to index both, add the image as its own entry under "
        "'servers'",
    ]


def test_empty_catalogs_are_valid() -> None:
    assert parse_catalog({"servers": {}}) == ParsedCatalog(entries=[], warnings=[])
    assert parse_catalog(_upstream()) == ParsedCatalog(entries=[], warnings=[])


def test_utf8_bom_is_accepted() -> None:
    text = '\ufeff{"servers": {"s": {"image": "ghcr.io/x/s"}}}'
    assert len(parse_catalog(text).entries) == 1
    assert len(parse_catalog(text.encode("utf-8")).entries) == 1


# --- errors ------------------------------------------------------------------------------------


def _legacy(name: str = "foo", remote: bool = False, **fields: Any) -> dict[str, Any]:
    return {"remote_servers" if remote else "servers": {name: fields}}


INVALID_CATALOGS: list[tuple[Any, str]] = [
    ("{not json", "invalid JSON at line 1 column 2"),
    (b"\xff\xfe\xfa", "invalid JSON"),
    ("[]", "catalog must be a JSON object, got a list"),
    ("42", "catalog must be a JSON object, got a number"),
    ({"version": "1"}, "unrecognised catalog"),
    ({"servers": {}, "data": {"servers": []}}, "ambiguous catalog"),
    ({"servers": []}, "'servers' must be an object mapping server names to servers, got a list"),
    ({"remote_servers": "x"}, "'remote_servers' must be an object"),
    ({"servers": {"foo": "ghcr.io/x/y"}}, "server 'foo': must be an object, got a string"),
    (_legacy(description="d"), "server 'foo': container entry has no image"),
    (_legacy(image="  "), "server 'foo': container entry has no image"),
    (_legacy(remote=True, description="d"), "server 'foo': remote entry has no url"),
    (_legacy(image=7), "server 'foo': 'image' must be a string, got a number"),
    (_legacy(image="ghcr.io/Org/app"), "server 'foo': invalid image: image reference 'ghcr.io/Org/app'"),
    (_legacy(remote=True, url="mcp.example.com"), "server 'foo': invalid url: URL 'mcp.example.com'"),
    (_legacy(image="ghcr.io/x/y", description=["d"]), "server 'foo': 'description' must be a string"),
    (_legacy(image="ghcr.io/x/y", transport=1), "server 'foo': 'transport' must be a string"),
    (_legacy(image="ghcr.io/x/y", tags="db"), "server 'foo': 'tags' must be a list of strings"),
    (_legacy(image="ghcr.io/x/y", tags=["db", 3]), "server 'foo': tags[1] must be a string, got 3"),
    (_legacy(image="ghcr.io/x/y", tools=["a", ""]), "server 'foo': tools[1] must be a non-empty string"),
    (_legacy(image="ghcr.io/x/y", tools=["a", "a"]), "server 'foo': duplicate tool name 'a'"),
    (_legacy(image="ghcr.io/x/y", tool_definitions={}), "server 'foo': 'tool_definitions' must be a list"),
    (
        _legacy(image="ghcr.io/x/y", tool_definitions=[{"description": "no name"}]),
        "server 'foo': tool_definitions[0]: name: Field required",
    ),
    (
        _legacy(image="ghcr.io/x/y", tool_definitions=[{"name": "a", "inputSchema": "x"}]),
        "server 'foo': tool_definitions[0]: inputSchema: Input should be a valid dictionary",
    ),
    (
        {"servers": {"foo": {"image": "ghcr.io/x/y"}}, "remote_servers": {"foo": {"url": "https://x.io"}}},
        "server 'foo': duplicate server name in catalog",
    ),
    (
        '{"servers": {"foo": {"image": "ghcr.io/x/a"}, "foo": {"image": "ghcr.io/x/b"}}}',
        "invalid JSON: key 'foo' appears twice in one object",
    ),
    ({"data": []}, "'data' must be an object with a 'servers' list, got a list"),
    ({"data": {"servers": {}}}, "'data.servers' must be a list of servers, got an object"),
    ({"data": {}}, "'data.servers' must be a list of servers, got null"),
    (_upstream("x"), "data.servers[0]: must be an object, got a string"),
    (_upstream({"description": "d"}), "data.servers[0]: server has no name"),
    (
        _upstream({"name": "s", "packages": [{"registryType": "oci"}]}),
        "server 's': packages[0]: container entry has no image",
    ),
    (
        _upstream({"name": "s", "packages": {"registryType": "oci"}}),
        "server 's': 'packages' must be a list, got an object",
    ),
    (
        _upstream({"name": "s", "remotes": [{"type": "sse"}]}),
        "server 's': remotes[0]: remote entry has no url",
    ),
    (
        _upstream({"name": "s", "remotes": [{"type": "sse", "url": "ftp://x"}]}),
        "server 's': remotes[0]: invalid url",
    ),
    (
        _upstream(
            {"name": "s", "packages": [{"registryType": "oci", "identifier": "x", "transport": "stdio"}]}
        ),
        "server 's': packages[0]: 'transport' must be an object",
    ),
    (
        _upstream(
            {"name": "s", "packages": [{"registryType": "oci", "identifier": "x"}]},
            {"name": "s-remote", "remotes": [{"url": "https://a.io"}]},
            {"name": "s", "remotes": [{"url": "https://b.io"}]},
        ),
        "server 's': duplicate server name in catalog",
    ),
    (
        _upstream(
            {
                "name": "s",
                "packages": [{"registryType": "oci", "identifier": "x"}],
                "remotes": [{"url": "https://a.io"}],
            },
            {"name": "s-remote", "remotes": [{"url": "https://b.io"}]},
        ),
        "server 's-remote': duplicate server name in catalog",
    ),
]


@pytest.mark.parametrize(("data", "message"), INVALID_CATALOGS)
def test_invalid_catalogs_fail_whole_with_clear_message(data: Any, message: str) -> None:
    with pytest.raises(CatalogParseError) as caught:
        parse_catalog(data)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text
    assert isinstance(caught.value, ValueError)


def test_one_bad_entry_fails_the_whole_catalog() -> None:
    catalog = {"servers": {f"s{i}": {"image": f"ghcr.io/x/s{i}"} for i in range(10)}}
    catalog["servers"]["s5"] = {"description": "lost its image"}
    with pytest.raises(CatalogParseError, match="server 's5': container entry has no image"):
        parse_catalog(catalog)


def test_load_catalog_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"servers": {"foo": {}}}')
    with pytest.raises(CatalogParseError, match=r"broken\.json: server 'foo': container entry has no image"):
        load_catalog_file(path)
    with pytest.raises(OSError):
        load_catalog_file(tmp_path / "missing.json")


# --- models ------------------------------------------------------------------------------------


def test_catalog_entry_validation() -> None:
    with pytest.raises(ValidationError, match="remote entry has no url"):
        CatalogEntry(name="r", remote=True)
    with pytest.raises(ValidationError, match="container entry has no image"):
        CatalogEntry(name="c", remote=False, url="https://x.io")
    with pytest.raises(ValidationError, match="remote entry must not have an image"):
        CatalogEntry(name="r", remote=True, url="https://x.io", package="ghcr.io/x/y")
    with pytest.raises(ValidationError, match="container entry must not have a url"):
        CatalogEntry(name="c", remote=False, package="ghcr.io/x/y", url="https://x.io")
    entry = CatalogEntry(name="r", remote=True, url="HTTPS://X.io:443/mcp/")
    assert entry.identifier == "https://x.io/mcp"
    with pytest.raises(ValidationError):
        entry.name = "renamed"


def test_tool_definition_defaults_and_to_mcp_copy() -> None:
    tool = ToolDefinition(name="t")
    assert tool.to_mcp() == {"name": "t", "description": "", "inputSchema": DEFAULT_SCHEMA}
    assert ToolDefinition(name="t", inputSchema={"type": "object"}).input_schema == {"type": "object"}
    by_field_name = ToolDefinition.model_validate({"name": "t", "input_schema": {"type": "object"}})
    assert by_field_name.input_schema == {"type": "object"}
    assert ToolDefinition.model_validate({"name": "t", "inputSchema": None}).input_schema == DEFAULT_SCHEMA
    mcp = tool.to_mcp()
    mcp["inputSchema"]["properties"]["x"] = {}
    assert tool.input_schema == DEFAULT_SCHEMA
    with pytest.raises(ValidationError):
        ToolDefinition(name="")


# --- content hash ------------------------------------------------------------------------------

BASE_SERVER: dict[str, Any] = {
    "image": "ghcr.io/example/db:1.0",
    "transport": "stdio",
    "description": "Queries databases",
    "tags": ["db", "sql"],
    "tool_definitions": [
        {
            "name": "query",
            "description": "Run SQL",
            "inputSchema": {"type": "object", "properties": {"sql": {"type": "string"}}, "required": ["sql"]},
        },
        {"name": "list_tables", "description": "List tables"},
    ],
}


def _entry(server: dict[str, Any], name: str = "db") -> CatalogEntry:
    [entry] = parse_catalog({"servers": {name: server}}).entries
    return entry


def _reversed_keys(value: Any) -> Any:
    """The same JSON value with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {key: _reversed_keys(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_keys(item) for item in value]
    return value


def test_hash_is_pinned() -> None:
    # A change here re-embeds every registry entry of every catalog: make it only on purpose.
    assert _entry(BASE_SERVER).content_hash() == (
        "53d6e2833f12c624e6d536f85f469bc3470ba0ea738fde85cb3793d69aa03ea7"
    )


def test_hash_ignores_key_order_tool_order_and_tag_order() -> None:
    base = _entry(BASE_SERVER).content_hash()
    assert _entry(_reversed_keys(BASE_SERVER)).content_hash() == base
    reordered = copy.deepcopy(BASE_SERVER)
    reordered["tool_definitions"].reverse()
    reordered["tags"].reverse()
    assert _entry(reordered).content_hash() == base
    # Fields the index does not store do not change the hash either.
    assert _entry({**BASE_SERVER, "tier": "Official", "metadata": {"stars": 3}}).content_hash() == base


def _changed(path: str, value: Any) -> dict[str, Any]:
    server = copy.deepcopy(BASE_SERVER)
    target: Any = server
    *parents, last = path.split(".")
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[last] = value
    return server


@pytest.mark.parametrize(
    "server",
    [
        _changed("description", "Queries databases fast"),
        _changed("image", "ghcr.io/example/db:1.1"),
        _changed("transport", "sse"),
        _changed("tags", ["db"]),
        _changed("tool_definitions.0.name", "run_query"),
        _changed("tool_definitions.0.description", "Run a SQL query"),
        _changed("tool_definitions.0.inputSchema", {"type": "object"}),
        _changed("tool_definitions", BASE_SERVER["tool_definitions"][:1]),
    ],
    ids=[
        "description",
        "image",
        "transport",
        "tags",
        "tool-name",
        "tool-description",
        "tool-schema",
        "tools",
    ],
)
def test_hash_changes_with_indexed_content(server: dict[str, Any]) -> None:
    assert _entry(server).content_hash() != _entry(BASE_SERVER).content_hash()


def test_hash_changes_with_name_and_kind() -> None:
    base = _entry(BASE_SERVER)
    assert _entry(BASE_SERVER, name="db2").content_hash() != base.content_hash()
    remote = CatalogEntry(name="db", remote=True, url="https://ghcr.io/example/db")
    container = CatalogEntry(name="db", remote=False, package="ghcr.io/example/db")
    assert remote.content_hash() != container.content_hash()
