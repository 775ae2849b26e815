"""A tiny deterministic embedder FOR TESTS ONLY.

Feature hashing of lower-cased word unigrams and bigrams into `dim` buckets, then L2
normalisation. Texts sharing words get a positive cosine, so retrieval tests can reason
about rankings without a model. It understands nothing (no synonyms, no meaning), so it is
never a default: `make_embedder` never returns it and no setting selects it.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence

import numpy as np

from rag.embedders.base import Vectors, check_texts, empty_vectors, l2_normalize

__all__ = ["HashingEmbedder"]

_WORD = re.compile(r"\w+")


class HashingEmbedder:
    """Deterministic across processes and machines (blake2b, not Python's salted `hash`)."""

    def __init__(self, dim: int = 384, *, max_tokens: int = 8192) -> None:
        if dim < 1:
            raise ValueError("dim must be at least 1")
        self.dim = dim
        self.max_tokens = max_tokens
        self.name = f"hashing-test-{dim}"

    def _features(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())[: self.max_tokens]
        features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
        return features or [""]  # an empty text still gets a (constant) unit vector

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        items = check_texts(texts)
        if not items:
            return empty_vectors(self.dim)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        for row, text in enumerate(items):
            for feature in self._features(text):
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                # Unsigned counts: no two features can cancel out into a zero vector.
                out[row, int.from_bytes(digest, "little") % self.dim] += 1.0
        return l2_normalize(out)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        return self.embed_sync(texts)

    async def aclose(self) -> None:
        return None
