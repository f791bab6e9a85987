"""The quantization kernels, the kernels the FP8 KV cache changed and the MoE block's router kernel,
compiled for the H100 (sm_90) on this machine by Triton's own compiler and ptxas: what the CPU
interpreter cannot check (the compiled language's typing, constexpr globals, FP8 conversions the
target must support). One representative variant per kernel and mode; `python tests/plugins/test_kernels_compile.py --all`
compiles every configuration the engine can launch (a few minutes)."""
from __future__ import annotations

import sys

import pytest

from kernel_compile import assert_compiles, cases_or_skip, compile_kernel


def _cases(everything: bool = False) -> dict:
    """name -> (kernel, argument types, constexprs)."""
    from jackfield.kernels import gemv as g
    from jackfield.kernels import kv_store, rotary, router
    from jackfield_plugins.attention.triton_kernels import decode, extend
    from jackfield_plugins.quant import fp8_kernels as fk
    from jackfield_plugins.quant import int4_kernels as k4
    from jackfield_plugins.quant import w8a16_kernels as wk
    from jackfield_plugins.quant.int4_linear import GEMV_CONFIGS, GROUPED_GEMV_CONFIGS

    def p(t):
        return "*" + t

    cases = {}
    dtypes = ("bf16", "fp16", "fp32") if everything else ("bf16",)
    for xd in dtypes:
        cases[f"act_quant_{xd}"] = (fk._act_quant_kernel, {"x_ptr": p(xd), "q_ptr": "*fp8e4nv", "s_ptr": "*fp32"},
                                    {"BLOCK": 1024})
        for block, m in ((None, 256), ((128, 128), 1)) + (((None, 1), ((32, 32), 7)) if everything else ()):
            bm, bn, bk, _, _ = fk.w8a8_tiles(m, block)
            cases[f"w8a8_{xd}_{block}_{m}"] = (
                fk._w8a8_kernel, {"a_ptr": "*fp8e4nv", "b_ptr": "*fp8e4nv", "c_ptr": p(xd), "as_ptr": "*fp32",
                                  "bs_ptr": "*fp32", "bias_ptr": p(xd)},
                {"BLOCKWISE": block is not None, "SCALE_N": block[0] if block else 1,
                 "SCALE_K": block[1] if block else 1, "HAS_BIAS": True, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk,
                 "GROUP_M": 8})
        for wd, m in (("i8", 64), ("fp8e4nv", 1)) + ((("i8", 256), ("fp8e4nv", 256)) if everything else ()):
            bm, bn, bk, _, _ = wk.w8a16_tiles(m)
            cases[f"w8a16_{xd}_{wd}_{m}"] = (
                wk._w8a16_kernel, {"x_ptr": p(xd), "w_ptr": p(wd), "s_ptr": "*fp32", "b_ptr": p(xd), "y_ptr": p(xd)},
                {"HAS_BIAS": True, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8})
        int4_args = {"x_ptr": p(xd), "q_ptr": "*i32", "s_ptr": "*fp16", "z_ptr": "*fp16", "b_ptr": p(xd), "y_ptr": p(xd)}
        for bn, bk, _, _ in GEMV_CONFIGS if everything else (GEMV_CONFIGS[3], GEMV_CONFIGS[8]):  # in / across groups
            cases[f"int4_gemv_{xd}_{bn}x{bk}"] = (k4._int4_gemv_kernel, int4_args,
                                                  {"GROUP": 128, "HAS_BIAS": True, "BLOCK_N": bn, "BLOCK_K": bk,
                                                   "PDL": True})
        grouped = GROUPED_GEMV_CONFIGS if everything else GROUPED_GEMV_CONFIGS[3:5] + GROUPED_GEMV_CONFIGS[-2:-1]
        for bn, bk, _, _, xs in grouped:
            cases[f"int4_gemv_grouped{xs}_{xd}_{bn}x{bk}"] = (k4._int4_gemv_grouped_kernel, int4_args,
                                                              {"GROUP": 128, "HAS_BIAS": True, "BLOCK_N": bn,
                                                               "BLOCK_K": bk, "X_SPLIT": xs == 1, "PDL": True})
        for group, m in ((128, 256), (32, 2)) + (((128, 2), (64, 64)) if everything else ()):
            bm, bn, bk, _, _ = k4.mm_tiles(m, group)
            cases[f"int4_mm_{xd}_g{group}_{m}"] = (k4._int4_mm_kernel, int4_args,
                                                   {"GROUP": group, "HAS_BIAS": True, "BLOCK_M": bm, "BLOCK_N": bn,
                                                    "BLOCK_K": bk, "GROUP_M": 8})
        for tg, bk in ((False, 64), (True, 128)):  # the internal layout, tinygemm's (int4_tinygemm.py)
            cases[f"int4_dequant_{'tg_' * tg}{xd}"] = (
                k4._int4_dequant_kernel, {"q_ptr": "*i32", "s_ptr": "*fp16", "z_ptr": "*fp16", "w_ptr": p(xd)},
                {"GROUP": 128, "BLOCK_N": 32, "BLOCK_K": bk, "TG": tg})
        gemv_args = {"x_ptr": p(xd), "r_ptr": p(xd), "g_ptr": p(xd), "b_ptr": p(xd), "y_ptr": p(xd),
                     "r_out_ptr": p(xd), "s_ptr": "*fp32", "eps": "fp32"}
        for wd, scale, variant in (("fp8e4nv", 1, "norm"), ("i8", 1, "silu"), ("fp8e4nv", 2, "plain")):
            configs = g.BLOCK_SCALE_CANDIDATES if scale == 2 else g.CODE_CANDIDATES
            for cfg in configs if everything else configs[:1] + configs[-1:] * (scale == 1 and variant == "norm"):
                cases[f"gemv_{xd}_{wd}_scale{scale}_{variant}_{cfg.block_n}x{cfg.block_k}"] = (
                    g._gemv_kernel, {**gemv_args, "w_ptr": p(wd)},
                    {"ADD_RES": variant == "norm", "NORM": variant == "norm", "SILU_MUL": variant == "silu",
                     "HAS_BIAS": True, "SCALE": scale, "SCALE_N": 128 if scale == 2 else 1,
                     "SCALE_K": 128 if scale == 2 else 1, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "PDL": True})
        cases.update(_gguf_cases(xd, everything))
        fp8_kv = {"k_cache_ptr": "*fp8e4nv", "v_cache_ptr": "*fp8e4nv", "k_inv_scale": "fp32", "v_inv_scale": "fp32"}
        cases[f"store_kv_{xd}_fp8"] = (kv_store._store_kv_kernel, {"k_ptr": p(xd), "v_ptr": p(xd), "loc_ptr": "*i64",
                                                                   **fp8_kv}, {"FP8": True, "BLOCK": 1024, "PDL": True})
        cases[f"rope_store_{xd}_fp8"] = (rotary._rope_kernel, {"q_ptr": p(xd), "k_ptr": p(xd), "pos_ptr": "*i64",
                                                               "cache_ptr": "*fp32", "v_ptr": p(xd),
                                                               "loc_ptr": "*i64", "qw_ptr": p(xd), "kw_ptr": p(xd),
                                                               "eps": "fp32", **fp8_kv},
                                         {"STORE": True, "FP8": True, "QK_NORM": True, "BLOCK_H": 32, "BLOCK_D": 64,
                                          "BLOCK_HD": 128, "PDL": True})
        for rd, h in (("fp32", 8192), (xd, 2048)):  # DeepSeek-V3's float32 router, Qwen3-30B-A3B's
            cases[f"norm_router_{xd}_{rd}_{h}"] = (
                router._norm_router_kernel, {"x_ptr": p(xd), "res_ptr": p(xd), "nw_ptr": p(xd), "w_ptr": p(rd),
                                             "h_ptr": p(xd), "res_out_ptr": p(xd), "logits_ptr": p(rd), "eps": "fp32"},
                {"BLOCK_E": 8192 // h, "BLOCK_H": h, "PDL": True})
        if xd == "fp32":
            continue  # the attention kernels run bf16 / fp16 queries over an FP8 pool
        attn = {"K": "*fp8e4nv", "V": "*fp8e4nv", "ReqToToken": "*i32", "ReqPoolIdx": "*i64", "SeqLens": "*i32",
                "sm_scale": "fp32", "logit_cap": "fp32", "v_scale": "fp32"}
        for d in (64, 128, 256) if everything else (128,):
            cases[f"decode_{xd}_fp8kv_d{d}"] = (
                decode._decode_split_kernel, {**attn, "Q": p(xd), "MidO": "*fp32", "MidLse": "*fp32", "Out": p(xd),
                                              "Semaphores": "*i32"},
                {"GROUP": 4, "HEAD_DIM": d, "BLOCK_D": d, "BLOCK_H": 16, "BLOCK_N": 32 if d > 128 else 64,
                 "USE_CAP": False, "USE_WINDOW": False, "PRECISION": "tf32", "DIRECT": False, "MERGE_LAST": True,
                 "PDL": True})
            cases[f"extend_{xd}_fp8kv_d{d}"] = (
                extend._extend_kernel, {**attn, "Q": p(xd), "Out": p(xd), "ExtendStart": "*i32", "ExtendLens": "*i32",
                                        "TreeMask": "*i32", "TreeIndptr": "*i32", "Positions": "*i32"},
                {"GROUP": 4, "HEAD_DIM": d, "BLOCK_D": d, "BLOCK_M": 64 if d <= 128 else 128, "BLOCK_N": 64,
                 "USE_CAP": False, "USE_WINDOW": False, "PRECISION": "tf32", "HEAVY_FIRST": False, "USE_TREE": False})
    return cases


def _gguf_cases(xd: str, everything: bool) -> dict:
    """The gguf method's GEMV, GEMM and dequantize kernels per GGUF type, with the plane dtypes the
    host passes (gguf_kernels._planes / _word_views: a missing plane is the float16 `d`)."""
    from gguf import GGMLQuantizationType as T

    from jackfield_plugins.quant import gguf_kernels as gk
    from jackfield_plugins.quant.gguf_layout import FORMATS

    cases = {}
    for t, f in FORMATS.items():
        name = T(t).name
        consts = dict(BITS=f.bits, G=f.group, S=f.block, OFFSET=f.offset, HAS_SC=f.has_sc, MIN_MODE=f.min_mode)
        sc = {4: "*u8", 5: "*u8", 6: "*i8"}.get(f.bits, "*fp16") if f.has_sc else "*fp16"
        planes = {"sc_ptr": sc, "mn_ptr": "*u8" if f.min_mode == 2 else "*fp16", "d_ptr": "*fp16", "dm_ptr": "*fp16"}
        gemv_high = {5: "*i8", 6: "*i16"}.get(f.bits, "*fp16")
        gemv = {"x_ptr": "*" + xd, "low_ptr": "*i32", "high_ptr": gemv_high, "b_ptr": "*" + xd, "y_ptr": "*" + xd,
                **planes}
        for bn, bk, ahead in ((16, 512, False), (16, 512, True), (16, 64, True)) if not everything else (
                (c.block_n, c.block_k, c.ahead) for c in gk.GEMV_CONFIGS):
            cases[f"gguf_gemv_{xd}_{name}_{bn}x{bk}" + "_ahead" * ahead] = (
                gk._gemv_kernel, gemv, {**consts, "HAS_BIAS": True, "BLOCK_N": bn, "BLOCK_K": bk, "AHEAD": ahead,
                                        "PDL": True})
        tiles = {"low_ptr": "*i8" if f.bits == 8 else "*i32", "high_ptr": "*i32" if f.bits in (5, 6) else "*fp16",
                 **planes}
        for m in (16, 256):
            bm, bn, bk, _, _ = gk.mm_tiles(m)
            cases[f"gguf_mm_{xd}_{name}_{m}"] = (gk._mm_kernel, {**tiles, "x_ptr": "*" + xd, "b_ptr": "*" + xd,
                                                                 "y_ptr": "*" + xd},
                                                 {**consts, "HAS_BIAS": True, "BLOCK_M": bm, "BLOCK_N": bn,
                                                  "BLOCK_K": bk, "GROUP_M": 8})
        cases[f"gguf_dequant_{xd}_{name}"] = (gk._dequant_kernel, {**tiles, "w_ptr": "*" + xd},
                                              {**consts, "BLOCK_N": 16, "BLOCK_K": max(64, f.group)})
    return cases



CASE_NAMES = ["act_quant_bf16", "w8a8_bf16_None_256", "w8a8_bf16_(128, 128)_1", "w8a16_bf16_i8_64",
              "w8a16_bf16_fp8e4nv_1", "int4_gemv_bf16_8x64", "int4_gemv_bf16_8x512",
              "int4_gemv_grouped1_bf16_8x256", "int4_gemv_grouped1_bf16_8x512",
              "int4_gemv_grouped2_bf16_8x512", "int4_mm_bf16_g128_256",
              "int4_mm_bf16_g32_2", "int4_dequant_bf16", "int4_dequant_tg_bf16", "gemv_bf16_fp8e4nv_scale1_norm_2x1024",
              "gemv_bf16_fp8e4nv_scale1_norm_2x4096", "gemv_bf16_i8_scale1_silu_2x1024",
              "gemv_bf16_fp8e4nv_scale2_plain_8x128", "store_kv_bf16_fp8", "rope_store_bf16_fp8",
              "norm_router_bf16_fp32_8192", "norm_router_bf16_bf16_2048",
              "decode_bf16_fp8kv_d128", "extend_bf16_fp8kv_d128"]
GGUF_TYPES = ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
CASE_NAMES += [f"gguf_gemv_bf16_{t}_{c}" for t in GGUF_TYPES for c in ("16x512", "16x512_ahead", "16x64_ahead")]
CASE_NAMES += [f"gguf_mm_bf16_{t}_{m}" for t in GGUF_TYPES for m in (16, 256)]
CASE_NAMES += [f"gguf_dequant_bf16_{t}" for t in GGUF_TYPES]


@pytest.fixture(scope="module")
def cases():
    return cases_or_skip(_cases)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_kernel_compiles_for_sm90(cases, name):
    assert_compiles(cases[name])


if __name__ == "__main__" and "--all" in sys.argv:
    failed = []
    for name, (kernel, types, constexprs) in _cases(everything=True).items():
        try:
            compile_kernel(kernel, types, constexprs, arch=90)
            print("ok  ", name, flush=True)
        except Exception as exc:  # noqa: BLE001 - report every failing variant
            failed.append(name)
            print("FAIL", name, f"{type(exc).__name__}: {str(exc)[-500:]}", flush=True)
    sys.exit(1 if failed else 0)
