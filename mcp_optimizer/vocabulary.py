"""Words every layer shares: the index stores them, the operator decides them, the endpoint
shows them. Kept apart from the database models so that reading a status does not mean
importing the database (the operator never does: see ``.importlinter``)."""

from __future__ import annotations

from enum import StrEnum


class WorkloadStatus(StrEnum):
    """What the cluster says about a workload; search offers only RUNNING workloads' tools."""

    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    ERROR = "ERROR"
