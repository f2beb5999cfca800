"""When the operator may say it is ready (``/readyz``): after its first full pass, with a sound index.

Ready used to mean "the startup handler finished", about 45 s before anything was indexed on a
large cluster (kopf resumes MCPServers after the startup handlers). Now it means:

1. the catalogs found at start are loaded (or failed: a broken catalog must not keep the
   operator unready forever; its Event says why);
2. every MCPServer listed at start has had its first sync, successful or not (a server whose
   ``tools/list`` fails is reported and retried; waiting for it would never end), or is gone;
3. the index is healthy (:class:`~mcp_optimizer.db.health.IndexHealth`): no fault is being
   repaired.

:meth:`Readiness.state` is pure over those facts; the runner feeds them.
"""

from __future__ import annotations

from collections.abc import Iterable

from mcp_optimizer.ingest import IndexHealth


class Readiness:
    """The facts ``/readyz`` is computed from (see the module docstring)."""

    def __init__(self, health: IndexHealth) -> None:
        self.health = health
        #: MCPServers (workload names) listed at start and not yet synced; None before the listing.
        self._pending: set[str] | None = None
        self._expected = 0
        self._catalogs_loaded = False

    def expect(self, workloads: Iterable[str]) -> None:
        """The first pass must reach these MCPServers (listed at start)."""
        self._pending = set(workloads)
        self._expected = len(self._pending)

    def catalogs_loaded(self) -> None:
        self._catalogs_loaded = True

    def settled(self, workload: str) -> None:
        """An MCPServer had its sync (whatever the outcome) or was deleted."""
        if self._pending is not None:
            self._pending.discard(workload)

    def keep_only(self, present: Iterable[str]) -> None:
        """MCPServers deleted since the listing will never be synced: stop waiting for them."""
        if self._pending is not None:
            self._pending &= set(present)

    @property
    def pending(self) -> frozenset[str]:
        return frozenset(self._pending or ())

    @property
    def first_pass_done(self) -> bool:
        return self._pending is not None and not self._pending and self._catalogs_loaded

    def state(self) -> tuple[bool, str]:
        """(ready, why): what ``/readyz`` answers."""
        if self._pending is None or not self._catalogs_loaded:
            return False, "starting: catalogs are being loaded"
        if self._pending:
            return False, f"first pass: {len(self._pending)} of {self._expected} MCPServers not synced yet"
        fault = self.health.fault
        if fault is not None:
            return False, f"the index is being repaired ({fault})"
        return True, "ok"


class ReplicaReadiness:
    """``/readyz`` of a replica under leader election (``MCP_OPTIMIZER_LEADER_ELECTION``).

    A reader serves when its view of the shared index answers and is at this version's schema
    head (:meth:`~mcp_optimizer.ingest.IndexReader.check`, refreshed by the runner). The writer
    keeps the single-replica rules (:class:`Readiness`: first pass done, index healthy) when it
    created the index; a writer that took over an index another writer filled (``took_over``: it
    already had a schema) serves it as the readers do while its first pass runs, else a takeover
    or a rolling upgrade would leave no replica ready for the length of a pass (a minute with
    500 servers). A stopping replica is never ready: Services stop routing to it while it drains.
    """

    def __init__(self) -> None:
        #: The last reader check: (serving, why).
        self.reader: tuple[bool, str] = (False, "starting: the index has not been checked yet")
        #: The writer's readiness while this replica holds the Lease, else None.
        self.writer: Readiness | None = None
        #: The writer found the index with a schema (another writer had filled it).
        self.took_over = False
        self.stopping = False

    def state(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "stopping: finishing in-flight calls"
        if self.writer is not None:
            if not self.took_over:
                ready, why = self.writer.state()
                return ready, why if ready else f"writer: {why}"
            fault = self.writer.health.fault
            if fault is not None:
                return False, f"writer: the index is being repaired ({fault})"
        return self.reader
