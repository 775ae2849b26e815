"""Connectors: list and fetch the items of a data source (a folder, a website, an S3 bucket).

Framework-free and database-free: a connector `scan`s its source given the cursors of what
was indexed before and yields, per item, whether it is unchanged, its new content, gone, or
failed. The sync engine (pipelines.sync) decides what to parse, embed, replace and delete.
"""

from rag.connectors.base import (
    Connector,
    ConnectorError,
    Fetched,
    Gone,
    ItemFailed,
    ScanResult,
    Unchanged,
)
from rag.connectors.config import (
    ConfigError,
    FolderConfig,
    FolderRoots,
    S3Config,
    SourceConfig,
    WebsiteConfig,
    redact_config,
    validate_config,
)
from rag.connectors.factory import make_connector
from rag.connectors.netguard import BlockedAddress, NetPolicy

__all__ = [
    "BlockedAddress", "ConfigError", "Connector", "ConnectorError", "Fetched", "FolderConfig", "FolderRoots", "Gone",
    "ItemFailed", "NetPolicy", "S3Config", "ScanResult", "SourceConfig", "Unchanged", "WebsiteConfig",
    "make_connector", "redact_config", "validate_config",
]
