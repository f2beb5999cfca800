"""What one caller of the MCP endpoint may see: groups and namespaces, carried in a contextvar.

The auth middleware resolves the caller's bearer token to an :class:`AccessScope` and sets
:data:`current_scope` for the request. The MCP SDK snapshots contextvars with every inbound
message and runs the handler in that snapshot, so the tools read the scope of the HTTP
request that carried *this* message, not of whichever request opened the session.

The default is :data:`NO_ACCESS`: if a message ever reached a tool without passing the
middleware (a bug, a new transport), it would see nothing rather than everything.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable
from dataclasses import dataclass

#: In a token's ``groups`` / ``namespaces``: every value.
WILDCARD = "*"


@dataclass(frozen=True)
class AccessScope:
    """Groups and namespaces a caller may see; ``None`` on an axis means "all"."""

    name: str
    groups: frozenset[str] | None = None
    namespaces: frozenset[str] | None = None

    @classmethod
    def of(cls, name: str, groups: Iterable[str] | None, namespaces: Iterable[str] | None) -> AccessScope:
        """A scope from config lists, where a missing list or ``"*"`` in it means "all"."""
        return cls(name, _axis(groups), _axis(namespaces))

    @property
    def is_empty(self) -> bool:
        return self.groups == frozenset() or self.namespaces == frozenset()

    def allows(self, group: str | None, namespace: str | None) -> bool:
        """Whether a workload in ``group`` / ``namespace`` is visible.

        A workload without a namespace (a local run) is visible only to scopes that do not
        restrict namespaces: a token bound to namespaces never sees unnamespaced servers.
        """
        if self.groups is not None and (group is None or group not in self.groups):
            return False
        return self.namespaces is None or (namespace is not None and namespace in self.namespaces)

    def groups_for(self, requested: str | None) -> list[str] | None:
        """The group filter for a search: ``None`` for no filter, ``[]`` when nothing can match."""
        if requested is None:
            return None if self.groups is None else sorted(self.groups)
        if self.groups is not None and requested not in self.groups:
            return []
        return [requested]

    def namespace_filter(self) -> list[str] | None:
        return None if self.namespaces is None else sorted(self.namespaces)


def _axis(values: Iterable[str] | None) -> frozenset[str] | None:
    if values is None:
        return None
    items = frozenset(values)
    return None if WILDCARD in items else items


#: Everything: the scope of every request when auth is off.
UNRESTRICTED = AccessScope("anonymous")
#: Nothing: what a tool sees when no middleware set a scope.
NO_ACCESS = AccessScope("no-access", frozenset(), frozenset())

current_scope: contextvars.ContextVar[AccessScope] = contextvars.ContextVar(
    "mcp_optimizer_access_scope", default=NO_ACCESS
)
