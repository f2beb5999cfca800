"""Errors a user must act on. Each message is one line that names what to fix."""

from __future__ import annotations

from collections.abc import Sequence


class IndexError_(Exception):
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


class RegistryRefError(IndexError_):
    """A pinned registry reference disagrees with the workload (remote vs container). Permanent."""
