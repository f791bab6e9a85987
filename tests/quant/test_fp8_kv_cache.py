"""The FP8 KV cache (`kv_cache_dtype fp8_e4m3`): the pool's quantized store and read, per-layer
scales from the checkpoint, twice the tokens per byte, a tiny model on torch_native against the
16-bit cache, and backends without FP8 reads refused at selection."""
from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from jackfield.sdk import KVPool, SelectionContext
from quant_harness import build_runner, forced_logits, rel_err


FP8 = torch.float8_e4m3fn


def test_pool_stores_scaled_fp8_and_reads_it_back():
    pool = KVPool(4, 2, 2, 2, 8, FP8, "cpu")
    pool.set_scales(1, 0.25, 4.0)
    gen = torch.Generator().manual_seed(0)
    k, v = torch.randn(3, 16, generator=gen), 100 * torch.randn(3, 16, generator=gen)
    k[0, 0] = 1e4  # beyond 448 * 0.25: saturates instead of turning into NaN
    loc = torch.tensor([2, 5, 7])
    pool.set_kv(1, loc, k, v)
    assert pool.k_buffer(1).dtype == FP8
    kd, vd = pool.dequantize(1, pool.k_buffer(1)[loc], pool.v_buffer(1)[loc])
    kd, vd = kd.reshape(3, 16), vd.reshape(3, 16)
    assert float(kd[0, 0]) == 448 * 0.25
    keep = torch.ones_like(k, dtype=torch.bool)
    keep[0, 0] = False
    assert ((kd - k).abs() <= 2 ** -4 * k.abs() + 2 ** -10 * 0.25)[keep].all()
    assert ((vd - v).abs() <= 2 ** -4 * v.abs() + 2 ** -10 * 4.0).all()
    with pytest.raises(ValueError, match="must be positive"):
        pool.set_scales(0, 0.0, 1.0)
    assert KVPool.bytes_per_token(2, 2, 8, FP8) * 2 == KVPool.bytes_per_token(2, 2, 8, torch.bfloat16)


def test_tiny_model_close_to_16bit_cache(tiny_llama):
    ours, ref = forced_logits(tiny_llama, kv_cache_dtype="fp8_e4m3"), forced_logits(tiny_llama)
    assert 0 < rel_err(ours, ref) < 0.05


def test_twice_the_tokens_in_the_same_bytes(tiny_llama):
    plain = build_runner(tiny_llama, dtype="bfloat16")
    fp8 = build_runner(tiny_llama, dtype="bfloat16", kv_cache_dtype="fp8_e4m3")
    assert fp8.kv_pool.dtype == FP8 and fp8.max_total_tokens // 2 == plain.max_total_tokens  # same byte budget


def test_checkpoint_scales_reach_the_pool(tiny_llama, tmp_path, caplog):
    tensors = load_file(str(tiny_llama / "model.safetensors"))
    tensors["model.layers.0.self_attn.k_scale"] = torch.tensor(0.5)
    tensors["model.layers.0.self_attn.v_scale"] = torch.tensor(2.0)
    tensors["model.layers.1.self_attn.kv_scale"] = torch.tensor([3.0])
    tensors["model.layers.2.self_attn.k_proj.output_scale"] = torch.tensor([1.5])
    tensors["model.layers.2.self_attn.v_proj.output_scale"] = torch.tensor([2.5])
    tensors["model.layers.2.self_attn.q_scale"] = torch.tensor(1.0)  # read and not used
    for f in tiny_llama.iterdir():
        if f.suffix != ".safetensors":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    save_file(tensors, str(tmp_path / "model.safetensors"))
    runner = build_runner(tmp_path, kv_cache_dtype="fp8_e4m3")
    assert runner.kv_pool.k_scales == [0.5, 3.0, 1.5] and runner.kv_pool.v_scales == [2.0, 3.0, 2.5]
    assert build_runner(tmp_path).kv_pool.k_scales == [1.0, 1.0, 1.0]  # a 16-bit cache ignores them
    with caplog.at_level(logging.WARNING, logger="jackfield.model_runner"):
        build_runner(tiny_llama, kv_cache_dtype="fp8_e4m3")
    assert "no k_scale/v_scale for 3 of 3 layers; they use 1.0" in caplog.text


def test_backends_without_fp8_reads_are_refused():
    from jackfield.plugins import load_plugins
    from jackfield.registry import build_registry

    registry = build_registry(*load_plugins(env={}))
    ctx = SelectionContext(device="cuda", dtype="bfloat16", compute_capability=(9, 0),
                           required_features=frozenset({"fp8_kv_cache"}))
    reasons = {i.name: i.cls.incompatibilities(ctx) for i in registry.of_kind("attention")}
    assert reasons["fa3"] == ["lacks required feature(s): fp8_kv_cache"]
    assert reasons["torch_native"] == reasons["triton"] == reasons["flashinfer"] == []
