"""Settings, read from environment variables (``MCP_OPTIMIZER_*``) and overridden by CLI flags.

One frozen object holds every knob so that each part receives its configuration explicitly
instead of reading the environment on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

ENV_PREFIX = "MCP_OPTIMIZER_"


def _env(name: str, default: str) -> str:
    return os.environ.get(ENV_PREFIX + name, default)


def _env_float(name: str, default: float) -> float:
    raw = _env(name, str(default))
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}{name} must be a number, got {raw!r}") from exc


def _env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = _env(name, default).strip().lower()
    if raw not in choices:
        raise ValueError(f"{ENV_PREFIX}{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in _env(name, "").split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Everything the operator, the MCP endpoint and the CLI can be configured with."""

    #: The SQLite index file. ``:memory:`` is not supported: the index is shared between connections.
    db_path: Path = Path("mcp-optimizer.db")
    #: A local directory holding the ONNX export of the embedding model (no download at run time).
    embedding_model_path: Path | None = None
    embedding_model_name: str = "sentence-transformers/all-MiniLM-L6-v2"
    #: Texts embedded per ONNX run; texts are sorted by length first so batches pad little.
    embedding_batch_size: int = 64
    #: Seconds allowed for one MCP ``tools/list`` against a workload.
    mcp_timeout: float = 10.0
    #: Seconds between periodic re-reads of every running workload's tools.
    resync_interval: float = 300.0
    #: Namespaces the operator watches; empty means all namespaces.
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    #: kopf's liveness probe URL, e.g. ``http://0.0.0.0:8081/healthz``; unset disables it.
    liveness_endpoint: str | None = None
    #: kopf peering object for running several replicas (one active, the others paused); unset
    #: runs standalone, which needs no kopf peering CRDs in the cluster.
    peering_name: str | None = None
    #: This replica's peering priority; the highest runs. Unset picks a random one per process.
    peering_priority: int | None = None
    #: Vector hits below this cosine similarity count only if full-text search also found them.
    min_similarity: float = 0.3
    #: Bytes of the index file SQLite reads through mmap; 0 (default) reads with read(). Faster
    #: vector scans, but RSS counts the mapped index once per pooled connection.
    sqlite_mmap_size: int = 0
    #: Port of ``/metrics`` (Prometheus) and ``/readyz`` in ``mcp-optimizer run``; 0 disables them.
    metrics_port: int = 9090
    #: ``text`` for people, ``json`` (one object per line) for log pipelines.
    log_format: str = "text"
    log_level: str = "INFO"

    # --- The MCP endpoint (mcp_optimizer.mcp.server) ---
    #: Address the MCP endpoint listens on.
    mcp_host: str = "0.0.0.0"
    mcp_port: int = 8080
    #: Streamable HTTP path; SSE (older clients) is served at ``sse_path`` + ``messages_path``.
    mcp_path: str = "/mcp"
    sse_path: str = "/sse"
    messages_path: str = "/messages/"
    #: Seconds allowed for one forwarded ``tools/call`` (tools can be slow, unlike ``tools/list``).
    call_timeout: float = 60.0
    #: ``find_tool``'s limit when the caller gives none.
    find_tool_default_limit: int = 10
    #: A YAML/JSON file (e.g. a mounted Secret) of bearer tokens and their scopes; unset means no auth.
    auth_tokens_file: Path | None = None
    #: The same document inline (env ``MCP_OPTIMIZER_AUTH_TOKENS``); kept out of repr as it holds secrets.
    auth_tokens: str | None = field(default=None, repr=False)
    #: Tools advertised beside the meta-tools, as ``<workload name>/<tool>`` (split at the last ``/``).
    pinned_tools: tuple[str, ...] = field(default_factory=tuple)
    #: Replacement descriptions for ``find_tool`` / ``call_tool``; ``None`` keeps the built-in text.
    find_tool_description: str | None = None
    call_tool_description: str | None = None

    # --- The index as a cache: healing and write scheduling (issue 10, part C) ---
    #: How ``mcp-optimizer run`` checks the index file before using it: ``quick``
    #: (``PRAGMA quick_check``), ``full`` (``integrity_check``) or ``off``. A file that fails is
    #: moved aside and rebuilt from the cluster.
    index_check: str = "quick"
    #: Moved-aside (damaged) index files kept for forensics, newest first; 0 deletes them at once.
    index_damaged_keep: int = 2
    #: Largest index file in bytes (SQLite ``max_page_count``); 0: only the disk limits it.
    index_max_bytes: int = 0
    #: Seconds between checks that the index file is still the one opened, and the first wait
    #: before retrying a repair (then doubling, up to a minute).
    index_heal_interval: float = 5.0
    #: Seconds one catalog write transaction may hold the index's write lock; a large catalog is
    #: written in many such chunks so pod phase changes never wait long behind it.
    catalog_chunk_seconds: float = 0.05
    #: The operator's own Pod (downward API): index repairs are reported as Events on it.
    pod_name: str | None = None
    pod_namespace: str | None = None
    pod_uid: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        model = _env("EMBEDDING_MODEL_PATH", "")
        return cls(
            db_path=Path(_env("DB", "mcp-optimizer.db")),
            embedding_model_path=Path(model) if model else None,
            embedding_model_name=_env("EMBEDDING_MODEL_NAME", cls.embedding_model_name),
            embedding_batch_size=int(_env_float("EMBEDDING_BATCH_SIZE", cls.embedding_batch_size)),
            mcp_timeout=_env_float("MCP_TIMEOUT", cls.mcp_timeout),
            resync_interval=_env_float("RESYNC_INTERVAL", cls.resync_interval),
            namespaces=_env_list("NAMESPACES"),
            liveness_endpoint=_env("LIVENESS_ENDPOINT", "") or None,
            peering_name=_env("PEERING_NAME", "") or None,
            peering_priority=int(_env_float("PEERING_PRIORITY", 0)) if _env("PEERING_PRIORITY", "") else None,
            min_similarity=_env_float("MIN_SIMILARITY", cls.min_similarity),
            sqlite_mmap_size=int(_env_float("SQLITE_MMAP_SIZE", cls.sqlite_mmap_size)),
            metrics_port=int(_env_float("METRICS_PORT", cls.metrics_port)),
            log_format=_env("LOG_FORMAT", cls.log_format),
            log_level=_env("LOG_LEVEL", cls.log_level),
            mcp_host=_env("MCP_HOST", cls.mcp_host),
            mcp_port=int(_env_float("MCP_PORT", cls.mcp_port)),
            mcp_path=_env("MCP_PATH", cls.mcp_path),
            sse_path=_env("SSE_PATH", cls.sse_path),
            messages_path=_env("MESSAGES_PATH", cls.messages_path),
            call_timeout=_env_float("CALL_TIMEOUT", cls.call_timeout),
            find_tool_default_limit=int(_env_float("FIND_TOOL_DEFAULT_LIMIT", cls.find_tool_default_limit)),
            auth_tokens_file=Path(tokens_file) if (tokens_file := _env("AUTH_TOKENS_FILE", "")) else None,
            auth_tokens=_env("AUTH_TOKENS", "") or None,
            pinned_tools=_env_list("PINNED_TOOLS"),
            find_tool_description=_env("FIND_TOOL_DESCRIPTION", "") or None,
            call_tool_description=_env("CALL_TOOL_DESCRIPTION", "") or None,
            index_check=_env_choice("INDEX_CHECK", cls.index_check, ("quick", "full", "off")),
            index_damaged_keep=int(_env_float("INDEX_DAMAGED_KEEP", cls.index_damaged_keep)),
            index_max_bytes=int(_env_float("INDEX_MAX_BYTES", cls.index_max_bytes)),
            index_heal_interval=_env_float("INDEX_HEAL_INTERVAL", cls.index_heal_interval),
            catalog_chunk_seconds=_env_float("CATALOG_CHUNK_SECONDS", cls.catalog_chunk_seconds),
            pod_name=_env("POD_NAME", "") or None,
            pod_namespace=_env("POD_NAMESPACE", "") or None,
            pod_uid=_env("POD_UID", "") or None,
        )

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with the given fields replaced; ``None`` values are ignored (unset CLI flags)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]
