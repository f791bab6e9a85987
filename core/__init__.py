"""jackfield: a fast LLM inference and serving framework built from swappable plugins."""
from __future__ import annotations

from jackfield.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["Engine", "hookimpl", "__version__"]


def __getattr__(name: str):
    # `import jackfield` stays light (the CLI, plugin discovery); the engine loads torch & co.
    if name == "Engine":
        from jackfield.engine import Engine

        return Engine
    raise AttributeError(name)
