"""Compile Triton kernels for a GPU architecture on a machine without one (Triton's own ptxas), to
catch what the CPU interpreter cannot: type errors of the compiled language, non-constexpr globals,
FP8 conversions and layouts the target rejects."""
from __future__ import annotations

import inspect


def compiler_available() -> str | None:
    """None when kernels can be compiled here for CUDA targets, else why not."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc})"
    if "nvidia" not in getattr(triton.backends, "backends", {}):
        return "triton has no nvidia backend here"
    return None


def compile_kernel(kernel, types: dict[str, str], constexprs: dict, arch: int = 90):
    """Compile `kernel` (a triton.jit function) for sm_`arch`: pointer and float arguments are named
    in `types` ("*bf16", "*fp8e4nv", "fp32", ...), other runtime arguments default to i32."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    params = list(inspect.signature(kernel.fn).parameters)
    unknown = set(types) | set(constexprs)
    unknown -= set(params)
    if unknown:
        raise ValueError(f"{kernel.fn.__name__} has no argument(s) {sorted(unknown)}")
    signature = {p: "constexpr" if p in constexprs else types.get(p, "i32") for p in params}
    return triton.compile(ASTSource(kernel, signature, constexprs=dict(constexprs)),
                          target=GPUTarget("cuda", arch, 32))


def cases_or_skip(build) -> dict:
    """For a module fixture: the cases `build()` returns, or a skip where nothing can be compiled."""
    import pytest

    why = compiler_available()
    if why:
        pytest.skip(why)
    return build()


def assert_compiles(case: tuple, arch: int = 90) -> None:
    """`case` = (kernel, argument types, constexprs) compiles for sm_`arch` to PTX and a cubin."""
    kernel, types, constexprs = case
    compiled = compile_kernel(kernel, types, constexprs, arch=arch)
    assert "cubin" in compiled.asm or "ptx" in compiled.asm
