"""The callbacks the operator's parts hand each other, described as kopf's ``callbacks.py``
describes the handlers it calls: each a :class:`~typing.Protocol`, so a callback of the wrong
shape fails type checking where it is passed, not when it is finally called.

(:class:`~mcp_optimizer.operator.workloads.ListTools`, the reconciler's ``tools/list``, is one
too; it lives beside its only caller.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mcp_optimizer.operator.cluster import ToolHiveAPI


class FullPassFn(Protocol):
    """Reconcile everything once more: every server, pod and catalog (after an index rebuild)."""

    def __call__(self) -> Awaitable[None]: ...


class IndexReplacedFn(Protocol):
    """The index file was replaced under the operator: forget what it believed was written."""

    def __call__(self) -> None: ...


class StopFn(Protocol):
    """Stop the process's other servers (the MCP endpoint) as the operator begins to stop."""

    def __call__(self) -> Awaitable[None]: ...


class DiscoverToolHiveFn(Protocol):
    """Which of ToolHive's resources can be watched now (given those watched so far)."""

    def __call__(self, plurals: frozenset[str], /) -> Awaitable[ToolHiveAPI]: ...


class EventSinkFn(Protocol):
    """Post a Kubernetes Event about ``ref`` where kopf's poster is not available."""

    def __call__(self, ref: Mapping[str, Any], type_: str, reason: str, message: str, /) -> None: ...
