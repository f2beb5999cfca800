"""One writer among replicas: leader election on a ``coordination.k8s.io/v1`` Lease.

Every replica serves the MCP endpoint from the shared index; exactly one, the Lease's holder,
runs kopf's handlers and writes the index, MCPServer statuses and Events. The rules are
client-go's (``k8s.io/client-go/tools/leaderelection``), so they read the same to anyone who
runs Kubernetes controllers:

* the Lease names its holder (this pod's name), ``leaseDurationSeconds``, ``renewTime`` and
  ``leaseTransitions``; every write is an update against the ``resourceVersion`` read, so two
  candidates never both win a round (the loser gets 409 Conflict);
* the holder renews every ``retry_period``; when it has not renewed for ``renew_deadline`` it
  stops writing (:meth:`LeaseElector.hold` returns) — before the ``duration`` after which the others
  may take over, so an old writer is fenced before a new one starts (stop the writers first,
  then release);
* a candidate takes over a Lease whose record has not changed for ``duration`` *as measured on
  its own monotonic clock from when it saw the record change*, never by comparing ``renewTime``
  with its own wall clock: the replicas' clocks may disagree (skew), their rates do not;
* a holder that stops gracefully releases the Lease (empty holder, duration 1 s), so the next
  candidate takes over within one ``retry_period`` instead of a whole ``duration``;
* schema handover (rolling upgrades): a replica of a newer version finds the index at an older
  schema it must not serve from, and only a writer may migrate. It writes the schema it needs
  into the Lease's annotation :data:`WANTS_SCHEMA`; a holder that does not know that schema (an
  older version) steps down and releases, and candidates that do not know it never take the
  Lease, so the newer replica becomes the writer and migrates. Without this a rollout that adds
  a migration would wait forever for its first new pod to become ready.

Why a Lease and not kopf's peering: kopf peering pauses the operators of lower priority while a
higher one runs; it has no fencing (a peer pauses only when it next sees the other's record),
no renew deadline, and a paused operator keeps kopf's watches and posting running. The Lease
is the API server's own primitive for this, needs only get/create/update on one object in the
operator's namespace, and works the same for any number of replicas.

:func:`decide` and :func:`observe` are pure; :class:`LeaseElector` is the small async loop
around them (one GET and at most one write per round).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mcp_optimizer.errors import ConfigError
from mcp_optimizer.kubeapi import KubeApi, KubeApiError

logger = logging.getLogger(__name__)

#: client-go's jitter on the retry period: candidates spread their rounds.
JITTER = 1.2
#: Lease annotation: the schema revision a newer replica needs the writer to migrate to.
WANTS_SCHEMA = "mcp-optimizer.dev/wants-schema"


@dataclass(frozen=True)
class LeaseTiming:
    """client-go's three knobs, with its defaults (15 / 10 / 2 s)."""

    #: Seconds a candidate waits, from when it saw the record last change, before taking over.
    duration: float = 15.0
    #: Seconds the holder keeps writing without a successful renew; then it stops writing.
    renew_deadline: float = 10.0
    #: Seconds between rounds (renewals, and a candidate's attempts).
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.duration > self.renew_deadline:
            raise ConfigError(
                f"the lease duration ({self.duration:g} s) must be longer than the renew deadline "
                f"({self.renew_deadline:g} s): a writer must stop before another may start"
            )
        if not self.renew_deadline > JITTER * self.retry_period:
            raise ConfigError(
                f"the renew deadline ({self.renew_deadline:g} s) must be longer than {JITTER:g} x the retry "
                f"period ({self.retry_period:g} s): a holder must get more than one try to renew"
            )

    @property
    def fence_margin(self) -> float:
        """Seconds between the holder giving up and another taking over: stopping must fit in it."""
        return self.duration - self.renew_deadline


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says (its spec), and the version it was read at."""

    holder: str
    duration_seconds: int
    transitions: int
    renew_time: str | None
    acquire_time: str | None = None
    resource_version: str | None = None
    #: The Lease's :data:`WANTS_SCHEMA` annotation (None: nobody asked).
    wants_schema: str | None = None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> LeaseRecord:
        spec = obj.get("spec") or {}
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        return cls(
            wants_schema=annotations.get(WANTS_SCHEMA),
            holder=str(spec.get("holderIdentity") or ""),
            duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            transitions=int(spec.get("leaseTransitions") or 0),
            renew_time=spec.get("renewTime"),
            acquire_time=spec.get("acquireTime"),
            resource_version=(obj.get("metadata") or {}).get("resourceVersion"),
        )

    @property
    def released(self) -> bool:
        return not self.holder


class Action(enum.Enum):
    """What a round does with the Lease."""

    CREATE = "create"  # no Lease yet: create it, held by us
    ACQUIRE = "acquire"  # released or expired: take it (one more transition)
    RENEW = "renew"  # ours: renew it
    WAIT = "wait"  # another holds it and it has not expired
    STEP_DOWN = "step down"  # ours, but a newer version needs the writer's seat: stop writing, release


@dataclass(frozen=True)
class Observation:
    """A record and when (our monotonic clock) it was first seen as it is."""

    record: LeaseRecord
    since: float


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """The observation after reading ``record`` at ``now``: the clock restarts when the record
    changed (another holder, a renewal), and keeps running while it stays the same."""
    if previous is not None and _same(previous.record, record):
        return previous
    return Observation(record, now)


def _same(a: LeaseRecord, b: LeaseRecord) -> bool:
    # resourceVersion changes with every write; holder and renewTime say the same without it
    # (a record re-read after a write of ours has a new version but is still "ours").
    return (a.holder, a.renew_time, a.resource_version) == (b.holder, b.renew_time, b.resource_version)


def decide(
    identity: str, observation: Observation | None, now: float, *, duration: float,
    knows_schema: Callable[[str], bool] = lambda _: True,
) -> Action:
    """This round's action for candidate ``identity``.

    ``observation`` is None when there is no Lease. Expiry uses only our own clock:
    ``now - observation.since`` is how long the record has stayed unchanged. The Lease's own
    ``leaseDurationSeconds`` counts when it is set (a released Lease says 1), else ``duration``.
    ``knows_schema``: whether this version knows a schema revision; one that does not know the
    schema the Lease asks for (:data:`WANTS_SCHEMA`) steps down, or never takes the Lease.
    """
    if observation is None:
        return Action.CREATE
    record = observation.record
    outdated = record.wants_schema is not None and not knows_schema(record.wants_schema)
    if record.holder == identity:
        return Action.STEP_DOWN if outdated else Action.RENEW
    if outdated:
        return Action.WAIT
    if record.released:
        return Action.ACQUIRE
    lease_duration = record.duration_seconds or duration
    if now - observation.since >= lease_duration:
        return Action.ACQUIRE
    return Action.WAIT


def must_step_down(last_renewed: float, now: float, *, renew_deadline: float) -> bool:
    """The holder stops writing once it has gone ``renew_deadline`` without a successful renewal."""
    return now - last_renewed >= renew_deadline


def lease_body(
    name: str, namespace: str, identity: str, *, action: Action, previous: LeaseRecord | None, duration: float,
    now: datetime,
) -> dict[str, Any]:
    """The Lease to write for ``action`` (CREATE, ACQUIRE or RENEW) by ``identity``."""
    stamp = _micro_time(now)
    spec: dict[str, Any] = {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(duration)),
        "renewTime": stamp,
        "leaseTransitions": previous.transitions if previous is not None else 0,
    }
    if action is Action.ACQUIRE:
        spec["acquireTime"] = stamp
        spec["leaseTransitions"] += 1
    elif action is Action.CREATE or previous is None or previous.acquire_time is None:
        spec["acquireTime"] = stamp
    else:  # a renewal: acquireTime changes only when the Lease changes hands
        spec["acquireTime"] = previous.acquire_time
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": _metadata(name, namespace, previous),
            "spec": spec}


def _metadata(name: str, namespace: str, previous: LeaseRecord | None) -> dict[str, Any]:
    """The Lease's metadata for an update: the version read (optimistic concurrency) and the
    schema request, which every write keeps."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if previous is not None and previous.resource_version is not None:
        metadata["resourceVersion"] = previous.resource_version
    if previous is not None and previous.wants_schema is not None:
        metadata["annotations"] = {WANTS_SCHEMA: previous.wants_schema}
    return metadata


