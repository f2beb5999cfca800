"""The endpoint's tools: find_tool, search_registry, list_tools, call_tool and the pinned tools.

Every call reads the index afresh (no per-session snapshot), so a server that stops is gone
from the very next answer. Every call also receives the caller's :class:`AccessScope` and
nothing outside it is ever read into an answer: searches are filtered in SQL by group and
namespace and the hits are checked again here, and a server outside the scope is refused
with exactly the words used for a server that does not exist.

Refusals and bad arguments are ``isError`` tool results (the model reads them and can
correct itself); only a tool name this endpoint does not offer is a JSON-RPC error.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

import mcp_types as types
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from pydantic import BaseModel, ValidationError

from mcp_optimizer.config import Settings
from mcp_optimizer.db.health import classify
from mcp_optimizer.db.models import WorkloadStatus
from mcp_optimizer.db.search import ToolHit, ToolSearch, WorkloadInfo
from mcp_optimizer.mcp.arguments import (
    CallToolArgs,
    FindToolArgs,
    ListToolsArgs,
    SearchRegistryArgs,
    coerce_string_arguments,
    describe_validation_error,
    input_schema,
)
from mcp_optimizer.mcp.client import ClientPolicy, McpClientError
from mcp_optimizer.mcp.client import call_tool as client_call_tool
from mcp_optimizer.mcp.pinned import PinnedTool, parse_pins
from mcp_optimizer.mcp.scope import AccessScope
from mcp_optimizer.mcp.tokens import running_tools_tokens, token_report, tool_tokens
from mcp_optimizer.metrics import METRICS
from mcp_optimizer.redaction import redact_url

logger = logging.getLogger(__name__)

class CallBackend(Protocol):
    """Makes one forwarded ``tools/call``; returns the CallToolResult as a wire dict.

    ``namespace`` is the workload's, for the destination rule that keeps it within its namespace.
    Raises :class:`McpClientError` when the server cannot be reached or answers wrongly.
    """

    def __call__(
        self, endpoint: str, transport: str, tool_name: str, arguments: dict[str, Any], timeout: float,
        *, namespace: str | None,
    ) -> Awaitable[dict[str, Any]]: ...


class CallFailureListener(Protocol):
    """Told when a forwarded call could not get an answer from its server.

    The endpoint and the operator share a process in ``mcp-optimizer run``, but ``serve`` runs
    without an operator: this is all the endpoint knows of whoever keeps the index. The operator
    implements it (:meth:`~mcp_optimizer.operator.workloads.WorkloadReconciler.call_failed`) and
    decides what a failure means for the server's status. Must return at once and not raise.
    """

    def call_failed(self, workload_name: str, error: McpClientError) -> None: ...

FIND_TOOL = "find_tool"
SEARCH_REGISTRY = "search_registry"
LIST_TOOLS = "list_tools"
CALL_TOOL = "call_tool"

DEFAULT_REGISTRY_LIMIT = 5
#: How many of a server's tool names an error message lists.
_NAMES_IN_ERRORS = 50

FIND_TOOL_DESCRIPTION = (
    "Find the tools that can do a task, among all MCP servers running here. Use this FIRST whenever "
    "you need a capability you do not have a tool for (e.g. 'create a GitHub issue', 'query a Postgres "
    "database', 'fetch a web page'): describe the task in plain words and optionally add keywords. "
    "Returns the best matching tools, best first, each with its server, tool name, description and "
    "input_schema, plus an estimate of the tokens saved compared with loading every tool. Then run one "
    "with call_tool(server_name=<server>, tool_name=<tool>, parameters=<object matching input_schema>). "
    "If nothing fits, rephrase the task; use search_registry to find a server that could be installed."
)
CALL_TOOL_DESCRIPTION = (
    "Run a tool of a running MCP server and return its result. Use it after find_tool or list_tools "
    "gave you the tool: server_name is the 'server' value and tool_name the 'tool' value they returned, "
    "exactly, and parameters is an object matching that tool's input_schema. Refuses, with the reason, "
    "servers that do not exist or are not running and tools the server does not have."
)
LIST_TOOLS_DESCRIPTION = (
    "List the tools of running MCP servers. With server_name: every tool of that server with its "
    "input_schema (use it when you know the server but not the tool). Without: the name and description "
    "of every running tool, grouped by server; this can be long, so prefer find_tool to search by task."
)
SEARCH_REGISTRY_DESCRIPTION = (
    "Search the registry catalog for MCP servers that are NOT running here yet but could be installed, "
    "with their tools that match. Use it when find_tool finds nothing suitable, or to answer 'which MCP "
    "server should I install for ...?'. Servers it returns cannot be called until someone deploys them."
)
INSTRUCTIONS = (
    "This server stands in front of every MCP server in this environment. When you need a tool you do "
    "not have, call find_tool with a description of the task, then call_tool with the server and tool it "
    "returned. Use search_registry to find servers that are not deployed yet."
)


class _Refusal(Exception):
    """A call the endpoint declines, answered as an ``isError`` result with this message."""


def _text_result(payload: Mapping[str, Any]) -> types.CallToolResult:
    # Structured content for clients that use it, the same JSON as text for those that do not
    # (the MCP spec's advice for backwards compatibility).
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str)
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=dict(payload))


def _error_result(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


def _unknown_server(name: str) -> _Refusal:
    # The same words whether the server does not exist or is outside the caller's scope.
    return _Refusal(f"Unknown server '{name}'. Use find_tool or list_tools to see the servers you can use.")


class OptimizerTools:
    """The tools one endpoint serves, over one index. Stateless between calls; safe to share."""

    def __init__(
        self,
        search: ToolSearch,
        settings: Settings,
        *,
        call_backend: CallBackend | None = None,
        call_failures: CallFailureListener | None = None,
        policy: ClientPolicy | None = None,
    ) -> None:
        self.search = search
        self.settings = settings
        #: Bounds and destination rules of forwarded calls: the same as the operator's tools/list.
        self.policy = policy or ClientPolicy.from_settings(settings)
        self._call_backend: CallBackend = call_backend or self._call_server
        self._call_failures = call_failures
        meta: list[tuple[str, str, type[BaseModel], bool]] = [
            (FIND_TOOL, settings.find_tool_description or FIND_TOOL_DESCRIPTION, FindToolArgs, True),
            (SEARCH_REGISTRY, SEARCH_REGISTRY_DESCRIPTION, SearchRegistryArgs, True),
            (LIST_TOOLS, LIST_TOOLS_DESCRIPTION, ListToolsArgs, True),
            (CALL_TOOL, settings.call_tool_description or CALL_TOOL_DESCRIPTION, CallToolArgs, False),
        ]
        self._meta: dict[str, tuple[type[BaseModel], types.Tool]] = {
            name: (model, self._meta_tool(name, description, model, read_only=read_only))
            for name, description, model, read_only in meta
        }
        self.pins: dict[str, PinnedTool] = parse_pins(settings.pinned_tools, reserved=self._meta)

    @staticmethod
    def _meta_tool(name: str, description: str, model: type[BaseModel], *, read_only: bool) -> types.Tool:
        return types.Tool(
            name=name,
            description=description,
            input_schema=input_schema(model),
            annotations=types.ToolAnnotations(read_only_hint=read_only, open_world_hint=not read_only),
        )

    def meta_input_schema(self, name: str) -> dict[str, Any] | None:
        """The input schema of a meta-tool (pinned tools: ``None``, their schema lives in the index)."""
        entry = self._meta.get(name)
        return entry[1].input_schema if entry is not None else None

    # ------------------------------------------------------------------------ MCP handlers

    async def advertised_tools(self, scope: AccessScope) -> list[types.Tool]:
        """The meta-tools plus the pinned tools the caller can use right now."""
        tools = [tool for _, tool in self._meta.values()]
        if self.pins:
            tools += await self._visible_pins(scope)
        return tools

    async def run_tool(
        self, name: str, arguments: Mapping[str, Any] | None, scope: AccessScope
    ) -> types.CallToolResult:
        """Run one tool; refusals and failures are ``isError`` results, an unknown name an :class:`MCPError`."""
        try:
            return await self._run(name, arguments, scope)
        except MCPError:
            raise
        except _Refusal as refusal:
            return _error_result(str(refusal))
        except Exception as exc:
            fault = classify(exc)
            if fault is not None:
                # The operator reports and repairs the index (/readyz fails meanwhile): one line, no SQL.
                logger.warning("MCP tool %s failed: index %s", name, fault)
                return _error_result(f"{name} is unavailable: the search index cannot be read right now; "
                                     "try again shortly.")
            # Details go to the log only: they may name things outside the caller's scope.
            logger.exception("MCP tool %s failed", name)
            return _error_result(f"{name} failed because of an internal error; the server log has the details.")

    async def _run(self, name: str, arguments: Mapping[str, Any] | None, scope: AccessScope) -> types.CallToolResult:
        entry = self._meta.get(name)
        pin = self.pins.get(name)
        if pin is not None and not await self._in_scope(pin.server, scope):
            pin = None  # indistinguishable from a name that was never pinned
        if entry is None and pin is None:
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown tool: {name}")
        if pin is not None:
            return await self._forward(pin.server, pin.tool, dict(arguments or {}), scope)
        assert entry is not None
        model, tool = entry
        if isinstance(arguments, Mapping):
            arguments = coerce_string_arguments(arguments, tool.input_schema)
        try:
            args = model.model_validate(arguments if arguments is not None else {})
        except ValidationError as exc:
            return _error_result(describe_validation_error(name, model, exc))
        return await self._run_meta_tool(args, scope)

    async def _run_meta_tool(self, args: BaseModel, scope: AccessScope) -> types.CallToolResult:
        if isinstance(args, FindToolArgs):
            return _text_result(await self.find_tool(args, scope))
        if isinstance(args, SearchRegistryArgs):
            return _text_result(await self.search_registry(args, scope))
        if isinstance(args, ListToolsArgs):
            return _text_result(await self.list_tools(args, scope))
        assert isinstance(args, CallToolArgs)
        return await self._forward(args.server_name, args.tool_name, args.parameters or {}, scope)

    # --------------------------------------------------------------------------- the tools

    async def find_tool(self, args: FindToolArgs, scope: AccessScope) -> dict[str, Any]:
        groups = scope.groups_for(args.group)
        limit = args.limit or self.settings.find_tool_default_limit

        async def search() -> list[ToolHit]:
            if groups == [] or scope.is_empty:
                return []
            return await self.search.find_tools(
                args.tool_description,
                keywords=args.tool_keywords,
                limit=limit,
                groups=groups,
                namespaces=scope.namespace_filter(),
            )

        # The total for the token estimate does not depend on the search: run both at once.
        with METRICS.time_find_tool():
            hits, all_tokens = await asyncio.gather(search(), running_tools_tokens(self.search.engine, scope))
        hits = [hit for hit in hits if scope.allows(hit.group, hit.namespace)]
        result: dict[str, Any] = {
            "tools": [
                {
                    "server": hit.server,
                    "tool": hit.tool,
                    "description": hit.description,
                    "input_schema": hit.input_schema,
                }
                for hit in hits
            ],
            "token_estimate": token_report(
                (tool_tokens(h.tool, h.description, h.input_schema) for h in hits), [all_tokens]
            ),
        }
        if not hits:
            result["hint"] = (
                "No running tool matches. Rephrase the task or add keywords; search_registry finds "
                "servers that could be installed."
            )
            if args.group is not None:
                # Only groups this caller can use are named: a group of another scope reads
                # exactly like one that does not exist.
                usable = await self.search.running_groups(
                    groups=scope.groups_for(None), namespaces=scope.namespace_filter()
                )
                if args.group not in usable:
                    shown = ", ".join(f"'{g}'" for g in usable[:_NAMES_IN_ERRORS]) or "none"
                    result["hint"] = (
                        f"No running server you can use is in group '{args.group}'. Groups with running "
                        f"servers you can use: {shown}. Omit group to search every server you can use."
                    )
        return result

    async def search_registry(self, args: SearchRegistryArgs, scope: AccessScope) -> dict[str, Any]:
        limit = args.limit or DEFAULT_REGISTRY_LIMIT
        # "Running" means running *in scope*: leaving out entries that some other team runs
        # would tell this caller that they run.
        hits = await self.search.find_registry_servers(
            args.query, limit=limit, groups=scope.groups_for(None), namespaces=scope.namespace_filter()
        )
        servers = [
            {
                "name": hit.name,
                "catalog": hit.catalog,
                "description": hit.description,
                "remote": hit.remote,
                **({"url": redact_url(hit.url or "")} if hit.remote else {"package": hit.package}),
                "transport": hit.transport,
                "matching_tools": hit.tools,
            }
            for hit in hits
        ]
        result: dict[str, Any] = {"servers": servers}
        if not servers:
            result["hint"] = "No registry server matches; try other words."
        return result

    async def list_tools(self, args: ListToolsArgs, scope: AccessScope) -> dict[str, Any]:
        if args.server_name is not None:
            info = await self._running_workload(args.server_name, scope)
            tools = await self.search.running_tools(server=info.workload_name)
            return {
                "server": info.workload_name,
                "tools": [
                    {"name": t.tool, "description": t.description, "input_schema": t.input_schema}
                    for t in tools
                    if scope.allows(t.group, t.namespace)
                ],
            }
        servers: dict[str, list[dict[str, str]]] = {}
        for hit in await self._running_tools(scope):
            servers.setdefault(hit.server, []).append({"name": hit.tool, "description": hit.description})
        return {
            "servers": [{"server": server, "tools": tools} for server, tools in servers.items()],
            "hint": "call list_tools(server_name=...) for a server's input schemas, or find_tool to search.",
        }

    async def _forward(
        self, server: str, tool: str, parameters: dict[str, Any], scope: AccessScope
    ) -> types.CallToolResult:
        info = await self._running_workload(server, scope)
        if tool not in info.tool_names:
            names = ", ".join(info.tool_names[:_NAMES_IN_ERRORS])
            extra = len(info.tool_names) - _NAMES_IN_ERRORS
            more = f" and {extra} more" if extra > 0 else ""
            raise _Refusal(f"Server '{server}' has no tool '{tool}'. Its tools: {names or 'none'}{more}.")
        if not info.endpoint:
            raise _Refusal(f"Server '{server}' has no reachable MCP endpoint recorded; it cannot be called.")
        if any(isinstance(value, str) for value in parameters.values()):
            # A client that sends every argument as a string (see arguments.py) is read against
            # the target tool's own schema; only strings that schema refuses are converted.
            schema = await self.search.tool_input_schema(server, tool)
            parameters = coerce_string_arguments(parameters, schema)
        # An audit trail of who ran what: scope names are token names, never the tokens.
        logger.info("scope %s calls tool %r of server %r", scope.name, tool, server)
        try:
            raw = await self._call_backend(
                info.endpoint, info.transport, tool, parameters, self.settings.call_timeout, namespace=info.namespace
            )
        except McpClientError as exc:
            self._report_failure(info.workload_name, exc)
            raise _Refusal(f"Calling '{tool}' on server '{server}' failed ({exc.reason}): {exc}") from None
        try:
            return types.CallToolResult.model_validate(raw)
        except ValidationError:
            raise _Refusal(f"Server '{server}' answered '{tool}' with a result that is not valid MCP.") from None

    async def _call_server(
        self, endpoint: str, transport: str, tool_name: str, arguments: dict[str, Any], timeout: float,
        *, namespace: str | None,
    ) -> dict[str, Any]:
        return await client_call_tool(
            endpoint, transport, tool_name, arguments, timeout, policy=self.policy, namespace=namespace
        )

    def _report_failure(self, workload_name: str, error: McpClientError) -> None:
        if self._call_failures is None:
            return
        try:
            self._call_failures.call_failed(workload_name, error)
        except Exception:  # the caller's answer must not depend on the listener
            logger.exception("Reporting the failed call to %s failed", workload_name)

    # ------------------------------------------------------------------------------ helpers

    async def _in_scope(self, server: str, scope: AccessScope) -> bool:
        info = await self.search.get_workload(server)
        return info is not None and scope.allows(info.group, info.namespace)

    async def _running_workload(self, server: str, scope: AccessScope) -> WorkloadInfo:
        info = await self.search.get_workload(server)
        if info is None or not scope.allows(info.group, info.namespace):
            raise _unknown_server(server)
        if info.status != WorkloadStatus.RUNNING:
            reason = f": {info.status_reason}" if info.status_reason else ""
            raise _Refusal(
                f"Server '{server}' is not running (status {info.status}{reason}). "
                "Use find_tool to find a running alternative."
            )
        return info

    async def _running_tools(self, scope: AccessScope) -> list[ToolHit]:
        if scope.is_empty:
            return []
        tools = await self.search.running_tools(groups=scope.groups_for(None), namespaces=scope.namespace_filter())
        return [tool for tool in tools if scope.allows(tool.group, tool.namespace)]

    async def _visible_pins(self, scope: AccessScope) -> list[types.Tool]:
        visible: list[types.Tool] = []
        schemas: dict[str, dict[str, ToolHit]] = {}
        for pin in self.pins.values():
            if pin.server not in schemas:
                info = await self.search.get_workload(pin.server)
                running = (
                    info is not None
                    and scope.allows(info.group, info.namespace)
                    and info.status == WorkloadStatus.RUNNING
                )
                hits = await self.search.running_tools(server=pin.server) if running else []
                schemas[pin.server] = {hit.tool: hit for hit in hits if scope.allows(hit.group, hit.namespace)}
            hit = schemas[pin.server].get(pin.tool)
            if hit is None:
                continue  # not running, not in scope or no such tool: advertise nothing
            visible.append(
                types.Tool(
                    name=pin.exposed_name,
                    description=f"{hit.description}\n\n(Tool '{pin.tool}' of server '{pin.server}'.)".strip(),
                    input_schema=hit.input_schema or {"type": "object"},
                )
            )
        return visible
