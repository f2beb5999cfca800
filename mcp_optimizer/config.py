"""Settings, read from environment variables (``MCP_OPTIMIZER_*``) and overridden by CLI flags.

One frozen object holds every knob so that each part receives its configuration explicitly
instead of reading the environment on its own. Each setting is declared once: its type (with its
range or its choices), its default, its environment variable and a description for people. The
declarations are grouped by concern, as kopf groups its ``OperatorSettings``; :class:`Settings`
joins the groups, so a setting is still read as ``settings.mcp_port``.

pydantic-settings reads the environment and pydantic checks every value read from it or given by
a CLI flag (:meth:`Settings.with_overrides`): a value that cannot work is a :class:`ConfigError`
naming the variable and the value, never a silent truncation, and a secret's value is never
repeated. Values given in code (``Settings(...)``, ``dataclasses.replace``) are taken as they are.

A new setting is one ``setting(...)`` line in the group of its concern (or a new group joined
into :class:`Settings`), and a row in README's Configuration table (a test checks it).
"""

from __future__ import annotations

import functools
import os
import socket
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from annotated_types import Ge, Gt, Le
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mcp_optimizer.errors import ConfigError

if TYPE_CHECKING:
    from mcp_optimizer.embeddings.model import ModelSpec

ENV_PREFIX = "MCP_OPTIMIZER_"
#: ``MCP_OPTIMIZER_LOG_FORMAT`` and ``_LOG_LEVEL`` (any case).
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = typing.get_args(LogFormat)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: How ``find_tool`` ranks: both retrievers fused, or keyword-only (no model).
SearchMode = Literal["hybrid", "bm25"]
SEARCH_MODES: tuple[str, ...] = typing.get_args(SearchMode)
IndexCheck = Literal["quick", "full", "off"]

AUTH_KUBERNETES = "kubernetes"
AUTH_TOKENS = "tokens"
AUTH_NONE = "none"
AuthMode = Literal["kubernetes", "tokens", "none"]
AUTH_MODES: tuple[str, ...] = typing.get_args(AuthMode)
LOOPBACK_HOST = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"
#: Where a pod's ServiceAccount mount says which namespace the pod runs in.
_POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


# --- Value types: what a setting may hold, checked where it is read (environment, CLI flags) ---


def _blank_is_none(value: object) -> object:
    """An empty variable is an unset one (``MCP_OPTIMIZER_LIVENESS_ENDPOINT=`` disables it)."""
    return None if isinstance(value, str) and not value.strip() else value


def _words(value: object) -> object:
    """``a, b ,c`` from the environment; a tuple from code stays as it is."""
    return tuple(part.strip() for part in value.split(",") if part.strip()) if isinstance(value, str) else value


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _upper(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


#: A TCP port; 0 lets the system pick one (the MCP endpoint) or disables the server (metrics).
Port = Annotated[int, Ge(0), Le(65535)]
#: A timeout or an interval: above zero (0 would spin or refuse everything), finite.
Seconds = Annotated[float, Gt(0), Field(allow_inf_nan=False)]
#: A delay that may be zero (no caching, no chunking).
SecondsOrZero = Annotated[float, Ge(0), Field(allow_inf_nan=False)]
#: A size, count or bound that must admit something.
Positive = Annotated[int, Gt(0)]
AtLeastOne = Annotated[int, Ge(1)]
#: A byte size or count where 0 has a meaning of its own (see the setting).
ZeroOrMore = Annotated[int, Ge(0)]
#: A comma-separated list in the environment (never JSON).
Words = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_words)]
OptionalText = Annotated[str | None, BeforeValidator(_blank_is_none)]
OptionalPath = Annotated[Path | None, BeforeValidator(_blank_is_none)]
#: On or off: ``true``/``false`` in any case (pydantic also takes 1/0, yes/no, on/off).
Switch = Annotated[bool, BeforeValidator(_lower)]

T = TypeVar("T")


def setting(default: T, env: str, description: str, *, secret: bool = False) -> T:
    """One setting: its default, its variable (``MCP_OPTIMIZER_`` + ``env``) and what it means.

    A ``secret`` is kept out of repr and its value out of every error message."""
    metadata = {"env": ENV_PREFIX + env, "description": description, "secret": secret}
    return field(default=default, repr=not secret, metadata=metadata)


