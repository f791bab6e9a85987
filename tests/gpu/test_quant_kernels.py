"""The quantization kernels on the GPU against the float32 reference numerics, on the 8B model's
linear shapes and batch 1 through 256; each method's layer through every GEMM backend; tiny
checkpoints of every format end to end on the GPU against the CPU; the FP8 KV cache end to end.

The references dequantize exactly (fp8_numerics.w8a8_reference, int4_numerics.dequantize), so the
only differences are float32 summation order and the bf16 output (a relative error of ~0.3%).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quant"))


def backend_info(name: str):
    from jackfield.plugins import load_plugins
    from jackfield.registry import build_registry

    infos = build_registry(*load_plugins(env={})).candidates("attention", name)
    return infos[0] if infos else None


def available_backend(name: str) -> bool:
    info = backend_info(name)
    return info is not None and info.availability().ok


GPU_RUN = dict(device="cuda", dtype="bfloat16", max_total_tokens=4096, cuda_graph_max_bs=4)  # graphs for batch 1-4
SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]  # 8B: qkv, o, gate_up, down
ROWS = [1, 2, 16, 64, 256]
BF16_TOL = 1e-2


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _fp8_capable() -> bool:
    return torch.cuda.get_device_capability() >= (8, 9)


def _inputs(m, n, k, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, k, device="cuda", generator=gen).bfloat16()
    w = torch.randn(n, k, device="cuda", generator=gen) * 0.02
    return x, w


@pytest.mark.parametrize("group", [None, 128])
@pytest.mark.parametrize("m,k", [(1, 4096), (7, 14336), (256, 4096)])
def test_activation_quantization(m, k, group):
    if not _fp8_capable():
        pytest.skip("FP8 needs compute capability 8.9")
    from jackfield_plugins.quant import fp8_kernels as fk
    from jackfield_plugins.quant import fp8_numerics as fp8

    x = torch.randn(m, k, device="cuda").bfloat16() * torch.logspace(-3, 2, m, device="cuda")[:, None].bfloat16()
    q, s = fk.quantize_activations(x, group)
    rq, rs = fp8.quantize_per_token(x) if group is None else fp8.quantize_per_token_group(x, group)
    torch.testing.assert_close(s, rs, rtol=1e-6, atol=0)
    mismatch = (q.float() != rq.float()).float().mean().item()
    assert mismatch < 1e-3  # x / scale may round differently at exact ties (division order)


@pytest.mark.parametrize("block", [None, (128, 128)])
@pytest.mark.parametrize("n,k", SHAPES)
def test_w8a8_matmul(n, k, block):
    if not _fp8_capable():
        pytest.skip("FP8 needs compute capability 8.9")
    from jackfield_plugins.quant import fp8_kernels as fk
    from jackfield_plugins.quant import fp8_numerics as fp8
    from jackfield_plugins.quant.fp8 import blockwise_scaled_mm

    _, w = _inputs(1, n, k)
    wq, ws = fp8.quantize_per_channel(w) if block is None else fp8.quantize_blockwise(w, block)
    for m in ROWS:
        x, _ = _inputs(m, n, k, seed=m)
        ref = fp8.w8a8_reference(x.float(), wq, ws, block)
        xq, xs = fk.quantize_activations(x, block[1] if block else None)
        assert _rel(fk.w8a8_matmul(xq, xs, wq, ws, block, None, torch.bfloat16), ref) < BF16_TOL, (m, "triton")
        if block is None:
            y = torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.view(1, -1), out_dtype=torch.bfloat16)
        else:
            try:
                y = blockwise_scaled_mm(xq, xs, wq, ws, torch.bfloat16)
            except (RuntimeError, AttributeError) as exc:  # torch / cuBLAS without block scaling: report, don't fail
                pytest.skip(f"torch block-scaled matmul unavailable: {exc}")
        assert _rel(y, ref) < BF16_TOL, (m, "torch")


@pytest.mark.parametrize("codes", ["int8", "fp8"])
@pytest.mark.parametrize("n,k", SHAPES[:2] + SHAPES[3:])
def test_w8a16_matmul(n, k, codes):
    if codes == "fp8" and not _fp8_capable():
        pytest.skip("FP8 needs compute capability 8.9")
    from jackfield_plugins.quant import fp8_numerics as fp8
    from jackfield_plugins.quant.int8_wo import quantize_int8
    from jackfield_plugins.quant.w8a16_kernels import w8a16_matmul

    _, w = _inputs(1, n, k)
    q, s = quantize_int8(w) if codes == "int8" else fp8.quantize_per_channel(w)
    for m in ROWS:
        x, _ = _inputs(m, n, k, seed=m)
        ref = x.float() @ (q.float() * s[:, None]).t()
        assert _rel(w8a16_matmul(x, q, s, None), ref) < BF16_TOL, m


@pytest.mark.parametrize("kind", ["int8", "fp8", "fp8_block"])
@pytest.mark.parametrize("n,k", SHAPES)
def test_scaled_gemv_every_config(n, k, kind):
    if kind != "int8" and not _fp8_capable():
        pytest.skip("FP8 needs compute capability 8.9")
    from jackfield.kernels.gemv import candidates, fits, gemv, gemv_rmsnorm, gemv_silu_mul
    from jackfield.sdk import WeightScale
    from jackfield_plugins.quant import fp8_numerics as fp8
    from jackfield_plugins.quant.int8_wo import quantize_int8

    x, w = _inputs(1, n, k)
    block = (128, 128) if kind == "fp8_block" else None
    if kind == "int8":
        q, s = quantize_int8(w)
    else:
        q, s = fp8.quantize_per_channel(w) if block is None else fp8.quantize_blockwise(w, block)
    deq = q.float() * s[:, None] if block is None else fp8.dequantize_weight(q, s, block)
    ws = WeightScale(s, block)
    ref = x.float() @ deq.t()
    res, g = torch.randn_like(x), torch.randn(k, device="cuda").bfloat16()
    hs = (x.float() + res.float())
    normed = hs * torch.rsqrt(hs.pow(2).mean(-1, keepdim=True) + 1e-6) * g.float()
    gu = torch.randn(1, 2 * k, device="cuda").bfloat16()
    act = torch.nn.functional.silu(gu[:, :k].float()).bfloat16().float() * gu[:, k:].float()
    tried = 0
    for cfg in candidates(ws):
        if not fits(cfg, k, ws):
            continue
        tried += 1
        assert _rel(gemv(x, q, None, cfg, ws), ref) < BF16_TOL, cfg
        assert _rel(gemv_rmsnorm(x, res, g, 1e-6, q, None, cfg, ws)[0], normed @ deq.t()) < 2e-2, cfg
        assert _rel(gemv_silu_mul(gu, q, None, cfg, ws), act @ deq.t()) < 2e-2, cfg
    assert tried


@pytest.mark.parametrize("group", [64, 128])
@pytest.mark.parametrize("n,k", SHAPES)
def test_int4_kernels(n, k, group):
    from jackfield_plugins.quant import int4_kernels as k4
    from jackfield_plugins.quant import int4_numerics as int4
    from jackfield_plugins.quant.int4_linear import gemv_configs

    _, w = _inputs(1, n, k)
    q, s, z = int4.quantize(w, group)
    packed, s16, z16 = int4.pack(q, 1), s.half(), z.half()
    deq = int4.dequantize(q, s16, z16, None)
    assert torch.equal(k4.int4_dequantize(packed, s16, z16, group, torch.float32), deq)
    x1, _ = _inputs(1, n, k, seed=1)
    configs = gemv_configs(k, group)
    assert any(c.grouped for c in configs) and not all(c.grouped for c in configs)
    for c in configs:  # both GEMV kernels
        y = k4.int4_gemv(x1, packed, s16, z16, group, None, c)
        assert _rel(y, x1.float() @ deq.t()) < BF16_TOL, c
    for m in ROWS:
        x, _ = _inputs(m, n, k, seed=m)
        assert _rel(k4.int4_matmul(x, packed, s16, z16, group, None), x.float() @ deq.t()) < BF16_TOL, m


@pytest.mark.parametrize("n,k", SHAPES)
def test_int4_tinygemm_layout(n, k):
    """PyTorch's conversion makes int4_tinygemm.pack's layout; tinygemm (its few-row matmul) and the
    Triton dequantize kernel reading that layout match the dequantized reference."""
    from jackfield_plugins.quant import int4_kernels as k4
    from jackfield_plugins.quant import int4_numerics as int4
    from jackfield_plugins.quant import int4_tinygemm as tinygemm

    if not tinygemm.fits(torch.device("cuda"), torch.bfloat16, n, k, 128):
        pytest.skip("no tinygemm on this device")
    _, w = _inputs(1, n, k)
    q, s, z = int4.quantize(w, 128)
    words, s16, z16 = tinygemm.pack_on_device(q), s.half(), z.half()
    assert torch.equal(words, tinygemm.pack(q))
    deq = int4.dequantize(q, s16, z16, None)
    assert torch.equal(k4.int4_dequantize(words, s16, z16, 128, torch.float32), deq)
    table = tinygemm.scale_table(s16, z16)
    for m in ROWS:
        if m <= tinygemm.ROWS:
            x, _ = _inputs(m, n, k, seed=m)
            assert _rel(tinygemm.matmul(x, words, 128, table), x.float() @ deq.t()) < BF16_TOL, m


METHODS = {  # method -> (quantization_config, needs FP8)
    "fp8": ({}, True), "fp8_block": ({"quant_method": "fp8", "weight_block_size": [128, 128]}, True),
    "int8_wo": ({}, False), "awq": (None, False), "gptq": (None, False),
}


@pytest.mark.parametrize("name", ["fp8", "int8_wo", "gptq"])
def test_lm_head_on_gpu_matches_cpu(name):
    """A quantized LM head (`quantize_lm_head` for fp8 and int8_wo, `lm_head: true` for a GPTQ
    checkpoint) on the GPU against the same head on the CPU, at 1, 3 and 64 rows."""
    from quant_harness import LAYER_CONFIGS, model_config

    from jackfield.sdk import QuantOptions
    from jackfield.sdk.layers.embedding import LMHead
    from jackfield_plugins.quant import fp8_numerics
    from jackfield_plugins.quant.fp8 import Fp8
    from jackfield_plugins.quant.gptq import Gptq
    from jackfield_plugins.quant.int8_wo import Int8WeightOnly

    if name == "fp8" and not _fp8_capable():
        pytest.skip("FP8 needs compute capability 8.9")
    cls = {"fp8": Fp8, "int8_wo": Int8WeightOnly, "gptq": Gptq}[name]
    qc = {**LAYER_CONFIGS["gptq"], "lm_head": True} if name == "gptq" else {}
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(8192, 2048, generator=gen) * 0.02
    heads = {}
    for device, dtype in (("cpu", torch.float32), ("cuda", torch.bfloat16)):
        method = cls(model_config(qc), QuantOptions(quantize_lm_head=True)).lm_head_method()
        head = LMHead(8192, 2048, dtype, torch.device(device), method=method)
        head.method.load_float(head, w.to(device))
        head.process_weights_after_loading()
        heads[device] = head
    assert heads["cuda"].weight is None if name == "gptq" else heads["cuda"].weight.element_size() == 1
    for m in (1, 3, 64):
        x = torch.randn(m, 2048, generator=gen).bfloat16()
        out, ref = heads["cuda"](x.cuda()), heads["cpu"](x.float())
        if m == 1 and name == "fp8" and _gemv_taken(heads["cuda"]):  # W8A16 GEMV: compare like with like
            cpu = heads["cpu"]
            ref = fp8_numerics.w8a16_reference(x.float(), cpu.weight, cpu.weight_scale, cpu.wscale.block, None)
        assert _rel(out.cpu(), ref) < 2e-2, (m, _rel(out.cpu(), ref))


@pytest.mark.parametrize("backend", ["auto", "triton", "torch"])
@pytest.mark.parametrize("name", list(METHODS))
def test_layer_on_gpu_matches_cpu(name, backend):
    """One layer per method through its whole GPU dispatch (GEMV tuner at one row, Triton or torch
    GEMMs above, dequantize + cuBLAS from 1024 rows) against the same layer on the CPU."""
    from quant_harness import LAYER_CONFIGS, model_config

    from jackfield.sdk import QuantOptions
    from jackfield.sdk.layers.linear import Linear
    from jackfield.sdk.model import ModelBuildContext
    from jackfield_plugins.quant import fp8_numerics
    from jackfield_plugins.quant.awq import Awq
    from jackfield_plugins.quant.fp8 import Fp8
    from jackfield_plugins.quant.gptq import Gptq
    from jackfield_plugins.quant.int8_wo import Int8WeightOnly

    qc, fp8 = METHODS[name]
    if fp8 and not _fp8_capable():
        pytest.skip("FP8 needs compute capability 8.9")
    cls = {"fp8": Fp8, "fp8_block": Fp8, "int8_wo": Int8WeightOnly, "awq": Awq, "gptq": Gptq}[name]
    qc = LAYER_CONFIGS[cls.name] if qc is None else qc
    gen = torch.Generator().manual_seed(3)
    w, b = torch.randn(1024, 4096, generator=gen) * 0.02, torch.randn(1024, generator=gen)
    layers = {}
    for device, dtype in (("cpu", torch.float32), ("cuda", torch.bfloat16)):
        method = cls(model_config(qc), QuantOptions(gemm_backend=backend))
        ctx = ModelBuildContext(quant=method, dtype=dtype, device=torch.device(device))
        layer = Linear(4096, (1024,), ctx, "model.layers.0.mlp.down_proj", bias=True)
        layer.method.load_float(layer, w.to(device))
        layer.weight_loader("bias", b.to(device))
        layer.process_weights_after_loading()
        layers[device] = layer
    for m in (1, 3, 64, 256, 1500):
        x = torch.randn(m, 4096, generator=gen).bfloat16()
        out = layers["cuda"](x.cuda())
        ref = layers["cpu"](x.float())
        if m == 1 and name.startswith("fp8") and _gemv_taken(layers["cuda"]):
            # FP8's one-row GEMV keeps the activation in bf16 (W8A16); the CPU path is W8A8, whose
            # per-token e4m3 rounding of x alone is a ~2-3% relative error: compare like with like
            cpu = layers["cpu"]
            ref = fp8_numerics.w8a16_reference(x.float(), cpu.weight, cpu.weight_scale, cpu.wscale.block, cpu.bias)
        assert out.dtype == torch.bfloat16 and _rel(out.cpu(), ref) < 2e-2, (m, _rel(out.cpu(), ref))


def _gemv_taken(layer) -> bool:
    """Whether the layer's one-row input went through the GEMV kernel (not the method's matmul)."""
    gemv = getattr(layer.method, "gemv", None)
    return gemv is not None and any(k[0] == "linear" and c is not None for k, c in gemv.choices.items())


CHECKPOINTS = [("fp8", {"scheme": "tensor", "static": True}), ("fp8", {"scheme": "block", "block": (32, 32)}),
               ("awq", {"group": 32}), ("gptq", {"group": 32, "act_order": True, "symmetric": False}),
               ("ct-fp8", {"scheme": "channel"}), ("ct-int8", {}), ("ct-w4a16", {"group": 32})]


@pytest.mark.parametrize("backend", ["triton", "flashinfer"])
@pytest.mark.parametrize("fmt,opts", CHECKPOINTS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(CHECKPOINTS)])
def test_tiny_checkpoint_on_gpu_matches_cpu(tmp_path, fmt, opts, backend):
    from quant_checkpoints import write_quantized
    from quant_harness import forced_logits, rel_err

    from model_harness import ArchSpec, build_hf_model

    if fmt.endswith("fp8") and not _fp8_capable():
        pytest.skip("FP8 needs compute capability 8.9")
    if not available_backend(backend):
        pytest.skip(f"{backend} is unavailable here")
    model = build_hf_model(ArchSpec("qwen2_gpu", "Qwen2Config", {"tie_word_embeddings": False}, seed=5))
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    dims = backend_info(backend).cls.supported_head_dims
    if dims is not None and head_dim not in dims:
        pytest.skip(f"{backend} has no kernels for this tiny model's head_dim {head_dim} (supports {dims})")
    qdir, twin = write_quantized(model, tmp_path, fmt, **opts)
    gpu = forced_logits(qdir, attention_backend=backend, **GPU_RUN).cpu()
    cpu = forced_logits(qdir)
    # FP8 formats quantize activations per token to e4m3 (3 mantissa bits): on this model that alone
    # moves the CPU logits ~8% from the same weights with float activations (the dequantized twin).
    # The GPU rounds different bf16 activations, and its batch-1 decode GEMV skips the activation
    # rounding, so GPU and CPU differ by up to about that noise again, on top of bf16's 5%.
    noise = rel_err(cpu, forced_logits(twin)) if fmt.endswith("fp8") else 0.0
    assert rel_err(gpu, cpu) < 0.05 + 1.5 * noise, (rel_err(gpu, cpu), noise)


@pytest.mark.parametrize("backend", ["triton", "flashinfer"])
def test_fp8_kv_cache_end_to_end(tmp_path, backend):
    """A tiny model with an FP8 KV cache (scales from the checkpoint): the GPU backend against
    torch_native on the GPU with the same cache (fused rope + FP8 store on the fast path)."""
    from quant_harness import forced_logits, rel_err
    from safetensors.torch import load_file, save_file

    from model_harness import ArchSpec, save_tiny_model

    if not available_backend(backend):
        pytest.skip(f"{backend} is unavailable here")
    save_tiny_model(ArchSpec("llama_kv_gpu", "LlamaConfig", {"tie_word_embeddings": False}, seed=6), tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    for i in range(3):
        tensors[f"model.layers.{i}.self_attn.k_scale"] = torch.tensor(0.05)
        tensors[f"model.layers.{i}.self_attn.v_scale"] = torch.tensor(0.02)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    common = dict(GPU_RUN, kv_cache_dtype="fp8_e4m3")
    ref = forced_logits(tmp_path, attention_backend="torch_native", **common)
    ours = forced_logits(tmp_path, attention_backend=backend, **common)
    plain = forced_logits(tmp_path, attention_backend=backend, **GPU_RUN)
    plain_ref = forced_logits(tmp_path, attention_backend="torch_native", **GPU_RUN)
    assert rel_err(ours, ref) < 0.02, rel_err(ours, ref)  # the same FP8 cache, two kernels: bf16 rounding
    # the e4m3 rounding of K and V (3 mantissa bits) moves the logits ~5% here; the backend's FP8
    # cache may not move them further than torch_native's does
    fp8_noise = rel_err(ref, plain_ref)
    assert rel_err(ours, plain) < 0.02 + 1.25 * fp8_noise, (rel_err(ours, plain), fp8_noise)


def test_quantized_weights_leave_room_for_the_kv_cache():
    """The 1B-shaped dummy model: FP8 weights are about 60% of the bf16 bytes (embeddings stay bf16),
    and the KV pool takes what the weights leave of the same memory fraction. Each runner is built in
    its own process, so the first one's memory cannot shrink the second one's budget, and sees as
    used only what it reserved itself (not the memory of other test workers on the same GPU)."""
    import json
    import subprocess
    import sys

    if not _fp8_capable():
        pytest.skip("FP8 needs compute capability 8.9")
    config = str(Path(__file__).resolve().parents[2] / "benchmarks" / "configs" / "llama-1b.json")
    child = (
        "import json, sys\n"
        "import torch\n"
        "total = torch.cuda.mem_get_info()[1]\n"
        "torch.cuda.mem_get_info = lambda device=None: (total - torch.cuda.memory_reserved(), total)\n"
        "from jackfield.config import settings_for\n"
        "from jackfield.model_runner import ModelRunner\n"
        "from jackfield.runtime_setup import setup_runtime\n"
        "from jackfield.sdk import KVPool\n"
        f"s = settings_for(model={config!r}, load_format='dummy', device='cuda', quantization=sys.argv[1],\n"
        "                 mem_fraction_static=0.5, disable_cuda_graph=True)\n"
        "r = ModelRunner(setup_runtime(s), progress=False)\n"
        "c = r.config\n"
        "per_token = KVPool.bytes_per_token(c.num_layers, c.num_kv_heads, c.head_dim, r.kv_dtype)\n"
        "print('RESULT', json.dumps([r.weight_bytes, r.max_total_tokens, per_token]))\n")
    runs = {}
    for method in ("unquantized", "fp8"):
        proc = subprocess.run([sys.executable, "-c", child, method], capture_output=True, text=True, timeout=600)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        assert proc.returncode == 0 and line, proc.stderr[-3000:]
        runs[method] = json.loads(line[-1][len("RESULT "):])
    (w16, t16, per_token), (w8, t8, _) = runs["unquantized"], runs["fp8"]
    assert w8 < 0.65 * w16  # linear weights halve; the tied embedding stays bf16
    assert t8 - t16 >= 0.9 * (w16 - w8) / per_token
