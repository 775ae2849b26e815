"""Bounds of a metadata filter (`filter.metadata` of a search, `metadata` of the documents list)
and of a document's own metadata.

A filter becomes a jsonb containment (`@>`) in Postgres; its size sets the work of every row
compared, so it is bounded in bytes, in keys (and array items) and in nesting depth. The walk
is iterative (no recursion limit to hit) and runs only on a filter already bounded in bytes.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

__all__ = ["MAX_DOCUMENT_METADATA_BYTES", "MAX_FILTER_BYTES", "MAX_FILTER_DEPTH", "MAX_FILTER_ENTRIES",
           "MetadataFilter", "filter_problem"]

MAX_FILTER_BYTES = 4096
MAX_FILTER_ENTRIES = 64
MAX_FILTER_DEPTH = 4
MAX_FILTER_TOP_KEYS = 32
# A document's own metadata (stored with it, copied into every search hit) - the multipart
# `metadata` field has the same bound as a form field.
MAX_DOCUMENT_METADATA_BYTES = 64 * 1024

MetadataFilter = Annotated[dict[str, Any], msgspec.Meta(
    max_length=MAX_FILTER_TOP_KEYS,
    description=f"A JSON object the documents' metadata must contain: at most {MAX_FILTER_BYTES} bytes as JSON, "
                f"{MAX_FILTER_ENTRIES} keys and array items in all, nested {MAX_FILTER_DEPTH} levels deep.",
)]


def filter_problem(value: dict[str, Any]) -> str | None:
    """Why this filter is refused, or None when it is within the bounds."""
    size = len(msgspec.json.encode(value))
    if size > MAX_FILTER_BYTES:
        return f"the metadata filter is {size} bytes as JSON; at most {MAX_FILTER_BYTES} are allowed"
    entries = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > MAX_FILTER_DEPTH:
            return f"the metadata filter is nested more than {MAX_FILTER_DEPTH} levels deep"
        entries += len(children)
        if entries > MAX_FILTER_ENTRIES:
            return f"the metadata filter has more than {MAX_FILTER_ENTRIES} keys and array items"
        stack.extend((child, depth + 1) for child in children)
    return None
