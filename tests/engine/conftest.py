"""Fixtures shared by the engine tests: transformers' SmolLM2 (the embedded GGUF, dequantized by
transformers' own reader, float32), loaded once per session."""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session")
def smollm2_hf():
    from transformers import AutoModelForCausalLM

    from jackfield.loader.default_model import default_model_path

    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32)
    return model.eval()
