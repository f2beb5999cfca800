"""The Lease on the real API server: two candidates, expiry, takeover, graceful release, skew, fencing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from kubernetes import client

from mcp_optimizer.kubeapi import KubeApi, load_client_config
from mcp_optimizer.operator.leader import LeaseElector, LeaseTiming

pytestmark = pytest.mark.kube

#: Short, but with client-go's proportions (duration > deadline > 1.2 x retry).
FAST = LeaseTiming(duration=3.0, renew_deadline=2.0, retry_period=0.5)
LEASE = "mcp-optimizer-writer"


@pytest.fixture
async def apis(kubeconfig: str) -> AsyncIterator[Callable[[], KubeApi]]:
    made: list[KubeApi] = []

    def make() -> KubeApi:
        api = KubeApi(load_client_config(kubeconfig), timeout=5)
        made.append(api)
        return api

    yield make
    for api in made:
        await api.close()


def candidate(apis: Callable[[], KubeApi], namespace: str, identity: str, *,
              wall_clock: Callable[[], datetime] | None = None) -> LeaseElector:
    if wall_clock is None:
        return LeaseElector(apis(), namespace=namespace, name=LEASE, identity=identity, timing=FAST)
    return LeaseElector(apis(), namespace=namespace, name=LEASE, identity=identity, timing=FAST,
                        wall_clock=wall_clock)


def lease_spec(kube_api: client.ApiClient, namespace: str) -> client.V1LeaseSpec:
    lease = client.CoordinationV1Api(kube_api).read_namespaced_lease(LEASE, namespace)
    spec = lease.spec
    assert spec is not None
    return spec


async def test_one_of_two_candidates_holds_the_lease(apis: Callable[[], KubeApi], namespace: str,
                                                     kube_api: client.ApiClient) -> None:
    a, b = candidate(apis, namespace, "pod-a"), candidate(apis, namespace, "pod-b")
    # Both race to create it: the API server lets exactly one win.
    won = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
    assert sorted(won) == [False, True]
    holder, other = (a, b) if won[0] else (b, a)
    assert holder.leading and not other.leading
    spec = lease_spec(kube_api, namespace)
    assert spec.holder_identity == holder.identity and spec.lease_duration_seconds == 3
    # The holder renews, the other keeps waiting while it does (several durations).
    until = time.monotonic() + 2 * FAST.duration
    while time.monotonic() < until:
        assert await holder.try_acquire_or_renew()
        assert not await other.try_acquire_or_renew()
        await asyncio.sleep(FAST.retry_period)
    assert lease_spec(kube_api, namespace).lease_transitions == 0


async def test_a_silent_holder_is_taken_over_after_the_duration(apis: Callable[[], KubeApi], namespace: str,
                                                                kube_api: client.ApiClient) -> None:
    a, b = candidate(apis, namespace, "pod-a"), candidate(apis, namespace, "pod-b")
    assert await a.try_acquire_or_renew()
    started = time.monotonic()
    # a stops renewing (SIGKILL): b takes over once the record has not changed for the duration.
    await asyncio.wait_for(b.acquire(), timeout=4 * FAST.duration)
    waited = time.monotonic() - started
    assert FAST.duration <= waited < FAST.duration + 3 * FAST.retry_period * 1.2 + 1
    spec = lease_spec(kube_api, namespace)
    assert spec.holder_identity == "pod-b" and spec.lease_transitions == 1
    # a, back, finds b holding it: its hold ends at its next round, it does not write.
    assert await a.hold() == f"lease {namespace}/{LEASE} was taken by pod-b"
    assert not a.leading


async def test_a_graceful_release_hands_over_within_one_retry(apis: Callable[[], KubeApi], namespace: str,
                                                              kube_api: client.ApiClient) -> None:
    a, b = candidate(apis, namespace, "pod-a"), candidate(apis, namespace, "pod-b")
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    assert await a.release()
    assert not a.leading
    spec = lease_spec(kube_api, namespace)
    assert spec.holder_identity is None and spec.lease_duration_seconds == 1
    started = time.monotonic()
    await asyncio.wait_for(b.acquire(), timeout=FAST.duration)
    assert time.monotonic() - started < FAST.retry_period * 1.2 + 1  # not a whole duration
    assert lease_spec(kube_api, namespace).holder_identity == "pod-b"
    assert not await a.release()  # not ours any more: left alone


async def test_clock_skew_neither_steals_nor_keeps_the_lease(apis: Callable[[], KubeApi], namespace: str,
                                                            kube_api: client.ApiClient) -> None:
    """a's wall clock is an hour behind, b's an hour ahead: b still waits while a renews, and
    takes over a duration after a stops, not an hour early or late."""
    behind = candidate(apis, namespace, "pod-a", wall_clock=lambda: datetime.now(UTC) - timedelta(hours=1))
    ahead = candidate(apis, namespace, "pod-b", wall_clock=lambda: datetime.now(UTC) + timedelta(hours=1))
    assert await behind.try_acquire_or_renew()
    renew_time = lease_spec(kube_api, namespace).renew_time
    assert renew_time is not None and renew_time < datetime.now(UTC) - timedelta(minutes=59)  # an hour "old" at once
    holding = asyncio.create_task(behind.hold())
    try:
        for _ in range(int(2 * FAST.duration / FAST.retry_period)):
            assert not await ahead.try_acquire_or_renew()
            await asyncio.sleep(FAST.retry_period)
    finally:
        holding.cancel()
    started = time.monotonic()
    await asyncio.wait_for(ahead.acquire(), timeout=4 * FAST.duration)
    assert time.monotonic() - started >= FAST.duration - FAST.retry_period * 1.2 - 0.1
    assert lease_spec(kube_api, namespace).holder_identity == "pod-b"


async def test_a_holder_cut_off_stops_writing_before_another_takes_over(
    apis: Callable[[], KubeApi], namespace: str, kube_api: client.ApiClient, operator_kubeconfig: str
) -> None:
    """Fencing: the holder can no longer renew (a real fault: its RoleBinding is deleted, every
    renewal is 403); its hold ends at the renew deadline, before the other candidate may take
    over at the duration."""
    rbac = client.RbacAuthorizationV1Api(kube_api)
    rule = client.V1PolicyRule(api_groups=["coordination.k8s.io"], resources=["leases"],
                               verbs=["get", "create", "update"])
    rbac.create_namespaced_role(namespace, client.V1Role(metadata=client.V1ObjectMeta(name="leases"), rules=[rule]))
    rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="leases"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="leases"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="mcp-optimizer", namespace="mcp-optimizer-system")],
    ))
    operator_api = KubeApi(load_client_config(operator_kubeconfig), timeout=5)
    try:
        a = LeaseElector(operator_api, namespace=namespace, name=LEASE, identity="pod-a", timing=FAST)
        b = candidate(apis, namespace, "pod-b")
        assert await a.try_acquire_or_renew()
        last_renewal = time.monotonic()
        rbac.delete_namespaced_role_binding("leases", namespace)
        stepped_down = asyncio.create_task(a.hold())
        taken_over = asyncio.create_task(b.acquire())
        reason = await asyncio.wait_for(stepped_down, timeout=4 * FAST.duration)
        stepped_down_at = time.monotonic() - last_renewal
        assert "renew deadline" in reason and not a.leading
        assert not taken_over.done(), "the other candidate took over while the old holder still wrote"
        await asyncio.wait_for(taken_over, timeout=4 * FAST.duration)
        taken_over_at = time.monotonic() - last_renewal
        assert FAST.renew_deadline <= stepped_down_at < FAST.duration <= taken_over_at
        assert lease_spec(kube_api, namespace).holder_identity == "pod-b"
    finally:
        await operator_api.close()


async def test_an_older_writer_hands_over_to_a_newer_schema(apis: Callable[[], KubeApi], namespace: str,
                                                            kube_api: client.ApiClient) -> None:
    """A rolling upgrade that adds a migration: the new replica asks for its schema through the
    Lease; the old holder steps down (still holding, so it releases after it stopped writing),
    the old candidates stand back, the new replica takes over."""

    def knows_0004(revision: str) -> bool:
        return revision <= "0004"

    old = LeaseElector(apis(), namespace=namespace, name=LEASE, identity="old-0", timing=FAST, knows_schema=knows_0004)
    old_reader = LeaseElector(apis(), namespace=namespace, name=LEASE, identity="old-1", timing=FAST,
                              knows_schema=knows_0004)
    new = candidate(apis, namespace, "new-0")
    assert await old.try_acquire_or_renew()
    holding = asyncio.create_task(old.hold())
    assert await new.request_schema("0005")
    assert await new.request_schema("0005")  # asked already: nothing written
    reason = await asyncio.wait_for(holding, timeout=4 * FAST.retry_period)
    assert reason == "a newer version needs schema 0005, which this one does not know: handing the Lease over"
    assert lease_spec(kube_api, namespace).holder_identity == "old-0"  # not taken while it stops writing
    assert await old.release()
    taking = [asyncio.create_task(c.acquire()) for c in (old_reader, new)]
    done, _ = await asyncio.wait(taking, timeout=3 * FAST.duration, return_when=asyncio.FIRST_COMPLETED)
    assert taking[1] in done and not taking[0].done()
    assert not await old.try_acquire_or_renew()
    taking[0].cancel()
    spec = lease_spec(kube_api, namespace)
    assert spec.holder_identity == "new-0"
    lease = client.CoordinationV1Api(kube_api).read_namespaced_lease(LEASE, namespace)
    assert lease.metadata is not None and lease.metadata.annotations == {"mcp-optimizer.dev/wants-schema": "0005"}
    assert await new.try_acquire_or_renew()  # renewals keep the request: old replicas stay back
    lease = client.CoordinationV1Api(kube_api).read_namespaced_lease(LEASE, namespace)
    assert lease.metadata is not None and lease.metadata.annotations == {"mcp-optimizer.dev/wants-schema": "0005"}
