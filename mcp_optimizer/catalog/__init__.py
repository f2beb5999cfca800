"""Registry catalogs: parse them into entries and normalise the identifiers entries are matched by.

Pure Python with no database access: :func:`parse_catalog` turns a catalog (legacy or upstream
ToolHive format) into :class:`CatalogEntry` objects, and :func:`normalize_url` /
:func:`normalize_image` give the canonical identifiers that link workloads to those entries.
"""

from .identity import normalize_image, normalize_url
from .parse import (
    CatalogEntry,
    CatalogParseError,
    ParsedCatalog,
    ToolDefinition,
    load_catalog_file,
    parse_catalog,
)

__all__ = [
    "CatalogEntry",
    "CatalogParseError",
    "ParsedCatalog",
    "ToolDefinition",
    "load_catalog_file",
    "normalize_image",
    "normalize_url",
    "parse_catalog",
]