# --- The index file (mcp_optimizer.db) and its healing (issue 10 part C) ---


@dataclass(frozen=True)
class IndexSettings:
    db_path: Path = setting(Path("mcp-optimizer.db"), "DB",
                            "The SQLite index file, or a PostgreSQL URL (a value with ``://`` is one: see "
                            "``DB_URL``). ``:memory:`` is not supported: the index is shared between "
                            "connections.")
    db_url: OptionalText = setting(
        None, "DB_URL",
        "A SQLAlchemy URL (``postgresql+psycopg://user:password@host/db`` or ``postgresql+asyncpg://...``): the "
        "index is that PostgreSQL database (with pgvector) instead of the file. ``MCP_OPTIMIZER_DB`` and ``--db`` "
        "take a URL too. Its password is never shown.", secret=True)
    pg_hnsw: Switch = setting(False, "PG_HNSW",
                              "PostgreSQL only: HNSW indexes on the tool vector tables (approximate KNN, for large "
                              "indexes); off, every search is an exact scan, like sqlite-vec's.")
    pg_hnsw_ef_search: Annotated[int, Ge(1), Le(1000)] = setting(
        200, "PG_HNSW_EF_SEARCH",
        "PostgreSQL with HNSW: candidates one index scan visits (``hnsw.ef_search``, at least the search's "
        "candidate pool, at most 1000). pgvector filters after the index scan.")
    sqlite_mmap_size: ZeroOrMore = setting(0, "SQLITE_MMAP_SIZE",
                                           "Bytes of the index file SQLite reads through mmap; 0 reads with "
                                           "read(). Faster vector scans, but RSS counts the mapped index once "
                                           "per pooled connection.")
    index_check: Annotated[IndexCheck, BeforeValidator(_lower)] = setting(
        "quick", "INDEX_CHECK",
        "How ``mcp-optimizer run`` checks the index file before using it: ``quick`` (``PRAGMA quick_check``), "
        "``full`` (``integrity_check``) or ``off``. A file that fails is moved aside and rebuilt from the cluster.")
    index_damaged_keep: ZeroOrMore = setting(2, "INDEX_DAMAGED_KEEP",
                                             "Moved-aside (damaged) index files kept for forensics, newest first; "
                                             "0 deletes them at once.")
    index_max_bytes: ZeroOrMore = setting(0, "INDEX_MAX_BYTES",
                                          "Largest index file in bytes (SQLite ``max_page_count``); 0: only the "
                                          "disk limits it.")
    index_heal_interval: Seconds = setting(5.0, "INDEX_HEAL_INTERVAL",
                                           "Seconds between checks that the index file is still the one opened, "
                                           "and the first wait before retrying a repair (then doubling, up to a "
                                           "minute).")
    catalog_chunk_seconds: SecondsOrZero = setting(0.05, "CATALOG_CHUNK_SECONDS",
                                                   "Seconds one catalog write transaction may hold the index's write "
                                                   "lock; a large catalog is written in many such chunks so pod "
                                                   "phase changes never wait long behind it.")


# --- Retrieval (issue 14): the embedding model, keyword-only mode ---


def _zero_is_none(value: object) -> object:
    value = _blank_is_none(value)
    return None if value in (0, "0") else value


