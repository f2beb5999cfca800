"""Bounds on what MCP servers send, destination rules and URL credentials, against hostile
servers on loopback (issue 10, points 1 and 3).

Every hostile server here is real HTTP on 127.0.0.1 (:class:`HostileMcpServer` generates its
answers while sending them, so a 50 MB description costs the test process nothing); the client is
the operator's own. Memory is measured with tracemalloc around the call: it covers the client
and the server thread alike, so a peak far below the answer's size proves nothing was buffered.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import ipaddress
import json
import logging
import time
import tracemalloc
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from mcp_optimizer.config import Settings
from mcp_optimizer.logs import JsonFormatter, TextFormatter
from mcp_optimizer.mcp import client
from mcp_optimizer.mcp.client import ClientPolicy, McpClientError
from mcp_optimizer.mcp.destinations import DestinationPolicy, DestinationRefused, parse_allow_list
from mcp_optimizer.mcp.limits import CLIPPED_KEY, SCHEMA_MARKER_KEY, ClientLimits, clip_note, clipped_fields
from mcp_optimizer.redaction import redact_url, redact_urls, split_userinfo
from mcp_optimizer.testing.mcp_servers import (
    LOOPBACK,
    AsgiTestServer,
    HangingServer,
    HostileMcpServer,
    Hostility,
    McpTestServer,
    build_mcp_app,
    make_tool,
    refused_url,
)

MIB = 1024 * 1024
#: Loopback admitted, everything else at its default.
ALLOW_LOOPBACK = DestinationPolicy.allowing(LOOPBACK)
LOOPBACK_POLICY = ClientPolicy(destinations=ALLOW_LOOPBACK)


async def list_tools(url: str, *, policy: ClientPolicy = LOOPBACK_POLICY, **kwargs: Any) -> list[dict[str, Any]]:
    # A generous deadline: these tests show a bound, not the deadline, ends a listing, and a
    # loaded machine reads 8 MiB of pages slowly (endless-pages took 11 s at load average 16).
    return await client.list_tools(url, timeout=kwargs.pop("timeout", 60.0), policy=policy, **kwargs)


async def failure(call: Awaitable[Any], *, reason: str, within: float = 60.0) -> McpClientError:
    """The McpClientError ``call`` fails with, checked for its reason, one line and speed."""
    started = time.monotonic()
    with pytest.raises(McpClientError) as info:
        await call
    elapsed = time.monotonic() - started
    assert info.value.reason == reason, str(info.value)
    assert "\n" not in str(info.value)
    assert elapsed < within, f"took {elapsed:.1f}s: {info.value}"
    return info.value


async def peak_memory(call: Awaitable[Any]) -> tuple[Any, int]:
    """(what ``call`` returned or raised, peak bytes allocated in this process meanwhile)."""
    tracemalloc.start()
    try:
        try:
            outcome: Any = await call
        except Exception as exc:
            outcome = exc
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def hostile(request: pytest.FixtureRequest) -> Iterator[HostileMcpServer]:
    with HostileMcpServer(request.param) as server:
        yield server


# ------------------------------------------------------------------------ bytes on the wire


@pytest.mark.parametrize(
    ("hostility", "bound"),
    [
        (Hostility.huge_description(50 * MIB), "MCP_OPTIMIZER_MAX_PAGE_BYTES"),
        (Hostility.endless_page(), "MCP_OPTIMIZER_MAX_PAGE_BYTES"),
        (Hostility.huge_schema(20 * MIB), "MCP_OPTIMIZER_MAX_PAGE_BYTES"),
        (Hostility.many_tools(100_000), "MCP_OPTIMIZER_MAX_PAGE_BYTES"),
        (Hostility.many_tools(100_000, page_size=400), "MCP_OPTIMIZER_MAX_TOOLS"),
        (Hostility.endless_pages(), "MCP_OPTIMIZER_MAX_LIST_BYTES"),
    ],
    ids=["50MB-description", "endless-page", "20MB-schema", "100k-tools", "100k-tools-paged", "endless-pages"],
)
async def test_an_answer_over_a_bound_fails_the_listing_while_it_is_read(hostility: Hostility, bound: str) -> None:
    with HostileMcpServer(hostility) as server:
        error, peak = await peak_memory(failure(list_tools(server.url), reason="limit"))
        sent = server.bytes_sent
    assert isinstance(error, McpClientError), error
    assert bound in str(error) and server.url in str(error)
    # Never buffered whole: the client stopped reading at the bound (plus what was in flight).
    assert peak < 24 * MIB, f"peak {peak / MIB:.1f} MiB"
    assert sent < 16 * MIB, f"the server got to send {sent / MIB:.1f} MiB"


async def test_the_bound_messages_name_the_numbers() -> None:
    with HostileMcpServer(Hostility.huge_description(5 * MIB)) as server:
        error = await failure(list_tools(server.url), reason="limit")
    assert "more than 1,048,576 bytes in one response, the bound of one tools/list page" in str(error)
    with HostileMcpServer(Hostility.many_tools(5000, page_size=400)) as server:
        error = await failure(list_tools(server.url), reason="limit")
    assert "more than 1,000 tools" in str(error)


async def test_bounds_are_settings() -> None:
    """A smaller page bound fails an answer the default admits; a larger tool bound admits more."""
    tools = [make_tool(f"tool_{i:03d}", "A perfectly normal tool " * 20) for i in range(200)]
    with McpTestServer(tools) as server:
        assert len(await list_tools(server.url)) == 200
        small = ClientPolicy(limits=ClientLimits(page_bytes=16 * 1024), destinations=ALLOW_LOOPBACK)
        await failure(list_tools(server.url, policy=small), reason="limit")
        few = ClientPolicy(limits=ClientLimits(tools=100), destinations=ALLOW_LOOPBACK)
        await failure(list_tools(server.url, policy=few), reason="limit")
    with HostileMcpServer(Hostility.many_tools(5000, page_size=400)) as server:
        more = ClientPolicy(limits=ClientLimits(tools=5000), destinations=ALLOW_LOOPBACK)
        assert len(await list_tools(server.url, policy=more)) == 5000


@pytest.mark.parametrize("hostility", [Hostility.compressed(), Hostility.lying_length()], ids=lambda h: h.name)
async def test_compressed_or_oversized_announcements_are_refused_before_reading(hostility: Hostility) -> None:
    with HostileMcpServer(hostility) as server:
        error = await failure(list_tools(server.url), reason="limit", within=5.0)
    assert ("compressed" in str(error)) or ("announced 52,428,800 bytes" in str(error))


async def test_a_trickling_server_is_bounded_by_the_deadline() -> None:
    with HostileMcpServer(Hostility.trickle(0.05)) as server:
        await failure(list_tools(server.url, timeout=1.5), reason="timeout", within=5.0)


async def test_a_huge_call_result_is_refused_and_a_large_one_passes() -> None:
    with HostileMcpServer(Hostility.huge_result(50 * MIB)) as server:
        error, peak = await peak_memory(
            failure(client.call_tool(server.url, "streamable-http", "dump", {}, 10.0, policy=LOOPBACK_POLICY),
                    reason="limit")
        )
    assert isinstance(error, McpClientError), error
    assert "MCP_OPTIMIZER_MAX_CALL_RESULT_BYTES" in str(error) and "1,048,576" in str(error)
    assert peak < 24 * MIB
    with HostileMcpServer(Hostility.huge_result(600 * 1024)) as server:
        result = await client.call_tool(server.url, "streamable-http", "dump", {}, 10.0, policy=LOOPBACK_POLICY)
    assert len(result["content"][0]["text"]) == 600 * 1024


async def test_large_listings_take_turns() -> None:
    """A slow large answer holds one of the turns; another large listing waits for it, a small
    one never does."""
    slow = dataclasses.replace(Hostility.huge_description(2 * MIB), delay=0.5)
    large = [make_tool(f"tool_{i:03d}", "x" * 400) for i in range(700)]  # about 320 KB
    with HostileMcpServer(slow) as hostile, McpTestServer(large) as big, McpTestServer([make_tool("t", "T")]) as small:
        async def timed(url: str, turns: int, timeout: float = 20.0) -> float:
            policy = ClientPolicy(limits=ClientLimits(concurrent_large_lists=turns), destinations=ALLOW_LOOPBACK)
            started = time.monotonic()
            with contextlib.suppress(McpClientError):
                await list_tools(url, policy=policy, timeout=timeout)
            return time.monotonic() - started

        async def race(turns: int) -> tuple[float, float]:
            # The slow answer (64 KiB every 0.5 s) passes 256 KiB after about 2.5 s and then holds
            # a turn until its deadline, 7 s after it started.
            holder = asyncio.create_task(timed(hostile.url, turns, timeout=7.0))
            await asyncio.sleep(3.5)
            waiting, quick = await asyncio.gather(timed(big.url, turns), timed(small.url, turns))
            await holder
            return waiting, quick

        waited, quick = await race(1)
        alone, quick_too = await race(2)
    # With one turn the large listing waits for the slow answer's deadline (3.5 s away); with
    # two it does not wait. The small listing never waits.
    assert waited - alone > 2.0, (waited, alone)
    assert quick < waited - 2.0 and quick_too < waited - 2.0, (quick, quick_too, waited)


# ------------------------------------------------------------------------ clipped tools


async def test_tools_over_the_per_tool_bounds_are_stored_clipped_with_a_marker() -> None:
    schema = {
        "type": "object",
        "properties": {f"field_{i:03d}": {"type": "string", "description": "x" * 500} for i in range(300)},
        "required": ["field_000", "field_299"],
        "$defs": {"deep": {"type": "object"}},
    }
    huge = make_tool("huge", "Sends an email message. " + "padding " * 5000, schema,
                     outputSchema={"type": "object", "description": "y" * 100_000},
                     annotations={"title": "z" * 10_000})
    normal = make_tool("normal", "A normal tool", {"type": "object", "properties": {"q": {"type": "string"}}})
    with McpTestServer([huge, normal]) as server:
        tools = {t["name"]: t for t in await list_tools(server.url)}

    assert tools["normal"] == normal  # untouched, no marker
    assert clipped_fields(tools["normal"]) == []
    stored = tools["huge"]
    assert clipped_fields(stored) == ["description", "inputSchema", "outputSchema", "annotations"]
    assert stored["_meta"] == {CLIPPED_KEY: clipped_fields(stored)}
    description = stored["description"]
    assert description.startswith("Sends an email message. padding")
    assert description.endswith("[... description clipped by mcp-optimizer: 40,024 characters, limit 8,192]")
    assert len(description) < 8192 + 100
    reduced = stored["inputSchema"]
    assert len(json.dumps(reduced, separators=(",", ":"))) <= 64 * 1024
    assert "reduced to its top-level properties" in reduced[SCHEMA_MARKER_KEY]
    assert reduced["type"] == "object" and "$defs" not in reduced
    kept = list(reduced["properties"])
    assert kept == [f"field_{i:03d}" for i in range(len(kept))] and len(kept) > 100
    assert reduced["properties"]["field_000"] == {"type": "string", "description": "x" * 200}
    assert reduced["required"] == ["field_000"] + (["field_299"] if "field_299" in kept else [])
    assert "outputSchema" not in stored and "annotations" not in stored
    note = clip_note(tools.values(), ClientLimits())
    assert note is not None and note.startswith("1 of 2 tools were stored clipped")
    assert "huge (description/inputSchema/outputSchema/annotations)" in note


async def test_everything_a_server_may_send_within_the_bounds_is_kept_clipped() -> None:
    with HostileMcpServer(Hostility.bounded_but_big()) as server:
        tools = await list_tools(server.url, timeout=60.0)
    assert len(tools) == 600
    assert all(clipped_fields(t) == ["description"] and len(t["description"]) < 8192 + 100 for t in tools)


async def test_a_tool_name_that_cannot_be_clipped_fails_the_listing() -> None:
    with McpTestServer([make_tool("n" * 300, "A tool with a very long name")]) as server:
        error = await failure(list_tools(server.url), reason="limit")
    assert "a tool name has 300 characters" in str(error)


# ------------------------------------------------------------------------ destinations


async def test_the_default_policy_refuses_loopback_without_connecting() -> None:
    with HangingServer() as hanging, McpTestServer([make_tool("echo", "Echo")]) as server:
        error = await failure(client.list_tools(hanging.url, timeout=5.0), reason="destination", within=2.0)
        assert "rule 'loopback'" in str(error) and "MCP_OPTIMIZER_ALLOWED_DESTINATIONS" in str(error)
        await failure(client.call_tool(server.url, "streamable-http", "echo", {}, 5.0), reason="destination")
        assert hanging.connections_accepted == 0
        assert server.calls == []
        # Admitted explicitly, the same server answers.
        assert [t["name"] for t in await list_tools(server.url)] == ["echo"]


async def test_a_name_is_checked_for_what_it_resolves_to_when_connecting() -> None:
    """``localhost`` passes the name rules; the connect finds it resolves to 127.0.0.1."""
    with McpTestServer([make_tool("echo", "Echo")]) as server:
        url = f"http://localhost:{server.port}/mcp"
        error = await failure(client.list_tools(url, timeout=5.0), reason="destination")
    assert "localhost resolves to 127.0.0.1, which is a loopback address" in str(error)


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]:8080/mcp", "link-local"),
        ("http://[fd00:ec2::254]/mcp", "metadata"),
        ("http://0.0.0.0:8080/mcp", "loopback"),
        ("http://[::ffff:127.0.0.1]:8080/mcp", "loopback"),
        ("http://[::1]:8080/mcp", "loopback"),
        ("http://224.0.0.1/mcp", "not-unicast"),
        ("http://kubernetes.default.svc/api", "apiserver"),
        ("https://kubernetes.default.svc.cluster.local:443/mcp", "apiserver"),
        ("http://kubernetes/mcp", "apiserver"),
    ],
)
async def test_internal_destinations_are_refused(url: str, rule: str) -> None:
    error = await failure(client.list_tools(url, timeout=5.0), reason="destination", within=3.0)
    assert f"rule '{rule}'" in str(error)


async def test_another_namespaces_service_is_refused_and_the_own_namespace_is_not() -> None:
    url = "http://github-mcp.team-b.svc.cluster.local:8080/mcp"
    error = await failure(client.list_tools(url, timeout=5.0, namespace="team-a"), reason="destination")
    assert "rule 'other-namespace'" in str(error)
    assert "github-mcp.team-b.svc.cluster.local is in namespace team-b" in str(error)
    assert "(team-a)" in str(error)
    for spelling in ("http://github-mcp.team-b.svc:8080/mcp", "http://p-0.github-mcp.team-b.svc.cluster.local/mcp"):
        await failure(client.list_tools(spelling, timeout=5.0, namespace="team-a"), reason="destination")
    # The MCPServer's own namespace passes the rule (and then fails to resolve: no cluster DNS here).
    await failure(client.list_tools(url, timeout=5.0, namespace="team-b"), reason="connect")
    # An allow-list entry admits a shared namespace.
    shared = ClientPolicy(destinations=DestinationPolicy.allowing(["*.team-b.svc.cluster.local"]))
    await failure(client.list_tools(url, timeout=5.0, namespace="team-a", policy=shared), reason="connect")


async def test_cluster_names_the_resolver_expands_are_namespaced() -> None:
    """In a cluster a bare ``svc`` is the operator's namespace and ``svc.ns`` is Service svc of ns.

    The development machine has no cluster DNS; a resolver stands in for it.
    """
    answers = {"mcp.team-b": ["10.0.0.7"], "mcp.team-b.svc.cluster.local.": ["10.0.0.7"], "example.com": ["1.2.3.4"]}

    async def cluster_dns(host: str, port: int) -> Sequence[str]:
        if host not in answers:
            raise OSError(f"{host}: NXDOMAIN")
        return answers[host]

    policy = DestinationPolicy(operator_namespace="mcp-optimizer-system", resolver=cluster_dns)
    with pytest.raises(DestinationRefused) as refused:
        await policy.resolve("mcp.team-b", 80, "team-a")
    assert refused.value.rule == "other-namespace" and "Service mcp in namespace team-b" in str(refused.value)
    assert await policy.resolve("mcp.team-b", 80, "team-b") == ["10.0.0.7"]
    assert await policy.resolve("example.com", 443, "team-a") == ["1.2.3.4"]
    with pytest.raises(DestinationRefused) as refused:
        policy.check_name("mcp-optimizer", "team-a")
    assert "in namespace mcp-optimizer-system" in str(refused.value)
    policy.check_name("mcp-optimizer", "mcp-optimizer-system")


async def test_the_apiserver_and_the_operators_pod_are_refused_even_inside_an_allowed_network() -> None:
    with McpTestServer([make_tool("echo", "Echo")]) as server:
        as_apiserver = DestinationPolicy.from_environment(LOOPBACK, apiserver_url=server.base_url, environ={})
        error = await failure(
            list_tools(server.url, policy=ClientPolicy(destinations=as_apiserver)), reason="destination"
        )
        assert "rule 'apiserver'" in str(error)
        service = DestinationPolicy.from_environment(LOOPBACK, environ={"KUBERNETES_SERVICE_HOST": "127.0.0.1"})
        await failure(list_tools(server.url, policy=ClientPolicy(destinations=service)), reason="destination")
        own_pod = DestinationPolicy.from_environment(LOOPBACK, environ={"POD_IP": "127.0.0.1"})
        error = await failure(list_tools(server.url, policy=ClientPolicy(destinations=own_pod)), reason="destination")
        assert "rule 'operator-pod'" in str(error)
        # Only an entry that is exactly that address admits it.
        exact = DestinationPolicy.from_environment(["127.0.0.1"], environ={"POD_IP": "127.0.0.1"})
        assert await list_tools(server.url, policy=ClientPolicy(destinations=exact))


async def test_every_connection_checks_the_address_it_goes_to() -> None:
    """DNS rebinding: a name that resolved to an admitted address resolves to loopback later."""
    with McpTestServer([make_tool("echo", "Echo")], host="127.0.0.2") as server:
        addresses = iter([["127.0.0.2"], ["127.0.0.1"]])

        async def rebinding_dns(host: str, port: int) -> Sequence[str]:
            assert host == "rebind.example"
            return next(addresses)

        only_127_0_0_2 = DestinationPolicy(
            allowed_networks=(ipaddress.ip_network("127.0.0.2/32"),), resolver=rebinding_dns
        )
        policy = ClientPolicy(destinations=only_127_0_0_2)
        url = f"http://rebind.example:{server.port}/mcp"
        assert [t["name"] for t in await list_tools(url, policy=policy)] == ["echo"]
        error = await failure(list_tools(url, policy=policy), reason="destination")
    assert "rebind.example resolves to 127.0.0.1, which is a loopback address" in str(error)


def test_allow_list_entries_are_validated() -> None:
    hosts, networks = parse_allow_list(["10.0.0.0/8", "::1", "mcp.example.com.", "*.tools.svc", " "])
    assert hosts == ("mcp.example.com", "*.tools.svc")
    assert [str(n) for n in networks] == ["10.0.0.0/8", "::1/128"]
    with pytest.raises(ValueError, match="MCP_OPTIMIZER_ALLOWED_DESTINATIONS: 'http://x/y'"):
        parse_allow_list(["http://x/y"])


def test_settings_read_the_bounds_and_the_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_OPTIMIZER_MAX_PAGE_BYTES", "2048")
    monkeypatch.setenv("MCP_OPTIMIZER_MAX_TOOLS", "7")
    monkeypatch.setenv("MCP_OPTIMIZER_ALLOWED_DESTINATIONS", "127.0.0.0/8, mcp.example.com")
    monkeypatch.setenv("MCP_OPTIMIZER_REMOTE_PROBE_INTERVAL", "15")
    settings = Settings.from_env()
    policy = ClientPolicy.from_settings(settings)
    assert policy.limits.page_bytes == 2048 and policy.limits.tools == 7
    assert policy.destinations.allowed_hosts == ("mcp.example.com",)
    assert settings.remote_probe_interval == 15.0
    monkeypatch.setenv("MCP_OPTIMIZER_MAX_TOOLS", "0")
    with pytest.raises(ValueError, match="MCP_OPTIMIZER_MAX_TOOLS must be positive"):
        Settings.from_env()
    assert Settings().allowed_destinations == ()  # nothing is admitted by default


# ------------------------------------------------------------------------ credentials in URLs


class _RecordsAuthorization:
    """The SDK echo server behind a recorder of the Authorization headers it received."""

    def __init__(self) -> None:
        self.app, _ = build_mcp_app([make_tool("echo", "Echo")])
        self.seen: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append(dict(scope["headers"]).get(b"authorization", b"").decode())
        await self.app(scope, receive, send)


async def test_credentials_in_a_url_are_used_but_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    recorder = _RecordsAuthorization()
    with AsgiTestServer(recorder, lifespan="on") as server:
        url = f"http://alice:s3cr%40t@127.0.0.1:{server.port}/mcp"
        assert [t["name"] for t in await list_tools(url)] == ["echo"]
    assert set(recorder.seen) == {"Basic " + base64.b64encode(b"alice:s3cr@t").decode()}

    refused = refused_url().replace("http://", "http://alice:s3cr%40t@")
    error = await failure(list_tools(refused), reason="connect")
    assert "http://***@127.0.0.1:" in str(error) and error.endpoint.startswith("http://***@")
    error = await failure(client.list_tools(refused.replace("http:", "ftp:")), reason="config")
    assert "***@" in str(error)
    for text in (str(error), caplog.text, *(r.getMessage() for r in caplog.records)):
        assert "s3cr" not in text and "alice" not in text


def test_redaction() -> None:
    assert redact_url("https://user:pa:ss@host:8443/mcp?x=1") == "https://***@host:8443/mcp?x=1"
    assert redact_url("http://token@host/mcp") == "http://***@host/mcp"
    assert redact_url("http://host/mcp?email=a@b.c") == "http://host/mcp?email=a@b.c"
    assert redact_urls("failed for 'http://u:p@h/x' and https://v:w@i/y.") == "failed for 'http://***@h/x' and https://***@i/y."
    assert split_userinfo("http://u%3A1:p%2F2@h:1/x") == ("http://h:1/x", ("u:1", "p/2"))
    assert split_userinfo("http://h/x") == ("http://h/x", None)


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_every_log_line_is_redacted(formatter: logging.Formatter) -> None:
    record = logging.makeLogRecord({"msg": "connecting to %s", "args": ("http://bob:hunter2@mcp.example/mcp",),
                                    "levelno": logging.INFO, "levelname": "INFO", "name": "httpx"})
    try:
        raise RuntimeError("boom at http://bob:hunter2@mcp.example/mcp")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "hunter2" not in line and "bob" not in line and "***@mcp.example" in line
