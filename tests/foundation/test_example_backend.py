"""The example plugin's attention backend: over a paged KV pool against a float64 reference, and in a
real Engine against the built-in torch_native backend."""
from __future__ import annotations

import math
import os

import pytest
import torch

from jackfield.sdk import AttentionLayerInfo, AttentionRuntime, ForwardBatch, ForwardMode, KVPool

HEADS, KV_HEADS, DIM = 4, 2, 8


def reference(q, k, v, q_pos, window=None):
    """Plain causal attention in float64: q [n, H, D] at positions q_pos over k/v [S, KV, D]."""
    group = HEADS // KV_HEADS
    k, v = k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) / math.sqrt(DIM)
    k_pos = torch.arange(k.shape[0])
    allowed = k_pos[None, :] <= q_pos[:, None]
    if window:
        allowed &= q_pos[:, None] - k_pos[None, :] < window
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.einsum("hqk,khd->qhd", probs, v)


class Batch:
    """Two requests in a paged pool: prefix lengths `prefix`, new tokens `new`, shuffled slots."""

    def __init__(self, backend_cls, prefix=(3, 0), new=(4, 5), seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.pool = KVPool(num_pages=64, page_size=1, num_layers=1, num_kv_heads=KV_HEADS, head_dim=DIM,
                           dtype=torch.float32, device="cpu")
        self.req_to_token = torch.zeros(4, 32, dtype=torch.int32)
        self.rows = [1, 3]
        self.total = [p + n for p, n in zip(prefix, new)]
        free = (torch.randperm(64, generator=gen) + 1).tolist()  # slot 0 is the reserved page
        for row, length in zip(self.rows, self.total):
            self.req_to_token[row, :length] = torch.tensor([free.pop() for _ in range(length)])
        self.k = [torch.randn(t, KV_HEADS, DIM, generator=gen) for t in self.total]
        self.v = [torch.randn(t, KV_HEADS, DIM, generator=gen) for t in self.total]
        for row, p, k, v in zip(self.rows, prefix, self.k, self.v):
            self.pool.set_kv(0, self.req_to_token[row, :p].long(), k[:p], v[:p])
        runtime = AttentionRuntime(num_layers=1, num_heads=HEADS, num_kv_heads=KV_HEADS, head_dim=DIM,
                                   dtype=torch.float32, device=torch.device("cpu"), page_size=1,
                                   kv_pool=self.pool, req_to_token=self.req_to_token, max_batch_size=4,
                                   max_context_len=32)
        self.backend = backend_cls(runtime)
        self.prefix, self.new, self.gen = prefix, new, gen

    def extend_batch(self) -> ForwardBatch:
        loc = torch.cat([self.req_to_token[r, p:t] for r, p, t in zip(self.rows, self.prefix, self.total)]).long()
        positions = torch.cat([torch.arange(p, t) for p, t in zip(self.prefix, self.total)])
        starts = torch.tensor([0, self.new[0]], dtype=torch.int32)
        return ForwardBatch(
            mode=ForwardMode.EXTEND, batch_size=2, input_ids=torch.zeros(sum(self.new), dtype=torch.long),
            positions=positions, req_pool_indices=torch.tensor(self.rows), seq_lens=torch.tensor(self.total, dtype=torch.int32),
            out_cache_loc=loc, req_to_token=self.req_to_token, kv_pool=self.pool, attn_backend=self.backend,
            seq_lens_cpu=tuple(self.total), extend_prefix_lens=torch.tensor(self.prefix, dtype=torch.int32),
            extend_seq_lens=torch.tensor(self.new, dtype=torch.int32), extend_start_loc=starts,
            extend_prefix_lens_cpu=tuple(self.prefix), extend_seq_lens_cpu=tuple(self.new))

    def run_extend(self, window=None):
        """Run the extend forward; return (output, expected), both [num_tokens, H, D]."""
        fb = self.extend_batch()
        layer = AttentionLayerInfo(0, HEADS, KV_HEADS, DIM, 1 / math.sqrt(DIM), sliding_window=window)
        q = torch.randn(sum(self.new), HEADS * DIM, generator=self.gen)
        k = torch.cat([k[p:] for k, p in zip(self.k, self.prefix)]).reshape(-1, KV_HEADS * DIM)
        v = torch.cat([v[p:] for v, p in zip(self.v, self.prefix)]).reshape(-1, KV_HEADS * DIM)
        self.backend.init_forward_metadata(fb)
        out = self.backend.forward(q, k, v, layer, fb).view(-1, HEADS, DIM)
        qs = q.view(-1, HEADS, DIM).split(list(self.new))
        expected = torch.cat([reference(qi, k_all, v_all, torch.arange(p, t), window)
                              for qi, k_all, v_all, p, t in zip(qs, self.k, self.v, self.prefix, self.total)])
        return out, expected

    def run_decode(self):
        """After run_extend: one more token per request through forward_decode."""
        for i, row in enumerate(self.rows):
            used = set(self.req_to_token[self.rows].flatten().tolist())
            self.req_to_token[row, self.total[i]] = next(s for s in range(1, 65) if s not in used)
        loc = torch.stack([self.req_to_token[r, t] for r, t in zip(self.rows, self.total)]).long()
        self.total = [t + 1 for t in self.total]
        fb = ForwardBatch(
            mode=ForwardMode.DECODE, batch_size=2, input_ids=torch.zeros(2, dtype=torch.long),
            positions=torch.tensor(self.total) - 1, req_pool_indices=torch.tensor(self.rows),
            seq_lens=torch.tensor(self.total, dtype=torch.int32), out_cache_loc=loc,
            req_to_token=self.req_to_token, kv_pool=self.pool, attn_backend=self.backend,
            seq_lens_cpu=tuple(self.total))
        layer = AttentionLayerInfo(0, HEADS, KV_HEADS, DIM, 1 / math.sqrt(DIM))
        q = torch.randn(2, HEADS * DIM, generator=self.gen)
        k_new, v_new = torch.randn(2, KV_HEADS, DIM, generator=self.gen), torch.randn(2, KV_HEADS, DIM, generator=self.gen)
        self.k = [torch.cat([k, k_new[i:i + 1]]) for i, k in enumerate(self.k)]
        self.v = [torch.cat([v, v_new[i:i + 1]]) for i, v in enumerate(self.v)]
        self.backend.init_forward_metadata(fb)
        out = self.backend.forward(q, k_new.flatten(1), v_new.flatten(1), layer, fb).view(-1, HEADS, DIM)
        expected = torch.cat([reference(q.view(-1, HEADS, DIM)[i:i + 1], self.k[i], self.v[i], torch.tensor([t - 1]))
                              for i, t in enumerate(self.total)])
        return out, expected


@pytest.fixture
def backends(plugin_path):
    from jackfield_dup_plugin import DupExampleBackend
    from jackfield_example_plugin.sdpa import ExampleSDPABackend

    return {"example": ExampleSDPABackend, "dup": DupExampleBackend}


@pytest.mark.parametrize("which", ["example", "dup"])
def test_extend_over_a_cached_prefix_then_decode(backends, which):
    batch = Batch(backends[which])
    out, expected = batch.run_extend()
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    out, expected = batch.run_decode()
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_sliding_window(backends):
    batch = Batch(backends["example"], prefix=(6, 2), new=(5, 7), seed=1)
    out, expected = batch.run_extend(window=3)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_example_declares_what_it_supports(backends):
    cls = backends["example"]
    assert cls.name == "example_sdpa" and cls.priority == -100
    assert "sliding_window" in cls.capabilities.features
    assert cls.availability().ok


TINY_LLAMA = ('{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256, "hidden_size": 64, '
              '"intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, '
              '"max_position_embeddings": 256, "rms_norm_eps": 1e-5}')


@pytest.fixture
def tiny_llama(plugin_path, tmp_path, monkeypatch):
    """A dummy-weight Llama directory, with only the fixture and the needed built-in plugins enabled."""
    (tmp_path / "config.json").write_text(TINY_LLAMA)
    for var in [v for v in os.environ if v.startswith("JACKFIELD_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("JACKFIELD_PLUGINS", "example,dup,torch_native,unquantized,llama")
    return tmp_path


def greedy_tokens(model_dir, **settings) -> list[list[int]]:
    from jackfield import Engine

    with Engine(model=str(model_dir), load_format="dummy", kv_cache_bytes=1 << 24, warmup=False, **settings) as engine:
        assert engine.info.components["attention"]["name"] == settings["attention_backend"]
        outs = engine.generate([[1, 2, 3, 4, 5, 6, 7], [9, 8, 7]], {"temperature": 0, "max_new_tokens": 8})
        return [o["token_ids"] for o in outs]


def test_engine_with_the_example_backend_matches_torch_native(tiny_llama, caplog):
    with caplog.at_level("INFO", logger="jackfield_example_plugin"):
        reference_tokens = greedy_tokens(tiny_llama, attention_backend="torch_native")
        example_tokens = greedy_tokens(tiny_llama, attention_backend="example_sdpa",
                                       plugin_choice={"attention.example_sdpa": "jackfield-example-plugin"})
    assert example_tokens == reference_tokens
    assert caplog.text.count("example plugin: engine started (EngineInfo)") == 2


def test_engine_refuses_the_ambiguous_name(tiny_llama):
    from jackfield import Engine
    from jackfield.selection import SelectionError

    with pytest.raises(SelectionError, match="jackfield-example-plugin.*jackfield-dup-plugin|jackfield-dup-plugin.*jackfield-example-plugin"):
        Engine(model=str(tiny_llama), load_format="dummy", attention_backend="example_sdpa", warmup=False)


def test_per_mode_attention_backends(tiny_llama, monkeypatch):
    """prefill_attention_backend / decode_attention_backend: one backend per mode, in one engine. The
    example backend counts its calls by mode; the tokens equal torch_native's alone."""
    from jackfield import Engine
    from jackfield.hybrid_attention import HybridAttnBackend
    from jackfield_example_plugin.sdpa import ExampleSDPABackend

    calls = []
    for mode in ("forward_extend", "forward_decode"):
        real = getattr(ExampleSDPABackend, mode)
        monkeypatch.setattr(ExampleSDPABackend, mode,
                            lambda self, *a, _real=real, _mode=mode: calls.append(_mode) or _real(self, *a))
    reference_tokens = greedy_tokens(tiny_llama, attention_backend="torch_native")
    choice = {"attention.example_sdpa": "jackfield-example-plugin"}
    for prefill, decode in (("example_sdpa", "torch_native"), ("torch_native", "example_sdpa")):
        calls.clear()
        with Engine(model=str(tiny_llama), load_format="dummy", kv_cache_bytes=1 << 24, warmup=False,
                    attention_backend="torch_native", prefill_attention_backend=prefill,
                    decode_attention_backend=decode, plugin_choice=choice) as engine:
            comps = engine.info.components
            assert (comps["prefill_attention"]["name"], comps["decode_attention"]["name"]) == (prefill, decode)
            backend = engine.loop.scheduler.runner.attn_backend
            assert isinstance(backend, HybridAttnBackend)
            outs = engine.generate([[1, 2, 3, 4, 5, 6, 7], [9, 8, 7]], {"temperature": 0, "max_new_tokens": 8})
        assert [o["token_ids"] for o in outs] == reference_tokens
        assert set(calls) == {"forward_extend" if prefill == "example_sdpa" else "forward_decode"}, (prefill, calls)


def test_per_mode_attention_backend_errors(tiny_llama):
    from jackfield import Engine
    from jackfield.selection import SelectionError

    with pytest.raises(SelectionError, match="no attention component named 'nope'"):
        Engine(model=str(tiny_llama), load_format="dummy", decode_attention_backend="nope", warmup=False)
    with pytest.raises(SelectionError, match="decode_attention cannot be 'none'"):
        Engine(model=str(tiny_llama), load_format="dummy", attention_backend="torch_native",
               decode_attention_backend="none", warmup=False)