def handover_body(name: str, namespace: str, previous: LeaseRecord, schema: str) -> dict[str, Any]:
    """The Lease as it is, with :data:`WANTS_SCHEMA` set to ``schema``."""
    body = release_body(name, namespace, previous, datetime.now(UTC))
    body["spec"] = {
        "holderIdentity": previous.holder or None,
        "leaseDurationSeconds": previous.duration_seconds or None,
        "renewTime": previous.renew_time,
        "acquireTime": previous.acquire_time,
        "leaseTransitions": previous.transitions,
    }
    body["metadata"]["annotations"] = {WANTS_SCHEMA: schema}
    return body


def release_body(name: str, namespace: str, previous: LeaseRecord, now: datetime) -> dict[str, Any]:
    """The Lease as a graceful holder leaves it (client-go's ReleaseOnCancel): no holder, 1 s."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": _metadata(name, namespace, previous),
        "spec": {
            "holderIdentity": None,
            "leaseDurationSeconds": 1,
            "renewTime": _micro_time(now),
            "leaseTransitions": previous.transitions,
        },
    }


def _micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Acquire, hold and release one Lease for ``identity`` (see the module docstring).

    ``clock`` (monotonic seconds) and ``wall_clock`` are parameters so that tests can give a
    candidate a skewed wall clock; expiry never reads the wall clock.
    """

    def __init__(
        self,
        kube: KubeApi,
        *,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        knows_schema: Callable[[str], bool] = lambda _: True,
    ) -> None:
        if not identity:
            raise ConfigError("leader election needs an identity (the pod's name)")
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing or LeaseTiming()
        self._clock = clock
        self._wall_clock = wall_clock
        self._knows_schema = knows_schema
        #: Set when the holder must step down for a newer version (why), until it releases.
        self.stepping_down: str | None = None
        self._observation: Observation | None = None
        #: Our clock at the last successful create/acquire/renew (None: we do not hold it).
        self._renewed: float | None = None

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    @property
    def leading(self) -> bool:
        return self._renewed is not None

    @property
    def holder(self) -> str | None:
        """The holder last seen (None: no Lease seen yet, or released)."""
        record = self._observation.record if self._observation is not None else None
        return record.holder or None if record is not None else None

    async def _read(self) -> LeaseRecord | None:
        try:
            return LeaseRecord.from_object(await self.kube.get(self.path))
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def try_acquire_or_renew(self) -> bool:
        """One round: read the Lease, then create, take over or renew it when :func:`decide` says
        so. True when we hold it afterwards. API errors (a conflict, the server away) are False."""
        try:
            record = await self._read()
        except KubeApiError as exc:
            logger.debug("Reading lease %s/%s failed: %s", self.namespace, self.name, exc)
            return False
        now = self._clock()
        self._observation = observe(self._observation, record, now) if record is not None else None
        action = decide(self.identity, self._observation, now, duration=self.timing.duration,
                        knows_schema=self._knows_schema)
        if action is Action.WAIT:
            self._renewed = None  # another holds it (we may have lost it without noticing)
            return False
        if action is Action.STEP_DOWN:
            assert record is not None
            self.stepping_down = (f"a newer version needs schema {record.wants_schema}, which this one does not "
                                  "know: handing the Lease over")
            return False
        body = lease_body(self.name, self.namespace, self.identity, action=action, previous=record,
                          duration=self.timing.duration, now=self._wall_clock())
        try:
            if action is Action.CREATE:
                base = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"
                written = await self.kube.post(base, body)
            else:
                written = await self.kube.put(self.path, body)
        except KubeApiError as exc:
            # 409: another candidate wrote first (or our read was stale); the next round re-reads.
            logger.debug("Writing lease %s/%s (%s) failed: %s", self.namespace, self.name, action.value, exc)
            return False
        self._observation = Observation(LeaseRecord.from_object(written), self._clock())
        if action is not Action.RENEW:
            previous = f" from {record.holder}" if record is not None and record.holder else ""
            logger.info("Acquired lease %s/%s as %s%s: this replica writes the index",
                        self.namespace, self.name, self.identity, previous)
        self._renewed = now
        return True

    async def acquire(self) -> None:
        """Return once we hold the Lease (retrying every ``retry_period``, with jitter)."""
        while True:
            if await self.try_acquire_or_renew():
                return
            await asyncio.sleep(self.timing.retry_period * random.uniform(1.0, JITTER))

    async def hold(self) -> str:
        """Renew until we cannot: returns why we lost the Lease (the caller must stop writing now).

        Each attempt is bounded by the time left to the renew deadline, so a hung API server
        cannot keep us past it.
        """
        while True:
            await asyncio.sleep(self.timing.retry_period)
            renewed = self._renewed
            if renewed is None:
                return f"lease {self.namespace}/{self.name} is held by {self.holder or 'nobody'}"
            left = self.timing.renew_deadline - (self._clock() - renewed)
            try:
                ok = await asyncio.wait_for(self.try_acquire_or_renew(), timeout=max(left, 0.01))
            except TimeoutError:
                ok = False
            if ok:
                continue
            if self.stepping_down is not None:  # still ours: the caller stops writing, then releases
                return self.stepping_down
            if self._renewed is None:  # another holder took it
                return f"lease {self.namespace}/{self.name} was taken by {self.holder or 'nobody'}"
            if must_step_down(renewed, self._clock(), renew_deadline=self.timing.renew_deadline):
                self._renewed = None
                return (f"lease {self.namespace}/{self.name} not renewed for "
                        f"{self.timing.renew_deadline:g} s (renew deadline)")

    async def release(self) -> bool:
        """Give the Lease up if we still hold it (after we stopped writing). True when released."""
        if self._renewed is None:
            return False
        self._renewed = None
        self.stepping_down = None
        try:
            record = await self._read()
            if record is None or record.holder != self.identity:
                return False
            await self.kube.put(self.path, release_body(self.name, self.namespace, record, self._wall_clock()))
        except KubeApiError as exc:
            logger.warning("Releasing lease %s/%s failed (another replica takes over once it expires): %s",
                           self.namespace, self.name, exc)
            return False
        logger.info("Released lease %s/%s", self.namespace, self.name)
        return True

    async def request_schema(self, schema: str) -> bool:
        """Ask the writer's seat for a replica at ``schema`` (this version's head, newer than the
        index's): an older holder steps down, older candidates stand back. True when the Lease
        says so afterwards."""
        try:
            record = await self._read()
            if record is None or record.holder == self.identity or record.wants_schema == schema:
                return record is not None and record.wants_schema == schema
            await self.kube.put(self.path, handover_body(self.name, self.namespace, record, schema))
        except KubeApiError as exc:  # a conflict or the server away: asked again at the next check
            logger.debug("Asking for schema %s on lease %s/%s failed: %s", schema, self.namespace, self.name, exc)
            return False
        logger.info("Asked the writer of lease %s/%s to hand over: this version needs schema %s",
                    self.namespace, self.name, schema)
        return True
