"""A replica's read-only view of the shared index (issue 13): what the endpoint searches on a
replica that does not hold the writer's Lease.

It never migrates, checks or repairs the index (only the writer does: :meth:`Indexer.open`), and
says whether it can serve: the index answers and is at exactly this version's schema head. A
newer replica therefore never serves from an older schema (it waits for the writer to migrate),
and an older replica does not serve from a schema it does not know.
"""

from __future__ import annotations

from mcp_optimizer.config import Settings
from mcp_optimizer.db import migrate
from mcp_optimizer.db.engine import Engine, create_engine
from mcp_optimizer.db.health import describe
from mcp_optimizer.db.meta_ops import IndexMetaOps
from mcp_optimizer.redaction import redact_urls


class IndexReader:
    """The shared index, opened for searching only."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.meta = IndexMetaOps(engine)
        self.head = migrate.head_revision()
        #: Set by :meth:`check`: the index is at an older schema this version knows (its writer
        #: is an older version, which a rolling upgrade must ask to hand over).
        self.behind = False
        #: The schema revision the last :meth:`check` found (None: none yet, or no answer).
        self.revision: str | None = None

    @classmethod
    def open(cls, settings: Settings) -> IndexReader:
        return cls(create_engine(settings.index_location, mmap_size=settings.sqlite_mmap_size))

    async def check(self) -> tuple[bool, str]:
        """(serving, why): the index answers a query and is at this version's schema head."""
        try:
            revision = await migrate.current_revision(self.engine)
            if revision == self.head:
                await self.meta.answers()
        except Exception as exc:
            # A database error may quote its connection URL: never with the password.
            return False, f"the index does not answer: {redact_urls(describe(exc))}"
        self.revision = revision
        self.behind = revision is not None and revision != self.head and migrate.is_known_revision(revision)
        if revision is None:
            return False, "the index has no schema yet: waiting for the writer to create it"
        if revision != self.head:
            known = migrate.is_known_revision(revision)
            return False, (
                f"the index is at schema {revision}, this version serves {self.head}: "
                + ("waiting for the writer to migrate it" if known else "a newer version migrated it")
            )
        return True, "ok"

    @staticmethod
    def knows(revision: str) -> bool:
        """Whether this version's migrations include ``revision``."""
        return migrate.is_known_revision(revision)

    async def close(self) -> None:
        await self.engine.dispose()
