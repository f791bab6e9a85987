"""ggml's CPU matmul on GGUF blocks, reached through a small PyTorch operator (`ggml_cpu.cpp`).

The kernels are llama.cpp's own (`libggml-cpu`, shipped by the `llama-cpp-python` package, built
for the machine's vector units): per weight type a dot product of quantized weight rows with
activations quantized to int8 blocks. `ggml_cpu.cpp` quantizes the activations and splits the
weight rows over PyTorch's threads (`at::parallel_for`, whose OpenMP loop exists only where the
file is compiled with `-fopenmp`: without it the operator runs on one thread; linked with
`-fopenmp`, it uses the `libgomp.so.1` torch has already loaded). From 8 rows of x (Q4_0, Q4_1,
Q8_0 with AVX2; 32 rows for other types) it instead dequantizes the weight in 64-row tiles and
multiplies them in float32, x rounded as the dot products see it (`ggml_dequant.h`): up to 32 rows
of x with a register-blocked AVX2 loop (`small_gemm.h`), above with BLAS's sgemm.
It is compiled on first use (`cpp_build.load_operator`, keyed also by the libggml path), so a C++
compiler is needed once per installation.

`ggml_unavailable()` says why the operator cannot be built (None when it can); `build()` compiles
(or loads the cached build) and returns the operator namespace; `mm(x, blocks, type)` and
`quantize(w, type)` call it.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch

from jackfield.kernels.cpp_build import compiler_missing, load_operator

SOURCE = Path(__file__).with_name("ggml_cpu.cpp")
HEADERS = (Path(__file__).with_name("ggml_dequant.h"), Path(__file__).with_name("small_gemm.h"))
LIBRARIES = ("ggml-cpu", "ggml-base")


def ggml_lib_dir() -> Path | None:
    """The directory holding llama-cpp-python's libggml-cpu and libggml-base, or None."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return lib if all((lib / f"lib{name}.so").is_file() for name in LIBRARIES) else None


@functools.cache
def ggml_unavailable() -> str | None:
    """Why the ggml operator cannot be built here, or None."""
    if ggml_lib_dir() is None:
        return ("llama-cpp-python (which ships llama.cpp's libggml-cpu) is not installed: "
                "pip install 'jackfield[gguf]'  (builds llama-cpp-python from source)")
    missing = compiler_missing()
    return f"{missing} to build the ggml operator" if missing else None


@functools.cache
def build():
    """The `torch.ops.jackfield_ggml` namespace, compiled on the first call of the process's life."""
    reason = ggml_unavailable()
    if reason:
        raise RuntimeError(reason)
    lib = ggml_lib_dir()
    load_operator("ggml_cpu", SOURCE, HEADERS, key_extra=str(lib),
                  extra_ldflags=(f"-L{lib}", *(f"-l{name}" for name in LIBRARIES), f"-Wl,-rpath,{lib}"))
    ops = torch.ops.jackfield_ggml
    ops.init()
    # shapes without computing, so torch.compile can trace a model that calls the operator
    torch.library.register_fake("jackfield_ggml::mm")(lambda x, w, ggml_type: x.new_empty(x.shape[0], w.shape[0]))
    return ops


def mm(x: torch.Tensor, blocks: torch.Tensor, ggml_type: int) -> torch.Tensor:
    """x [M, K] float32 times the GGUF weight `blocks` (uint8 [N, row bytes] of `ggml_type`)
    transposed: float32 [M, N]."""
    return build().mm(x, blocks, ggml_type)


def quantize(w: torch.Tensor, ggml_type: int) -> torch.Tensor:
    """The GGUF blocks (uint8 [N, row bytes]) of float32 w [N, K] in `ggml_type`, by ggml's quantizer."""
    return build().quantize(w.float(), ggml_type)
