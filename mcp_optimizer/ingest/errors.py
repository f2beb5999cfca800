"""Errors a user must act on. Each message is one line that names what to fix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mcp_optimizer.errors import McpOptimizerError


class IndexError_(McpOptimizerError):
    """Base of the index's user-facing errors."""


class WorkloadSpecError(IndexError_, ValueError):
    """A workload description is invalid (both or neither of url/package, bad URL, ...). Permanent."""


class DuplicateRegistryServersError(IndexError_):
    """More than one registry entry matches a workload; the user must remove an alias or pin one.

    The workload is still stored, with status ERROR and this message as its reason.
    """

    def __init__(self, workload_name: str, identifier: str, matches: Sequence[tuple[str, str]]) -> None:
        self.workload_name = workload_name
        self.identifier = identifier
        #: (catalog, name) of every matching registry entry.
        self.matches = list(matches)
        names = ", ".join(f"{catalog}/{name}" if catalog else name for catalog, name in self.matches)
        super().__init__(
            f"workload {workload_name!r}: {len(self.matches)} registry entries match {identifier}: {names}; "
            "remove the duplicate from a catalog or pin one with a registry reference (catalog + name)"
        )


@dataclass(frozen=True)
class RegistryNote:
    """Why a workload's pinned registry entry is not what it is linked to; not an error.

    ``code`` is ``RegistryRefNotFound`` (the entry does not exist, yet: the workload stays
    unlinked until it appears) or ``RegistryRefInvalid`` (the entry is of the other kind, remote
    vs container: the pin is ignored and the workload matched by its own URL or image).
    """

    code: str
    message: str