@dataclass(frozen=True)
class RetrievalSettings:
    search_mode: Annotated[SearchMode, BeforeValidator(_lower)] = setting(
        "hybrid", "SEARCH_MODE",
        "``hybrid`` ranks with full-text search and the embedding model together; ``bm25`` is keyword-only: "
        "no model is loaded and nothing is embedded.")
    embedding_model_path: OptionalPath = setting(None, "EMBEDDING_MODEL_PATH",
                                                 "A local directory holding the ONNX export of the embedding "
                                                 "model (no download at run time).")
    embedding_model_name: str = setting("sentence-transformers/all-MiniLM-L6-v2", "EMBEDDING_MODEL_NAME",
                                        "Which model that is (``KNOWN_MODELS``, or any with "
                                        "``EMBEDDING_DIM``).")
    embedding_dim: Annotated[AtLeastOne | None, BeforeValidator(_zero_is_none)] = setting(
        None, "EMBEDDING_DIM", "The model's vector dimension; known models need none (0 or unset).")
    embedding_query_prefix: str | None = setting(None, "EMBEDDING_QUERY_PREFIX",
                                                 "Text put before every query; unset takes the known model's own.")
    embedding_passage_prefix: str | None = setting(None, "EMBEDDING_PASSAGE_PREFIX",
                                                   "Text put before every stored text; unset takes the known "
                                                   "model's own.")
    embedding_batch_size: AtLeastOne = setting(64, "EMBEDDING_BATCH_SIZE",
                                               "Texts embedded per ONNX run; texts are sorted by length first so "
                                               "batches pad little.")
    min_similarity: Annotated[Annotated[float, Field(allow_inf_nan=False)] | None,
                              BeforeValidator(_blank_is_none)] = setting(
        None, "MIN_SIMILARITY",
        "Vector hits below this cosine similarity count only if full-text search also found them; unset takes "
        "the model's own floor (``ModelSpec.min_similarity``).")

    def embedding_model_spec(self) -> ModelSpec:
        """The configured model (name, dimension, prefixes); raises EmbeddingError when unknown
        and its dimension is not given."""
        from mcp_optimizer.embeddings.model import model_spec

        return model_spec(self.embedding_model_name, dim=self.embedding_dim,
                          query_prefix=self.embedding_query_prefix, passage_prefix=self.embedding_passage_prefix)

    @property
    def keyword_only(self) -> bool:
        return self.search_mode == "bm25"


# --- The MCP endpoint (mcp_optimizer.mcp.server) and its sessions ---


@dataclass(frozen=True)
class EndpointSettings:
    mcp_host: OptionalText = setting(None, "MCP_HOST",
                                     "Address the MCP endpoint listens on; unset: loopback without auth, every "
                                     "interface with it (``endpoint_host``).")
    mcp_port: Port = setting(8080, "MCP_PORT", "Port of the MCP endpoint; 0 takes any free port.")
    mcp_path: str = setting("/mcp", "MCP_PATH", "Streamable HTTP path.")
    sse_path: str = setting("/sse", "SSE_PATH", "SSE path (older clients), with ``MESSAGES_PATH``.")
    messages_path: str = setting("/messages/", "MESSAGES_PATH", "Where SSE clients post their messages.")
    call_timeout: Seconds = setting(60.0, "CALL_TIMEOUT",
                                    "Seconds allowed for one forwarded ``tools/call`` (tools can be slow, unlike "
                                    "``tools/list``).")
    find_tool_default_limit: AtLeastOne = setting(10, "FIND_TOOL_DEFAULT_LIMIT",
                                                  "``find_tool``'s limit when the caller gives none.")
    pinned_tools: Words = setting((), "PINNED_TOOLS",
                                  "Tools advertised beside the meta-tools, as ``<workload name>/<tool>`` (split at "
                                  "the last ``/``).")
    find_tool_description: OptionalText = setting(None, "FIND_TOOL_DESCRIPTION",
                                                  "Replacement description of ``find_tool``; unset keeps the "
                                                  "built-in text.")
    call_tool_description: OptionalText = setting(None, "CALL_TOOL_DESCRIPTION",
                                                  "Replacement description of ``call_tool``; unset keeps the "
                                                  "built-in text.")
    session_idle_timeout: Seconds = setting(300.0, "SESSION_IDLE_TIMEOUT",
                                            "Seconds without a request after which an MCP session is closed (the "
                                            "SDK's default is 1800).")
    sessions_per_identity: AtLeastOne = setting(64, "SESSIONS_PER_IDENTITY",
                                                "Open MCP sessions (streamable HTTP and SSE together) one caller "
                                                "identity may hold.")
    max_sessions: AtLeastOne = setting(1000, "MAX_SESSIONS",
                                       "Open MCP sessions in all; when full, the largest holder's least recently "
                                       "used one is closed.")


# --- Access control (issue 10 part B): who may call the endpoint ---


