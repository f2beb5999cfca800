"""Sessions are bounded: per caller identity, in all, and in time.

Hostile clients here open sessions with raw HTTP and walk away (no DELETE), as a leaking agent
or an attacker would. The endpoint must keep answering ``initialize`` for everybody else, tell
the capped caller clearly why it is refused, and never hold more than ``max_sessions``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx2
import pytest

from mcp_optimizer.config import Settings
from mcp_optimizer.db.search import ToolSearch
from mcp_optimizer.embeddings import Embedder
from mcp_optimizer.ingest import Indexer
from mcp_optimizer.mcp.auth import build_token_table
from mcp_optimizer.mcp.scope import AccessScope
from mcp_optimizer.mcp.server import McpEndpoint
from mcp_optimizer.mcp.sessions import SessionLimitReached, SessionLimits
from mcp_optimizer.testing.mcp_servers import McpTestServerFarm
from tests.mcp.server_env import (
    HEADERS,
    INIT,
    LISTING,
    connect,
    endpoint_settings,
    farm,
    payload,
    populate,
    running_endpoint,
)
from tests.support.fake_embedder import FakeEmbedder

__all__ = ["farm"]



def tokens(count: int) -> dict[str, str]:
    """name -> token for ``count`` callers, each seeing everything."""
    return {f"caller-{i}": f"token-of-caller-{i}-0123456789" for i in range(count)}


def table(callers: dict[str, str]):  # type: ignore[no-untyped-def]
    return build_token_table(
        (hashlib.sha256(token.encode()).hexdigest(), AccessScope(name)) for name, token in callers.items()
    )


async def open_session(http: httpx2.AsyncClient, url: str, token: str) -> httpx2.Response:
    """One initialize, then walk away: the session stays open on the server."""
    return await http.post(url, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {token}"})


async def open_many(http: httpx2.AsyncClient, url: str, token: str, count: int) -> list[httpx2.Response]:
    answers: list[httpx2.Response] = []
    for start in range(0, count, 50):
        batch = [open_session(http, url, token) for _ in range(min(50, count - start))]
        answers += await asyncio.gather(*batch)
    return answers


def in_session(session_id: str, token: str) -> dict[str, str]:
    return {
        **HEADERS,
        "Authorization": f"Bearer {token}",
        "mcp-session-id": session_id,
        "mcp-protocol-version": "2025-06-18",
    }


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """These tests bound sessions and never assert which tools a query finds: the fake model."""
    return FakeEmbedder()


@pytest.fixture
async def world(indexer: Indexer, farm: McpTestServerFarm) -> Indexer:
    await populate(indexer, farm)
    return indexer


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    limits = httpx2.Limits(max_connections=50, max_keepalive_connections=50)
    async with httpx2.AsyncClient(timeout=30, limits=limits) as client:
        yield client


async def test_a_caller_that_abandons_thousands_of_sessions_is_capped_alone(
    world: Indexer, settings: Settings, http: httpx2.AsyncClient
) -> None:
    callers = tokens(2)
    hog, other = callers["caller-0"], callers["caller-1"]
    configured = endpoint_settings(settings, sessions_per_identity=25, max_sessions=1000)
    async with running_endpoint(world, configured, tokens=table(callers)) as endpoint:
        answers = await open_many(http, endpoint.url, hog, 1000)
        statuses = [a.status_code for a in answers]
        assert statuses.count(200) == 25 and statuses.count(429) == 975
        refusal = next(a for a in answers if a.status_code == 429)
        message = refusal.json()["error"]["message"]
        assert message.startswith("Too many open MCP sessions for token:caller-0: 25 is the limit per caller")
        assert "idle sessions end after 300 seconds" in message and refusal.headers["retry-after"] == "30"
        assert endpoint.sessions.count() == 25

        # Everyone else is unaffected: a new caller initializes and works.
        async with connect(endpoint.url, token=other) as client:
            listed = payload(await client.call_tool("list_tools", {}))
        assert listed["servers"]
        # And the hog's own open sessions still work.
        opened = next(a for a in answers if a.status_code == 200)
        reuse = await http.post(endpoint.url, json=LISTING, headers=in_session(opened.headers["mcp-session-id"], hog))
        assert reuse.status_code == 200 and "find_tool" in reuse.text


async def test_a_full_endpoint_closes_the_largest_holders_idle_session(
    world: Indexer, settings: Settings, http: httpx2.AsyncClient
) -> None:
    """Thousands of abandoned sessions from many callers: the total stays bounded, the caller
    holding the most loses its longest idle session, a small holder keeps all of its own."""
    callers = tokens(42)
    small, newcomer = callers.pop("caller-40"), callers.pop("caller-41")
    configured = endpoint_settings(settings, sessions_per_identity=50, max_sessions=250)
    everyone = table({**callers, "caller-40": small, "caller-41": newcomer})
    async with running_endpoint(world, configured, tokens=everyone) as ep:
        kept = [a.headers["mcp-session-id"] for a in await open_many(http, ep.url, small, 5)]
        opened = 0
        for token in callers.values():  # 40 callers x 50 sessions = 2,000 abandoned sessions
            answers = await open_many(http, ep.url, token, 50)
            opened += sum(a.status_code == 200 for a in answers)
            assert ep.sessions.count() <= 250
        # Every session beyond the 250th closed one: 2,005 opened, 250 left.
        assert opened == 2000 and ep.sessions.evicted == 2005 - 250
        assert ep.sessions.count("token:caller-40") == 5

        async with connect(ep.url, token=newcomer) as client:
            assert payload(await client.call_tool("list_tools", {}))["servers"]
        for session_id in kept:
            answer = await http.post(ep.url, json=LISTING, headers=in_session(session_id, small))
            assert answer.status_code == 200, answer.text
        assert ep.sessions.count() <= 250


async def test_idle_sessions_end_and_free_their_slots(
    world: Indexer, settings: Settings, http: httpx2.AsyncClient
) -> None:
    callers = tokens(1)
    token = callers["caller-0"]
    configured = endpoint_settings(settings, sessions_per_identity=10, session_idle_timeout=1.0)
    async with running_endpoint(world, configured, tokens=table(callers)) as endpoint:
        answers = await open_many(http, endpoint.url, token, 10)
        assert [a.status_code for a in answers] == [200] * 10
        assert (await open_session(http, endpoint.url, token)).status_code == 429
        for _ in range(100):
            if endpoint.sessions.count() == 0:
                break
            await asyncio.sleep(0.1)
        assert endpoint.sessions.count() == 0
        first = answers[0].headers["mcp-session-id"]
        expired = await http.post(endpoint.url, json=LISTING, headers=in_session(first, token))
        assert expired.status_code == 404
        assert (await open_session(http, endpoint.url, token)).status_code == 200


async def test_sse_streams_count_against_the_same_cap(world: Indexer, settings: Settings) -> None:
    callers = tokens(2)
    token, other = callers["caller-0"], callers["caller-1"]
    configured = endpoint_settings(settings, sessions_per_identity=3)
    async with (
        running_endpoint(world, configured, tokens=table(callers)) as endpoint,
        httpx2.AsyncClient(timeout=30) as http,
    ):
        auth = {"Authorization": f"Bearer {token}"}
        streams = [http.stream("GET", endpoint.sse_url, headers=auth) for _ in range(3)]
        opened = [await stream.__aenter__() for stream in streams]
        try:
            assert [r.status_code for r in opened] == [200, 200, 200]
            async with http.stream("GET", endpoint.sse_url, headers=auth) as fourth:
                assert fourth.status_code == 429
                assert "Too many open MCP sessions for token:caller-0" in (await fourth.aread()).decode()
            assert (await open_session(http, endpoint.url, token)).status_code == 429
            assert (await open_session(http, endpoint.url, other)).status_code == 200
        finally:
            for stream in streams:
                await stream.__aexit__(None, None, None)
        # Closing a stream frees its slot.
        for _ in range(100):
            if endpoint.sessions.count("token:caller-0") == 0:
                break
            await asyncio.sleep(0.05)
        assert (await open_session(http, endpoint.url, token)).status_code == 200


async def test_without_auth_callers_are_told_apart_by_address(world: Indexer, settings: Settings) -> None:
    """No auth (local use): the cap applies per client address, and the endpoint is on loopback."""
    configured = replace(endpoint_settings(settings, sessions_per_identity=2), mcp_host=None, auth_mode="none")
    async with running_endpoint(world, configured) as endpoint, httpx2.AsyncClient(timeout=30) as http:
        assert endpoint.host == "127.0.0.1"
        assert [(await http.post(endpoint.url, json=INIT, headers=HEADERS)).status_code for _ in range(3)] == [
            200,
            200,
            429,
        ]
        refused = await http.post(endpoint.url, json=INIT, headers=HEADERS)
        assert "anonymous:127.0.0.1" in refused.json()["error"]["message"]


def test_session_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"SESSION_IDLE_TIMEOUT": "60", "SESSIONS_PER_IDENTITY": "8", "MAX_SESSIONS": "100"}.items():
        monkeypatch.setenv(f"MCP_OPTIMIZER_{name}", value)
    settings = Settings.from_env()
    assert (settings.session_idle_timeout, settings.sessions_per_identity, settings.max_sessions) == (60.0, 8, 100)
    assert (Settings().session_idle_timeout, Settings().sessions_per_identity, Settings().max_sessions) == (
        300.0,
        64,
        1000,
    )


async def test_bad_session_limits_are_refused(world: Indexer, settings: Settings) -> None:
    search = ToolSearch(world.engine, world.embedder)
    with pytest.raises(ValueError, match="session limits must be positive"):
        McpEndpoint(endpoint_settings(settings, sessions_per_identity=0), search)
    with pytest.raises(ValueError, match="idle timeout must be a positive number"):
        McpEndpoint(endpoint_settings(settings, session_idle_timeout=0), search)


def test_which_session_makes_room() -> None:
    """The longest idle session of the largest holder; else the next holder's idle one; a
    session in use only when none is idle; one still opening never."""
    limits = SessionLimits(per_identity=10, total=6, idle_timeout=300)
    closed: list[str] = []
    state: dict[str, float | None] = {}

    def add(identity: str, key: str, since: float | None) -> None:
        state[key] = since
        limits.make_room(identity)
        limits.add(identity, key, idle_since=lambda: state[key], close=lambda: closed.append(key))

    inf = float("inf")
    add("big", "big-busy", inf)
    add("big", "big-idle-late", 20.0)
    add("big", "big-idle-early", 10.0)
    add("small", "small-idle", 1.0)
    add("mid", "mid-busy", inf)
    add("mid", "mid-opening", None)
    add("new", "new-1", inf)  # full: "big" (3) loses its longest idle session
    assert closed == ["big-idle-early"]
    add("new", "new-2", inf)
    assert closed[-1] == "big-idle-late"
    # Now "big", "mid" and "new" hold 1-2 sessions each, none idle: the next idle one is "small"'s.
    add("new", "new-3", inf)
    assert closed[-1] == "small-idle"
    # Nothing idle anywhere: the largest holder's ("new", 3) oldest session in use.
    add("other", "other-1", inf)
    assert closed[-1] == "new-1"
    assert "mid-opening" not in closed and limits.count() == 6 and limits.evicted == 4

    with pytest.raises(SessionLimitReached, match="Too many open MCP sessions for solo: 1 is the limit"):
        capped = SessionLimits(per_identity=1, total=5, idle_timeout=60)
        capped.add("solo", "s", idle_since=lambda: 1.0, close=lambda: None)
        capped.make_room("solo")
    capped.release("s")
    capped.release("s")  # idempotent
    capped.make_room("solo")
    assert capped.count() == 0
