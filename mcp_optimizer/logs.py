"""Logging for the long-running process: text for people or JSON lines for log pipelines.

Every line is written through :func:`~mcp_optimizer.redaction.redact_urls`, whoever logged it
(our code, the MCP SDK, httpx, kopf): credentials in a URL never reach a log.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

from mcp_optimizer.redaction import redact_urls

#: LogRecord attributes that are not user ``extra`` fields.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and every ``extra`` field
    (so a reconcile line carries kind, resource, outcome, changes and duration_ms as fields)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact_urls(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """``time level logger: message``, with URL credentials redacted (tracebacks included)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact_urls(super().format(record))


#: Libraries whose INFO lines are per-request or start-up chatter: they are DEBUG lines here.
#: Measured before this: 904 of 1,460 lines of an operator run were httpx's "HTTP Request: ..."
#: (one per MCP request, including the SDK's protocol probe answered "400 Bad Request" by every
#: pre-2026 server, which read like a failure and is not one).
DEMOTED_LOGGERS = (
    "httpx", "httpx2", "httpcore", "httpcore2",
    "mcp.client", "mcp.server.streamable_http", "mcp.server.streamable_http_manager", "mcp.server.lowlevel",
    "mcp.server.sse",
    "uvicorn.error", "alembic.runtime.migration",
)


#: kopf's per-handler success lines ("Handler 'pod-phase' succeeded.", one per pod event, and
#: "Creation is processed: 1 succeeded; 0 failed."): the reconcile line of
#: :meth:`~mcp_optimizer.metrics.Metrics.reconcile` already says what each reconcile did.
_KOPF_SUCCESS = re.compile(r"Handler '[^']*' succeeded\.|\w+ is processed: \d+ succeeded; 0 failed\.")


class DemoteChatter(logging.Filter):
    """Rewrites INFO records of :data:`DEMOTED_LOGGERS` as DEBUG, and drops them unless the
    configured level is DEBUG. (A handler filter, because logger filters do not see records of
    child loggers such as ``mcp.client.streamable_http``.)"""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        if not any(record.name == name or record.name.startswith(name + ".") for name in DEMOTED_LOGGERS) and not (
            record.name == "kopf.objects" and _KOPF_SUCCESS.fullmatch(record.getMessage())
        ):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self.level <= logging.DEBUG


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    """Route all logging to stderr in the chosen format (``text`` or ``json``)."""
    if log_format not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', got {log_format!r}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(DemoteChatter(numeric))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # The MCP SDK logs full tracebacks for every malformed reply of a broken workload server;
    # the operator already reports those in one line.
    logging.getLogger("mcp.client").setLevel(max(numeric, logging.WARNING))
