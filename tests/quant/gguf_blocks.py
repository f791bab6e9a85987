"""Random GGUF weights of the types the CUDA kernels read, and the kernels' errors against gguf-py's
float32 dequantization (shared by the layout test, the Triton-interpreter test and the GPU test).

Q4_0 / Q4_1 / Q8_0 come from gguf-py's quantizers; gguf-py cannot quantize the K-quants, so their
blocks are random bytes (every bit pattern of codes, scales and mins is a valid block) with the
float16 block scales set to small positive values.
"""
from __future__ import annotations

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

KERNEL_TYPES = [T.Q4_0, T.Q4_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
F16_OFFSETS = {T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}  # byte offsets of d (and dmin) in a block


def random_blocks(ggml_type, n: int, k: int, seed: int = 0, scale: float = 2e-3) -> torch.Tensor:
    """uint8 [n, row bytes]: n rows of k weights in `ggml_type` (K-quants: block scales up to `scale`)."""
    from gguf.quants import quantize

    rng = np.random.default_rng(seed)
    if ggml_type not in F16_OFFSETS:
        w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(quantize(w, ggml_type)))
    size, nbytes = GGML_QUANT_SIZES[ggml_type]
    b = rng.integers(0, 256, (n, k // size, nbytes), dtype=np.uint8)
    for off in F16_OFFSETS[ggml_type]:
        d = (rng.random((n, k // size, 1)) * scale + scale / 20).astype(np.float16)
        b[..., off:off + 2] = d.view(np.uint8)
    return torch.from_numpy(b.reshape(n, -1))


def reference(blocks: torch.Tensor, ggml_type, k: int) -> torch.Tensor:
    """gguf-py's float32 dequantization [n, k]."""
    from gguf.quants import dequantize

    return torch.from_numpy(dequantize(blocks.cpu().numpy(), ggml_type).reshape(blocks.shape[0], k))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def kernel_errors(ggml_type, n: int, k: int, rows: tuple[int, ...], dtype: torch.dtype, device: str,
                  seed: int = 0) -> dict[str, float]:
    """Relative errors of the dequantize kernel and of gguf_gemv (1 row: the default configuration and
    16 rows x 64 columns a step, with only the next step's words or all its loads ahead) / gguf_matmul
    (each of `rows`) against float64 x @ W_ref^T (+ bias), W_ref gguf-py's dequantization; a bias on
    the matmuls."""
    from jackfield_plugins.quant.gguf_kernels import GGUFGemvConfig, gguf_dequantize, gguf_gemv, gguf_matmul
    from jackfield_plugins.quant.gguf_layout import repack

    blocks = random_blocks(ggml_type, n, k, seed)
    w_ref = reference(blocks, ggml_type, k).double()
    planes = repack(blocks.to(device), ggml_type, k)
    gen = torch.Generator().manual_seed(seed + 1)
    bias = torch.randn(n, generator=gen).double() * float(w_ref.abs().mean()) * k ** 0.5
    errors = {"dequantize": rel(gguf_dequantize(planes, torch.float32), w_ref)}
    for m in rows:
        x = torch.randn(m, k, generator=gen).to(dtype)
        ref = x.double() @ w_ref.T + bias
        b = bias.to(dtype).to(device)
        y = gguf_gemv(x.to(device), planes, b) if m == 1 else gguf_matmul(x.to(device), planes, b)
        errors["gemv m=1" if m == 1 else f"matmul m={m}"] = rel(y, ref)
        if m == 1:
            errors["matmul m=1"] = rel(gguf_matmul(x.to(device), planes, b), ref)
            # short steps (the loop and its prefetch) and a partial row tile
            errors["gemv m=1 16x64"] = rel(gguf_gemv(x.to(device), planes, b, GGUFGemvConfig(16, 64, 4, 2)), ref)
            errors["gemv m=1 16x64 ahead"] = rel(gguf_gemv(x.to(device), planes, b,
                                                           GGUFGemvConfig(16, 64, 4, 2, ahead=True)), ref)
    return errors


# A two-layer Llama GGUF (hidden 256, 4 heads of 64, 2 KV heads, MLP 512, vocab 160, tied embeddings)
# whose projections use every kernel type, mixed inside the fused qkv and gate_up layers.
TINY_TYPES = {"attn_q": T.Q4_K, "attn_k": T.Q4_K, "attn_v": T.Q6_K, "attn_output": T.Q4_0,
              "ffn_gate": T.Q5_K, "ffn_up": T.Q4_1, "ffn_down": T.Q6_K}
TINY_SHAPES = {"attn_q": (256, 256), "attn_k": (128, 256), "attn_v": (128, 256), "attn_output": (256, 256),
               "ffn_gate": (512, 256), "ffn_up": (512, 256), "ffn_down": (256, 512)}


def write_mixed_gguf(path) -> str:
    """The file at `path` (a Q8_0 embedding, float32 norms, the projections in TINY_TYPES)."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    for key, value in {"block_count": 2, "embedding_length": 256, "feed_forward_length": 512, "vocab_size": 160,
                       "attention.head_count": 4, "attention.head_count_kv": 2, "context_length": 512}.items():
        writer.add_uint32(f"llama.{key}", value)
    writer.add_tokenizer_model("llama")  # the converter builds an HF tokenizer from these
    writer.add_token_list(["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(157)])
    writer.add_token_scores([0.0] * 160)
    writer.add_token_types([2, 3, 3] + [1] * 157)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    rng = np.random.default_rng(3)

    def add(name, ggml_type, n, k, seed):
        blocks = random_blocks(ggml_type, n, k, seed, scale=1e-4).numpy()
        if ggml_type not in F16_OFFSETS:  # quantized from N(0, 1/k): scale to the K-quants' magnitude
            from gguf.quants import quantize
            blocks = quantize((rng.standard_normal((n, k)) * 0.05).astype(np.float32), ggml_type)
        writer.add_tensor(name, blocks, raw_dtype=ggml_type)

    add("token_embd.weight", T.Q8_0, 160, 256, 0)
    writer.add_tensor("output_norm.weight", np.ones(256, np.float32))
    for layer in range(2):
        for i, (part, ggml_type) in enumerate(TINY_TYPES.items()):
            add(f"blk.{layer}.{part}.weight", ggml_type, *TINY_SHAPES[part], seed=10 * layer + i + 1)
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{layer}.{norm}.weight", (1 + 0.1 * rng.standard_normal(256)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)