@dataclass(frozen=True)
class AuthSettings:
    auth_mode: Annotated[AuthMode | None, BeforeValidator(_lower), BeforeValidator(_blank_is_none)] = setting(
        None, "AUTH_MODE",
        "``kubernetes`` (ServiceAccount tokens, TokenReview + SubjectAccessReview), ``tokens`` (the static "
        "tokens document) or ``none``; unset: :func:`resolve_auth_mode` decides.")
    auth_tokens_file: OptionalPath = setting(None, "AUTH_TOKENS_FILE",
                                             "A YAML/JSON file (e.g. a mounted Secret) of bearer tokens and their "
                                             "scopes; unset means no tokens.")
    auth_tokens: OptionalText = setting(None, "AUTH_TOKENS", "The same document inline.", secret=True)
    auth_audiences: Words = setting(("mcp-optimizer",), "AUTH_AUDIENCES",
                                    "Audiences a caller's token must carry (TokenReview ``spec.audiences``). Set "
                                    "but empty: the API server's own audiences, i.e. any ServiceAccount token, "
                                    "including ones meant for the API server.")
    auth_access_resource: str = setting("mcpservers.mcp-optimizer.dev", "AUTH_ACCESS_RESOURCE",
                                        "``resource.group`` a caller must be allowed to ``get`` in a namespace to "
                                        "see its servers (SubjectAccessReview); e.g. "
                                        "``mcpservers.toolhive.stacklok.dev`` to follow ToolHive's RBAC.")
    auth_cache_ttl: SecondsOrZero = setting(30.0, "AUTH_CACHE_TTL",
                                            "Seconds a TokenReview or SubjectAccessReview answer is reused: the "
                                            "delay before a revoked token or RoleBinding takes effect.")
    auth_cache_size: AtLeastOne = setting(4096, "AUTH_CACHE_SIZE",
                                          "Tokens and identities remembered at most (least recently used "
                                          "forgotten first).")
    auth_review_timeout: Seconds = setting(5.0, "AUTH_REVIEW_TIMEOUT",
                                           "Seconds allowed for one review call to the API server; slower means "
                                           "503, never open.")


# --- What MCP servers may send and where the operator may connect (issue 10 part A) ---


@dataclass(frozen=True)
class LimitSettings:
    # Bounds on everything a server sends (mcp_optimizer.mcp.limits has the measurements).
    mcp_timeout: Seconds = setting(10.0, "MCP_TIMEOUT", "Seconds allowed for one MCP ``tools/list`` against a "
                                   "workload.")
    max_page_bytes: Positive = setting(1024 * 1024, "MAX_PAGE_BYTES",
                                       "Bytes of one response while listing tools (one tools/list page).")
    max_list_bytes: Positive = setting(8 * 1024 * 1024, "MAX_LIST_BYTES",
                                       "Bytes of all responses of one tools/list (every page).")
    max_tools: Positive = setting(1000, "MAX_TOOLS", "Tools one server may offer; more fails its tools/list.")
    max_description_chars: Positive = setting(8192, "MAX_DESCRIPTION_CHARS",
                                              "Characters of a tool description; longer ones are stored clipped, "
                                              "with a marker.")
    max_schema_bytes: Positive = setting(64 * 1024, "MAX_SCHEMA_BYTES",
                                         "Bytes of a tool's inputSchema; larger ones are stored reduced, with a "
                                         "marker.")
    max_call_result_bytes: Positive = setting(1024 * 1024, "MAX_CALL_RESULT_BYTES",
                                              "Bytes of a call result returned to the caller; a larger one is "
                                              "refused.")
    max_concurrent_large_lists: Positive = setting(4, "MAX_CONCURRENT_LARGE_LISTS",
                                                   "tools/list answers over 256 KiB parsed at the same time; more "
                                                   "wait for a turn.")
    allowed_destinations: Words = setting((), "ALLOWED_DESTINATIONS",
                                          "Destinations admitted despite the rules (mcp_optimizer.mcp.destinations): "
                                          "host names, ``*.suffix`` names, addresses and CIDR networks. Empty: "
                                          "loopback, link-local, metadata, the apiserver, the operator's pod and "
                                          "other namespaces' Services are all refused.")
    remote_probe_interval: Seconds = setting(60.0, "REMOTE_PROBE_INTERVAL",
                                             "Seconds between tools/list probes of remote servers (the resync covers "
                                             "container servers).")


# --- The operator in its cluster: what it watches, peering, catalogs, ToolHive, its own Pod ---


