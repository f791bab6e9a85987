"""The MoE and MLA kernels compiled for the H100 (sm_90) on this machine by Triton's compiler and
ptxas (kernel_compile.py): what the interpreter tests cannot check. One variant per kernel and
mode, with the constexprs the launchers pass at the Qwen3-30B-A3B and DeepSeek-V3 shapes in bf16
(the expert kernels also with block-wise FP8 weights)."""
from __future__ import annotations

import pytest

from kernel_compile import assert_compiles, cases_or_skip


def _cases() -> dict:
    """name -> (kernel, argument types, constexprs)."""
    from jackfield.kernels import mla_prepare as mp
    from jackfield.sdk import RoutingConfig
    from jackfield_plugins.attention import triton_mla_kernels as mk
    from jackfield_plugins.moe.triton_kernels import align, experts, routing

    v3 = RoutingConfig(top_k=8, scoring="sigmoid", num_groups=8, topk_groups=4, group_scoring="top2_sum",
                       correction_bias=True, scaling_factor=2.5)
    v3_consts = {**routing.routing_constants(v3, 256), "HAS_BIAS": True}
    qwen3 = {**routing.routing_constants(RoutingConfig(top_k=8, renormalize=True), 128), "HAS_BIAS": False}
    qwen3.pop("TOP_K")
    bf = "*bf16"
    gemm = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1, "PRECISION": "tf32"}
    f8 = "*fp8e4nv"
    no_fp8, fp8 = {"FP8": False, "SBN": 1, "SBK": 1}, {"FP8": True, "SBN": 128, "SBK": 128}  # as _scale_args
    gemv1 = {"X": bf, "Inter": bf, "TopkIds": "*i32", "TopkWeights": "*fp32", "Logits": bf, "Bias": bf,
             "scaling": "fp32", "Out": bf}
    gemv1_c = {"TOP_K": 8, "BLOCK_N": 16, "BLOCK_K": 256, "ROUTE": True, **qwen3, "PDL": True}
    gemv2 = {"Inter": bf, "Out": bf, "TopkIds": "*i32", "TopkWeights": "*fp32"}
    gemv2_c = {"TOP_K": 8, "BLOCK_N": 16, "BLOCK_K": 256, "PDL": True}
    latent = {"Q": bf, "KV": bf, "Out": bf, "MidO": "*fp32", "MidLse": "*fp32", "ReqToToken": "*i32",
              "ReqPoolIdx": "*i64", "SeqLens": "*i32", "ExtendStart": "*i32", "ExtendLens": "*i32", "sm_scale": "fp32",
              "Semaphores": "*i32"}
    latent_c = {"LORA": 512, "ROPE": 64, "BLOCK_C": 512, "BLOCK_R": 64, "BLOCK_N": 32, "PRECISION": "tf32",
                "PDL": True}
    return {
        "routing_v3": (routing._routing_kernel, {"Logits": "*fp32", "Bias": "*fp32", "Weights": "*fp32", "Ids": "*i32",
                                                 "scaling": "fp32"}, {**v3_consts, "PDL": True}),
        "align_layout": (align._layout_kernel, {"TopkIds": "*i32", "SortedIds": "*i32", "NumPadded": "*i32",
                                                "Cursor": "*i32", "Ends": "*i32"},
                         {"BLOCK_M": 16, "BINS": 256, "CHUNK": 1024}),
        "align_place": (align._place_kernel, {"TopkIds": "*i32", "SortedIds": "*i32", "ExpertIds": "*i32",
                                              "NumPadded": "*i32", "Cursor": "*i32", "Ends": "*i32"},
                        {"BLOCK_M": 16, "BINS": 256, "PAIRS": align.PAIRS_PER_PROGRAM,
                         "BLOCKS": align.BLOCKS_PER_PROGRAM}),
        "gemm1": (experts._gemm1_kernel, {"X": bf, "W13": bf, "Inter": bf, "SortedIds": "*i32", "ExpertIds": "*i32",
                                          "NumPadded": "*i32", "S13": bf}, {"TOP_K": 8, **gemm, **no_fp8}),
        "gemm1_fp8": (experts._gemm1_kernel, {"X": bf, "W13": f8, "Inter": bf, "SortedIds": "*i32",
                                              "ExpertIds": "*i32", "NumPadded": "*i32", "S13": "*fp32"},
                      {"TOP_K": 8, **gemm, **fp8}),
        "gemm2": (experts._gemm2_kernel, {"Inter": bf, "W2": bf, "Out": bf, "SortedIds": "*i32", "ExpertIds": "*i32",
                                          "NumPadded": "*i32", "TopkWeights": "*fp32", "S2": bf}, {**gemm, **no_fp8}),
        "gemm2_fp8": (experts._gemm2_kernel, {"Inter": bf, "W2": f8, "Out": bf, "SortedIds": "*i32",
                                              "ExpertIds": "*i32", "NumPadded": "*i32", "TopkWeights": "*fp32",
                                              "S2": "*fp32"}, {**gemm, **fp8}),
        "gemv1_routed_qwen3": (experts._gemv1_kernel, {**gemv1, "W13": bf, "S13": bf},
                               {**gemv1_c, **no_fp8, "ZERO": 0}),
        "gemv1_routed_qwen3_fp8_zero": (experts._gemv1_kernel, {**gemv1, "W13": f8, "S13": "*fp32"},
                                        {**gemv1_c, **fp8, "ZERO": 128}),
        "gemv2": (experts._gemv2_kernel, {**gemv2, "W2": bf, "S2": bf},
                  {**gemv2_c, **no_fp8, "SPLIT": False, "ATOMIC": False}),
        "gemv2_split": (experts._gemv2_kernel, {**gemv2, "W2": bf, "S2": bf},
                        {**gemv2_c, **no_fp8, "SPLIT": True, "ATOMIC": False}),
        "gemv2_atomic_fp8": (experts._gemv2_kernel, {**gemv2, "W2": f8, "S2": "*fp32"},
                             {**gemv2_c, **fp8, "SPLIT": True, "ATOMIC": True}),
        "mla_decode_split_128h": (mk._latent_kernel, latent, {**latent_c, "BLOCK_H": 64, "BLOCK_T": 1, "DECODE": True,
                                                              "DIRECT": False, "MERGE_LAST": True}),
        "mla_extend_16h": (mk._latent_kernel, latent, {**latent_c, "BLOCK_H": 16, "BLOCK_T": 2, "DECODE": False,
                                                       "DIRECT": True, "MERGE_LAST": False}),
        "mla_ragged": (mk._ragged_kernel, {"Q": bf, "K": bf, "V": bf, "Out": bf, "ExtendStart": "*i32",
                                           "ExtendLens": "*i32", "sm_scale": "fp32"},
                       {"DQK": 192, "DV": 128, "BLOCK_DQK": 256, "BLOCK_DV": 128, "BLOCK_M": 64, "BLOCK_N": 32,
                        "PRECISION": "tf32"}),
        "mla_prepare": (mp._mla_prepare_kernel, {"Pos": "*i64", "KvA": bf, "NormW": bf, "QPe": bf, "CosSin": "*fp32",
                                                 "QFull": bf, "Latent": bf, "Loc": "*i64", "Cache": bf, "eps": "fp32"},
                        {"LORA": 512, "ROPE": 64, "BLOCK_C": 512, "BLOCK_R": 32, "BLOCK_H": 128, "STORE": True,
                         "PDL": True}),
    }


CASE_NAMES = ["routing_v3", "align_layout", "align_place", "gemm1", "gemm1_fp8", "gemm2", "gemm2_fp8",
              "gemv1_routed_qwen3", "gemv1_routed_qwen3_fp8_zero", "gemv2", "gemv2_split", "gemv2_atomic_fp8",
              "mla_decode_split_128h", "mla_extend_16h", "mla_ragged", "mla_prepare"]


@pytest.fixture(scope="module")
def cases():
    return cases_or_skip(_cases)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_kernel_compiles_for_sm90(cases, name):
    assert_compiles(cases[name])
