"""What a tool's full-text row holds: name words, server name, description, the whole schema (bounded)."""

from __future__ import annotations

from typing import Any

from mcp_optimizer.embeddings.texts import MAX_SCHEMA_WORDS_CHARS, split_identifier, tool_fts_fields


def test_identifiers_split_every_way() -> None:
    assert split_identifier("get_stock_price_global") == "get stock price global"
    assert split_identifier("getJiraIssue") == "get Jira Issue"
    assert split_identifier("HTMLToPDF-converter.v2") == "HTML To PDF converter v2"
    assert split_identifier("project_api.ProjectApi.update") == "project api Project Api update"


def test_row_holds_name_server_description_and_schema_words() -> None:
    tool = {
        "name": "getForecast",
        "description": "Weather for a place",
        "inputSchema": {"type": "object", "properties": {
            "unit": {"type": "string", "description": "Temperature unit", "enum": ["celsius", "fahrenheit", 3]},
            "location": {"type": "object", "properties": {"postalCode": {"type": "string"}}},
            "days": {"type": "array", "items": {"type": "object", "properties": {"dayName": {}}}},
        }},
    }
    name, description, args, server = tool_fts_fields(tool, "open-meteo")
    assert name == "getForecast get Forecast"
    assert description == "Weather for a place"
    assert server == "open meteo"
    for word in ("unit", "Temperature unit", "celsius fahrenheit 3", "location", "postal Code", "days", "day Name"):
        assert word in args, word


def test_hostile_schemas_are_bounded_and_never_break_the_row() -> None:
    huge = {"name": "t", "inputSchema": {"type": "object", "properties": {
        f"p{i}": {"description": "x" * 500, "enum": [f"v{j}" for j in range(1000)]} for i in range(200)}}}
    _, _, args, _ = tool_fts_fields(huge)
    assert len(args) <= MAX_SCHEMA_WORDS_CHARS
    assert "v20" not in args.split()  # at most 20 enum values per argument
    deep: dict[str, Any] = {"type": "object", "properties": {}}
    node = deep
    for i in range(50):  # nesting deeper than anyone writes is cut, not recursed into
        node["properties"] = {f"level{i}": {"type": "object", "properties": {}}}
        node = node["properties"][f"level{i}"]
    _, _, args, _ = tool_fts_fields({"name": "t", "inputSchema": deep})
    assert args == "level0 level1"
    for schema in (None, "nonsense", {"properties": ["a"]}, {"properties": {"a": "b"}}):
        assert tool_fts_fields({"name": "t", "inputSchema": schema})[2] in ("", "a")
