"""The Llama-3.1-8B linear layers as (out_features, in_features), shared by the GEMM benchmarks
(scripts run by path import it from their folder)."""
LINEAR_SHAPES = {"qkv_proj": (6144, 4096), "o_proj": (4096, 4096), "gate_up_proj": (28672, 4096),
                 "down_proj": (4096, 14336)}
LM_HEAD = (128256, 4096)
