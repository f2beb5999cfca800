"""Settings, read from environment variables (``MCP_OPTIMIZER_*``) and overridden by CLI flags.

One frozen object holds every knob so that each part receives its configuration explicitly
instead of reading the environment on its own.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mcp_optimizer.errors import ConfigError

if TYPE_CHECKING:
    from mcp_optimizer.embeddings.model import ModelSpec

ENV_PREFIX = "MCP_OPTIMIZER_"
#: ``MCP_OPTIMIZER_LOG_FORMAT`` and ``_LOG_LEVEL`` (any case).
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: How ``find_tool`` ranks: both retrievers fused, or keyword-only (no model).
SEARCH_MODES = ("hybrid", "bm25")


def _env(name: str, default: str) -> str:
    return os.environ.get(ENV_PREFIX + name, default)


def _env_float(name: str, default: float, *, minimum: float | None = None, positive: bool = False) -> float:
    """A finite number; ``positive``: above zero (a timeout or an interval of 0 would spin)."""
    raw = _env(name, str(default))
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name} must be a number, got {raw!r}") from exc
    if not math.isfinite(value):
        raise ConfigError(f"{ENV_PREFIX}{name} must be a finite number, got {raw!r}")
    if positive and value <= 0:
        raise ConfigError(f"{ENV_PREFIX}{name} must be above 0, got {raw!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{ENV_PREFIX}{name} must be at least {minimum:g}, got {raw!r}")
    return value


def _env_whole(name: str, default: int, *, minimum: int | None = 0, maximum: int | None = None) -> int:
    """A whole number in range: ``8080.9`` is refused rather than read as 8080."""
    raw = _env(name, str(default)).strip()
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name} must be a whole number, got {raw!r}") from exc
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = "" if minimum is None else f"at least {minimum}"
        high = "" if maximum is None else f"at most {maximum}"
        raise ConfigError(f"{ENV_PREFIX}{name} must be {' and '.join(x for x in (low, high) if x)}, got {raw!r}")
    return value


def _env_int(name: str, default: int) -> int:
    """A positive whole number (bounds: zero or negative would refuse everything or nothing)."""
    raw = _env(name, str(default))
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name} must be a whole number, got {raw!r}") from exc
    if value <= 0:
        raise ConfigError(f"{ENV_PREFIX}{name} must be positive, got {value}")
    return value
def _env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = _env(name, default).strip().lower()
    if raw not in choices:
        raise ConfigError(f"{ENV_PREFIX}{name} must be one of {', '.join(choices)}, got {raw!r}")
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
    #: Vector hits below this cosine similarity count only if full-text search also found them;
    #: None takes the model's own floor (``ModelSpec.min_similarity``).
    min_similarity: float | None = None
    #: Bytes of the index file SQLite reads through mmap; 0 (default) reads with read(). Faster
    #: vector scans, but RSS counts the mapped index once per pooled connection.
    sqlite_mmap_size: int = 0
    #: Port of ``/metrics`` (Prometheus) and ``/readyz`` in ``mcp-optimizer run``; 0 disables them.
    metrics_port: int = 9090
    # --- Running outside a cluster (issue 11): where the metrics server listens ---
    #: Address of ``/metrics`` and ``/readyz``: every interface in a pod (Prometheus scrapes it
    #: from elsewhere), ``127.0.0.1`` on a workstation.
    metrics_host: str = "0.0.0.0"
    #: ``text`` for people, ``json`` (one object per line) for log pipelines.
    log_format: str = "text"
    log_level: str = "INFO"

    # --- The MCP endpoint (mcp_optimizer.mcp.server) ---
    #: Address the MCP endpoint listens on; ``None`` lets :func:`endpoint_host` decide from the auth mode.
    mcp_host: str | None = None
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

    # --- Access control, catalog trust and sessions (issue 10 part B) ---
    #: ``kubernetes`` (ServiceAccount tokens, TokenReview + SubjectAccessReview), ``tokens`` (the
    #: static tokens document) or ``none``; ``None`` lets :func:`resolve_auth_mode` decide.
    auth_mode: str | None = None
    #: Audiences a caller's token must carry (TokenReview ``spec.audiences``). Empty: the API
    #: server's own audiences, i.e. any ServiceAccount token, including ones meant for the API server.
    auth_audiences: tuple[str, ...] = ("mcp-optimizer",)
    #: ``resource.group`` a caller must be allowed to ``get`` in a namespace to see its servers
    #: (SubjectAccessReview); e.g. ``mcpservers.toolhive.stacklok.dev`` to follow ToolHive's RBAC.
    auth_access_resource: str = "mcpservers.mcp-optimizer.dev"
    #: Seconds a TokenReview or SubjectAccessReview answer is reused: the delay before a revoked
    #: token or RoleBinding takes effect.
    auth_cache_ttl: float = 30.0
    #: Tokens and identities remembered at most (least recently used forgotten first).
    auth_cache_size: int = 4096
    #: Seconds allowed for one review call to the API server; slower means 503, never open.
    auth_review_timeout: float = 5.0
    #: The operator's own namespace: always a trusted catalog namespace. Default: the pod's
    #: namespace (from its ServiceAccount mount), unset outside a cluster.
    operator_namespace: str | None = None
    #: Further namespaces whose labelled ConfigMaps are catalogs. Nowhere else is read.
    catalog_namespaces: tuple[str, ...] = field(default_factory=tuple)
    #: Seconds without a request after which an MCP session is closed (the SDK's default is 1800).
    session_idle_timeout: float = 300.0
    #: Open MCP sessions (streamable HTTP and SSE together) one caller identity may hold.
    sessions_per_identity: int = 64
    #: Open MCP sessions in all; when full, the largest holder's least recently used one is closed.
    max_sessions: int = 1000

    @property
    def trusted_catalog_namespaces(self) -> tuple[str, ...]:
        """The operator's namespace, then the listed ones: the only places catalogs are read from."""
        own = (self.operator_namespace,) if self.operator_namespace else ()
        return tuple(dict.fromkeys((*own, *self.catalog_namespaces)))
    # --- What MCP servers may send, where the operator may connect, dead servers (issue 10 A) ---
    # Bounds on everything a server sends (mcp_optimizer.mcp.limits has the measurements).
    #: Bytes of one response while listing tools (one tools/list page).
    max_page_bytes: int = 1024 * 1024
    #: Bytes of all responses of one tools/list (every page).
    max_list_bytes: int = 8 * 1024 * 1024
    #: Tools one server may offer; more fails its tools/list.
    max_tools: int = 1000
    #: Characters of a tool description; longer ones are stored clipped, with a marker.
    max_description_chars: int = 8192
    #: Bytes of a tool's inputSchema; larger ones are stored reduced, with a marker.
    max_schema_bytes: int = 64 * 1024
    #: Bytes of a call result returned to the caller; a larger one is refused.
    max_call_result_bytes: int = 1024 * 1024
    #: tools/list answers over 256 KiB parsed at the same time; more wait for a turn.
    max_concurrent_large_lists: int = 4
    #: Destinations admitted despite the rules (mcp_optimizer.mcp.destinations): host names,
    #: ``*.suffix`` names, addresses and CIDR networks. Empty: loopback, link-local, metadata,
    #: the apiserver, the operator's pod and other namespaces' Services are all refused.
    allowed_destinations: tuple[str, ...] = field(default_factory=tuple)
    #: Seconds between tools/list probes of remote servers (the resync covers container servers).
    remote_probe_interval: float = 60.0
    # --- ToolHive interop (mcp_optimizer.operator.toolhive): ToolHive's resources, read-only ---
    #: ``auto``: watch ToolHive's servers (toolhive.stacklok.dev) when their CRDs are served and the
    #: operator may list them, checked again every ``toolhive_recheck_interval``; ``false``: never.
    #: Checked when the operator starts (``ToolHiveOptions.from_settings``).
    toolhive: str = "auto"
    #: Seconds between checks whether ToolHive's API appeared, went away or became readable.
    toolhive_recheck_interval: float = 60.0
    #: Groups indexed through their VirtualMCPServer instead of their backends, as ``namespace/group``.
    toolhive_vmcp_groups: tuple[str, ...] = field(default_factory=tuple)
    # --- Retrieval (issue 14): the embedding model, keyword-only mode ---
    #: ``hybrid`` ranks with full-text search and the embedding model together; ``bm25`` is
    #: keyword-only: no model is loaded and nothing is embedded.
    search_mode: str = "hybrid"
    #: The model's vector dimension; known models (``KNOWN_MODELS``) need none.
    embedding_dim: int | None = None
    #: Text put before every query / every stored text; ``None`` takes the known model's own.
    embedding_query_prefix: str | None = None
    embedding_passage_prefix: str | None = None

    def embedding_model_spec(self) -> ModelSpec:
        """The configured model (name, dimension, prefixes); raises EmbeddingError when unknown
        and its dimension is not given."""
        from mcp_optimizer.embeddings.model import model_spec

        return model_spec(self.embedding_model_name, dim=self.embedding_dim,
                          query_prefix=self.embedding_query_prefix, passage_prefix=self.embedding_passage_prefix)

    @property
    def keyword_only(self) -> bool:
        return self.search_mode == "bm25"

    def __post_init__(self) -> None:
        if self.search_mode not in SEARCH_MODES:
            raise ConfigError(f"{ENV_PREFIX}SEARCH_MODE must be one of {', '.join(SEARCH_MODES)}, "
                             f"got {self.search_mode!r}")
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
    # --- PostgreSQL as the index (issue 13): a database URL instead of the file ---
    #: A SQLAlchemy URL (``postgresql+psycopg://user:password@host/db`` or
    #: ``postgresql+asyncpg://...``): the index is that PostgreSQL database (with pgvector)
    #: instead of the file ``db_path``. ``MCP_OPTIMIZER_DB`` and ``--db`` take either; a value
    #: with ``://`` is a URL. Its password is never shown.
    db_url: str | None = None
    #: PostgreSQL only: build HNSW indexes on the tool vector tables (approximate KNN, for large
    #: indexes); off (default) every search is an exact scan, like sqlite-vec's.
    pg_hnsw: bool = False
    #: PostgreSQL with HNSW: candidates one index scan visits (``hnsw.ef_search``, at least the
    #: search's candidate pool, at most 1000). pgvector filters after the index scan.
    pg_hnsw_ef_search: int = 200

    @property
    def index_location(self) -> Path | str:
        """The index: the database URL when one is set, else the file."""
        return self.db_url or self.db_path

    def with_index(self, location: Path | str | None) -> Settings:
        """A copy whose index is ``location`` (``--db``: a file path or a database URL); None keeps it."""
        if location is None:
            return self
        if "://" in str(location) and not isinstance(location, Path):
            return replace(self, db_url=str(location))
        return replace(self, db_url=None, db_path=Path(location))

    @classmethod
    def from_env(cls) -> Settings:
        model = _env("EMBEDDING_MODEL_PATH", "")
        return cls(
            db_path=Path(_env("DB", "mcp-optimizer.db")),
            embedding_model_path=Path(model) if model else None,
            embedding_model_name=_env("EMBEDDING_MODEL_NAME", cls.embedding_model_name),
            embedding_batch_size=_env_whole("EMBEDDING_BATCH_SIZE", cls.embedding_batch_size, minimum=1),
            mcp_timeout=_env_float("MCP_TIMEOUT", cls.mcp_timeout, positive=True),
            resync_interval=_env_float("RESYNC_INTERVAL", cls.resync_interval, positive=True),
            namespaces=_env_list("NAMESPACES"),
            liveness_endpoint=_env("LIVENESS_ENDPOINT", "") or None,
            peering_name=_env("PEERING_NAME", "") or None,
            peering_priority=_env_whole("PEERING_PRIORITY", 0, minimum=None) if _env("PEERING_PRIORITY", "") else None,
            min_similarity=_env_float("MIN_SIMILARITY", 0.0) if _env("MIN_SIMILARITY", "") else None,
            sqlite_mmap_size=_env_whole("SQLITE_MMAP_SIZE", cls.sqlite_mmap_size),
            metrics_port=_env_whole("METRICS_PORT", cls.metrics_port, maximum=65535),
            metrics_host=_env("METRICS_HOST", cls.metrics_host),
            log_format=_env_choice("LOG_FORMAT", cls.log_format, LOG_FORMATS),
            log_level=_env_choice("LOG_LEVEL", cls.log_level.lower(), LOG_LEVELS).upper(),
            mcp_host=_env("MCP_HOST", "") or None,
            mcp_port=_env_whole("MCP_PORT", cls.mcp_port, maximum=65535),
            mcp_path=_env("MCP_PATH", cls.mcp_path),
            sse_path=_env("SSE_PATH", cls.sse_path),
            messages_path=_env("MESSAGES_PATH", cls.messages_path),
            call_timeout=_env_float("CALL_TIMEOUT", cls.call_timeout, positive=True),
            find_tool_default_limit=_env_whole("FIND_TOOL_DEFAULT_LIMIT", cls.find_tool_default_limit, minimum=1),
            auth_tokens_file=Path(tokens_file) if (tokens_file := _env("AUTH_TOKENS_FILE", "")) else None,
            auth_tokens=_env("AUTH_TOKENS", "") or None,
            pinned_tools=_env_list("PINNED_TOOLS"),
            find_tool_description=_env("FIND_TOOL_DESCRIPTION", "") or None,
            call_tool_description=_env("CALL_TOOL_DESCRIPTION", "") or None,
            auth_mode=_auth_mode(_env("AUTH_MODE", "")),
            auth_audiences=(
                _env_list("AUTH_AUDIENCES") if ENV_PREFIX + "AUTH_AUDIENCES" in os.environ else cls.auth_audiences
            ),
            auth_access_resource=_env("AUTH_ACCESS_RESOURCE", cls.auth_access_resource),
            auth_cache_ttl=_env_float("AUTH_CACHE_TTL", cls.auth_cache_ttl, minimum=0),
            auth_cache_size=_env_whole("AUTH_CACHE_SIZE", cls.auth_cache_size, minimum=1),
            auth_review_timeout=_env_float("AUTH_REVIEW_TIMEOUT", cls.auth_review_timeout, positive=True),
            operator_namespace=_env("OPERATOR_NAMESPACE", "") or _pod_namespace(),
            catalog_namespaces=_env_list("CATALOG_NAMESPACES"),
            session_idle_timeout=_env_float("SESSION_IDLE_TIMEOUT", cls.session_idle_timeout, positive=True),
            sessions_per_identity=_env_whole("SESSIONS_PER_IDENTITY", cls.sessions_per_identity, minimum=1),
            max_sessions=_env_whole("MAX_SESSIONS", cls.max_sessions, minimum=1),
            max_page_bytes=_env_int("MAX_PAGE_BYTES", cls.max_page_bytes),
            max_list_bytes=_env_int("MAX_LIST_BYTES", cls.max_list_bytes),
            max_tools=_env_int("MAX_TOOLS", cls.max_tools),
            max_description_chars=_env_int("MAX_DESCRIPTION_CHARS", cls.max_description_chars),
            max_schema_bytes=_env_int("MAX_SCHEMA_BYTES", cls.max_schema_bytes),
            max_call_result_bytes=_env_int("MAX_CALL_RESULT_BYTES", cls.max_call_result_bytes),
            max_concurrent_large_lists=_env_int("MAX_CONCURRENT_LARGE_LISTS", cls.max_concurrent_large_lists),
            allowed_destinations=_env_list("ALLOWED_DESTINATIONS"),
            remote_probe_interval=_env_float("REMOTE_PROBE_INTERVAL", cls.remote_probe_interval, positive=True),
            toolhive=_env("TOOLHIVE", cls.toolhive).strip().lower(),
            toolhive_recheck_interval=_env_float(
                "TOOLHIVE_RECHECK_INTERVAL", cls.toolhive_recheck_interval, positive=True
            ),
            toolhive_vmcp_groups=_env_list("TOOLHIVE_VMCP_GROUPS"),
            search_mode=_env("SEARCH_MODE", cls.search_mode).strip().lower(),
            embedding_dim=_env_whole("EMBEDDING_DIM", 0) or None,
            embedding_query_prefix=os.environ.get(ENV_PREFIX + "EMBEDDING_QUERY_PREFIX"),
            embedding_passage_prefix=os.environ.get(ENV_PREFIX + "EMBEDDING_PASSAGE_PREFIX"),
            index_check=_env_choice("INDEX_CHECK", cls.index_check, ("quick", "full", "off")),
            index_damaged_keep=_env_whole("INDEX_DAMAGED_KEEP", cls.index_damaged_keep),
            index_max_bytes=_env_whole("INDEX_MAX_BYTES", cls.index_max_bytes),
            index_heal_interval=_env_float("INDEX_HEAL_INTERVAL", cls.index_heal_interval, positive=True),
            catalog_chunk_seconds=_env_float("CATALOG_CHUNK_SECONDS", cls.catalog_chunk_seconds, minimum=0),
            pod_name=_env("POD_NAME", "") or None,
            pod_namespace=_env("POD_NAMESPACE", "") or None,
            pod_uid=_env("POD_UID", "") or None,
            # PostgreSQL as the index (issue 13)
            db_url=_env("DB", "") if "://" in _env("DB", "") else None,
            pg_hnsw=_env_choice("PG_HNSW", "off", ("on", "off", "true", "false", "1", "0")) in ("on", "true", "1"),
            pg_hnsw_ef_search=_env_whole("PG_HNSW_EF_SEARCH", cls.pg_hnsw_ef_search, minimum=1, maximum=1000),
        )

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with the given fields replaced; ``None`` values are ignored (unset CLI flags)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]


