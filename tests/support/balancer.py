"""A TCP balancer that routes like a Kubernetes Service: only to replicas whose ``/readyz`` says so.

kube-proxy sends each new connection to one of a Service's ready endpoints; an endpoint leaves
the set when its readiness probe fails. :class:`ReadyBalancer` does the same on 127.0.0.1: it
polls each backend's readiness URL every ``interval`` and sends each new connection, round
robin, to a backend that answered 200 at the last poll. A connection to a backend that refuses
(it died since the last poll) is tried on the next ready one, as a connection to a Service's
endpoint that just went away is; a connection reset after it was made is the client's problem,
as with a real Service.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from dataclasses import dataclass, field

import aiohttp


@dataclass
class Backend:
    """One replica: its MCP port and its readiness URL."""

    name: str
    port: int
    ready_url: str
    ready: bool = False


@dataclass
class ReadyBalancer:
    backends: dict[str, Backend] = field(default_factory=dict)
    #: Seconds between readiness polls (kubelet's periodSeconds, shortened for tests).
    interval: float = 0.2
    #: Connections sent to each backend.
    routed: Counter[str] = field(default_factory=Counter)
    #: Connections refused because no backend was ready.
    refused: int = 0
    _server: asyncio.Server | None = None
    _poller: asyncio.Task[None] | None = None
    _turn: itertools.count[int] = field(default_factory=itertools.count)
    _pipes: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    def add(self, backend: Backend) -> None:
        self.backends[backend.name] = backend

    def ready(self) -> list[str]:
        return sorted(name for name, backend in self.backends.items() if backend.ready)

    async def start(self) -> ReadyBalancer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self._poller = asyncio.create_task(self._poll(), name="balancer readiness polls")
        return self

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _poll(self) -> None:
        timeout = aiohttp.ClientTimeout(total=max(self.interval * 2, 0.5))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await asyncio.gather(*(self._probe(session, b) for b in list(self.backends.values())))
                await asyncio.sleep(self.interval)

    @staticmethod
    async def _probe(session: aiohttp.ClientSession, backend: Backend) -> None:
        try:
            async with session.get(backend.ready_url) as response:
                backend.ready = response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            backend.ready = False

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str] | None:
        ready = [b for b in self.backends.values() if b.ready]
        start = next(self._turn)
        for i in range(len(ready)):
            backend = ready[(start + i) % len(ready)]
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", backend.port)
            except OSError:
                backend.ready = False  # gone since the last poll
                continue
            return reader, writer, backend.name
        return None

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream = await self._connect()
        if upstream is None:
            self.refused += 1
            client_writer.close()
            return
        reader, writer, name = upstream
        self.routed[name] += 1
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            await asyncio.gather(_pipe(client_reader, writer), _pipe(reader, client_writer))
        except asyncio.CancelledError:
            pass  # the balancer is stopping: the connection just closes
        finally:
            self._pipes.discard(task)
            for w in (writer, client_writer):
                w.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if sink.can_write_eof():
                sink.write_eof()
