"""The quantization plugins' Triton kernels run by Triton's CPU interpreter on small shapes, against
the torch reference numerics (fp8_numerics, int4_numerics). The GPU versions, over real shapes and
batch 1 to 256, are in tests/gpu/test_quant_kernels.py.

TRITON_INTERPRET must be set before the kernels are defined, so the cases run in one child process
(this file run as a script) and each pytest case checks its own result. The interpreter's float32 ->
FP8 conversion rounds some values wrongly (triton 3.9), so the activation quantizer is checked with
a float32 output (x / scale before the final cast) and FP8 operands are made by torch.
"""
from __future__ import annotations

import pytest

TOLERANCE = 1e-5  # float32 everywhere: only summation order differs


def cases() -> dict:
    """name -> a function returning the relative error of one kernel call (child process only)."""
    import torch

    from jackfield.kernels.gemv import GemvConfig, gemv, gemv_rmsnorm, gemv_silu_mul
    from jackfield.sdk import WeightScale
    from jackfield_plugins.quant import fp8_kernels as fk
    from jackfield_plugins.quant import fp8_numerics as fp8
    from jackfield_plugins.quant import int4_kernels as k4
    from jackfield_plugins.quant import int4_numerics as int4
    from jackfield_plugins.quant import int4_tinygemm as tinygemm
    from jackfield_plugins.quant.int4_linear import Int4GemvConfig, gemv_fits, grouped_fits
    from jackfield_plugins.quant.int8_wo import quantize_int8
    from jackfield_plugins.quant.w8a16_kernels import w8a16_matmul

    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    def err(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm())

    def act_quant(group):
        x = rand(5, 200)
        q, s = fk.quantize_activations(x, group, torch.float32)
        rq, rs = fp8.quantize_per_token(x) if group is None else fp8.quantize_per_token_group(x, group)
        return max(err(s, rs), err(q.to(fp8.FP8).float(), rq.float()))

    def w8a8(block, m, tiles=None):
        x, w, b = rand(m, 200), rand(72, 200), rand(72)
        wq, ws = fp8.quantize_per_channel(w) if block is None else fp8.quantize_blockwise(w, block)
        xq, xs = fp8.quantize_per_token(x) if block is None else fp8.quantize_per_token_group(x, block[1])
        return err(fk.w8a8_matmul(xq, xs, wq, ws, block, b, torch.float32, tiles), fp8.w8a8_reference(x, wq, ws, block, b))

    def w8a16(codes, m):
        x, w, b = rand(m, 192), rand(40, 192), rand(40)
        q, s = quantize_int8(w) if codes == "int8" else fp8.quantize_per_channel(w)
        return err(w8a16_matmul(x, q, s, b), x @ (q.float() * s[:, None]).t() + b)

    def scaled_gemv(codes, block, variant):
        k = 512
        x, w, b = rand(1, k), rand(24, k), rand(24)
        if block:
            q, s = fp8.quantize_blockwise(w, block)
            deq = fp8.dequantize_weight(q, s, block)
        else:
            q, s = quantize_int8(w) if codes == "int8" else fp8.quantize_per_channel(w)
            deq = q.float() * s[:, None]
        ws, cfg = WeightScale(s, block), GemvConfig(8, 128 if block is None else 64, 4, 1, pdl=False)
        if variant == "plain":
            return err(gemv(x, q, b, cfg, ws), x @ deq.t() + b)
        if variant == "silu_mul":
            gu = rand(1, 2 * k)
            act = torch.nn.functional.silu(gu[:, :k]) * gu[:, k:]
            return err(gemv_silu_mul(gu, q, b, cfg, ws), act @ deq.t() + b)
        res, g = rand(1, k), rand(k)
        h = (x + res) * torch.rsqrt((x + res).pow(2).mean(-1, keepdim=True) + 1e-6) * g
        y, _ = gemv_rmsnorm(x, res, g, 1e-6, q, b, cfg, ws)
        return err(y, h @ deq.t() + b)

    def int4_case(kind, group, m=1, layout="internal"):
        n, k = 40, 256
        w, b, x = rand(n, k), rand(n), rand(m, k)
        q, s, z = int4.quantize(w, group)
        packed, s16, z16 = int4.pack(q, 1) if layout == "internal" else tinygemm.pack(q), s.half(), z.half()
        ref = int4.reference_linear(x, q, s16, z16, group, b)
        if kind == "gemv":
            return max(err(k4.int4_gemv(x, packed, s16, z16, group, b, Int4GemvConfig(bn, bk, 4, 1, False)), ref)
                       for bn, bk in ((8, 32), (16, 64), (4, min(128, group)), (4, 256)) if gemv_fits(bk, k, group))
        if kind == "gemv_grouped":
            return max(err(k4.int4_gemv(x, packed, s16, z16, group, b, Int4GemvConfig(bn, bk, 4, 1, False, xs)), ref)
                       for bn, bk, xs in ((8, group, 1), (4, 256, 2), (16, 2 * group, 1)) if grouped_fits(bk, k, group))
        if kind == "matmul":
            return max(err(k4.int4_matmul(x, packed, s16, z16, group, b, tiles), ref)
                       for tiles in (None, (16, 16, 32, 4, 1)))
        return err(k4.int4_dequantize(packed, s16, z16, group, torch.float32), int4.dequantize(q, s16, z16, None))

    return {
        "act_quant_per_token": lambda: act_quant(None),
        "act_quant_group64": lambda: act_quant(64),
        "w8a8_per_channel_m5": lambda: w8a8(None, 5),
        "w8a8_per_channel_small_tiles": lambda: w8a8(None, 33, (16, 32, 32, 4, 1)),
        "w8a8_block32_m5": lambda: w8a8((32, 32), 5),
        "w8a8_block_16x64_small_tiles": lambda: w8a8((16, 64), 3, (16, 32, 32, 4, 1)),
        "w8a16_int8_m1": lambda: w8a16("int8", 1),
        "w8a16_fp8_m20": lambda: w8a16("fp8", 20),
        "gemv_int8_per_row": lambda: scaled_gemv("int8", None, "plain"),
        "gemv_fp8_per_row_rmsnorm": lambda: scaled_gemv("fp8", None, "rmsnorm"),
        "gemv_fp8_block_silu_mul": lambda: scaled_gemv("fp8", (16, 128), "silu_mul"),
        "gemv_fp8_block": lambda: scaled_gemv("fp8", (32, 64), "plain"),
        "int4_gemv_group64": lambda: int4_case("gemv", 64),
        "int4_gemv_per_row": lambda: int4_case("gemv", 256),
        "int4_gemv_grouped_group32": lambda: int4_case("gemv_grouped", 32),
        "int4_gemv_grouped_group128": lambda: int4_case("gemv_grouped", 128),
        "int4_matmul_group32_m7": lambda: int4_case("matmul", 32, 7),
        "int4_dequantize_group64": lambda: int4_case("dequantize", 64),
        "int4_dequantize_tinygemm_layout": lambda: int4_case("dequantize", 128, layout="tinygemm"),
    }


CASE_NAMES = ["act_quant_per_token", "act_quant_group64", "w8a8_per_channel_m5", "w8a8_per_channel_small_tiles",
              "w8a8_block32_m5", "w8a8_block_16x64_small_tiles", "w8a16_int8_m1", "w8a16_fp8_m20",
              "gemv_int8_per_row", "gemv_fp8_per_row_rmsnorm", "gemv_fp8_block_silu_mul", "gemv_fp8_block",
              "int4_gemv_group64", "int4_gemv_per_row", "int4_gemv_grouped_group32",
              "int4_gemv_grouped_group128", "int4_matmul_group32_m7", "int4_dequantize_group64",
              "int4_dequantize_tinygemm_layout"]


def _child_main() -> None:
    from interpreter import report_cases

    report_cases({name: (lambda fn=fn: {"error": fn()}) for name, fn in cases().items()})


@pytest.fixture(scope="module")
def interpreted():
    from interpreter import run_interpreted

    return run_interpreted(__file__)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_kernel_matches_reference_in_interpreter(interpreted, name):
    result = interpreted[name]
    assert "failure" not in result, result.get("failure")
    assert result["error"] < TOLERANCE, f"{name}: relative error {result['error']:.3e}"


if __name__ == "__main__":
    _child_main()
