"""Compiling jackfield's small C++ operators on first use (`torch.utils.cpp_extension`).

Each operator file is built once per installation into `<jackfield cache>/<name>/<key>`, the key
hashing the sources, torch's version and whatever else the caller says the build depends on, so an
edit or a torch upgrade rebuilds and every later process loads the cached library. Builds use
`-fopenmp`, so `at::parallel_for` splits work over torch's intra-op threads (without it the loop
runs on one thread; linked with it, the library uses the `libgomp.so.1` torch has loaded).
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch


def compiler_missing() -> str | None:
    """Why no C++ operator can be built here (None: a compiler is on PATH)."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "no C++ compiler (c++ or g++) on PATH"
    return None


def load_operator(name: str, source: Path, headers: tuple[Path, ...] = (), extra_cflags: tuple[str, ...] = (),
                  extra_ldflags: tuple[str, ...] = (), key_extra: str = "") -> None:
    """Compile `source` (or load its cached build) into this process; its TORCH_LIBRARY registers
    the operators under `torch.ops`."""
    from torch.utils import cpp_extension

    from jackfield.loader.gguf import cache_root

    text = source.read_bytes() + b"".join(h.read_bytes() for h in headers)
    key = hashlib.sha256(text + torch.__version__.encode() + key_extra.encode()).hexdigest()[:16]
    build_dir = cache_root() / name / key
    build_dir.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(name=f"jackfield_{name}", sources=[str(source)], build_directory=str(build_dir),
                       extra_cflags=["-O2", "-fopenmp", *extra_cflags], extra_include_paths=[str(source.parent)],
                       extra_ldflags=["-fopenmp", *extra_ldflags], is_python_module=False, verbose=False)