@dataclass(frozen=True)
class ClusterSettings:
    namespaces: Words = setting((), "NAMESPACES", "Namespaces the operator watches; empty means all namespaces.")
    resync_interval: Seconds = setting(300.0, "RESYNC_INTERVAL",
                                       "Seconds between periodic re-reads of every running workload's tools.")
    liveness_endpoint: OptionalText = setting(None, "LIVENESS_ENDPOINT",
                                              "kopf's liveness probe URL, e.g. ``http://0.0.0.0:8081/healthz``; "
                                              "unset disables it.")
    peering_name: OptionalText = setting(None, "PEERING_NAME",
                                         "kopf peering object for running several replicas (one active, the others "
                                         "paused); unset runs standalone, which needs no kopf peering CRDs.")
    peering_priority: Annotated[int | None, BeforeValidator(_blank_is_none)] = setting(
        None, "PEERING_PRIORITY", "This replica's peering priority; the highest runs. Unset picks a random one.")
    operator_namespace: OptionalText = setting(None, "OPERATOR_NAMESPACE",
                                               "The operator's own namespace: always a trusted catalog namespace. "
                                               "Default: the pod's namespace (from its ServiceAccount mount), "
                                               "unset outside a cluster.")
    catalog_namespaces: Words = setting((), "CATALOG_NAMESPACES",
                                        "Further namespaces whose labelled ConfigMaps are catalogs. Nowhere else is "
                                        "read.")
    # ToolHive interop (mcp_optimizer.operator.toolhive): ToolHive's resources, read-only.
    toolhive: Annotated[str, BeforeValidator(_lower)] = setting(
        "auto", "TOOLHIVE",
        "``auto``: watch ToolHive's servers (toolhive.stacklok.dev) when their CRDs are served and the operator "
        "may list them, checked again every ``TOOLHIVE_RECHECK_INTERVAL``; ``false``: never. Checked when the "
        "operator starts (``ToolHiveOptions.from_settings``).")
    toolhive_recheck_interval: Seconds = setting(60.0, "TOOLHIVE_RECHECK_INTERVAL",
                                                 "Seconds between checks whether ToolHive's API appeared, went away "
                                                 "or became readable.")
    toolhive_vmcp_groups: Words = setting((), "TOOLHIVE_VMCP_GROUPS",
                                          "Groups indexed through their VirtualMCPServer instead of their backends, "
                                          "as ``namespace/group``.")
    # The operator's own Pod (downward API): index repairs are reported as Events on it.
    pod_name: OptionalText = setting(None, "POD_NAME", "The operator's Pod, for Events about index repairs.")
    pod_namespace: OptionalText = setting(None, "POD_NAMESPACE", "The operator Pod's namespace.")
    pod_uid: OptionalText = setting(None, "POD_UID", "The operator Pod's UID.")

    @property
    def trusted_catalog_namespaces(self) -> tuple[str, ...]:
        """The operator's namespace, then the listed ones: the only places catalogs are read from."""
        own = (self.operator_namespace,) if self.operator_namespace else ()
        return tuple(dict.fromkeys((*own, *self.catalog_namespaces)))


# --- Observability: logs, metrics and readiness (issue 11) ---


@dataclass(frozen=True)
class ObservabilitySettings:
    metrics_port: Port = setting(9090, "METRICS_PORT",
                                 "Port of ``/metrics`` (Prometheus) and ``/readyz`` in ``mcp-optimizer run``; 0 "
                                 "disables them.")
    metrics_host: str = setting("0.0.0.0", "METRICS_HOST",
                                "Address of ``/metrics`` and ``/readyz``: every interface in a pod (Prometheus "
                                "scrapes it from elsewhere), ``127.0.0.1`` on a workstation.")
    log_format: Annotated[LogFormat, BeforeValidator(_lower)] = setting(
        "text", "LOG_FORMAT", "``text`` for people, ``json`` (one object per line) for log pipelines.")
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)] = (
        setting("INFO", "LOG_LEVEL", "debug, info, warning, error or critical (any case)."))


# --- Replicas (issue 13): one writer holding a Lease, every replica serving the endpoint ---


