"""Fixtures shared by the quantization tests."""
from __future__ import annotations

import pytest

from quant_harness import ArchSpec, save_tiny_model


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A plain tiny random Llama checkpoint (3 layers, hidden 64, float32)."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_model(ArchSpec("llama_quant_tests", "LlamaConfig", {"tie_word_embeddings": False}, seed=31), directory)
    return directory
