"""The `Embedder` protocol every embedding backend implements, and helpers they share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeAlias, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["Embedder", "Vectors", "check_texts", "empty_vectors", "l2_normalize"]

Vectors: TypeAlias = npt.NDArray[np.float32]
"""Shape (n, dim), float32, each row of unit L2 norm."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit vectors. Safe to share across coroutines of one event loop."""

    name: str
    """Stored on every embedding row, e.g. "minilm-l6-v2" or "openai:text-embedding-3-small"."""
    dim: int
    max_tokens: int
    """Longest input (in the backend's own tokens, special tokens included) embedded whole;
    longer inputs are truncated, never rejected by the local model."""

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """(len(texts), dim) float32 with L2-normalised rows, in the order of `texts`."""
        ...

    async def aclose(self) -> None: ...


def check_texts(texts: Sequence[str]) -> list[str]:
    # A bare str is a Sequence[str] too: embedding it character by character is never meant.
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of texts, not a single str")
    return list(texts)


def empty_vectors(dim: int) -> Vectors:
    return np.zeros((0, dim), dtype=np.float32)


def l2_normalize(vectors: npt.NDArray[np.floating]) -> Vectors:
    """Rows scaled to unit length (an all-zero row stays zero, as torch's F.normalize does)."""
    out: Vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    normalised: Vectors = (out / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)
    return normalised