@dataclass(frozen=True)
class ReplicaSettings:
    leader_election: Switch = setting(
        False, "LEADER_ELECTION",
        "Run kopf and write the index only while holding the Lease ``LEASE_NAMESPACE/LEASE_NAME``; every replica "
        "serves the endpoint from the shared index. Off (``mcp-optimizer run`` outside the chart): the process is "
        "the writer, as with one replica, and needs no Lease rights.")
    lease_name: str = setting("mcp-optimizer-writer", "LEASE_NAME", "The writer's Lease.")
    lease_namespace: OptionalText = setting(None, "LEASE_NAMESPACE",
                                            "Namespace of the Lease; default: the operator's own.")
    lease_duration: Seconds = setting(15.0, "LEASE_DURATION",
                                      "Another replica takes over a Lease unrenewed this long (client-go's 15 s).")
    lease_renew_deadline: Seconds = setting(
        10.0, "LEASE_RENEW_DEADLINE",
        "The holder stops writing after this long without a renewal (client-go's 10 s), before anyone may take over.")
    lease_retry_period: Seconds = setting(2.0, "LEASE_RETRY_PERIOD",
                                          "Seconds between election rounds (client-go's 2 s).")
    shutdown_delay: SecondsOrZero = setting(
        0.0, "SHUTDOWN_DELAY",
        "Seconds a stopping process keeps serving with ``/readyz`` failing before it stops accepting: time for "
        "Services (kube-proxy) to stop routing to it. Then in-flight calls drain.")

    @property
    def lease_identity(self) -> str:
        """This replica's name in the Lease: the pod's name, else host and process id."""
        pod_name: str | None = getattr(self, "pod_name", None)
        return pod_name or f"{socket.gethostname()}-{os.getpid()}"


# --- Everything together ---


@dataclass(frozen=True)
class Settings(
    ReplicaSettings, ObservabilitySettings, ClusterSettings, LimitSettings, AuthSettings, EndpointSettings,
    RetrievalSettings,
    IndexSettings,
):
    """Everything the operator, the MCP endpoint and the CLI can be configured with (the groups above).

    Values given in code are taken as they are (tests give ones the environment may not, to reach
    the checks behind it); values from the environment and from CLI flags are checked first."""

    def __post_init__(self) -> None:
        if self.search_mode not in SEARCH_MODES:
            raise ConfigError(f"{ENV_PREFIX}SEARCH_MODE must be one of {', '.join(SEARCH_MODES)}, "
                              f"got {self.search_mode!r}")

    @classmethod
    def from_env(cls) -> Settings:
        """The settings of the ``MCP_OPTIMIZER_*`` variables; every other one keeps its default."""
        try:
            values = _environment_model()().model_dump(exclude_unset=True)
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc, os.environ)) from None
        values["operator_namespace"] = values.get("operator_namespace") or _pod_namespace()
        location = os.environ.get(ENV_PREFIX + "DB", "")
        if "://" in location:  # MCP_OPTIMIZER_DB may name the database instead of the file
            values.pop("db_path", None)
            values["db_url"] = values.get("db_url") or location
        return cls(**values)

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

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with the given fields replaced, checked as the environment is; ``None`` values
        are ignored (unset CLI flags)."""
        given = {name: value for name, value in changes.items() if value is not None}
        try:
            checked = _declared_model(_Flags).model_validate(given).model_dump(include=set(given))
        except ValidationError as exc:
            variables = {each.metadata["env"]: str(given[each.name]) for each in fields(Settings) if each.name in given}
            raise ConfigError(describe_errors(exc, variables)) from None
        return replace(self, **checked)


# --- Reading the environment, and errors a person can act on ---


class _Environment(BaseSettings):
    """The ``MCP_OPTIMIZER_*`` variables, read by pydantic-settings with the declarations above."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", hide_input_in_errors=True)


