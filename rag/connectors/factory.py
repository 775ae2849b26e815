"""Build the connector of a source from its kind and stored config."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from rag.connectors.base import Connector
from rag.connectors.config import FolderConfig, FolderRoots, S3Config, resolve_folder, validate_config
from rag.connectors.folder import FolderConnector
from rag.connectors.netguard import NetPolicy
from rag.connectors.s3 import S3Connector
from rag.connectors.website import WebsiteConnector

__all__ = ["make_connector"]


def make_connector(
    kind: str, raw_config: dict[str, Any], *, tenant_id: UUID | str, policy: NetPolicy, folder_roots: FolderRoots,
    max_item_bytes: int, timeout_s: float, user_agent: str,
) -> Connector:
    """Validated again at sync time: the operator's limits (roots, allow-list) may have
    changed since the source was saved, and so may the links in a tenant's folder. Raises
    ConfigError."""
    config = validate_config(kind, raw_config, policy=policy, folder_roots=folder_roots, tenant_id=tenant_id)
    if isinstance(config, FolderConfig):
        return FolderConnector(config, resolve_folder(config, folder_roots, tenant_id), max_item_bytes=max_item_bytes)
    if isinstance(config, S3Config):
        return S3Connector(config, policy=policy, max_item_bytes=max_item_bytes, timeout_s=timeout_s)
    return WebsiteConnector(config, policy=policy, max_item_bytes=max_item_bytes, timeout_s=timeout_s,
                            user_agent=user_agent)