# --- Access control (issue 10 part B): which auth, and where the endpoint listens ---

AUTH_KUBERNETES = "kubernetes"
AUTH_TOKENS = "tokens"
AUTH_NONE = "none"
AUTH_MODES = (AUTH_KUBERNETES, AUTH_TOKENS, AUTH_NONE)
LOOPBACK_HOST = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"
#: Where a pod's ServiceAccount mount says which namespace the pod runs in.
_POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _auth_mode(raw: str) -> str | None:
    mode = raw.strip().lower()
    if not mode:
        return None
    if mode not in AUTH_MODES:
        raise ConfigError(f"{ENV_PREFIX}AUTH_MODE must be one of {', '.join(AUTH_MODES)}, got {raw!r}")
    return mode


def _pod_namespace() -> str | None:
    try:
        return _POD_NAMESPACE_FILE.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def resolve_auth_mode(settings: Settings, *, cluster: bool) -> str:
    """The auth mode to run with: the configured one, else tokens when a tokens document is
    configured, else Kubernetes auth when there is a cluster (``mcp-optimizer run``), else none
    (``mcp-optimizer serve`` on a laptop, which then listens on loopback only)."""
    if settings.auth_mode is not None:
        mode = _auth_mode(settings.auth_mode)
        assert mode is not None
        return mode
    if settings.auth_tokens_file is not None or settings.auth_tokens:
        return AUTH_TOKENS
    return AUTH_KUBERNETES if cluster else AUTH_NONE


def endpoint_host(settings: Settings, auth_mode: str) -> str:
    """Where the MCP endpoint listens: the configured host, else loopback when nobody is asked for
    a credential (no auth must never be reachable from the network by default), else every interface."""
    if settings.mcp_host:
        return settings.mcp_host
    return LOOPBACK_HOST if auth_mode == AUTH_NONE else ALL_INTERFACES
