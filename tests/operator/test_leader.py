"""The Lease decisions (pure): who creates, renews, waits and takes over, by our own clock only."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from mcp_optimizer.errors import ConfigError
from mcp_optimizer.operator.leader import (
    Action,
    LeaseRecord,
    LeaseTiming,
    Observation,
    decide,
    lease_body,
    must_step_down,
    observe,
    release_body,
)

DURATION = 15.0


def record(holder: str, renew_time: str = "2026-12-02T04:00:00.000000Z", version: str = "1",
           duration: int = 15, transitions: int = 0) -> LeaseRecord:
    return LeaseRecord(holder=holder, duration_seconds=duration, transitions=transitions, renew_time=renew_time,
                       acquire_time="2026-12-02T03:00:00.000000Z", resource_version=version)


def test_no_lease_is_created() -> None:
    assert decide("a", None, 0.0, duration=DURATION) is Action.CREATE


def test_the_holder_renews_and_a_released_lease_is_taken_at_once() -> None:
    assert decide("a", Observation(record("a"), 0.0), 0.0, duration=DURATION) is Action.RENEW
    assert decide("b", Observation(record("", duration=1), 0.0), 0.0, duration=DURATION) is Action.ACQUIRE


def test_another_holders_lease_expires_only_after_its_duration_on_our_clock() -> None:
    seen = observe(None, record("a"), now=100.0)
    assert decide("b", seen, 100.0 + 14.9, duration=DURATION) is Action.WAIT
    # Unchanged record re-read: the clock keeps running from the first sight.
    again = observe(seen, record("a"), now=110.0)
    assert again.since == 100.0
    assert decide("b", again, 115.0, duration=DURATION) is Action.ACQUIRE


def test_a_renewal_restarts_the_clock_whatever_its_timestamp_says() -> None:
    """Clock skew: the holder's renewTime may be an hour behind (or ahead of) ours; what counts
    is that the record changed, seen on our monotonic clock."""
    seen = observe(None, record("a", renew_time="2026-12-02T03:00:00.000000Z", version="1"), now=0.0)
    for step in range(1, 20):  # renewed every 2 s with a wall clock an hour behind ours
        stamp = f"2026-12-02T03:00:{2 * step:02d}.000000Z"
        seen = observe(seen, record("a", renew_time=stamp, version=str(step + 1)), now=2.0 * step)
        assert decide("b", seen, 2.0 * step + 1.9, duration=DURATION) is Action.WAIT
    # A holder whose clock is ahead stops renewing: it expires after the duration all the same.
    ahead = observe(None, record("a", renew_time="2026-12-02T05:00:00.000000Z"), now=50.0)
    assert decide("b", ahead, 50.0 + DURATION, duration=DURATION) is Action.ACQUIRE


def test_the_leases_own_duration_counts() -> None:
    seen = observe(None, record("a", duration=40), now=0.0)
    assert decide("b", seen, 20.0, duration=DURATION) is Action.WAIT
    assert decide("b", seen, 40.0, duration=DURATION) is Action.ACQUIRE


def test_the_holder_steps_down_at_the_renew_deadline() -> None:
    assert not must_step_down(100.0, 109.9, renew_deadline=10.0)
    assert must_step_down(100.0, 110.0, renew_deadline=10.0)


def test_timing_must_fence_the_old_writer() -> None:
    assert LeaseTiming().fence_margin == 5.0
    with pytest.raises(ConfigError, match="longer than the renew deadline"):
        LeaseTiming(duration=10, renew_deadline=10, retry_period=2)
    with pytest.raises(ConfigError, match="retry"):
        LeaseTiming(duration=15, renew_deadline=2, retry_period=2)


def test_bodies_carry_the_version_read_and_count_transitions() -> None:
    now = datetime(2026, 12, 2, 4, 0, 1, 123456, tzinfo=UTC)
    previous = record("a", transitions=3, version="42")
    taken = lease_body("l", "ns", "b", action=Action.ACQUIRE, previous=previous, duration=DURATION, now=now)
    assert taken["metadata"]["resourceVersion"] == "42"
    assert taken["spec"] == {"holderIdentity": "b", "leaseDurationSeconds": 15, "leaseTransitions": 4,
                             "renewTime": "2026-12-02T04:00:01.123456Z", "acquireTime": "2026-12-02T04:00:01.123456Z"}
    renewed = lease_body("l", "ns", "a", action=Action.RENEW, previous=previous, duration=DURATION, now=now)
    assert renewed["spec"]["leaseTransitions"] == 3
    assert renewed["spec"]["acquireTime"] == "2026-12-02T03:00:00.000000Z"
    released = release_body("l", "ns", previous, now)
    assert released["spec"]["holderIdentity"] is None and released["spec"]["leaseDurationSeconds"] == 1
    assert LeaseRecord.from_object(released).released


def test_an_older_version_steps_down_for_a_newer_schema_and_stands_back() -> None:
    asked = LeaseRecord(holder="old-0", duration_seconds=15, transitions=2, renew_time="t", wants_schema="0005")
    knows_0004: Callable[[str], bool] = lambda revision: revision <= "0004"  # noqa: E731
    seen = Observation(asked, 0.0)
    assert decide("old-0", seen, 1.0, duration=DURATION, knows_schema=knows_0004) is Action.STEP_DOWN
    # Older candidates never take it, released or expired; the newer one does.
    released = Observation(LeaseRecord(holder="", duration_seconds=1, transitions=2, renew_time="t",
                                       wants_schema="0005"), 0.0)
    assert decide("old-1", released, 100.0, duration=DURATION, knows_schema=knows_0004) is Action.WAIT
    assert decide("new-0", released, 0.0, duration=DURATION, knows_schema=lambda r: True) is Action.ACQUIRE
    # The request survives every write of the Lease.
    body = lease_body("l", "ns", "new-0", action=Action.ACQUIRE, previous=released.record, duration=DURATION,
                      now=datetime(2026, 12, 2, tzinfo=UTC))
    assert LeaseRecord.from_object(body).wants_schema == "0005"
    assert LeaseRecord.from_object(release_body("l", "ns", asked, datetime(2026, 12, 2, tzinfo=UTC))).wants_schema \
        == "0005"
    # The holder that knows the schema keeps renewing.
    assert decide("new-0", Observation(asked, 0.0), 1.0, duration=DURATION) is Action.WAIT
    mine = Observation(LeaseRecord(holder="new-0", duration_seconds=15, transitions=3, renew_time="t",
                                   wants_schema="0005"), 0.0)
    assert decide("new-0", mine, 1.0, duration=DURATION) is Action.RENEW