class _Flags(BaseModel):
    """Values given by CLI flags, by setting name."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


_M = TypeVar("_M", bound=BaseModel)


@functools.cache
def _declared_model(base: type[_M]) -> type[_M]:
    """The declarations of :class:`Settings` as a pydantic model (built once per base): one field
    per setting with its type, range and default, read from its variable for ``_Environment``."""
    types = typing.get_type_hints(Settings, include_extras=True)
    declared: dict[str, Any] = {
        each.name: (types[each.name], Field(each.default, description=each.metadata["description"],
                                            validation_alias=each.metadata["env"] if base is _Environment else None))
        for each in fields(Settings)
    }
    return create_model(f"Settings{base.__name__}", __base__=base, **declared)


def _environment_model() -> type[_Environment]:
    return _declared_model(_Environment)


def declarations() -> dict[str, tuple[object, str, bool]]:
    """Every setting by its variable: default, description, secret (README, ``--help``)."""
    return {each.metadata["env"]: (each.default, each.metadata["description"], each.metadata["secret"])
            for each in fields(Settings)}


def flag_help(env: str) -> str:
    """``--help`` text of the CLI flag that overrides ``MCP_OPTIMIZER_`` + ``env``: the setting's
    description, its variable and its default."""
    default, description, _ = declarations()[ENV_PREFIX + env]
    shown = "unset" if default is None else ",".join(default) if isinstance(default, tuple) else default
    return f"{description.replace('``', '')} (default: ${ENV_PREFIX}{env}, else {shown or 'empty'})".replace("%", "%%")


def describe_errors(exc: ValidationError, given: typing.Mapping[str, str]) -> str:
    """``MCP_OPTIMIZER_MCP_PORT must be a whole number, got '8080.9'`` for each bad value in
    ``given`` (values by variable); a secret's value is never repeated."""
    variables = {each.name: each.metadata["env"] for each in fields(Settings)}
    checks = {variables[name]: info for name, info in _declared_model(_Flags).model_fields.items()}
    problems = []
    for error in exc.errors(include_input=False):
        name = str(error["loc"][0]) if error["loc"] else ""
        variable = variables.get(name, name)
        problem = f"{variable} {_problem(error, checks.get(variable))}"
        if variable in given and not declarations()[variable][2]:
            problem += f", got {given[variable]!r}"
        problems.append(problem)
    return "; ".join(problems)


def _problem(error: ErrorDetails, info: FieldInfo | None) -> str:
    kind, context = error["type"], error.get("ctx", {})
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return "must be a whole number"
    if kind in ("float_parsing", "float_type"):
        return "must be a number"
    if kind == "bool_parsing":
        return "must be true or false"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "literal_error" and info is not None:
        return "must be one of " + ", ".join(str(choice).lower() for choice in _choices(info.annotation))
    if kind == "greater_than":
        bound = context.get("gt", 0)
        return "must be positive" if bound == 0 and info and info.annotation is int else f"must be above {bound:g}"
    if kind in ("greater_than_equal", "less_than_equal"):
        return "must be " + _range(info, context)
    return error["msg"][:1].lower() + error["msg"][1:]


def _range(info: FieldInfo | None, context: dict[str, Any]) -> str:
    """Both bounds when the setting has both: ``at least 0 and at most 65535``."""
    low = next((m.ge for m in info.metadata if isinstance(m, Ge)), None) if info else context.get("ge")
    high = next((m.le for m in info.metadata if isinstance(m, Le)), None) if info else context.get("le")
    low, high = (low, high) if low is not None or high is not None else (context.get("ge"), context.get("le"))
    return " and ".join(part for part in (
        None if low is None else f"at least {low}", None if high is None else f"at most {high}") if part)


def _choices(annotation: object) -> list[object]:
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    return [choice for arg in typing.get_args(annotation) for choice in _choices(arg)]


# --- Access control (issue 10 part B): which auth, and where the endpoint listens ---


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
        if settings.auth_mode not in AUTH_MODES:  # given in code, not read from the environment
            modes = ", ".join(AUTH_MODES)
            raise ConfigError(f"{ENV_PREFIX}AUTH_MODE must be one of {modes}, got {settings.auth_mode!r}")
        return settings.auth_mode
    if settings.auth_tokens_file is not None or settings.auth_tokens:
        return AUTH_TOKENS
    return AUTH_KUBERNETES if cluster else AUTH_NONE


def endpoint_host(settings: Settings, auth_mode: str) -> str:
    """Where the MCP endpoint listens: the configured host, else loopback when nobody is asked for
    a credential (no auth must never be reachable from the network by default), else every interface."""
    if settings.mcp_host:
        return settings.mcp_host
    return LOOPBACK_HOST if auth_mode == AUTH_NONE else ALL_INTERFACES
